"""scBERT tokens streamed from a corpus store: block by block, shuffled per epoch, sharded across ranks, resumable.

`TokenStream(store, "train", batch_size=8, seed=0, rank=r, world_size=w)` iterates one epoch of LongTensor
batches (batch, n_genes + 1) of scBERT expression tokens (datasets/tokens.expression_tokens), computed per batch
from the CSR rows. Never the whole split: the split's rows are cut into blocks of `block_rows` consecutive rows
(default: the store's chunk; smaller where the split has fewer than 4 blocks per rank), and only the block being consumed (plus at most one batch carried over) is in memory.

Order. Epoch e permutes the blocks with numpy's default_rng((seed, e)); rank r takes the permuted blocks
r, r + w, r + 2w, ... and reads them in that order, rows inside a block shuffled with default_rng((seed, e, block)).
Every rank yields the same number of full batches per epoch (the smallest rank's count; the remainder is dropped),
so ranks stay in lockstep under DDP / DeepSpeed. `shuffle=False` (validation) keeps store order and yields the
last, partial batch too.

Position. `state_dict()` is {"epoch", "batch", "rank", "world_size", "seed"}: the epoch and the number of
batches already yielded in it. `load_state_dict` puts the stream there; the next batch is the one an uninterrupted
stream yields next, found without reading the skipped blocks (block sizes are known from the split's row ranges).
Iterating to the end of an epoch moves the position to (epoch + 1, 0).
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import scipy.sparse as sp
import torch

from omicsweep.datasets.open import open_store
from omicsweep.datasets.tokens import expression_tokens
from omicsweep.errors import ConfigError, InputError

__all__ = ["TokenStream", "split_row_ranges"]


def split_row_ranges(store, split: str, max_cells: int | None = None) -> list[tuple[int, int]]:
    """The split's rows as sorted runs [start, stop) of consecutive rows (a corpus split is one or a few runs),
    cut after the first `max_cells` rows."""
    rows = store.split_indices(split)
    if max_cells is not None:
        rows = rows[: int(max_cells)]
    if not len(rows):
        return []
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [len(rows)]])
    return [(int(rows[a]), int(rows[b - 1]) + 1) for a, b in zip(starts, stops)]


def _blocks(ranges: list[tuple[int, int]], block_rows: int) -> np.ndarray:
    """(n_blocks, 2) [start, stop) of blocks of at most `block_rows` rows, none crossing a run's end."""
    out = [(a, min(a + block_rows, stop)) for start, stop in ranges for a in range(start, stop, block_rows)]
    return np.asarray(out, dtype=np.int64).reshape(-1, 2)


class TokenStream:
    """An epoch of scBERT token batches from one split of a corpus store; see the module docstring."""

    def __init__(self, store, split: str = "train", *, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, block_rows: int | None = None, max_cells: int | None = None,
                 shuffle: bool = True):
        self.store = open_store(store) if isinstance(store, (str,)) or hasattr(store, "__fspath__") else store
        if int(batch_size) < 1:
            raise ConfigError(f"config batch_size={batch_size!r}: must be a positive integer")
        if not 0 <= int(rank) < int(world_size):
            raise ConfigError(f"rank {rank} outside world size {world_size}")
        self.split, self.batch_size, self.seed = split, int(batch_size), int(seed)
        self.rank, self.world_size, self.shuffle = int(rank), int(world_size), bool(shuffle)
        self.block_rows = int(block_rows or getattr(self.store, "rows_per_chunk", 1024))
        if self.block_rows < 1:
            raise ConfigError(f"block_rows={block_rows!r}: must be a positive integer")
        ranges = split_row_ranges(self.store, split, max_cells)
        # at least 4 blocks per rank where the split allows, so a small split still feeds every rank
        split_cells = sum(stop - start for start, stop in ranges)
        self.block_rows = min(self.block_rows, max(1, split_cells // (4 * self.world_size)))
        self.blocks = _blocks(ranges, self.block_rows)
        self.n_cells = int((self.blocks[:, 1] - self.blocks[:, 0]).sum()) if len(self.blocks) else 0
        if self.n_cells == 0:
            raise InputError(f"{getattr(self.store, 'path', self.store)}: the {split} split has no cells")
        self.epoch, self.batch = 0, 0

    # ---- the order of an epoch ----------------------------------------------------------------------------------
    def _rank_blocks(self, epoch: int, rank: int) -> np.ndarray:
        order = np.arange(len(self.blocks))
        if self.shuffle:
            order = np.random.default_rng((self.seed, epoch)).permutation(len(self.blocks))
        return order[rank :: self.world_size]

    def batches_per_epoch(self, epoch: int | None = None) -> int:
        """Batches each rank yields in an epoch (the same on every rank)."""
        epoch = self.epoch if epoch is None else epoch
        sizes = self.blocks[:, 1] - self.blocks[:, 0]
        rows = [int(sizes[self._rank_blocks(epoch, r)].sum()) for r in range(self.world_size)]
        if not self.shuffle and self.world_size == 1:
            return -(-rows[0] // self.batch_size)  # validation: the last partial batch too
        return min(rows) // self.batch_size

    def _block_rows(self, epoch: int, block: int) -> sp.csr_matrix:
        start, stop = (int(v) for v in self.blocks[block])
        rows = self.store.read_rows(start, stop)
        if self.shuffle:
            rows = rows[np.random.default_rng((self.seed, epoch, int(block))).permutation(stop - start)]
        return rows

    def _row_batches(self, epoch: int, skip_rows: int) -> Iterator[sp.csr_matrix]:
        """CSR batches of this rank's rows in `epoch`, starting `skip_rows` rows in (skipped blocks are not read)."""
        pending: list[sp.csr_matrix] = []
        held = 0
        for block in self._rank_blocks(epoch, self.rank):
            size = int(self.blocks[block, 1] - self.blocks[block, 0])
            if skip_rows >= size:
                skip_rows -= size
                continue
            rows = self._block_rows(epoch, block)[skip_rows:]
            skip_rows = 0
            pending.append(rows)
            held += rows.shape[0]
            while held >= self.batch_size:
                joined = sp.vstack(pending, format="csr") if len(pending) > 1 else pending[0]
                yield joined[: self.batch_size]
                rest = joined[self.batch_size :]
                pending, held = ([rest], rest.shape[0]) if rest.shape[0] else ([], 0)
        if held:
            yield sp.vstack(pending, format="csr") if len(pending) > 1 else pending[0]

    def __iter__(self) -> Iterator[torch.Tensor]:
        epoch, total = self.epoch, self.batches_per_epoch()
        if self.batch < total:
            for rows in self._row_batches(epoch, self.batch * self.batch_size):
                tokens = expression_tokens(rows)
                self.batch += 1
                yield tokens
                if self.batch >= total:
                    break
        self.epoch, self.batch = epoch + 1, 0

    def __len__(self) -> int:
        return self.batches_per_epoch()

    # ---- position -----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batch": self.batch, "rank": self.rank, "world_size": self.world_size,
                "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("world_size", "seed"):
            if key in state and int(state[key]) != getattr(self, key):
                raise InputError(f"stream position of {key}={state[key]} cannot continue a stream of "
                                 f"{key}={getattr(self, key)}")
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
