"""A decoded shuffle buffer and the batches gathered from it, and CSR batches densified on a torch device.

A buffer keeps its blocks' rows as decoded, one concatenation of their values, and gathers each batch's rows
straight into that batch's own arrays (one copy per value, no stacked or permuted copy of the whole buffer).
"""

from __future__ import annotations

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
    """

    def __init__(self, blocks: list[sp.csr_matrix], labels: np.ndarray, take: np.ndarray, n_features: int,
                 scratch: "ScratchArrays | None" = None):
        lengths = np.concatenate([np.diff(b.indptr) for b in blocks]) if blocks else np.zeros(0, np.int64)
        nnz = int(lengths.sum())
        indptr = np.zeros(len(lengths) + 1, dtype=np.int32 if nnz < np.iinfo(np.int32).max else np.int64)
        np.cumsum(lengths, out=indptr[1:])
        data, indices = (scratch or ScratchArrays()).arrays(nnz, indptr.dtype)
        if blocks:
            np.concatenate([b.data for b in blocks], out=data, casting="same_kind")
            np.concatenate([b.indices for b in blocks], out=indices, casting="same_kind")
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
    """CSR batches to dense, transformed float32 on the host in one pass over the dense matrix: every row starts as
    the transform of an all-zero row (log1p(0) = 0, so that is (0 - shift) / scale), and only the non-zeros are
    transformed and written. Bitwise what `transform(matrix.toarray())` gives (the same float32 operations on the
    same values), without transforming the zeros again for every cell. None for a transform it does not know."""

    def __init__(self, transform):
        self.transform = transform
        shift, scale = _shift_scale(transform)
        self._shift, self._scale = shift, scale
        zero = np.zeros(len(transform.minimum), dtype=np.float32)
        self._template = zero if shift is None else (zero - shift) / scale

    def __call__(self, matrix: sp.csr_matrix) -> np.ndarray:
        n_rows, n_cols = matrix.shape
        dense = np.empty((n_rows, n_cols), dtype=np.float32)
        dense[:] = self._template
        values = np.asarray(matrix.data, dtype=np.float32)
        if self.transform.log1p:
            values = np.log1p(values)
        cols = matrix.indices
        if self._shift is not None:
            values = (values - self._shift[cols]) / self._scale[cols]
        rows = np.repeat(np.arange(n_rows, dtype=np.int64), np.diff(matrix.indptr))
        dense.reshape(-1)[rows * n_cols + cols] = values
        return dense


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
