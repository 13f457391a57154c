"""A decoded shuffle buffer and the batches gathered from it, and CSR batches densified on a torch device.

A buffer keeps its blocks' rows as decoded, one concatenation of their values, and gathers each batch's rows
straight into that batch's own arrays (one copy per value, no stacked or permuted copy of the whole buffer).
"""

from __future__ import annotations

import sys

import numpy as np
import scipy.sparse as sp
import torch


def block_rows_of_split(rows: np.ndarray, n_samples: int, block_rows: int) -> list[np.ndarray]:
    """For each block of `block_rows` stored rows, the local offsets of the split's sorted `rows` in it."""
    n_blocks = -(-n_samples // block_rows)
    bounds = np.searchsorted(rows // block_rows, np.arange(n_blocks + 1))
    return [rows[bounds[b] : bounds[b + 1]] - b * block_rows for b in range(n_blocks)]


class GatherBuffer:
    """Rows of several decoded CSR blocks (each already restricted to its wanted rows), read in `take` order.

    take: positions into the blocks' rows one after the other, in the order batches use them (a position may
    repeat, for a resampled row); `len(buffer)` is len(take). The blocks' values are concatenated once into one CSR
    of the buffer's distinct rows (in the decoding thread) and each batch is scipy's row indexing of it (its C
    loop copies a batch's values once into fresh arrays): about 2.3x less CPU per cell than copying row slices in
    Python (perf/RESULTS.md), and memory stays that of the distinct rows however often a row repeats.
    transform_values(data, indices): applied in place to the concatenated values (in the decoding thread).
    """

    def __init__(self, blocks: list[sp.csr_matrix], labels: np.ndarray, take: np.ndarray, n_features: int,
                 scratch: "ScratchArrays | None" = None, transform_values=None):
        lengths = np.concatenate([np.diff(b.indptr) for b in blocks]) if blocks else np.zeros(0, np.int64)
        nnz = int(lengths.sum())
        indptr = np.zeros(len(lengths) + 1, dtype=np.int32 if nnz < np.iinfo(np.int32).max else np.int64)
        np.cumsum(lengths, out=indptr[1:])
        data, indices = (scratch or ScratchArrays()).arrays(nnz, indptr.dtype)
        if blocks:
            np.concatenate([b.data for b in blocks], out=data, casting="same_kind")
            np.concatenate([b.indices for b in blocks], out=indices, casting="same_kind")
        if transform_values is not None:  # e.g. HostDensifier.transform_values: once per distinct row, in place
            transform_values(data, indices)
        self._rows = sp.csr_matrix((data, indices, indptr), shape=(len(lengths), n_features), copy=False)
        self.labels, self.take, self.n_features = labels, take, n_features

    def __len__(self) -> int:
        return len(self.take)

    def gather(self, lo: int, hi: int) -> tuple[sp.csr_matrix, np.ndarray]:
        """Rows take[lo:hi] as a CSR matrix of their own (freshly allocated, safe to keep) and their labels."""
        rows = self.take[lo:hi]
        return self._rows[rows], self.labels[rows]


class ScratchArrays:
    """Reused value and index arrays for the concatenated rows of one shuffle buffer at a time: a buffer's
    batches are copies, so once they are cut the arrays can take the next buffer; reusing them spares the fresh
    pages (and their page faults) of ~8 bytes per value every buffer."""

    def __init__(self):
        self._data = self._indices = None

    def arrays(self, nnz: int, index_dtype) -> tuple[np.ndarray, np.ndarray]:
        if self._data is None or len(self._data) < nnz or self._indices.dtype != index_dtype:
            size = nnz + nnz // 8  # room for the next buffer's slightly larger count
            self._data, self._indices = np.empty(size, np.float32), np.empty(size, index_dtype)
        return self._data[:nnz], self._indices[:nnz]


class DeviceDensifier:
    """CSR batches to dense, transformed float32 on a torch device: the host sends values, indices and row
    pointers (pinned, non-blocking on CUDA) and the device builds and scales the dense matrix, so the host never
    holds dense float32. The same code on device='cpu' gives the host path's numbers."""

    def __init__(self, transform, device: str | torch.device):
        self.device = torch.device(device)
        self.transform = transform
        self._pin = self.device.type == "cuda"
        self._shift = self._scale = None
        shift, scale = _shift_scale(transform) if transform is not None else (None, None)
        if shift is not None:
            self._shift = torch.from_numpy(shift).to(self.device)
            self._scale = torch.from_numpy(scale).to(self.device)

    def _send(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(array)
        if self._pin:
            tensor = tensor.pin_memory()
        return tensor.to(self.device, non_blocking=True)

    def __call__(self, matrix: sp.csr_matrix) -> torch.Tensor:
        lengths = self._send(np.diff(matrix.indptr).astype(np.int64))
        col = self._send(matrix.indices.astype(np.int64, copy=False))
        values = self._send(np.asarray(matrix.data, dtype=np.float32))
        rows = torch.repeat_interleave(torch.arange(matrix.shape[0], device=self.device), lengths)
        dense = torch.zeros(matrix.shape, dtype=torch.float32, device=self.device)
        dense[rows, col] = values  # scipy's CSR has no duplicate entries once summed; ours never has any
        if self.transform is not None and self.transform.log1p:
            dense.log1p_()
        if self._shift is not None:
            dense.sub_(self._shift).div_(self._scale)
        return dense


class HostDensifier:
    """CSR batches to dense, transformed float32 on the host: every row starts as the transform of an all-zero row
    (log1p(0) = 0, so that is (0 - shift) / scale) and only the non-zeros are transformed and written, scattered
    by one `np.put` of their flat positions. Bitwise what `transform(matrix.toarray())` gives (the same float32
    operations on the same values), without transforming the zeros again for every cell. The stream transforms a
    shuffle buffer's values once (`transform_values`, in its decoding thread) and hands batches of transformed
    values (transformed=True) and a reused output array (`DenseBuffers`). The dense array is written in tiles of
    about TILE_BYTES (zero-row fill, then the tile's non-zeros while it is still in cache; 1.1-1.7x less CPU than
    filling all 20 MB of a 256 x 20k batch first). The fill is most of what is left: perf/RESULTS.md, dense path."""

    TILE_BYTES = 1 << 20
    CHUNK = 1 << 16  # values transformed at a time

    def __init__(self, transform):
        self.transform = transform
        shift, scale = _shift_scale(transform)
        self._shift, self._scale = shift, scale
        zero = np.zeros(len(transform.minimum), dtype=np.float32)
        self._template = zero if shift is None else (zero - shift) / scale
        same = self._template.size == 0 or bool((self._template == self._template[0]).all())
        self._fill = float(self._template[0]) if same and self._template.size else 0.0 if same else None
        self._tile_rows = max(1, self.TILE_BYTES // max(1, 4 * len(zero)))
        self._tile = None if same else np.tile(self._template, (self._tile_rows, 1))
        self._shift_used = shift is not None and bool(shift.any())
        self._scale_used = scale is not None and not bool((scale == 1).all())

    def transform_values(self, data: np.ndarray, indices: np.ndarray) -> None:
        """In place: float32 stored values `data` of genes `indices` to their transformed values, in pieces of
        CHUNK values (their per-gene shift and scale gathered into one small reused array, kept in cache). A zero
        shift or unit scale is skipped (bitwise the same: x - 0 == x, x / 1 == x)."""
        if self.transform.log1p:
            np.log1p(data, out=data)
        if self._shift is None:
            return
        per_value = np.empty(min(len(data), self.CHUNK), np.float32)
        for start in range(0, len(data), self.CHUNK):
            values, genes = data[start : start + self.CHUNK], indices[start : start + self.CHUNK]
            gathered = per_value[: len(values)]
            if self._shift_used:
                np.take(self._shift, genes, out=gathered)
                np.subtract(values, gathered, out=values)
            if self._scale_used:
                np.take(self._scale, genes, out=gathered)
                np.divide(values, gathered, out=values)

    def __call__(self, matrix: sp.csr_matrix, out: np.ndarray | None = None, transformed: bool = False) -> np.ndarray:
        """The dense transformed batch, in `out` (C-contiguous float32 of the matrix's shape) when given.
        transformed: the matrix's values are already transformed (`transform_values`)."""
        n_rows, n_cols = matrix.shape
        dense = np.empty((n_rows, n_cols), dtype=np.float32) if out is None else out
        values = np.asarray(matrix.data, dtype=np.float32)
        if not transformed:
            values = values.copy() if values is matrix.data else values
            self.transform_values(values, matrix.indices)
        indptr = matrix.indptr
        flat = np.repeat(np.arange(0, n_rows * n_cols, n_cols, dtype=np.int64), np.diff(indptr))
        flat += matrix.indices
        for lo in range(0, n_rows, self._tile_rows):
            hi = min(lo + self._tile_rows, n_rows)
            if self._tile is None:
                dense[lo:hi].fill(self._fill)
            else:
                np.copyto(dense[lo:hi], self._tile[: hi - lo])
            start, stop = indptr[lo], indptr[hi]
            np.put(dense, flat[start:stop], values[start:stop])  # our CSR never has duplicate entries
        return dense


class DenseBuffers:
    """Reused float32 arrays for one pass's dense batches: `get` hands out an array of the shape asked only while
    nothing else refers to it, i.e. no tensor from `torch.from_numpy` of it (nor a view of that, nor a numpy
    view) is alive: such a tensor's storage holds a reference to the array until it is freed. So a consumer that
    keeps its batches (a list, autograd's saved input) gets fresh arrays, and a training loop, which holds one
    batch while drawing the next, cycles through two. At most `size` arrays are kept; beyond that, fresh ones.
    Reusing spares a fresh array's page faults and zeroing (20 MB for a 256 x 20k batch)."""

    def __init__(self, size: int = 3):
        self._arrays: list[np.ndarray] = []
        self.size = int(size)
        probe = [np.empty(0)]
        self._free = sys.getrefcount(probe[0])  # the list's reference and getrefcount's argument

    def _is_free(self, index: int) -> bool:
        return sys.getrefcount(self._arrays[index]) <= self._free

    def get(self, shape: tuple[int, int]) -> np.ndarray:
        for i in range(len(self._arrays)):
            if self._arrays[i].shape == shape and self._is_free(i):
                return self._arrays[i]
        if len(self._arrays) >= self.size:  # full: make room by a free array of another shape, if any
            free = [i for i in range(len(self._arrays)) if self._is_free(i)]
            if not free:
                return np.empty(shape, np.float32)
            del self._arrays[free[0]]
        self._arrays.append(np.empty(shape, np.float32))
        return self._arrays[-1]


def _shift_scale(transform) -> tuple[np.ndarray | None, np.ndarray | None]:
    """ExpressionTransform's per-gene shift and scale (constant genes: scale 1), float32; (None, None): no scaling."""
    if transform.scaling == "minmax":
        shift, scale = transform.minimum, transform.maximum - transform.minimum
    elif transform.scaling == "zscore":
        shift, scale = transform.mean, transform.std.copy()
    else:
        return None, None
    scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
    return np.asarray(shift, dtype=np.float32), scale
