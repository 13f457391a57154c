"""Stream a store's split as dense float32 batches: block shuffling, fitted transforms, never the whole matrix."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import scipy.sparse as sp
import torch
from torch.utils.data import IterableDataset, get_worker_info

from omicsweep.datasets.store import SPLITS, Store
from omicsweep.errors import ConfigError

SCALINGS = ("minmax", "zscore", "none")  # trial config key `scaling`; minmax is study 000's


@dataclass
class ExpressionTransform:
    """log1p when the store holds counts, then a per-gene scaling fitted on the training split.

    scaling: 'minmax' (study 000: (x - min) / (max - min)), 'zscore' ((x - mean) / std) or 'none'.
    Genes that are constant on the training split are only shifted (their range or std counts as 1).
    """

    log1p: bool
    minimum: np.ndarray
    maximum: np.ndarray
    scaling: str = "minmax"
    mean: np.ndarray | None = None
    std: np.ndarray | None = None

    def __call__(self, dense: np.ndarray) -> np.ndarray:
        if self.log1p:
            np.log1p(dense, out=dense)
        if self.scaling == "minmax":
            shift, scale = self.minimum, self.maximum - self.minimum
        elif self.scaling == "zscore":
            shift, scale = self.mean, self.std.copy()
        else:
            return dense
        scale[scale == 0] = 1.0
        dense -= shift
        dense /= scale
        return dense

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {"log1p": np.array(self.log1p), "minimum": self.minimum, "maximum": self.maximum,
                  "scaling": np.array(self.scaling)}
        if self.mean is not None:
            arrays.update(mean=self.mean, std=self.std)
        return arrays

    @classmethod
    def from_arrays(cls, arrays) -> "ExpressionTransform":
        keys = set(arrays.keys())
        return cls(
            bool(arrays["log1p"]), np.asarray(arrays["minimum"]), np.asarray(arrays["maximum"]),
            scaling=str(arrays["scaling"]) if "scaling" in keys else "minmax",  # checkpoints before `scaling`
            mean=np.asarray(arrays["mean"]) if "mean" in keys else None,
            std=np.asarray(arrays["std"]) if "std" in keys else None,
        )


def _split_rows_by_chunk(store: Store, split: str) -> list[np.ndarray]:
    """For each row chunk, the local row offsets that belong to `split`."""
    rows = store.split_indices(split)
    chunk_of_row = rows // store.rows_per_chunk
    bounds = np.searchsorted(chunk_of_row, np.arange(store.n_chunks + 1))
    return [rows[bounds[c] : bounds[c + 1]] - c * store.rows_per_chunk for c in range(store.n_chunks)]


def check_scaling(scaling: str | None) -> str:
    """The trial config's `scaling` (absent or null: minmax), or a ConfigError naming the allowed values."""
    value = "minmax" if scaling is None else str(scaling).lower()
    if value not in SCALINGS:
        raise ConfigError(f"config scaling={scaling!r} is not supported; use one of {', '.join(SCALINGS)}")
    return value


def fit_transform_on_train(store: Store, scaling: str | None = "minmax") -> ExpressionTransform:
    """Per-gene statistics over the training split only (of the store's fold, if any), streamed chunk by chunk.

    Always min and max; with scaling='zscore' also mean and (population) std, accumulated in float64.
    """
    scaling = check_scaling(scaling)
    log1p = store.provenance.get("value_kind") == "counts"
    lo = np.full(store.n_genes, np.inf, dtype=np.float32)
    hi = np.full(store.n_genes, -np.inf, dtype=np.float32)
    total = np.zeros(store.n_genes, dtype=np.float64)
    squares = np.zeros(store.n_genes, dtype=np.float64)
    n_rows = 0
    for chunk, local in enumerate(_split_rows_by_chunk(store, "train")):
        if len(local) == 0:
            continue
        start, stop = store.chunk_bounds(chunk)
        values = store.read_rows(start, stop)[local]  # fancy row indexing copies: safe to modify in place
        if log1p:
            np.log1p(values.data, out=values.data)
        # a column with fewer stored values than rows has implicit zeros
        lo = np.minimum(lo, np.asarray(values.min(axis=0).todense()).ravel())
        hi = np.maximum(hi, np.asarray(values.max(axis=0).todense()).ravel())
        if scaling == "zscore":
            data = values.data.astype(np.float64)
            total += np.bincount(values.indices, weights=data, minlength=store.n_genes)
            squares += np.bincount(values.indices, weights=data * data, minlength=store.n_genes)
        n_rows += len(local)
    mean = std = None
    if scaling == "zscore":
        mean64 = total / max(n_rows, 1)
        mean = mean64.astype(np.float32)
        std = np.sqrt(np.maximum(squares / max(n_rows, 1) - mean64 * mean64, 0.0)).astype(np.float32)
    return ExpressionTransform(log1p=log1p, minimum=lo, maximum=hi, scaling=scaling, mean=mean, std=std)


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

    def _read_buffer(self, chunks: np.ndarray, index: int) -> tuple[sp.csr_matrix, np.ndarray]:
        """Decode, stack and (when shuffling) permute one buffer; runs in the prefetch thread."""
        parts = [self._read_chunk(c) for c in chunks]
        x, y = sp.vstack([p[0] for p in parts], format="csr"), np.concatenate([p[1] for p in parts])
        if self.shuffle:
            perm = np.random.default_rng([self.seed, self.epoch, index]).permutation(len(y))
            x, y = x[perm], y[perm]
        return x, y

    def _buffers(self, order: np.ndarray) -> Iterator[tuple[sp.csr_matrix, np.ndarray]]:
        groups = [order[i : i + self.buffer_chunks] for i in range(0, len(order), self.buffer_chunks)]
        if not self.prefetch or len(groups) < 2:
            yield from (self._read_buffer(g, i) for i, g in enumerate(groups))
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="omicsweep-prefetch") as pool:
            pending = pool.submit(self._read_buffer, groups[0], 0)
            for index, nxt in enumerate(groups[1:], start=1):
                current, pending = pending.result(), pool.submit(self._read_buffer, nxt, index)
                yield current
            yield pending.result()

    def _emit(self, matrix: sp.csr_matrix, labels: np.ndarray):
        if self.output == "csr":
            return matrix, labels.astype(np.int64)
        dense = self.transform(matrix.toarray().astype(np.float32, copy=False))
        return torch.from_numpy(dense), torch.from_numpy(labels.astype(np.int64))

    def __iter__(self) -> Iterator:
        order = self._chunk_order(np.random.default_rng([self.seed, self.epoch]))
        size = self.batch_size
        carry_x, carry_y = None, None  # fewer than batch_size rows left over from the previous buffer
        for block_x, block_y in self._buffers(order):
            start = 0
            if carry_y is not None:
                need = size - len(carry_y)
                if len(block_y) < need:
                    carry_x, carry_y = sp.vstack([carry_x, block_x], format="csr"), np.concatenate([carry_y, block_y])
                    continue
                head = sp.vstack([carry_x, _row_slice(block_x, 0, need)], format="csr")
                yield self._emit(head, np.concatenate([carry_y, block_y[:need]]))
                start, carry_x, carry_y = need, None, None
            stop = start + (len(block_y) - start) // size * size
            for b in range(start, stop, size):
                yield self._emit(_row_slice(block_x, b, b + size), block_y[b : b + size])
            if stop < len(block_y):
                carry_x, carry_y = _row_slice(block_x, stop, len(block_y)), block_y[stop:]
        if carry_y is not None and len(carry_y) >= self.min_batch:
            yield self._emit(carry_x, carry_y)


def load_split(
    store: Store, split: str, transform: ExpressionTransform, *, genes=None, classes: list[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A whole split in memory, in store order (for estimators and evaluation of small splits).

    genes (and classes): read the store as aligned to another store's genes and classes (`align_to_genes`), e.g.
    to score a model trained on store A on an external test store B.
    """
    if genes is not None:
        from omicsweep.datasets.align import align_to_genes

        store = align_to_genes(store, genes, classes=classes)
    batches = CellBatches(store, split, batch_size=4096, transform=transform, shuffle=False)
    xs, ys = [], []
    for x, y in batches:
        xs.append(x.numpy())
        ys.append(y.numpy())
    if not xs:
        return np.zeros((0, store.n_genes), dtype=np.float32), np.zeros(0, dtype=np.int64)
    return np.concatenate(xs), np.concatenate(ys)
