"""Data-parallel shards of the training split: every training row (every resampled copy) exactly once per epoch
across the ranks, with the same number of batches on every rank, so the ranks' "stop together" loses none."""

from __future__ import annotations

import socket
from collections import Counter
from functools import lru_cache

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from omicsweep.datasets import Store, fit_transform_on_train, ingest_anndata, training_batches

WORLD = 2
BATCH, MIN_BATCH = 100, 2
RESAMPLING = ("none", "over", "under")


@pytest.fixture(scope="module")
def seven_chunks(tmp_path_factory):
    """9,500 cells of 8 genes, imbalanced classes: 6,650 training rows in 7 row chunks (ingest puts each split's
    rows together), so whole chunks cannot split evenly over 2 ranks; gene 0 holds the cell's id + 1."""
    import anndata as ad
    import pandas as pd

    rng = np.random.default_rng(8)
    n_cells, n_genes = 9500, 8
    dense = rng.poisson(0.5, size=(n_cells, n_genes)).astype(np.float32)
    dense[:, 0] = np.arange(n_cells) + 1
    labels = rng.choice(["a", "b", "c"], size=n_cells, p=[0.75, 0.2, 0.05])
    adata = ad.AnnData(
        X=sp.csr_matrix(dense),
        obs=pd.DataFrame({"cell_type": labels}, index=[f"c{i}" for i in range(n_cells)]),
        var=pd.DataFrame(index=[f"g{i}" for i in range(n_genes)]),
    )
    out = tmp_path_factory.mktemp("shards") / "s.zarr"
    ingest_anndata(adata, label_col="cell_type", out=out, source="synthetic")
    store = Store(out)
    train = store.split_indices("train")
    assert len(np.unique(train // store.rows_per_chunk)) == 7
    return out


@lru_cache
def _transform(path: str):
    return fit_transform_on_train(Store(path))


def _batches(store: Store, resample: str, rank: int, epoch: int = 1):
    config = {"resample": resample}
    batches = training_batches(store, _transform(str(store.path)), config, batch_size=BATCH, seed=5,
                               min_batch=MIN_BATCH, rank=rank, world_size=WORLD)
    batches.set_epoch(epoch)
    return batches


def _ids(x: torch.Tensor, store: Store) -> list[int]:
    """Cell ids of a dense batch (undo the fitted transform of gene 0)."""
    transform = _transform(str(store.path))
    raw = x[:, 0].numpy() * (transform.maximum[0] - transform.minimum[0]) + transform.minimum[0]
    return (np.rint(np.expm1(raw)).astype(int) - 1).tolist()


def _expected(store: Store, resample: str) -> Counter:
    """The epoch's training rows with their repeat counts (the seeded selection, the same on every rank)."""
    ids = np.array([int(c[1:]) for c in store.cell_ids()])[store.split_indices("train")]
    repeats = _batches(store, resample, 0).epoch_repeats()
    counts = np.ones(len(ids), dtype=np.int64) if repeats is None else np.concatenate(repeats)
    return Counter({int(i): int(n) for i, n in zip(ids, counts) if n > 0})


@pytest.mark.parametrize("resample", RESAMPLING)
def test_ranks_yield_every_training_row_once_in_as_many_batches(seven_chunks, resample):
    store = Store(seven_chunks)
    per_rank = [[(_ids(x, store), len(y)) for x, y in _batches(store, resample, rank)] for rank in range(WORLD)]
    assert len(per_rank[0]) == len(per_rank[1])  # same step count: stopping together drops nothing
    assert all(size >= MIN_BATCH for rank in per_rank for _, size in rank)
    seen = Counter(i for rank in per_rank for ids, _ in rank for i in ids)
    assert seen == _expected(store, resample)


def test_smote_shards_have_as_many_batches_and_every_row(seven_chunks):
    store = Store(seven_chunks)
    shards = [list(_batches(store, "smote", rank)) for rank in range(WORLD)]
    assert len(shards[0]) == len(shards[1])
    total = sum(len(y) for shard in shards for _, y in shard)
    assert total == training_batches(store, _transform(str(store.path)), {"resample": "smote"}, batch_size=BATCH,
                                     seed=5).n_cells


def _lockstep_worker(rank: int, port: int, store_path: str, out: str) -> None:
    """One rank: the real strategy's lockstep over its training batches, in a gloo process group."""
    import torch.distributed as dist

    from omicsweep.benchmark.strategies import Strategy

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        store = Store(store_path)
        strategy = Strategy(rank=rank, world_size=WORLD)
        seen = {r: [i for x, _ in strategy.lockstep(_batches(store, r, rank)) for i in _ids(x, store)]
                for r in RESAMPLING}
        np.savez(f"{out}/rank{rank}.npz", **{r: np.array(ids) for r, ids in seen.items()})
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_stepping_in_lockstep_on_two_processes_loses_no_row(seven_chunks, tmp_path):
    import torch.multiprocessing as mp

    mp.start_processes(_lockstep_worker, args=(_free_port(), str(seven_chunks), str(tmp_path)), nprocs=WORLD,
                       start_method="spawn")
    store = Store(seven_chunks)
    shards = [np.load(tmp_path / f"rank{rank}.npz") for rank in range(WORLD)]
    for resample in RESAMPLING:
        assert Counter(np.concatenate([s[resample] for s in shards]).tolist()) == _expected(store, resample), resample
