"""Ingest to zarr: AnnData layout, splits, fingerprint, provenance, atomic writes."""

from __future__ import annotations

import numpy as np
import pytest

from omicsweep.datasets import Store


def test_ingest_cli_writes_an_anndata_zarr_store(cli, pbmc_h5ad, pbmc_adata, tmp_path):
    import anndata as ad
    import scanpy as sc
    import zarr

    out = tmp_path / "pbmc.zarr"
    code, stdout, stderr = cli("ingest", pbmc_h5ad, "--label-col", "bulk_labels", "--raw", "--out", out)
    assert code == 0, stderr
    assert "700 cells x 765 genes" in stdout

    # zarr format 3, CSR in row chunks, compressed (with the layout's compressor: lz4 since format 2, zstd before)
    root = zarr.open_group(str(out), mode="r")
    assert root.metadata.zarr_format == 3
    assert root["X"].attrs["encoding-type"] == "csr_matrix"
    compressor = Store(out).layout["compressor"]
    assert root["X"]["data"].compressors and compressor in str(root["X"]["data"].compressors[0]).lower()

    # anndata and scanpy open it, values equal the log-normalised .raw
    adata = ad.read_zarr(out)
    assert adata.shape == (700, 765)
    assert list(adata.obs["split"].cat.codes) == sorted(adata.obs["split"].cat.codes)  # rows grouped by split
    source = pbmc_adata[adata.obs_names]  # same cells, matched by id
    np.testing.assert_allclose(adata.X.toarray(), source.raw.X.toarray(), rtol=1e-6)
    assert list(adata.var_names) == list(pbmc_adata.raw.var_names)
    assert (adata.obs["label"].astype(str).to_numpy() == source.obs["bulk_labels"].astype(str).to_numpy()).all()
    sc.pp.pca(adata, n_comps=5)
    assert adata.obsm["X_pca"].shape == (700, 5)

    store = Store(out)
    prov = store.provenance
    assert prov["source"] == str(pbmc_h5ad) and prov["label_column"] == "bulk_labels" and prov["matrix"] == "raw.X"
    assert prov["value_kind"] == "log"
    assert store.fingerprint.startswith("sha256:")


def test_split_is_stratified_seeded_and_disjoint(pbmc_store):
    store = Store(pbmc_store)
    parts = {s: store.split_indices(s) for s in ("train", "val", "test")}
    all_rows = np.concatenate(list(parts.values()))
    assert len(all_rows) == len(set(all_rows)) == store.n_cells
    labels = store.labels()
    overall = np.bincount(labels) / len(labels)
    for split, rows in parts.items():
        share = np.bincount(labels[rows], minlength=len(overall)) / len(rows)
        assert np.abs(share - overall).max() < 0.05, split
    assert len(parts["train"]) == pytest.approx(0.7 * store.n_cells, abs=len(store.classes))


def test_fingerprint_depends_on_content_and_split_seed(pbmc_adata, tmp_path):
    from omicsweep.datasets import ingest_anndata

    kwargs = dict(label_col="bulk_labels", source="test", use_raw=True)
    a = ingest_anndata(pbmc_adata, out=tmp_path / "a.zarr", seed=0, **kwargs)
    b = ingest_anndata(pbmc_adata, out=tmp_path / "b.zarr", seed=0, **kwargs)
    c = ingest_anndata(pbmc_adata, out=tmp_path / "c.zarr", seed=1, **kwargs)
    assert a == b != c
    assert Store(tmp_path / "a.zarr").fingerprint == a


def test_counts_are_detected_and_store_is_written_atomically(tmp_path):
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    from omicsweep.datasets import ingest_anndata
    from omicsweep.errors import InputError

    rng = np.random.default_rng(0)
    counts = sp.random(60, 30, density=0.3, random_state=0, data_rvs=lambda n: rng.integers(1, 20, n)).tocsr()
    obs = pd.DataFrame({"cell_type": np.repeat(["a", "b", "c"], 20)}, index=[f"c{i}" for i in range(60)])
    adata = ad.AnnData(X=counts.astype(np.float32), obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(30)]))
    ingest_anndata(adata, label_col="cell_type", out=tmp_path / "ok.zarr", source="synthetic")
    assert Store(tmp_path / "ok.zarr").provenance["value_kind"] == "counts"

    bad = adata.copy()
    bad.X = bad.X.toarray()
    bad.X[3, 4] = np.nan
    with pytest.raises(InputError, match="NaN"):
        ingest_anndata(bad, label_col="cell_type", out=tmp_path / "bad.zarr", source="synthetic")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.zarr"]  # no partial store, no hidden temp folder
