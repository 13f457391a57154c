"""Splits (stratified, group-held-out, k-fold, external test sets), label filters, and the dataset registry."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import SHARED_DATA
from omicsweep.datasets import IngestOptions, Store, align_to_genes, fit_transform_on_train, ingest_anndata, load_split
from omicsweep.errors import ConfigError, InputError

CELLBENCH = SHARED_DATA / "cellbench_lung_cell_lines"
ZHENG = SHARED_DATA / "zheng2017_sorted_pbmc_subsample" / "zheng2017_sorted_pbmc_2140.h5ad"
needs_shared = pytest.mark.skipif(not CELLBENCH.exists(), reason="shared datasets not present")


def _one_line_error(code, stdout, stderr, *needles):
    assert code == 2, (code, stdout, stderr)
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr + stdout, stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture(scope="module")
def cellbench_h5ad(tmp_path_factory):
    """Four CellBench batches (3 CEL-seq2 plates + Drop-seq) outer-joined on Ensembl id; obs: label + batch file."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    parts = []
    for name in ("sc_celseq2_5cl_p1", "sc_celseq2_5cl_p2", "sc_celseq2_5cl_p3", "sc_dropseq"):
        counts = pd.read_csv(CELLBENCH / f"{name}.count.csv.gz", index_col=0)
        meta = pd.read_csv(CELLBENCH / f"{name}.metadata.csv.gz", index_col=0).loc[counts.columns]
        obs = pd.DataFrame({"cell_line": meta["cell_line_demuxlet"].astype(str).to_numpy(), "batch": name},
                           index=[f"{name}:{c}" for c in counts.columns])
        parts.append(ad.AnnData(X=sp.csr_matrix(counts.T.to_numpy(dtype=np.float32)), obs=obs,
                                var=pd.DataFrame(index=counts.index)))
    path = tmp_path_factory.mktemp("cellbench") / "cellbench.h5ad"
    ad.concat(parts, join="outer", fill_value=0).write_h5ad(path)
    return path


def _batches(store: Store) -> np.ndarray:
    return np.array([c.split(":")[0] for c in store.cell_ids()])


@needs_shared
def test_group_split_keeps_each_batch_whole_and_is_seeded(cli, cellbench_h5ad, tmp_path):
    out = tmp_path / "g.zarr"
    code, stdout, stderr = cli("ingest", cellbench_h5ad, "--label-col", "cell_line", "--group-col", "batch", "--out", out)
    assert code == 0, stderr
    store = Store(out)
    batches = _batches(store)
    seen = {}
    for split in ("train", "val", "test"):
        groups = set(batches[store.split_indices(split)])
        assert groups, split
        for group in groups:
            assert group not in seen, (group, seen[group], split)  # a batch never straddles two splits
            seen[group] = split
    assert len(seen) == 4
    info = store.provenance["split"]
    assert info["method"] == "group" and info["group_column"] == "batch" and info["groups"] == 4
    assert info["split_groups"] == {s: sorted(g for g, where in seen.items() if where == s) for s in ("train", "val", "test")}
    import anndata as ad

    codes = np.asarray(ad.read_zarr(out).obs["split"].cat.codes)
    assert list(codes) == sorted(codes)  # rows grouped by split

    again = tmp_path / "again.zarr"
    assert cli("ingest", cellbench_h5ad, "--label-col", "cell_line", "--group-col", "batch", "--out", again)[0] == 0
    assert Store(again).fingerprint == store.fingerprint


@needs_shared
def test_group_column_can_come_from_the_labels_file(cli, tmp_path):
    """CSV counts + a metadata table: --group-col names a column of the --labels file, joined by cell id."""
    out = tmp_path / "p1.zarr"
    code, stdout, stderr = cli(
        "ingest", CELLBENCH / "sc_celseq2_5cl_p1.count.csv.gz", "--labels", CELLBENCH / "sc_celseq2_5cl_p1.metadata.csv.gz",
        "--label-col", "cell_line_demuxlet", "--group-col", "demuxlet_cls", "--split", "0.5,0.5,0", "--out", out,
    )
    assert code == 0, stderr
    store = Store(out)
    groups = store.provenance["split"]["split_groups"]
    assert sorted(groups["train"] + groups["val"]) == ["DBL", "SNG"] and groups["test"] == []
    assert len(store.split_indices("train")) + len(store.split_indices("val")) == store.n_cells == 297


@needs_shared
def test_group_kfold_deals_whole_batches_into_folds(cellbench_h5ad, tmp_path):
    import anndata as ad

    adata = ad.read_h5ad(cellbench_h5ad)
    ingest_anndata(adata, label_col="cell_line", out=tmp_path / "k.zarr", source="cellbench",
                   options=IngestOptions(group_col="batch", folds=3, seed=1))
    store = Store(tmp_path / "k.zarr")
    batches, folds = _batches(store), store.folds()
    assert store.n_folds == 3 and store.provenance["split"]["method"] == "group-kfold"
    for batch in np.unique(batches):
        assert len(set(folds[batches == batch])) == 1
    assert list(folds) == sorted(folds)  # rows grouped by fold
    with pytest.raises(ConfigError, match="--folds 5: more folds than groups"):
        ingest_anndata(adata, label_col="cell_line", out=tmp_path / "x.zarr", source="cellbench",
                       options=IngestOptions(group_col="batch", folds=5))


def test_stratified_kfold_and_the_trial_config_fold_and_scaling(pbmc_adata, tmp_path):
    from omicsweep.benchmark.trial import TrialContext, execute_trial

    ingest_anndata(pbmc_adata, label_col="bulk_labels", out=tmp_path / "f.zarr", source="pbmc68k", use_raw=True,
                   options=IngestOptions(folds=4, seed=3))
    store = Store(tmp_path / "f.zarr")
    folds, labels = store.folds(), store.labels()
    assert store.n_folds == 4 and sorted(np.unique(folds)) == [0, 1, 2, 3]
    for cls in np.unique(labels):  # stratified: every class in every fold (pbmc68k's smallest class has 8 cells)
        assert len(set(folds[labels == cls])) == 4
    tests = []
    for fold in range(4):
        parts = {s: store.split_indices(s, fold=fold) for s in ("train", "val", "test")}
        assert set(folds[parts["test"]]) == {fold} and set(folds[parts["val"]]) == {(fold + 1) % 4}
        assert sorted(np.concatenate(list(parts.values()))) == list(range(store.n_cells))
        tests.extend(parts["test"])
    assert sorted(tests) == list(range(store.n_cells))  # each cell is tested exactly once across the folds
    np.testing.assert_array_equal(store.split_indices("test"), store.split_indices("test", fold=0))
    assert Store(store.path, fold=2).split_indices("train").tolist() == store.split_indices("train", fold=2).tolist()
    with pytest.raises(ConfigError, match="fold=4"):
        Store(store.path, fold=4)

    results = []
    context = TrialContext(store_path=str(store.path), fingerprint=store.fingerprint, model="majority")
    execute_trial(context, {"fold": 2, "scaling": "zscore"}, lambda metrics, files: results.append(files))
    (tmp_path / "ckpt").mkdir()
    for name in ("transform.npz", "test_predictions.npz"):
        results[-1][name](str(tmp_path / "ckpt" / name))
    with np.load(tmp_path / "ckpt" / "transform.npz") as arrays:
        assert str(arrays["scaling"]) == "zscore"
        fitted = fit_transform_on_train(Store(store.path, fold=2), "zscore")
        # an estimator's transform is fold 2's z-score without its shift (estimators train on CSR: split_matrix)
        np.testing.assert_allclose(arrays["std"], fitted.std)
        assert not np.any(arrays["mean"]) and np.any(fitted.mean)
    with np.load(tmp_path / "ckpt" / "test_predictions.npz") as arrays:
        np.testing.assert_array_equal(arrays["y_true"], labels[store.split_indices("test", fold=2)])


def test_group_assignment_fills_every_split_and_needs_enough_groups():
    from omicsweep.datasets.splits import group_split

    groups = np.array(["big"] * 1000 + ["a"] * 10 + ["b"] * 10)
    for seed in range(5):  # whatever the visiting order, the small groups end up in val and test
        split = group_split(groups, fractions=(0.7, 0.15, 0.15), seed=seed)
        assert set(split[groups == "big"]) == {0} and {int(split[groups == g][0]) for g in "ab"} == {1, 2}
    donors = np.repeat([f"d{i}" for i in range(20)], np.arange(20) + 5)
    split = group_split(donors, fractions=(0.6, 0.2, 0.2), seed=0)
    assert np.allclose(np.bincount(split) / len(split), (0.6, 0.2, 0.2), atol=0.05)
    assert not (group_split(donors, fractions=(0.6, 0.2, 0.2), seed=1) == split).all()  # seeded
    with pytest.raises(ConfigError, match="2 group.*cannot fill 3 splits"):
        group_split(np.array(["x", "y"] * 5), fractions=(0.7, 0.15, 0.15), seed=0)
    assert set(group_split(np.array(["x", "y"] * 5), fractions=(0.8, 0.2, 0.0), seed=0)) == {0, 1}


def test_config_fold_on_a_store_without_folds_is_refused(pbmc_store):
    with pytest.raises(ConfigError, match="has no folds"):
        Store(pbmc_store, fold=0)


@pytest.mark.skipif(not ZHENG.exists(), reason="shared datasets not present")
def test_external_test_store_aligned_to_the_training_store(cli, pbmc_store, tmp_path):
    """Train on pbmc68k (765 genes, log-normalised), evaluate on Zheng's sorted PBMCs ingested as a test set."""
    out = tmp_path / "zheng.zarr"
    code, stdout, stderr = cli("ingest", ZHENG, "--label-col", "cell_type", "--out", out, "--test-only",
                               "--preprocess", "normalize_log1p")
    assert code == 0, stderr
    external, train_store = Store(out), Store(pbmc_store)
    assert len(external.split_indices("test")) == external.n_cells == 2140
    assert external.provenance["split"]["method"] == "test-only"

    aligned = align_to_genes(external, train_store.genes(), classes=train_store.classes)
    info = aligned.alignment
    assert info["genes"] == 765 and info["genes_found"] + info["genes_missing"] == 765 and info["genes_missing"] > 0
    assert info["classes_unknown"] == ["CD4+ T Helper2"] and info["cells_unknown_class"] == 191
    transform = fit_transform_on_train(train_store)
    x, y = load_split(external, "test", transform, genes=train_store.genes(), classes=train_store.classes)
    assert x.shape == (2140 - 191, 765) and set(np.unique(y)) <= set(range(len(train_store.classes)))
    assert [train_store.classes[i] for i in np.unique(y)] == sorted(set(external.classes) - {"CD4+ T Helper2"})
    missing = [list(train_store.genes()).index(g) for g in info["missing_genes"]]
    np.testing.assert_allclose(x[:, missing], transform(np.zeros((1, 765), dtype=np.float32))[:, missing].repeat(len(x), 0))
    raw = aligned.read_rows(0, 50).toarray()
    gene = "CD79A"
    np.testing.assert_allclose(raw[:, list(train_store.genes()).index(gene)],
                               external.read_rows(0, 50).toarray()[:, list(external.genes()).index(gene)])


def test_an_aligned_store_speaks_the_store_protocol_in_its_own_features(pbmc_store):
    from omicsweep.datasets.protocol import SampleStore

    store = Store(pbmc_store)
    features = [*store.features()[:5][::-1], "NOT_A_GENE"]
    aligned = align_to_genes(store, features)
    assert isinstance(aligned, SampleStore)
    assert aligned.n_features == aligned.n_genes == 6 and aligned.features().tolist() == features
    assert aligned.n_samples == store.n_samples and aligned.sample_ids().tolist() == store.sample_ids().tolist()
    block = aligned.read_rows(0, 20).toarray()
    assert block.shape == (20, aligned.n_features) and not block[:, 5].any()
    np.testing.assert_array_equal(block[:, 0], store.read_rows(0, 20).toarray()[:, 4])
    assert aligned.summary()["genes"] == 6 and aligned.alignment["genes_missing"] == 1


def test_label_filters_drop_named_labels_and_small_classes(pbmc_adata, tmp_path):
    adata = pbmc_adata.copy()
    adata.obs["bulk_labels"] = adata.obs["bulk_labels"].astype(str)
    adata.obs.iloc[:5, adata.obs.columns.get_loc("bulk_labels")] = ["Unknown", "unknown", "NA", "na", "UNKNOWN"]
    messages: list[str] = []
    ingest_anndata(adata, label_col="bulk_labels", out=tmp_path / "f.zarr", source="pbmc68k", use_raw=True,
                   options=IngestOptions(drop_labels=("unknown", "NA"), min_class_size=30), messages=messages)
    store = Store(tmp_path / "f.zarr")
    prov = store.provenance
    assert prov["cells_dropped_by_label"] == {"NA": 1, "UNKNOWN": 1, "Unknown": 1, "na": 1, "unknown": 1}
    small = prov["classes_dropped_small"]
    assert set(small) == {"CD34+", "CD4+/CD45RA+/CD25- Naive T", "CD4+/CD45RO+ Memory"} and all(v < 30 for v in small.values())
    assert prov["cells_dropped_small_classes"] == sum(small.values())
    assert store.n_cells == 700 - 5 - sum(small.values()) and not set(small) & set(store.classes)
    assert any(m.startswith("--drop-labels: dropped 5 cells") for m in messages)
    assert any(m.startswith("--min-class-size 30: dropped 3 class(es)") for m in messages)


def test_duplicate_genes_are_refused_unless_made_unique(pbmc_adata, tmp_path):
    import anndata as ad

    dup = ad.AnnData(X=pbmc_adata.raw.X.copy(), obs=pbmc_adata.obs[["bulk_labels"]].copy(), var=pbmc_adata.raw.var.copy())
    dup.var_names = [*dup.var_names[:-2], dup.var_names[0], dup.var_names[0]]
    with pytest.raises(InputError, match="not unique.*--unique-genes"):
        ingest_anndata(dup, label_col="bulk_labels", out=tmp_path / "d.zarr", source="dup")
    ingest_anndata(dup, label_col="bulk_labels", out=tmp_path / "d.zarr", source="dup",
                   options=IngestOptions(unique_genes=True))
    store = Store(tmp_path / "d.zarr")
    genes = list(store.genes())
    assert len(set(genes)) == 765 and genes[-2:] == [f"{genes[0]}-1", f"{genes[0]}-2"]
    assert store.provenance["genes_renamed_unique"] == 2


def test_registered_names_resolve_in_list_show_and_sweep(cli, pbmc_store, tmp_path):
    from omicsweep.datasets import registered_datasets, resolve_dataset

    code, stdout, stderr = cli("datasets", "register", "my-pbmc", pbmc_store)
    assert code == 0 and "registered my-pbmc" in stdout, stderr
    assert registered_datasets()["my-pbmc"] == str(pbmc_store.resolve())
    assert resolve_dataset("my-pbmc") == ("my-pbmc", pbmc_store.resolve())
    code, stdout, _ = cli("datasets", "list")
    assert "pbmc68k" in stdout and "my-pbmc" in stdout and "700 cells x 765 genes" in stdout
    code, stdout, _ = cli("datasets", "show", "my-pbmc")
    assert code == 0 and '"cells": 700' in stdout and Store(pbmc_store).fingerprint in stdout and '"provenance"' in stdout
    _one_line_error(*cli("datasets", "register", "my-pbmc", tmp_path / "x.zarr"), "x.zarr", "not found")
    _one_line_error(*cli("datasets", "register", "pbmc68k", pbmc_store), "built-in")
    _one_line_error(*cli("datasets", "register", "a/b", pbmc_store), "'a/b'")
    _one_line_error(*cli("sweep", "--dataset", "nope", "--runs", tmp_path / "runs"), "unknown dataset 'nope'", "my-pbmc")
    assert cli("datasets", "unregister", "my-pbmc")[0] == 0 and "my-pbmc" not in registered_datasets()


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--min-class-size", "200"], ["--min-class-size 200", "leaves 1 class(es)"]),
        (["--drop-labels", "dendritic,CD14+ Monocyte,CD19+ B,CD4+/CD25 T Reg,CD8+ Cytotoxic T,"
          "CD8+/CD45RA+ Naive Cytotoxic,CD56+ NK,CD4+/CD45RO+ Memory,CD34+"], ["--drop-labels", "leaves 1 class(es)"]),
        (["--group-col", "donor"], ["--group-col 'donor'", "no such column", "bulk_labels"]),
        (["--group-col", "phase", "--folds", "4"], ["--folds 4", "more folds than groups", "at most 3"]),
        (["--folds", "2"], ["--folds 2", "at least 3 folds"]),
        (["--folds", "9"], ["--folds 9", "smallest class", "8 cells"]),
        (["--test-only", "--folds", "3"], ["--test-only", "--folds"]),
        (["--split", "0.7,0.3"], ["--split"]),
    ],
)
def test_cli_rejects_bad_split_and_filter_options_with_one_line(cli, pbmc_h5ad, tmp_path, args, needles):
    out = tmp_path / "out.zarr"
    code, stdout, stderr = cli("ingest", pbmc_h5ad, "--label-col", "bulk_labels", "--raw", "--out", out, *args)
    _one_line_error(code, stdout, stderr, *needles)
    assert not [p for p in tmp_path.iterdir() if "out.zarr" in p.name]
