"""Gene-pair tasks: CNNC pair files + mouse expression -> pair-task store -> images -> sweep with controls.

Real data only: CNNC's dendritic-cell pairs and ACTINN's mouse immune cells, gene2vec's GGIPNN pairs with the
human PBMCs scanpy ships. Images are checked against numpy's histogram2d as CNNC's own script computes them.
"""

from __future__ import annotations

import lzma
import shutil

import numpy as np
import pytest

from conftest import CNNC_DENDRITIC, SHARED_DATA, assert_one_line_error, load_registered
from omicsweep.datasets import open_store
from omicsweep.datasets.pair_images import reference_image
from omicsweep.errors import InputError


def _dendritic_rows():
    return [line.split("\t") for line in lzma.open(CNNC_DENDRITIC, "rt").read().splitlines()]


def _imaged(pair_store, config):
    """The pair store as CNNC's featuriser reads it for a trial config: its images at the config's bins/sigma."""
    from omicsweep.models import get_model

    return get_model("cnnc").featurised_store(open_store(pair_store), config)


def _actinn_expression(store):
    """Cells x genes from the store, gene names lower-cased (as CNNC writes its symbols)."""
    matrix = store.read_rows(0, store.n_cells).toarray()
    return matrix, {g.lower(): i for i, g in enumerate(store.genes())}


@pytest.mark.shared_data
def test_images_are_cnnc_histograms_of_the_expression(pair_store, actinn_store):
    from scipy.ndimage import gaussian_filter

    from omicsweep.datasets import Store

    matrix, column = _actinn_expression(Store(actinn_store))
    a, b = open_store(pair_store).pair_genes()
    picks = np.random.default_rng(0).choice(len(a), 8, replace=False)
    for bins, sigma in ((32, 0.0), (24, 0.0), (16, 1.5)):
        store = _imaged(pair_store, {"bins": bins, "sigma": sigma})
        images = store.images()
        assert images.shape == (store.n_samples, bins * bins) and store.input_shape == (1, bins, bins)
        assert store.images() is images  # built once per (bins, sigma) in a process
        for i in picks:
            x_a, x_b = matrix[:, column[a[i].lower()]], matrix[:, column[b[i].lower()]]
            expected = reference_image(x_a, x_b, bins)
            if sigma:  # smoothing acts on the density H / N before CNNC's log scaling
                density = 10 ** (expected * 4 - 4) - 1e-4
                expected = (np.log10(gaussian_filter(density, sigma) + 1e-4) + 4) / 4
            np.testing.assert_allclose(images[i].reshape(bins, bins), expected, atol=1e-6)
    assert store.read_rows(0, 5).shape == (5, 16 * 16)


@pytest.mark.shared_data
def test_ingest_pairs_reports_the_overlap_drops_missing_genes_and_keeps_parts_whole(cli, actinn_store, tmp_path):
    from omicsweep.datasets import Store

    out = tmp_path / "dendritic.zarr"
    code, stdout, stderr = cli("ingest-pairs", CNNC_DENDRITIC, "--expression", actinn_store, "--out", out)
    assert code == 0, stdout + stderr
    rows = _dendritic_rows()
    genes = {g.lower() for g in Store(actinn_store).genes()}
    in_pairs = {g for r in rows for g in r[:2]}
    kept = [r for r in rows if r[0] in genes and r[1] in genes]
    assert f"genes: {len(in_pairs & genes)} of {len(in_pairs)} pair genes found in actinn" in stdout
    assert f"pairs: {len(kept)} of {len(rows)} kept; dropped {len(rows) - len(kept)} with a gene missing" in stdout
    store = open_store(out)
    a, b = store.pair_genes()
    assert [[x.lower(), y.lower()] for x, y in zip(a, b)] == [r[:2] for r in kept]
    assert store.labels().tolist() == [int(r[2]) for r in kept]
    # CNNC's three folds: contiguous thirds of the 16 data parts; no part is in two splits of a fold
    bounds = [int(v) for v in (SHARED_DATA / "cnnc_gene_pairs" / "dendritic_gene_pairs_200_num.txt").read_text().split()]
    assert store.n_folds == 3 and len(bounds) - 1 == 16
    parts = store.parts()
    for fold, test_parts in enumerate((range(0, 6), range(6, 11), range(11, 16))):
        split_parts = {s: set(parts[store.split_indices(s, fold)].tolist()) for s in ("train", "val", "test")}
        assert split_parts["test"] == set(test_parts) & set(parts.tolist())
        assert not split_parts["train"] & split_parts["val"] and not (split_parts["train"] | split_parts["val"]) & split_parts["test"]
        assert sum(len(store.split_indices(s, fold)) for s in ("train", "val", "test")) == len(kept)
        assert f"fold {fold}: train {len(store.split_indices('train', fold))}" in stdout


@pytest.mark.shared_data
def test_gene2vec_pairs_keep_their_given_split(cli, pbmc_store, tmp_path):
    folder = SHARED_DATA / "gene2vec_ggipnn_pairs"
    out = tmp_path / "g2v.zarr"
    code, stdout, stderr = cli("ingest-pairs", folder, "--expression", "pbmc68k", "--out", out)
    assert code == 0, stdout + stderr
    store = open_store(out)
    genes = {g.lower() for g in open_store(pbmc_store).genes()}
    for split, prefix in (("train", "train"), ("val", "valid"), ("test", "test")):
        text = folder / f"{prefix}_text.txt"
        lines = (lzma.open(f"{text}.xz", "rt") if not text.exists() else open(text)).read().splitlines()
        labels = (folder / f"{prefix}_label.txt").read_text().split()
        kept = [int(y) for line, y in zip(lines, labels) if all(g.lower() in genes for g in line.split())]
        assert store.labels()[store.split_indices(split)].tolist() == kept, split
    assert store.n_folds == 0 and store.classes == ["no_interaction", "interaction"]


@pytest.mark.parametrize("case, needles", [
    ("two_fields", ["bad.txt", "line 2", "geneA<TAB>geneB<TAB>label"]),
    ("bad_label", ["bad.txt", "line 1", "label '7'"]),
    ("bad_parts", ["bad_num.txt", "boundaries"]),
    ("no_parts", ["bad.txt", "bad_num.txt", "--parts"]),
    ("unknown_genes", ["bad.txt", "none of its 3 pairs", "check the organism"]),
    ("bad_folds", ["--folds 1"]),
])
@pytest.mark.shared_data
def test_bad_pair_input_is_one_line_and_writes_nothing(cli, actinn_store, tmp_path, case, needles):
    rows = {"two_fields": "stat3\ttonsl\t1\nstat3 tonsl\n", "bad_label": "stat3\ttonsl\t7\n",
            "unknown_genes": "nogene1\tnogene2\t1\nnogene2\tnogene1\t2\nnogene1\tnogene3\t0\n"}
    source = tmp_path / "bad.txt"
    source.write_text(rows.get(case, "stat3\ttonsl\t1\ntonsl\tstat3\t2\nstat3\texd1\t0\n"))
    if case != "no_parts":
        (tmp_path / "bad_num.txt").write_text("0\n2\n" if case == "bad_parts" else "0\n1\n2\n3\n")
    out = tmp_path / "out.zarr"
    extra = ["--folds", "1"] if case == "bad_folds" else []
    assert_one_line_error(*cli("ingest-pairs", source, "--expression", actinn_store, "--out", out, *extra), *needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["bad.txt"] + (["bad_num.txt"] * (case != "no_parts")))


@pytest.mark.shared_data
def test_a_pair_store_takes_no_image_settings_and_its_images_are_the_featuriser_s_view(pair_store):
    """Storage takes no trial hyperparameters: bins/sigma shape the featuriser's view, not open_store; the store,
    the view and a cell store all have the one written interface (datasets.protocol.SampleStore)."""
    from omicsweep.datasets.pair_images import PairImages
    from omicsweep.datasets.protocol import SampleStore
    from omicsweep.datasets.store import Store

    with pytest.raises(TypeError):
        open_store(pair_store, config={"bins": 16})
    store = open_store(pair_store)
    assert not hasattr(store, "n_pairs")
    view = _imaged(pair_store, {"bins": 16, "sigma": 0.5})
    assert isinstance(view, PairImages) and (view.bins, view.sigma) == (16, 0.5)
    assert view.fingerprint == store.fingerprint and view.n_samples == store.n_samples
    assert view.n_features == 256 and list(view.features()[:2]) == ["r0c0", "r0c1"]
    assert view.provenance["bins"] == 16 and np.array_equal(view.labels(), store.labels())
    assert isinstance(store, SampleStore) and isinstance(view, SampleStore)


@pytest.mark.shared_data
def test_a_changed_expression_store_is_refused(actinn_store, tmp_path):
    from omicsweep.datasets.pairs import PairIngestOptions, ingest_pairs

    moved = tmp_path / "expression.zarr"
    shutil.copytree(actinn_store, moved)
    pairs = ingest_pairs(CNNC_DENDRITIC, expression=moved, out=tmp_path / "p.zarr", options=PairIngestOptions(max_pairs=50))
    shutil.rmtree(moved)
    with pytest.raises(InputError, match="ingest-pairs` again"):
        pairs.images()


def test_prediction_collapse_flags_a_majority_collapse_not_imbalanced_truth():
    from omicsweep.benchmark.metrics import prediction_collapse

    truth = np.array([0] * 98 + [1] * 2)
    assert prediction_collapse(truth, np.zeros(100, dtype=int), 2)["degenerate"] == 1.0
    assert prediction_collapse(truth, truth, 2) == {"pred_top_share": 0.98, "pred_top_class": 0.0, "degenerate": 0.0}
    balanced = np.arange(300) % 3
    assert prediction_collapse(balanced, np.where(np.arange(300) < 290, 2, balanced), 3)["degenerate"] == 1.0
    assert prediction_collapse(balanced, np.where(np.arange(300) < 200, 2, balanced), 3)["degenerate"] == 0.0


@pytest.mark.shared_data
def test_sweep_refuses_models_that_do_not_take_pair_images(cli, pair_store):
    assert_one_line_error(*cli("sweep", "--dataset", pair_store, "--model", "cnnc,knn"),
                          "model knn does not accept gene_pair_image", "cnnc, logreg, majority, random")
    assert_one_line_error(*cli("train", "--dataset", pair_store, "--model", "mlp"), "model mlp does not accept")
    assert_one_line_error(*cli("sweep", "--model", "cnnc"), "model cnnc does not accept cell_classification")


def test_all_models_of_a_pair_task_are_cnnc_its_baseline_and_the_controls():
    from omicsweep.models import GENE_PAIR_IMAGE, models_for_task

    assert [e.name for e in models_for_task("all", GENE_PAIR_IMAGE)] == ["cnnc", "logreg", "majority", "random"]
    assert "cnnc" not in [e.name for e in models_for_task("all", "cell_classification")]


@pytest.mark.slow
@pytest.mark.shared_data
def test_sweep_on_pairs_flags_the_collapsed_control_on_the_leaderboard_and_in_mlflow(cli, ray_session, pair_store, tmp_path):
    import polars as pl
    from mlflow import MlflowClient

    from omicsweep.reports.tracking import DEGENERATE_TAG, default_tracking_uri

    out = tmp_path / "run"
    code, stdout, stderr = cli("sweep", "--dataset", pair_store, "--model", "majority,random", "--reruns", "0",
                               "--runs", out)
    assert code == 0, stdout + stderr
    table = pl.read_csv(out / "leaderboard.csv")
    assert sorted(table["model"]) == ["majority", "random"]
    assert set(table["metric"]) == {"val_balanced_accuracy"}  # the pair task's default metric
    rows = {r["model"]: r for r in table.iter_rows(named=True)}
    assert rows["majority"]["degenerate"] is True and rows["majority"]["test_pred_top_share"] == 1.0
    assert rows["random"]["degenerate"] is False
    assert "DEGENERATE majority" in stdout  # the 'collapsed' column (YES 1/1) is in the --wide leaderboard only
    assert rows["majority"]["degenerate_trials"] == 1 and rows["majority"]["trials_finished"] == 1
    client = MlflowClient(default_tracking_uri(out))
    trials = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                filter_string="tags.`omicsweep.role` = 'trial'")
    flags = {r.data.tags["omicsweep.model"]: r.data.tags.get(DEGENERATE_TAG) for r in trials}
    assert flags["majority"] == "true" and flags["random"] == "false" and set(flags) == set(rows)


# ---- a trained CNNC: predict, export and report rebuild the pair task it trained on ------------------------------


@pytest.fixture(scope="module")
def cnnc_trained(ray_session, pair_store, tmp_path_factory):
    """`omicsweep train` of a tiny CNNC on 16 x 16 images (not the store's default 32 bins): (run folder, run id)."""
    import polars as pl
    from typer.testing import CliRunner

    from omicsweep.cli import app

    out = tmp_path_factory.mktemp("cnnc") / "run"
    tiny = ["bins=16", "n_blocks=2", "width=4", "dense=16", "max_epochs=1", "batch_size=256"]
    result = CliRunner().invoke(app, ["train", "--dataset", str(pair_store), "--model", "cnnc", "--runs", str(out),
                                      *[arg for value in tiny for arg in ("--set", value)]])
    assert result.exit_code == 0, result.stdout + result.stderr
    return out, pl.read_parquet(out / "leaderboard.parquet").filter(pl.col("model") == "cnnc")["best_run_id"][0]


def _logged_test_predictions(out, run_id, folder):
    from omicsweep.reports.tracking import default_tracking_uri, download_checkpoint

    checkpoint = download_checkpoint(default_tracking_uri(out), run_id, folder)
    with np.load(checkpoint / "test_predictions.npz", allow_pickle=False) as saved:
        return saved["proba"]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")  # MLflow's advice to add type hints to predict
@pytest.mark.shared_data
def test_predict_export_and_report_work_on_a_cnnc_run(cnnc_trained, cli, pair_store, tmp_path):
    import pandas as pd
    import polars as pl


    out, run = cnnc_trained
    table = tmp_path / "pairs.csv"
    code, stdout, stderr = cli("predict", pair_store, "--run", run, "--runs", out, "--out", table)
    assert code == 0, stdout + stderr
    store = _imaged(pair_store, {"bins": 16})
    rows = pl.read_csv(table)
    a, b = store.pair_genes()
    assert rows["gene_a"].to_list() == a.tolist() and rows["gene_b"].to_list() == b.tolist()
    assert rows["label"].to_list() == [store.classes[y] for y in store.labels()]
    test = store.split_indices("test")
    assert (rows["split"].to_numpy()[test] == "test").all() and len(rows) == store.n_samples
    # the trial's own test-split probabilities, from the model in memory: predict labels those pairs the same
    proba = _logged_test_predictions(out, run, tmp_path / "checkpoint")
    assert rows["predicted_label"].to_numpy()[test].tolist() == [store.classes[k] for k in proba.argmax(axis=1)]
    assert rows["predicted_probability"].to_numpy()[test] == pytest.approx(proba.max(axis=1), rel=1e-5)
    assert f"{store.n_samples} gene pairs labelled by cnnc" in stdout

    code, stdout, stderr = cli("export", "--run", run, "--name", "dendritic-cnnc", "--runs", out)
    assert code == 0, stdout + stderr
    model = load_registered(out, "dendritic-cnnc")
    assert model.metadata.signature.inputs.input_names()[:3] == ["r0c0", "r0c1", "r0c2"]
    frame = pd.DataFrame(store.images()[test[:25]], columns=list(store.genes()))
    served = model.predict(frame)
    assert served["predicted_label"].tolist() == rows["predicted_label"].to_numpy()[test[:25]].tolist()

    page = tmp_path / "report.html"
    code, stdout, stderr = cli("report", "--runs", out, "--out", page, "--no-attach")
    assert code == 0, stdout + stderr
    assert "test-split figures unavailable" not in page.read_text() and "confusion matrix" in page.read_text()


@pytest.mark.slow
@pytest.mark.shared_data
def test_a_pair_model_refuses_cells_and_writes_its_pairs_as_csv_only(cnnc_trained, cli, pair_store, tmp_path):
    out, run = cnnc_trained
    cells = SHARED_DATA / "actinn_mouse_immune" / "actinn_train_set.h5ad"
    assert_one_line_error(*cli("predict", cells, "--run", run, "--runs", out, "--out", tmp_path / "x.csv"),
                          "cnnc labels gene pairs", "ingest-pairs")
    assert_one_line_error(*cli("predict", pair_store, "--run", run, "--runs", out, "--out", tmp_path / "x.h5ad"),
                          "x.h5ad", ".csv")
    assert not list(tmp_path.iterdir())
