"""The streaming loader: every training cell once per epoch, seeded block shuffling, train-only transforms."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from omicsweep.datasets import CellBatches, Store, fit_transform_on_train, ingest_anndata
from omicsweep.datasets.store import ROWS_PER_CHUNK


def _synthetic_counts(tmp_path, n_cells=3000, n_genes=50):
    """Enough cells for several row chunks; each row's first value encodes its row index."""
    import anndata as ad
    import pandas as pd

    rng = np.random.default_rng(1)
    dense = rng.poisson(0.5, size=(n_cells, n_genes)).astype(np.float32)
    dense[:, 0] = np.arange(n_cells) + 1  # row id, so yielded rows can be traced back
    labels = rng.choice(["t", "b", "nk", "mono"], size=n_cells)
    adata = ad.AnnData(
        X=sp.csr_matrix(dense),
        obs=pd.DataFrame({"cell_type": labels}, index=[f"c{i}" for i in range(n_cells)]),
        var=pd.DataFrame(index=[f"g{i}" for i in range(n_genes)]),
    )
    ingest_anndata(adata, label_col="cell_type", out=tmp_path / "s.zarr", source="synthetic")
    return Store(tmp_path / "s.zarr"), dense


def _row_ids(batches, transform) -> list[int]:
    ids = []
    for x, _ in batches:
        raw = x[:, 0].numpy() * (transform.maximum[0] - transform.minimum[0]) + transform.minimum[0]
        ids.extend(np.rint(np.expm1(raw)).astype(int) - 1)
    return ids


def test_every_training_cell_once_per_epoch_with_seeded_shuffle(tmp_path):
    store, _ = _synthetic_counts(tmp_path)
    assert store.n_chunks >= 3 and store.rows_per_chunk == ROWS_PER_CHUNK
    transform = fit_transform_on_train(store)
    batches = CellBatches(store, "train", batch_size=64, transform=transform, shuffle=True, seed=7, buffer_chunks=2)
    epoch1 = _row_ids(batches, transform)
    original_ids = np.array([int(c[1:]) for c in store.cell_ids()])  # ingest groups rows by split
    assert sorted(epoch1) == sorted(original_ids[store.split_indices("train")].tolist())
    again = _row_ids(batches, transform)
    batches.set_epoch(1)
    epoch2 = _row_ids(batches, transform)
    assert epoch1 == again  # same seed and epoch: same order
    assert epoch1 != epoch2 and sorted(epoch1) == sorted(epoch2)  # new epoch: new order, same cells
    assert epoch1 != sorted(epoch1)  # actually shuffled


def test_labels_travel_with_their_rows(tmp_path):
    store, _ = _synthetic_counts(tmp_path)
    transform = fit_transform_on_train(store)
    labels = dict(zip((int(c[1:]) for c in store.cell_ids()), store.labels()))
    for x, y in CellBatches(store, "val", batch_size=100, transform=transform, shuffle=True, seed=0):
        raw = x[:, 0].numpy() * (transform.maximum[0] - transform.minimum[0]) + transform.minimum[0]
        rows = np.rint(np.expm1(raw)).astype(int) - 1
        assert [labels[r] for r in rows] == y.numpy().tolist()


def test_minmax_is_fitted_on_training_split_only(tmp_path):
    store, dense = _synthetic_counts(tmp_path)
    transform = fit_transform_on_train(store)
    assert transform.log1p  # counts are logged
    train = np.array([int(c[1:]) for c in store.cell_ids()])[store.split_indices("train")]
    np.testing.assert_allclose(transform.maximum, np.log1p(dense[train]).max(axis=0), rtol=1e-6)
    np.testing.assert_allclose(transform.minimum, np.log1p(dense[train]).min(axis=0), rtol=1e-6)
    x = np.concatenate([b[0].numpy() for b in CellBatches(store, "train", batch_size=512, transform=transform, shuffle=False)])
    assert x.min() >= 0 and x.max() <= 1 + 1e-6 and x.dtype == np.float32


def test_pbmc68k_is_log_normalised_not_logged_again(pbmc_store):
    store = Store(pbmc_store)
    transform = fit_transform_on_train(store)
    assert not transform.log1p


def test_ranks_and_workers_get_disjoint_shards_covering_the_split(tmp_path):
    store, _ = _synthetic_counts(tmp_path, n_cells=5000)
    transform = fit_transform_on_train(store)
    seen = []
    for rank in range(2):
        batches = CellBatches(store, "train", batch_size=50, transform=transform, shuffle=True, seed=3, rank=rank,
                              world_size=2, buffer_chunks=1)
        seen.append(_row_ids(batches, transform))
    assert seen[0] and seen[1] and not set(seen[0]) & set(seen[1])
    original_ids = np.array([int(c[1:]) for c in store.cell_ids()])
    assert sorted(seen[0] + seen[1]) == sorted(original_ids[store.split_indices("train")].tolist())


def test_csr_output_without_prefetch_matches_dense(tmp_path):
    store, _ = _synthetic_counts(tmp_path)
    transform = fit_transform_on_train(store)
    common = dict(batch_size=128, shuffle=True, seed=5)
    dense = list(CellBatches(store, "train", transform=transform, **common))
    sparse = list(CellBatches(store, "train", transform=None, output="csr", prefetch=False, **common))
    assert len(dense) == len(sparse)
    for (x, y), (m, labels) in zip(dense, sparse):
        assert (y.numpy() == labels).all()
        np.testing.assert_allclose(x.numpy(), transform(m.toarray().astype(np.float32)), rtol=1e-6)


def test_kept_batches_survive_the_reuse_of_buffer_memory(tmp_path):
    """Buffers reuse their scratch arrays (two, alternating with prefetch): batches already handed out stay
    intact, and a prefetching epoch equals the same epoch read one buffer at a time, every cell once."""
    store, dense = _synthetic_counts(tmp_path)
    common = dict(batch_size=100, shuffle=True, seed=3, buffer_chunks=1, block_rows=64, transform=None, output="csr")
    kept = [(m.copy(), y) for m, y in CellBatches(store, "train", prefetch=False, **common)]
    ahead = list(CellBatches(store, "train", prefetch=True, **common))  # not copied: must not change afterwards
    assert len(ahead) == len(kept) > 10  # batches from every one of the training split's buffers
    for (m, y), (expected, labels) in zip(ahead, kept):
        assert (y == labels).all() and (m != expected).nnz == 0
    ids = np.concatenate([m[:, 0].toarray().ravel() for m, _ in ahead]).astype(int) - 1
    original = np.array([int(c[1:]) for c in store.cell_ids()])[store.split_indices("train")]
    assert sorted(ids.tolist()) == sorted(original.tolist())
