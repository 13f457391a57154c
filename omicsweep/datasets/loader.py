"""Stream a store's split as dense float32 batches: block shuffling, fitted transforms, never the whole matrix."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import scipy.sparse as sp
import torch
from torch.utils.data import IterableDataset, get_worker_info

from omicsweep.datasets.store import SPLITS, Store


@dataclass
class ExpressionTransform:
    """Study 000's transform: log1p when the store holds counts, then min-max fitted on the training split."""

    log1p: bool
    minimum: np.ndarray
    maximum: np.ndarray

    def __call__(self, dense: np.ndarray) -> np.ndarray:
        if self.log1p:
            np.log1p(dense, out=dense)
        scale = self.maximum - self.minimum
        scale[scale == 0] = 1.0
        dense -= self.minimum
        dense /= scale
        return dense

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"log1p": np.array(self.log1p), "minimum": self.minimum, "maximum": self.maximum}

    @classmethod
    def from_arrays(cls, arrays) -> "ExpressionTransform":
        return cls(bool(arrays["log1p"]), np.asarray(arrays["minimum"]), np.asarray(arrays["maximum"]))


def _split_rows_by_chunk(store: Store, split: str) -> list[np.ndarray]:
    """For each row chunk, the local row offsets that belong to `split`."""
    rows = store.split_indices(split)
    chunk_of_row = rows // store.rows_per_chunk
    bounds = np.searchsorted(chunk_of_row, np.arange(store.n_chunks + 1))
    return [rows[bounds[c] : bounds[c + 1]] - c * store.rows_per_chunk for c in range(store.n_chunks)]


def fit_transform_on_train(store: Store) -> ExpressionTransform:
    """Per-gene min and max over the training split only, streamed chunk by chunk."""
    log1p = store.provenance.get("value_kind") == "counts"
    lo = np.full(store.n_genes, np.inf, dtype=np.float32)
    hi = np.full(store.n_genes, -np.inf, dtype=np.float32)
    for chunk, local in enumerate(_split_rows_by_chunk(store, "train")):
        if len(local) == 0:
            continue
        start, stop = store.chunk_bounds(chunk)
        block = store.read_rows(start, stop)[local]
        values = block.copy()
        if log1p:
            np.log1p(values.data, out=values.data)
        # a column with fewer stored values than rows has implicit zeros
        col_max = np.asarray(values.max(axis=0).todense()).ravel()
        col_min = np.asarray(values.min(axis=0).todense()).ravel()
        lo = np.minimum(lo, col_min)
        hi = np.maximum(hi, col_max)
    return ExpressionTransform(log1p=log1p, minimum=lo, maximum=hi)


def _row_slice(matrix: sp.csr_matrix, start: int, stop: int) -> sp.csr_matrix:
    """Rows [start, stop) as a CSR view over the same buffers (scipy's slicing copies and re-validates)."""
    lo, hi = matrix.indptr[start], matrix.indptr[stop]
    return sp.csr_matrix(
        (matrix.data[lo:hi], matrix.indices[lo:hi], matrix.indptr[start : stop + 1] - lo),
        shape=(stop - start, matrix.shape[1]), copy=False,
    )


class CellBatches(IterableDataset):
    """Batches of one split of a store: (x [B, genes] float32 tensor, y [B] int64 tensor).

    Shuffling is by block: each epoch permutes the order of row chunks (seeded by seed and epoch), reads
    `buffer_chunks` chunks into a buffer, and permutes rows inside it. Chunks are sharded disjointly across
    distributed ranks and DataLoader workers, so each training cell is seen once per epoch across all of them.
    A background thread decodes the next buffer while the current one is consumed. With output="csr" the
    batches are (scipy CSR, int64 labels) before any transform, for consumers that densify elsewhere.
    """

    def __init__(
        self,
        store: Store,
        split: str,
        *,
        batch_size: int,
        transform: ExpressionTransform | None,
        shuffle: bool,
        seed: int = 0,
        buffer_chunks: int = 8,
        min_batch: int = 1,
        rank: int = 0,
        world_size: int = 1,
        prefetch: bool = True,
        output: str = "dense",
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}")
        if output not in ("dense", "csr") or (output == "dense" and transform is None):
            raise ValueError("output must be 'dense' (with a transform) or 'csr'")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.store = store
        self.split = split
        self.batch_size = int(batch_size)
        self.transform = transform
        self.shuffle = shuffle
        self.seed = int(seed)
        self.buffer_chunks = max(1, int(buffer_chunks))
        self.min_batch = int(min_batch)
        self.rank, self.world_size = int(rank), int(world_size)
        self.prefetch = prefetch
        self.output = output
        self.epoch = 0
        self._local_rows = _split_rows_by_chunk(store, split)
        self._labels = store.labels()
        self.n_cells = int(sum(len(r) for r in self._local_rows))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _chunk_order(self, rng: np.random.Generator) -> np.ndarray:
        order = np.array([c for c, rows in enumerate(self._local_rows) if len(rows)], dtype=np.int64)
        if self.shuffle:
            order = rng.permutation(order)  # same permutation on every rank and worker: shards stay disjoint
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        return order[self.rank * workers + worker :: self.world_size * workers]

    def _read_chunk(self, chunk: int) -> tuple[sp.csr_matrix, np.ndarray]:
        start, stop = self.store.chunk_bounds(chunk)
        local = self._local_rows[chunk]
        block = self.store.read_rows(start, stop)
        if len(local) != stop - start:  # skip the copy when the whole chunk belongs to the split
            block = block[local]
        return block, self._labels[start + local]

    def _read_buffer(self, chunks: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray]:
        parts = [self._read_chunk(c) for c in chunks]
        return sp.vstack([p[0] for p in parts], format="csr"), np.concatenate([p[1] for p in parts])

    def _buffers(self, order: np.ndarray) -> Iterator[tuple[sp.csr_matrix, np.ndarray]]:
        groups = [order[i : i + self.buffer_chunks] for i in range(0, len(order), self.buffer_chunks)]
        if not self.prefetch or len(groups) < 2:
            yield from (self._read_buffer(g) for g in groups)
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="omicsweep-prefetch") as pool:
            pending = pool.submit(self._read_buffer, groups[0])
            for nxt in groups[1:]:
                current, pending = pending.result(), pool.submit(self._read_buffer, nxt)
                yield current
            yield pending.result()

    def _emit(self, matrix: sp.csr_matrix, labels: np.ndarray):
        if self.output == "csr":
            return matrix, labels.astype(np.int64)
        dense = self.transform(matrix.toarray().astype(np.float32, copy=False))
        return torch.from_numpy(dense), torch.from_numpy(labels.astype(np.int64))

    def __iter__(self) -> Iterator:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = self._chunk_order(rng)
        carry_x, carry_y = None, None
        for block_x, block_y in self._buffers(order):
            if carry_y is not None:
                block_x, block_y = sp.vstack([carry_x, block_x], format="csr"), np.concatenate([carry_y, block_y])
            if self.shuffle:
                perm = rng.permutation(len(block_y))
                block_x, block_y = block_x[perm], block_y[perm]
            n_full = len(block_y) // self.batch_size * self.batch_size
            for b in range(0, n_full, self.batch_size):
                yield self._emit(_row_slice(block_x, b, b + self.batch_size), block_y[b : b + self.batch_size])
            carry_x, carry_y = block_x[n_full:], block_y[n_full:]
            if len(carry_y) == 0:
                carry_x, carry_y = None, None
        if carry_y is not None and len(carry_y) >= self.min_batch:
            yield self._emit(carry_x, carry_y)


def load_split(store: Store, split: str, transform: ExpressionTransform) -> tuple[np.ndarray, np.ndarray]:
    """A whole split in memory, in store order (for estimators and evaluation of small splits)."""
    batches = CellBatches(store, split, batch_size=4096, transform=transform, shuffle=False)
    xs, ys = [], []
    for x, y in batches:
        xs.append(x.numpy())
        ys.append(y.numpy())
    if not xs:
        return np.zeros((0, store.n_genes), dtype=np.float32), np.zeros(0, dtype=np.int64)
    return np.concatenate(xs), np.concatenate(ys)
