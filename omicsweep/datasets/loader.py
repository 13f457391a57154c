"""Stream a store's split as dense float32 batches: block shuffling, fitted transforms, never the whole matrix."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import scipy.sparse as sp
import torch
from torch.utils.data import IterableDataset, get_worker_info

from omicsweep.datasets.resample import (
    STREAMED_RESAMPLES,
    repeat_counts,
    resample_option,
    resample_rng,
    resample_target,
    smote_resample,
)
from omicsweep.datasets.batch_gather import (
    DenseBuffers,
    DeviceDensifier,
    GatherBuffer,
    HostDensifier,
    ScratchArrays,
    block_rows_of_split,
)
from omicsweep.datasets.store import SPLITS, Store
from omicsweep.datasets.transform import ExpressionTransform
from omicsweep.errors import ConfigError

DECODE_THREADS = 2  # blocks of a buffer decoded concurrently (zarrs and numpy release the GIL); measured default


def default_block_rows(store) -> int:
    """Rows per shuffled block: four stored chunks where the store records small chunks inside shards, else the
    store's row chunk, as a store of the first layout decodes a whole chunk for any of its rows. Four, measured on
    the label-sorted 100k benchmark store (buffers of 8 row chunks): 128-row blocks take 1.3x less CPU per cell
    than 64-row ones (a block's reads decode its two end chunks' rows of its neighbours too) and mix batches to
    92-94% of random label entropy (64 rows: 98%; the goal is 90%)."""
    chunk = getattr(store, "x_chunk_rows", None)
    if not chunk or chunk >= store.rows_per_chunk:
        return int(store.rows_per_chunk)
    return int(min(store.rows_per_chunk, 4 * chunk))


def rank_slice(n_rows: int, rank: int, world_size: int) -> slice:
    """Rank `rank`'s contiguous part of an epoch's `n_rows`: sizes differ by at most one row across ranks."""
    return slice(n_rows * rank // world_size, n_rows * (rank + 1) // world_size)


def steps_per_epoch(n_rows: int, world_size: int, *, batch_size: int, min_batch: int) -> int:
    """Batches every rank yields in an epoch of `n_rows` split by `rank_slice`, the same number on every rank,
    so ranks that step together (a collective per step) run out together and no row goes untrained.

    Every batch but the last is full; the last takes all of the rank's remaining rows: fewer than batch_size + 1,
    or when that remainder would be smaller than min_batch, it joins the previous batch (up to batch_size +
    min_batch rows) instead of being dropped. 0 when a rank's shard is smaller than min_batch.
    """
    fewest = n_rows // world_size
    full, rest = divmod(fewest, batch_size)
    return full + 1 if rest >= max(1, min_batch) else full if full else 0


def _batch_sizes(n_rank: int, steps: int, batch_size: int) -> list[int]:
    """The batch sizes of a rank's `n_rank` rows in `steps` batches (see `steps_per_epoch`)."""
    if steps == 0:
        return []
    return [batch_size] * (steps - 1) + [n_rank - (steps - 1) * batch_size]


class CellBatches(IterableDataset):
    """Batches of one split of a store: (x [B, genes] float32 tensor, y [B] int64 tensor).

    Shuffling is by block: each epoch permutes the order of blocks of `block_rows` stored rows (seeded by seed and
    epoch; default `default_block_rows`), reads `buffer_chunks` row chunks' worth of blocks into a buffer, and
    permutes rows inside it; small blocks mix the labels of a store sorted by label or sample. A background thread
    decodes the next buffer (its blocks in `threads` threads) while the current one is consumed, and each batch is
    gathered from the buffer into arrays of its own. With output="csr" the batches are (scipy CSR, int64 labels)
    before any transform, for consumers that densify elsewhere. With `featurise` (a model's featuriser, see
    omicsweep.models.featurise) they are (featurise(csr, store genes, transform): dict of tensors, y). With
    `device` (dense output) the CSR batch goes to that torch device and is densified and transformed there
    (`batch_gather.DeviceDensifier`); the tensors are on the device.

    Data-parallel ranks (rank, world_size): the epoch is one sequence of rows, the blocks in their seeded order
    (the same on every rank), and rank r takes its contiguous `rank_slice` of it: whole blocks in the middle, part
    of the block it shares with a neighbouring rank at each end (cut at seeded random rows). So every training row
    is seen exactly once per epoch across the ranks, each rank decodes about 1/world_size of the blocks, and every
    rank yields the same number of batches (`steps_per_epoch`): ranks that step together (DDP, DeepSpeed) run out
    together and none of their rows goes untrained. DataLoader workers of one rank split its blocks among them.

    resample ('over' or 'under', training split only; see `omicsweep.datasets.resample`): each epoch draws a
    seeded repeat count per training row (the same on every rank and worker) so that the epoch's classes are
    balanced; a row's copies are rows of the epoch's sequence like any other (each copy trained once across the
    ranks), and the buffer is gathered batch-sized piece by piece, so memory stays that of the buffer's distinct
    rows however large the repeat counts. resample_target: cells per class per epoch instead of the largest (over)
    or smallest (under) class.
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
        resample: str = "none",
        resample_target: int | None = None,
        featurise=None,
        block_rows: int | None = None,
        threads: int = DECODE_THREADS,
        device: str | torch.device | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}")
        if resample not in STREAMED_RESAMPLES:
            raise ValueError(f"CellBatches resamples {' or '.join(STREAMED_RESAMPLES[1:])}, not {resample!r} "
                             "(smote needs the split in memory: omicsweep.datasets.resample.smote_resample)")
        if resample != "none" and split != "train":
            raise ValueError(f"only the training split is resampled; {split} is scored as it is")
        if output not in ("dense", "csr") or (output == "dense" and transform is None and featurise is None):
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
        self.featurise = featurise
        self._genes = store.genes() if featurise is not None else None
        self.epoch = 0
        self.resample, self.resample_target = resample, resample_target
        self.block_rows = int(block_rows or default_block_rows(store))
        self.blocks_per_buffer = max(1, self.buffer_chunks * store.rows_per_chunk // self.block_rows)
        self.threads = max(1, int(threads))
        self._densify = DeviceDensifier(transform, device) if device is not None and featurise is None else None
        known = isinstance(transform, ExpressionTransform) and transform.scaling in ("minmax", "zscore", "none")
        host = known and output == "dense" and device is None and featurise is None  # csr: values as stored
        self._host_densify = HostDensifier(transform) if host else None
        self._local_rows = block_rows_of_split(store.split_indices(split), store.n_cells, self.block_rows)
        self._labels = store.labels()
        self.n_cells = int(sum(len(r) for r in self._local_rows))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def epoch_repeats(self) -> list[np.ndarray] | None:
        """This epoch's repeat count per row of the split, one array per block (aligned with its rows);
        None without resampling. Seeded by (seed, epoch) only, so every rank and worker draws the same."""
        if self.resample == "none":
            return None
        labels = np.concatenate([self._labels[self._block_bounds(b)[0] + local]
                                 for b, local in enumerate(self._local_rows)])
        counts = repeat_counts(labels, self.resample, resample_rng(self.seed, self.epoch), target=self.resample_target)
        return np.split(counts, np.cumsum([len(local) for local in self._local_rows])[:-1])

    def _epoch_plan(self, repeats: list[np.ndarray] | None) -> tuple[list[tuple[int, np.ndarray]], int]:
        """(this rank's part of the epoch, the epoch's rows over all ranks).

        The part is (block, positions) pairs in epoch order; positions index the block's drawn rows (those of the
        split, or with a repeat count > 0), a row as often as its count. Computed alike on every rank.
        """
        if repeats is None:
            counts = [np.ones(len(local), dtype=np.int64) for local in self._local_rows]
        else:
            counts = [r[r > 0] for r in repeats]  # blocks with nothing drawn are skipped
        order = np.array([c for c, n in enumerate(counts) if len(n)], dtype=np.int64)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(order)  # same on every rank
        lengths = [int(counts[c].sum()) for c in order]
        total = sum(lengths)
        mine, start, plan = rank_slice(total, self.rank, self.world_size), 0, []
        for chunk, length in zip(order.tolist(), lengths):
            lo, hi = max(mine.start - start, 0), min(mine.stop - start, length)
            start += length
            if lo >= hi:
                continue
            positions = np.repeat(np.arange(len(counts[chunk])), counts[chunk])
            if self.shuffle and (lo > 0 or hi < length):  # shared with a neighbour rank: cut at random rows
                positions = np.random.default_rng([self.seed, self.epoch, chunk, 1]).permutation(positions)
            plan.append((chunk, positions[lo:hi]))
        return plan, total

    def _block_bounds(self, block: int) -> tuple[int, int]:
        start = block * self.block_rows
        return start, min(self.store.n_cells, start + self.block_rows)

    def _read_block(self, block: int, repeats: np.ndarray | None = None) -> tuple[sp.csr_matrix, np.ndarray]:
        start, stop = self._block_bounds(block)
        local = self._local_rows[block] if repeats is None else self._local_rows[block][repeats > 0]
        rows = self.store.read_rows(start, stop)
        if len(local) != stop - start:  # skip the copy when the whole block belongs to the split
            rows = rows[local]
        return rows, self._labels[start + local]

    def _read_blocks_at_once(self, blocks: list[int], repeats: list[np.ndarray] | None):
        bounds = [self._block_bounds(b) for b in blocks]
        parts = []
        for block, (start, stop), rows in zip(blocks, bounds, self.store.read_row_blocks(bounds)):
            local = self._local_rows[block] if repeats is None else self._local_rows[block][repeats[block] > 0]
            parts.append((rows if len(local) == stop - start else rows[local], self._labels[start + local]))
        return parts

    def _read_buffer(self, group: list[tuple[int, np.ndarray]], index: int, repeats: list[np.ndarray] | None,
                     pool=None, scratch: ScratchArrays | None = None) -> GatherBuffer:
        """Decode one buffer of (block, positions) (in the prefetch thread, its blocks in the decode pool) and its
        take order: each block's positions (a row as often as drawn), permuted when shuffling."""
        def read(item):
            return self._read_block(item[0], None if repeats is None else repeats[item[0]])

        if getattr(type(self.store), "read_row_blocks", None) is not None:  # the class's: a wrapper's would delegate
            parts = self._read_blocks_at_once([block for block, _ in group], repeats)
        elif pool is not None and len(group) > 1:
            parts = list(pool.map(read, group))
        else:
            parts = [read(g) for g in group]
        offsets = np.cumsum([0] + [len(p[1]) for p in parts[:-1]])
        take = np.concatenate([positions + offset for (_, positions), offset in zip(group, offsets)])
        if self.shuffle:
            take = np.random.default_rng([self.seed, self.epoch, index]).permutation(take)
        labels = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
        values = None if self._host_densify is None else self._host_densify.transform_values  # once per buffer
        return GatherBuffer([p[0] for p in parts], labels, take, self.store.n_genes, scratch, values)

    def _buffers(self, plan: list[tuple[int, np.ndarray]], repeats: list[np.ndarray] | None = None):
        from concurrent.futures import ThreadPoolExecutor

        groups = [plan[i : i + self.blocks_per_buffer] for i in range(0, len(plan), self.blocks_per_buffer)]
        # buffer i is cut into batches while buffer i + 1 is read: two scratch slots, alternating (this iteration's)
        slots = (ScratchArrays(), ScratchArrays())
        with ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="omicsweep-decode") as pool:
            if not self.prefetch or len(groups) < 2:
                for i, g in enumerate(groups):
                    yield self._read_buffer(g, i, repeats, pool, slots[0])
                return
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="omicsweep-prefetch") as ahead:
                pending = ahead.submit(self._read_buffer, groups[0], 0, repeats, pool, slots[0])
                for index, nxt in enumerate(groups[1:], start=1):
                    current = pending.result()
                    pending = ahead.submit(self._read_buffer, nxt, index, repeats, pool, slots[index % 2])
                    yield current
                yield pending.result()

    def _emit(self, matrix: sp.csr_matrix, labels: np.ndarray, out: DenseBuffers):
        if self.output == "csr":
            return matrix, labels.astype(np.int64)
        if self.featurise is not None:
            return self.featurise(matrix, self._genes, self.transform), torch.from_numpy(labels.astype(np.int64))
        if self._densify is not None:
            return self._densify(matrix), torch.from_numpy(labels.astype(np.int64)).to(self._densify.device)
        if self._host_densify is not None:
            dense = self._host_densify(matrix, out.get(matrix.shape), transformed=True)
            return torch.from_numpy(dense), torch.from_numpy(labels.astype(np.int64))
        dense = self.transform(matrix.toarray().astype(np.float32, copy=False))
        return torch.from_numpy(dense), torch.from_numpy(labels.astype(np.int64))

    def __iter__(self) -> Iterator:
        repeats = self.epoch_repeats()
        plan, total = self._epoch_plan(repeats)
        info = get_worker_info()
        if info is not None and info.num_workers > 1:  # a rank's DataLoader workers do not step together
            yield from self._batched(self._buffers(plan[info.id :: info.num_workers], repeats), None)
            return
        steps = steps_per_epoch(total, self.world_size, batch_size=self.batch_size, min_batch=self.min_batch)
        sizes = _batch_sizes(sum(len(positions) for _, positions in plan), steps, self.batch_size)
        yield from self._batched(self._buffers(plan, repeats), sizes)

    def _batched(self, buffers, sizes: list[int] | None) -> Iterator:
        """The buffers' rows cut into batches of `sizes`; None: of batch_size, then the rest if >= min_batch. A
        batch is gathered from its buffer; one that spans two buffers joins the two gathered parts."""
        targets = iter(sizes if sizes is not None else ())
        size = next(targets, 0) if sizes is not None else self.batch_size
        carry_x, carry_y = None, None  # fewer rows than the batch being filled, from the previous buffers
        out = DenseBuffers()  # this pass's reused dense arrays (host dense output)
        for buffer in buffers:
            start = 0
            while size and len(buffer) - start >= size - (0 if carry_y is None else len(carry_y)):
                stop = start + size - (0 if carry_y is None else len(carry_y))
                x, y = buffer.gather(start, stop)
                if carry_y is not None:
                    x, y = sp.vstack([carry_x, x], format="csr"), np.concatenate([carry_y, y])
                    carry_x, carry_y = None, None
                yield self._emit(x, y, out)
                start = stop
                size = next(targets, 0) if sizes is not None else self.batch_size
            if not size:
                return
            if start < len(buffer):
                rest_x, rest_y = buffer.gather(start, len(buffer))
                if carry_y is None:
                    carry_x, carry_y = rest_x, rest_y
                else:
                    carry_x, carry_y = sp.vstack([carry_x, rest_x], format="csr"), np.concatenate([carry_y, rest_y])
        if sizes is None and carry_y is not None and len(carry_y) >= self.min_batch:
            yield self._emit(carry_x, carry_y, out)


class ArrayBatches:
    """Seeded shuffled batches of in-memory arrays, e.g. a SMOTE-resampled training split; iterates like
    CellBatches (set_epoch, then (x, y) tensors), a new permutation per (seed, epoch).

    rank / world_size: this rank keeps every world_size-th row (the arrays are the same on every rank) and yields
    `steps_per_epoch` batches like every other rank, its last batch taking the rows that remain."""

    def __init__(self, x: np.ndarray, y: np.ndarray, *, batch_size: int, shuffle: bool = True, seed: int = 0,
                 min_batch: int = 1, rank: int = 0, world_size: int = 1) -> None:
        self.n_rows_all_ranks, self.world_size = len(y), int(world_size)
        self.x = np.ascontiguousarray(x[rank::world_size], dtype=np.float32)
        self.y = np.asarray(y[rank::world_size], dtype=np.int64)
        self.batch_size, self.shuffle, self.seed, self.min_batch = int(batch_size), shuffle, int(seed), int(min_batch)
        self.epoch = 0
        self.n_cells = len(self.y)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.y)
        order = np.random.default_rng([self.seed, self.epoch]).permutation(n) if self.shuffle else np.arange(n)
        steps = steps_per_epoch(self.n_rows_all_ranks, self.world_size, batch_size=self.batch_size,
                                min_batch=self.min_batch)
        start = 0
        for size in _batch_sizes(n, steps, self.batch_size):
            rows = order[start : start + size]
            start += size
            yield torch.from_numpy(self.x[rows]), torch.from_numpy(self.y[rows])


def training_batches(
    store: Store, transform: ExpressionTransform, config: dict, *, batch_size: int, seed: int, min_batch: int = 1,
    rank: int = 0, world_size: int = 1, featurise=None,
) -> CellBatches | ArrayBatches:
    """The training split's shuffled batches as config `resample` asks (see `omicsweep.datasets.resample`).

    none / over / under: streamed (`CellBatches`, memory of one shuffle buffer). smote: the whole training split
    is loaded in memory (dense, transformed), SMOTE-resampled and iterated as `ArrayBatches`: SMOTE needs every
    cell of a class to find its neighbours, so use it on splits that fit in memory.
    rank / world_size: this data-parallel worker's disjoint shard, as many batches as every other rank's
    (streamed: its slice of the epoch's rows; smote: every world_size-th resampled row, drawn alike on every rank).
    featurise: the model's featuriser (streamed batches are its dicts); smote interpolates dense vectors, so it
    takes only a dense featuriser (its batches are the transformed rows).
    """
    method = resample_option(config)
    if method == "smote" and featurise is not None and not getattr(featurise, "dense", False):
        raise ConfigError("config resample=smote interpolates dense expression vectors; this model's featuriser "
                          "makes other inputs, so use resample none, over or under")
    if method == "smote":
        x, y = smote_resample(*load_split(store, "train", transform), seed=seed)
        return ArrayBatches(x, y, batch_size=batch_size, seed=seed, min_batch=min_batch, rank=rank,
                            world_size=world_size)
    return CellBatches(
        store, "train", batch_size=batch_size, transform=transform, shuffle=True, seed=seed, min_batch=min_batch,
        resample=method, resample_target=resample_target(config), rank=rank, world_size=world_size,
        featurise=featurise,
    )


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
