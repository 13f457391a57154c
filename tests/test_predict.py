"""`omicsweep predict` and `export`: a pbmc68k model labels the Zheng-sorted PBMCs; the registry serves it."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from omicsweep.benchmark.predict import align_genes, normalize

from conftest import SHARED_DATA, load_registered

ZHENG = SHARED_DATA / "zheng2017_sorted_pbmc_subsample" / "zheng2017_sorted_pbmc_2140.h5ad"


def test_align_genes_by_name_missing_zero_duplicates_first():
    matrix = sp.csr_matrix(np.array([[1.0, 2.0, 3.0, 4.0]]))
    aligned = align_genes(matrix, ["B", "A", "X", "A"], ["A", "B", "C"])
    assert aligned.matrix.toarray().tolist() == [[2.0, 1.0, 0.0]]
    assert (aligned.present, aligned.missing, aligned.unused) == (2, ["C"], 1)


def test_normalize_auto_turns_counts_into_cp10k_log1p_for_a_log_model():
    counts = sp.csr_matrix(np.array([[1.0, 3.0], [0.0, 5.0]]))
    values, how = normalize(counts, "auto", trained_kind="log")
    assert how == "cp10k-log1p"
    assert np.allclose(values.toarray(), np.log1p(np.array([[2500.0, 7500.0], [0.0, 10000.0]])))
    assert normalize(counts, "auto", trained_kind="counts")[1] == "none"


def test_an_h5ad_with_a_dense_x_is_read_as_csr_and_normalised(tmp_path):
    # a dense X (many h5ad files) crashed predict in value_kind ('memoryview' object has no attribute 'size')
    import anndata as ad

    from omicsweep.benchmark.predict import read_input

    path = tmp_path / "dense.h5ad"
    ad.AnnData(X=np.array([[1.0, 3.0], [0.0, 5.0]], dtype=np.float32)).write_h5ad(path)
    _, matrix, genes, name = read_input(path, layer=None, use_raw=False)
    assert sp.issparse(matrix) and name == "X" and len(genes) == 2
    assert normalize(matrix, "auto", trained_kind="log")[1] == "cp10k-log1p"


def _best(out, model):
    table = pl.read_parquet(out / "leaderboard.parquet")
    return table.filter(pl.col("model") == model)["best_run_id"][0]


@pytest.mark.slow
@pytest.mark.skipif(not ZHENG.exists(), reason=f"shared dataset absent: {ZHENG}")
def test_predict_labels_zheng_sorted_pbmcs_with_a_pbmc68k_mlp(swept, cli, tmp_path):
    import anndata as ad

    out, _ = swept
    target = tmp_path / "zheng-labelled.h5ad"
    code, stdout, stderr = cli("predict", ZHENG, "--run", _best(out, "mlp"), "--runs", out, "--out", target,
                               "--truth", "cell_type")
    assert code == 0, stdout + stderr
    assert "750 of 765 model genes present" in stdout and "15 missing" in stdout and "cp10k-log1p" in stdout
    labelled = ad.read_h5ad(target)
    assert labelled.n_obs == 2140 and [p.name for p in tmp_path.iterdir()] == [target.name]  # nothing partial left
    obs = labelled.obs
    assert obs["predicted_probability"].between(0, 1).all()
    assert (obs["predicted_probability"] >= obs["predicted_probability_2"]).all()
    assert all(len(top.split("; ")) == 3 for top in obs["predicted_top3"])
    known = obs["cell_type"].astype(str) != "CD4+ T Helper2"  # the one sorted population pbmc68k lacks
    agreement = (obs["cell_type"].astype(str) == obs["predicted_label"].astype(str))[known].mean()
    assert agreement > 0.4, agreement  # a different dataset with sort labels; chance is about 0.1
    assert labelled.uns["omicsweep_predict"]["genes_present"] == 750


@pytest.mark.slow
def test_predict_with_an_estimator_on_its_own_training_cells(swept, cli, pbmc_h5ad, tmp_path):
    import anndata as ad

    out, _ = swept
    target = tmp_path / "pbmc-labelled.h5ad"
    code, stdout, stderr = cli("predict", pbmc_h5ad, "--raw", "--run", _best(out, "logreg"), "--runs", out,
                               "--out", target, "--truth", "bulk_labels")
    assert code == 0, stdout + stderr
    assert "765 of 765" in stdout and "normalization none" in stdout
    obs = ad.read_h5ad(target).obs
    assert (obs["predicted_label"].astype(str) == obs["bulk_labels"].astype(str)).mean() > 0.8


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")  # MLflow's advice to add type hints to predict
def test_export_registers_a_pyfunc_with_a_signature(swept, cli, pbmc_adata):
    import pandas as pd


    out, _ = swept
    code, stdout, stderr = cli("export", "--run", _best(out, "mlp"), "--name", "pbmc-mlp", "--runs", out)
    assert code == 0, stdout + stderr
    assert "registered pbmc-mlp version 1" in stdout
    model = load_registered(out, "pbmc-mlp")
    assert model.metadata.signature.inputs.input_names()[:2] == list(pbmc_adata.raw.var_names[:2])
    frame = pd.DataFrame(pbmc_adata.raw.X[:20].toarray(), columns=list(pbmc_adata.raw.var_names))
    result = model.predict(frame)
    assert list(result.columns) == ["predicted_label", "predicted_probability", "predicted_top3"]
    assert (result["predicted_label"] == pbmc_adata.obs["bulk_labels"][:20].astype(str).to_numpy()).mean() > 0.5


# ---- the scikit-learn baselines that keep fitted objects (a forest's trees, a neighbour index) -------------------


@pytest.fixture(scope="module")
def baselines_swept(ray_session, pbmc_store, tmp_path_factory):
    """A tiny real sweep of knn and random_forest (2 trials each, no seed re-runs): the run folder."""
    from typer.testing import CliRunner

    from omicsweep.cli import app

    out = tmp_path_factory.mktemp("baselines") / "run"
    result = CliRunner().invoke(app, ["sweep", "--dataset", "pbmc68k", "--model", "knn,random_forest", "--trials", "2",
                                      "--concurrency", "2", "--seed", "0", "--reruns", "0", "--runs", str(out)])
    assert result.exit_code == 0, result.stdout + result.stderr
    return out


def _checkpoint_file(out, run_id: str, name: str):
    """The logged checkpoint artifact `name` of a run, as a local file of the run folder's artifact store."""
    from pathlib import Path
    from urllib.parse import urlparse

    from mlflow import MlflowClient

    from omicsweep.reports.tracking import default_tracking_uri

    uri = MlflowClient(default_tracking_uri(out)).get_run(run_id).info.artifact_uri
    return Path(urlparse(uri).path) / "checkpoint" / name


@pytest.mark.slow
def test_predict_labels_cells_with_knn_and_random_forest_into_h5ad_and_csv(baselines_swept, cli, pbmc_h5ad, tmp_path):
    import anndata as ad

    out = baselines_swept
    for model in ("knn", "random_forest"):
        target = tmp_path / f"{model}.h5ad"
        code, stdout, stderr = cli("predict", pbmc_h5ad, "--raw", "--run", _best(out, model), "--runs", out,
                                   "--out", target, "--truth", "bulk_labels")
        assert code == 0, stdout + stderr
        assert "765 of 765" in stdout and f"700 cells labelled by {model}" in stdout
        obs = ad.read_h5ad(target).obs
        assert (obs["predicted_label"].astype(str) == obs["bulk_labels"].astype(str)).mean() > 0.7, model
        table = tmp_path / f"{model}.csv"
        code, stdout, stderr = cli("predict", pbmc_h5ad, "--raw", "--run", _best(out, model), "--runs", out,
                                   "--out", table)
        assert code == 0, stdout + stderr
        rows = pl.read_csv(table)
        assert rows["cell"].to_list() == list(obs.index)
        assert rows["predicted_label"].to_list() == obs["predicted_label"].astype(str).to_list()
        assert rows["predicted_probability"].to_numpy() == pytest.approx(obs["predicted_probability"].to_numpy())
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(model)) == [table.name, target.name]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")  # MLflow's advice to add type hints to predict
def test_export_serves_a_random_forest_and_report_draws_the_baselines(baselines_swept, cli, pbmc_adata, tmp_path):
    import pandas as pd


    out = baselines_swept
    code, stdout, stderr = cli("export", "--run", _best(out, "random_forest"), "--name", "pbmc-forest", "--runs", out)
    assert code == 0, stdout + stderr
    model = load_registered(out, "pbmc-forest")
    frame = pd.DataFrame(pbmc_adata.raw.X[:40].toarray(), columns=list(pbmc_adata.raw.var_names))
    result = model.predict(frame)
    assert (result["predicted_label"] == pbmc_adata.obs["bulk_labels"][:40].astype(str).to_numpy()).mean() > 0.7
    page = tmp_path / "report.html"
    code, stdout, stderr = cli("report", "--runs", out, "--out", page, "--no-attach")
    assert code == 0, stdout + stderr
    text = page.read_text()
    assert "test-split figures unavailable" not in text
    assert text.count("confusion matrix") >= 4  # alt text and caption, for both models


@pytest.mark.slow
@pytest.mark.shared_data
def test_a_corrupt_or_tampered_estimator_checkpoint_is_a_one_line_error(baselines_swept, cli, pbmc_h5ad, pair_store,
                                                                       tmp_path):
    import os

    import skops.io

    from conftest import assert_one_line_error

    out = baselines_swept
    run = _best(out, "knn")
    assert_one_line_error(*cli("predict", pair_store, "--run", run, "--runs", out, "--out", tmp_path / "x.h5ad"),
                          "knn labels cells", "gene-pair task store")
    logged = _checkpoint_file(out, run, "estimator.skops")
    original = logged.read_bytes()
    planted = skops.io.loads(original, trusted=skops.io.get_untrusted_types(data=original))
    planted.payload_ = os.system  # a callable an attacker wants run on load
    args = ("predict", pbmc_h5ad, "--raw", "--run", run, "--runs", out, "--out", tmp_path / "x.h5ad")
    try:
        logged.write_bytes(b"not a skops file\n")
        assert_one_line_error(*cli(*args), "estimator.skops", "not a valid skops file")
        skops.io.dump(planted, logged)
        assert_one_line_error(*cli(*args), "estimator.skops", "posix.system")
    finally:
        logged.write_bytes(original)
    assert not (tmp_path / "x.h5ad").exists()
