"""Store layouts (datasets/store_layout.py): the current one and the first writer's read alike, shuffled rows keep
their labels and splits, label mixing on a label-sorted store, and CSR batches densified on a torch device."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
from conftest import assert_one_line_error

from omicsweep.datasets import CellBatches, Store, fit_transform_on_train, ingest_anndata
from omicsweep.datasets.store import write_store
from omicsweep.datasets.store_layout import (
    DEFAULT_LAYOUT,
    LEGACY_LAYOUT,
    ZARRS_PIPELINE,
    StoreLayout,
    configure_codec_pipeline,
    parse_layout,
)
from omicsweep.errors import ConfigError

N_CELLS, N_GENES = 3000, 60


def _matrix(n_cells=N_CELLS, n_genes=N_GENES, seed=0):
    rng = np.random.default_rng(seed)
    dense = rng.poisson(0.4, size=(n_cells, n_genes)).astype(np.float32)
    dense[:, 0] = np.arange(n_cells) + 1  # row id
    return sp.csr_matrix(dense)


def _write(path, layout, matrix=None, labels=None):
    matrix = _matrix() if matrix is None else matrix
    n = matrix.shape[0]
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 3, n) if labels is None else labels
    splits = rng.choice(3, n, p=[0.7, 0.15, 0.15])
    fingerprint = write_store(
        path, matrix=matrix, genes=np.array([f"g{i}" for i in range(matrix.shape[1])]), codes=codes,
        classes=["a", "b", "c"], split_codes=splits, cell_ids=np.array([f"c{i}" for i in range(n)]),
        provenance={"source": "test", "value_kind": "counts"}, layout=layout,
    )
    return fingerprint, codes, splits


def test_first_writer_layout_reads_like_the_current_one(tmp_path):
    """A store with the first writer's parameters (one unsharded zstd chunk of ~1,024 rows, int32 indices, no
    recorded layout) reads the same rows, batches and fingerprint as one in the current layout."""
    import zarr

    old_fp, _, _ = _write(tmp_path / "old.zarr", LEGACY_LAYOUT)
    new_fp, _, _ = _write(tmp_path / "new.zarr", DEFAULT_LAYOUT)
    old_x, new_x = zarr.open_group(str(tmp_path / "old.zarr"))["X"], zarr.open_group(str(tmp_path / "new.zarr"))["X"]
    assert old_x["data"].shards is None and old_x["indices"].dtype == np.int32
    assert "zstd" in str(old_x["data"].compressors[0]).lower()
    assert new_x["data"].shards is not None and new_x["data"].chunks[0] < old_x["data"].chunks[0]
    old, new = Store(tmp_path / "old.zarr"), Store(tmp_path / "new.zarr")
    assert old.layout == {} and old.meta["format_version"] == 1 and "layout" not in old.meta
    assert new.layout["compressor"] == DEFAULT_LAYOUT.compressor and new.meta["format_version"] == 2
    assert old_fp == new_fp == old.fingerprint == new.fingerprint
    for start, stop in [(0, 1), (5, 700), (1000, 2049), (2990, 3000), (0, 3000)]:
        a, b = old.read_rows(start, stop), new.read_rows(start, stop)
        assert (a != b).nnz == 0 and a.shape == b.shape
    common = dict(batch_size=100, transform=None, output="csr", shuffle=True, seed=4, block_rows=128)
    for (x_old, y_old), (x_new, y_new) in zip(CellBatches(old, "train", **common), CellBatches(new, "train", **common),
                                              strict=True):
        assert (x_old != x_new).nnz == 0 and (y_old == y_new).all()


def test_current_layout_sizes_chunks_by_the_stores_own_nonzeros(tmp_path):
    import zarr

    _write(tmp_path / "s.zarr", DEFAULT_LAYOUT)
    store = Store(tmp_path / "s.zarr")
    nnz_per_row = -(-int(store.indptr[1024]) // 1024)  # the first block written: 1,024 rows of the train split
    data = zarr.open_group(str(tmp_path / "s.zarr"))["X"]["data"]
    assert store.layout["nnz_per_row"] == nnz_per_row
    assert data.chunks == (DEFAULT_LAYOUT.chunk_rows * nnz_per_row,)
    assert data.shards == (DEFAULT_LAYOUT.shard_rows * nnz_per_row,)
    assert store.x_chunk_rows == DEFAULT_LAYOUT.chunk_rows


def test_uint16_indices_read_the_same_values(tmp_path):
    import zarr

    _write(tmp_path / "i32.zarr", DEFAULT_LAYOUT)
    _write(tmp_path / "u16.zarr", parse_layout("uint16,zstd"))
    assert zarr.open_group(str(tmp_path / "u16.zarr"))["X"]["indices"].dtype == np.uint16
    a, b = Store(tmp_path / "i32.zarr").read_rows(0, N_CELLS), Store(tmp_path / "u16.zarr").read_rows(0, N_CELLS)
    assert (a != b).nnz == 0


def test_shuffled_layout_keeps_each_rows_label_split_and_id(tmp_path):
    matrix = _matrix()
    _, codes, splits = _write(tmp_path / "split.zarr", DEFAULT_LAYOUT, matrix)
    _write(tmp_path / "shuf.zarr", parse_layout("shuffled", seed=3), matrix)
    _write(tmp_path / "shuf2.zarr", parse_layout("shuffled", seed=3), matrix)
    store, plain = Store(tmp_path / "shuf.zarr"), Store(tmp_path / "split.zarr")
    assert store.layout["row_order"] == "shuffled" and store.layout["seed"] == 3
    rows = store.read_rows(0, N_CELLS).toarray()
    source = np.rint(rows[:, 0]).astype(int) - 1  # the input row each stored row came from
    assert (np.array([int(c[1:]) for c in store.cell_ids()]) == source).all()
    assert (store.labels() == codes[source]).all()
    for i, split in enumerate(("train", "val", "test")):
        assert (splits[source[store.split_indices(split)]] == i).all()
        assert sorted(source[store.split_indices(split)]) == sorted(np.flatnonzero(splits == i))
    plain_source = np.rint(plain.read_rows(0, N_CELLS).toarray()[:, 0]).astype(int) - 1
    assert not (source == plain_source).all()  # permuted, not input order
    assert (Store(tmp_path / "shuf2.zarr").cell_ids() == store.cell_ids()).all()  # seeded


def test_layout_words_are_checked():
    assert parse_layout("shuffled,zstd").compressor == "zstd"
    with pytest.raises(ConfigError, match="--layout 'shufled': unknown word 'shufled'"):
        parse_layout("shufled")
    with pytest.raises(ConfigError, match="multiple of chunk rows"):
        StoreLayout(chunk_rows=48).check()


def test_zarrs_is_the_codec_pipeline():
    import zarr

    assert configure_codec_pipeline() == ZARRS_PIPELINE == zarr.config.get("codec_pipeline.path")


def _label_sorted_store(tmp_path, n_cells=40000, n_types=12):
    """An ingested store whose cells come sorted by type (as atlases grouped by sample or type do); the
    stratified split keeps input order within each split, so every split's rows are runs of one type; the
    training split spans several shuffle buffers."""
    import anndata as ad
    import pandas as pd

    rng = np.random.default_rng(0)
    weights = np.geomspace(1.0, 0.1, n_types)
    labels = np.sort(rng.choice(n_types, n_cells, p=weights / weights.sum()))
    adata = ad.AnnData(
        X=sp.random(n_cells, 20, density=0.1, random_state=0, format="csr", dtype=np.float32),
        obs=pd.DataFrame({"cell_type": [f"t{t:02d}" for t in labels]}, index=[f"c{i}" for i in range(n_cells)]),
        var=pd.DataFrame(index=[f"g{i}" for i in range(20)]),
    )
    ingest_anndata(adata, label_col="cell_type", out=tmp_path / "sorted.zarr", source="sorted")
    return Store(tmp_path / "sorted.zarr")


def _entropy(labels, n):
    p = np.bincount(labels, minlength=n) / len(labels)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def test_batches_of_a_label_sorted_store_are_mixed_like_random_ones(tmp_path):
    store = _label_sorted_store(tmp_path)
    n, train = len(store.classes), store.labels()[store.split_indices("train")]
    assert (np.diff(train) >= 0).all()  # sorted on disk
    batches = CellBatches(store, "train", batch_size=256, transform=None, output="csr", shuffle=True, seed=0)
    mixed = np.mean([_entropy(y, n) for _, y in batches])
    rng = np.random.default_rng(0)
    random = np.mean([_entropy(rng.choice(train, 256, replace=False), n) for _ in range(200)])
    assert mixed >= 0.9 * random, (mixed, random)


@pytest.mark.parametrize("scaling", ["minmax", "zscore"])
def test_csr_batches_densified_on_a_device_match_the_host_path(tmp_path, scaling):
    """device='cpu' runs the GPU path's code (CSR tensors to the device, densified and scaled there)."""
    _write(tmp_path / "s.zarr", DEFAULT_LAYOUT)
    store = Store(tmp_path / "s.zarr")
    transform = fit_transform_on_train(store, scaling)
    common = dict(batch_size=128, transform=transform, shuffle=True, seed=2)
    host = list(CellBatches(store, "train", **common))
    device = list(CellBatches(store, "train", device="cpu", **common))
    assert len(host) == len(device) > 3
    for (x, y), (xd, yd) in zip(host, device):
        assert xd.device.type == "cpu" and xd.dtype == x.dtype and (y == yd).all()
        np.testing.assert_allclose(xd.numpy(), x.numpy(), rtol=1e-6, atol=1e-6)


def test_layout_is_recorded_as_plain_metadata(tmp_path):
    _write(tmp_path / "s.zarr", parse_layout("shuffled,lz4", seed=2))
    meta = Store(tmp_path / "s.zarr").layout
    assert json.loads(json.dumps(meta)) == meta and meta["version"] == 2 and meta["index_dtype"] == "int32"


def test_ingest_layout_option(cli, tmp_path):
    import anndata as ad
    import pandas as pd

    n = 90
    adata = ad.AnnData(X=_matrix(n, 12), obs=pd.DataFrame({"t": np.repeat(["a", "b", "c"], n // 3)},
                                                          index=[f"c{i}" for i in range(n)]),
                       var=pd.DataFrame(index=[f"g{i}" for i in range(12)]))
    adata.write_h5ad(tmp_path / "in.h5ad")
    code, _, stderr = cli("ingest", tmp_path / "in.h5ad", "--label-col", "t", "--out", tmp_path / "s.zarr",
                          "--layout", "shuffled,zstd", "--seed", "5")
    assert code == 0, stderr
    assert Store(tmp_path / "s.zarr").layout["row_order"] == "shuffled"
    assert Store(tmp_path / "s.zarr").layout["seed"] == 5
    assert_one_line_error(*cli("ingest", tmp_path / "in.h5ad", "--label-col", "t", "--out", tmp_path / "x.zarr",
                               "--layout", "sorted"), "--layout 'sorted'", "unknown word")
    assert not (tmp_path / "x.zarr").exists()
    code, stdout, stderr = cli("datasets", "synth", "--out", tmp_path / "syn.zarr", "--cells", 300, "--genes", 250,
                               "--nnz", 20, "--label-sorted", "--layout", "zstd")
    assert code == 0, stderr
    syn = Store(tmp_path / "syn.zarr")
    assert syn.layout["compressor"] == "zstd" and (np.diff(syn.labels()[syn.split_indices("train")]) >= 0).all()


def test_row_blocks_read_at_once_equal_row_reads(tmp_path):
    _write(tmp_path / "s.zarr", DEFAULT_LAYOUT)
    store = Store(tmp_path / "s.zarr")
    bounds = [(2048, 2112), (0, 64), (64, 65), (2990, 3000), (700, 700)]
    for (start, stop), block in zip(bounds, store.read_row_blocks(bounds), strict=True):
        assert block.shape == (stop - start, N_GENES) and (block != store.read_rows(start, stop)).nnz == 0


@pytest.mark.parametrize("scaling", ["minmax", "zscore", "none"])
def test_host_densifier_is_bitwise_the_transform_of_the_dense_matrix(tmp_path, scaling):
    from omicsweep.datasets.batch_gather import HostDensifier

    _write(tmp_path / "s.zarr", DEFAULT_LAYOUT)
    store = Store(tmp_path / "s.zarr")
    transform = fit_transform_on_train(store, scaling)
    rows = store.read_rows(0, 500)
    assert np.array_equal(HostDensifier(transform)(rows), transform(rows.toarray().astype(np.float32)))
