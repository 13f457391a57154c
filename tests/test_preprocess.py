"""Preprocessing recipes at ingest, train-fitted scaling at train time, and their bad-input errors (real data)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import SHARED_DATA
from omicsweep.datasets import IngestOptions, Store, fit_transform_on_train, ingest_anndata, load_split
from omicsweep.errors import ConfigError, InputError

PBMC3K = SHARED_DATA / "pbmc3k_labelled" / "pbmc3k_labelled.h5ad"  # raw counts in X, layers['lognorm']
LANDMARKS = SHARED_DATA / "l1000_cmappy_fixtures" / "landmark_genes_978.tsv"  # table: pr_gene_symbol column

needs_shared = pytest.mark.skipif(not PBMC3K.exists(), reason="shared datasets not present")


@pytest.fixture(scope="module")
def pbmc3k():
    import anndata as ad

    return ad.read_h5ad(PBMC3K)


def _ingest(adata, out, **options):
    messages: list[str] = []
    ingest_anndata(adata, label_col="cell_type", out=out, source="pbmc3k", options=IngestOptions(**options),
                   messages=messages)
    return Store(out), messages


def _dense_by_cell(store: Store) -> tuple[np.ndarray, np.ndarray]:
    return store.read_rows(0, store.n_cells).toarray(), store.cell_ids()


def _one_line_error(code, stdout, stderr, *needles):
    assert code == 2, (code, stdout, stderr)
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr + stdout, stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@needs_shared
def test_normalize_log1p_and_hvg_fitted_on_train_match_scanpy(pbmc3k, tmp_path):
    import scanpy as sc

    store, messages = _ingest(pbmc3k, tmp_path / "n.zarr", preprocess="normalize_log1p,hvg:300")
    steps = store.provenance["preprocessing"]
    assert [s["recipe"] for s in steps] == ["normalize_log1p", "hvg"]
    assert steps[0]["target_sum"] == 1e4 and steps[1]["n_top_genes"] == 300 and steps[1]["fitted_on"] == "train"
    assert store.provenance["value_kind"] == "log" and store.provenance["input_value_kind"] == "counts"
    assert any(m.startswith("hvg:300: kept 300 of 13714 genes") for m in messages)

    reference = pbmc3k.copy()  # scanpy's own pipeline on every cell, then hvg on the training cells only
    sc.pp.normalize_total(reference, target_sum=1e4)
    sc.pp.log1p(reference)
    train_ids = store.cell_ids()[store.split_indices("train")]
    train = reference[train_ids].copy()
    sc.pp.highly_variable_genes(train, n_top_genes=300, flavor="seurat")
    expected = train.var_names[train.var["highly_variable"]]
    assert list(store.genes()) == list(expected)
    everyone = reference.copy()
    sc.pp.highly_variable_genes(everyone, n_top_genes=300, flavor="seurat")
    assert set(everyone.var_names[everyone.var["highly_variable"]]) != set(expected)  # the test cells were not seen

    x, ids = _dense_by_cell(store)
    np.testing.assert_allclose(x, reference[ids, list(expected)].X.toarray(), rtol=1e-5, atol=1e-6)
    assert not fit_transform_on_train(store).log1p  # already log-scale: the loader does not log again


@needs_shared
def test_gene_list_keeps_landmarks_in_file_order_and_reports_missing(cli, pbmc3k, tmp_path):
    import pandas as pd

    out = tmp_path / "l1000.zarr"
    code, stdout, stderr = cli("ingest", PBMC3K, "--label-col", "cell_type", "--out", out,
                               "--preprocess", f"genes:{LANDMARKS}")
    assert code == 0, stderr
    symbols = pd.read_csv(LANDMARKS, sep="\t")["pr_gene_symbol"].tolist()
    store = Store(out)
    step = store.provenance["preprocessing"][0]
    assert step["column"] == "pr_gene_symbol" and step["requested"] == 978
    assert step["found"] == store.n_genes and step["found"] + step["missing"] == 978 and step["missing"] > 0
    assert list(store.genes()) == [s for s in symbols if s not in set(step["missing_genes"])]
    assert f"kept {step['found']} of 978 listed genes; {step['missing']} missing from the data" in stdout
    assert step["missing_genes"][0] in stdout

    listed = tmp_path / "genes.txt"  # the plain format: one symbol per line
    listed.write_text("CD3E\nMS4A1\nNOT_A_GENE\nLYZ\n")
    plain, _ = _ingest(pbmc3k, tmp_path / "p.zarr", preprocess=f"genes:{listed}")
    assert list(plain.genes()) == ["CD3E", "MS4A1", "LYZ"]
    assert plain.provenance["preprocessing"][0]["missing_genes"] == ["NOT_A_GENE"]


@needs_shared
def test_scbert_tokens_are_capped_log2_bins(pbmc3k, tmp_path):
    store, _ = _ingest(pbmc3k, tmp_path / "t.zarr", preprocess="scbert_tokens")
    step = store.provenance["preprocessing"][0]
    assert step["max_token"] == 5 and step["mask_token"] == 6 and step["n_tokens"] == 7
    assert store.provenance["value_kind"] == "tokens"
    x = store.read_rows(0, store.n_cells)
    counts = pbmc3k[store.cell_ids()].X.tocsr().astype(np.float64)
    scaled = counts.multiply(1e4 / counts.sum(axis=1)).tocsr()
    scaled.data = np.minimum(np.floor(np.log2(1 + scaled.data)), 5)
    scaled.eliminate_zeros()
    assert abs(x - scaled).max() == 0
    assert set(np.unique(x.data)) == {1, 2, 3, 4, 5}  # zeros are not stored; 6 (the mask) never appears
    assert not fit_transform_on_train(store).log1p


@needs_shared
def test_zscore_scaling_is_fitted_on_train_only_and_minmax_stays_default(pbmc3k, tmp_path):
    store, _ = _ingest(pbmc3k, tmp_path / "z.zarr", preprocess=f"genes:{LANDMARKS}")
    counts = store.read_rows(0, store.n_cells).toarray()
    train = np.log1p(counts[store.split_indices("train")].astype(np.float64))
    z = fit_transform_on_train(store, scaling="zscore")
    assert z.log1p and z.scaling == "zscore"
    np.testing.assert_allclose(z.mean, train.mean(axis=0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(z.std, train.std(axis=0), rtol=1e-4, atol=1e-6)
    x, _ = load_split(store, "train", z)
    varied = train.std(axis=0) > 0
    np.testing.assert_allclose(x.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(x.std(axis=0)[varied], 1, rtol=1e-3)

    default = fit_transform_on_train(store)
    assert default.scaling == "minmax" and default.mean is None
    none = fit_transform_on_train(store, scaling="none")
    np.testing.assert_allclose(load_split(store, "val", none)[0], np.log1p(counts[store.split_indices("val")]), rtol=1e-6)
    restored = type(z).from_arrays(z.to_arrays())
    probe = np.log1p(counts[:5]).astype(np.float32)
    np.testing.assert_allclose(restored(np.expm1(probe)), z(np.expm1(probe)), rtol=1e-6)
    with pytest.raises(ConfigError, match="scaling='robust'"):
        fit_transform_on_train(store, scaling="robust")


def test_log_scale_input_is_not_logged_twice(pbmc_adata, tmp_path):
    with pytest.raises(InputError, match="already log-scale.*logged twice"):
        ingest_anndata(pbmc_adata, label_col="bulk_labels", out=tmp_path / "x.zarr", source="pbmc68k", use_raw=True,
                       options=IngestOptions(preprocess="normalize_log1p"))
    with pytest.raises(InputError, match="does not hold raw counts"):  # X is scaled: negative values
        ingest_anndata(pbmc_adata, label_col="bulk_labels", out=tmp_path / "x.zarr", source="pbmc68k",
                       options=IngestOptions(preprocess="scbert_tokens"))
    with pytest.raises(InputError, match="already log-scale"):  # a second log after normalize_log1p
        ingest_anndata(_counts_like(pbmc_adata), label_col="bulk_labels", out=tmp_path / "x.zarr", source="counts",
                       options=IngestOptions(preprocess="normalize_log1p,scbert_tokens"))
    assert not list(tmp_path.iterdir())


def _counts_like(adata):
    """pbmc68k's cells with integer values (rounded expm1 of the log-normalised .raw): a counts matrix."""
    import anndata as ad

    counts = np.rint(np.expm1(adata.raw.X.toarray()))
    return ad.AnnData(X=counts.astype(np.float32), obs=adata.obs[["bulk_labels"]].copy(), var=adata.raw.var.copy())


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--preprocess", "normalise"], ["--preprocess 'normalise'", "unknown recipe", "normalize_log1p"]),
        (["--preprocess", "hvg:lots"], ["--preprocess hvg:lots", "positive number"]),
        (["--raw", "--preprocess", "hvg:5000"], ["--preprocess hvg:5000", "only 765"]),
        (["--raw", "--preprocess", "genes:/no/such/genes.txt"], ["genes.txt", "not found"]),
        (["--raw", "--preprocess", "genes:{nohit}"], ["nohit.txt", "none of the 2 genes"]),
        (["--raw", "--preprocess", "normalize_log1p"], ["--preprocess normalize_log1p", "already log-scale"]),
        (["--raw", "--test-only", "--preprocess", "hvg:100"], ["--preprocess hvg:100", "--test-only"]),
        (["--raw", "--folds", "3", "--preprocess", "hvg:100"], ["--preprocess hvg:100", "--folds"]),
    ],
)
def test_cli_rejects_bad_recipes_with_one_line(cli, pbmc_h5ad, tmp_path, args, needles):
    nohit = tmp_path / "nohit.txt"
    nohit.write_text("NOT_A_GENE\nALSO_NOT\n")
    out = tmp_path / "out.zarr"
    args = [a.replace("{nohit}", str(nohit)) for a in args]
    code, stdout, stderr = cli("ingest", pbmc_h5ad, "--label-col", "bulk_labels", "--out", out, *args)
    _one_line_error(code, stdout, stderr, *needles)
    assert not [p for p in tmp_path.iterdir() if "out.zarr" in p.name]  # no store, no hidden partial folder
