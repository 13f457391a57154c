"""A whole split as one scipy CSR float32 matrix, read chunk by chunk: what the estimators train and score on.

Memory bound: the split's non-zeros once (4-byte values + 4-byte gene indices, + 8 bytes of indptr per row) plus
one store chunk in flight. A store that records its row pointers (`Store.indptr`) is preallocated exactly; other
stores (a featuriser's view, an aligned store) collect their chunks and concatenate them once (twice the matrix
at the peak). Nothing dense of shape [rows, features] is ever made: 200k x 20k cells with ~950 non-zeros each is
1.5 GB here, 16 GB as dense float32.

The transform keeps the zeros zero: log1p maps 0 to 0, and the per-gene scaling is applied as a division only.
Min-max and z-score also shift each gene by its training minimum or mean, which would densify every row;
`sparse_safe` drops that shift (minimum 0 for min-max, mean 0 for z-score). For counts the training minimum is
0 for almost every gene, so min-max is unchanged there; for the estimators a per-gene shift changes nothing that
matters: distances (kNN) and tree splits (random forest, xgboost) are shift-invariant and a linear model's
intercept absorbs it. The trial saves the shift-free transform, so predict, export and reproduce apply the same.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import scipy.sparse as sp

from omicsweep.datasets.transform import ExpressionTransform, split_rows_by_chunk


def sparse_safe(transform: ExpressionTransform) -> ExpressionTransform:
    """The same log1p and per-gene scale with the shift removed: its dense and sparse application agree and keep
    zeros zero (min-max: x / (max - min); z-score: x / std)."""
    if transform.scaling == "minmax":
        span = (transform.maximum - transform.minimum).astype(np.float32)
        return replace(transform, minimum=np.zeros_like(span), maximum=span)
    if transform.scaling == "zscore":
        return replace(transform, mean=np.zeros_like(transform.mean))
    return transform


def _scale(transform: ExpressionTransform) -> np.ndarray | None:
    if transform.scaling == "minmax":
        scale = (transform.maximum - transform.minimum).astype(np.float32)
    elif transform.scaling == "zscore":
        scale = np.asarray(transform.std, dtype=np.float32).copy()
    else:
        return None
    scale[scale == 0] = 1.0
    return scale


def apply_sparse(transform: ExpressionTransform, rows: sp.csr_matrix) -> sp.csr_matrix:
    """`transform` (which must be `sparse_safe`) applied to CSR rows in place, on the stored values only."""
    shift = {"minmax": transform.minimum, "zscore": transform.mean}.get(transform.scaling)
    if shift is not None and np.any(shift):
        raise ValueError("apply_sparse needs a shift-free transform (datasets.split_matrix.sparse_safe)")
    if transform.log1p:
        np.log1p(rows.data, out=rows.data)
    scale = _scale(transform)
    if scale is not None:
        rows.data /= scale[rows.indices]
    return rows


def _chunk_rows(store, local: np.ndarray, chunk: int) -> sp.csr_matrix:
    start, stop = store.chunk_bounds(chunk)
    block = store.read_rows(start, stop)
    if len(local) != stop - start:
        return sp.csr_matrix(block[local], dtype=np.float32)  # fancy indexing copies
    return sp.csr_matrix(block, dtype=np.float32, copy=True)  # transformed in place: never a store's own arrays


def split_csr(store, split: str, transform: ExpressionTransform) -> tuple[sp.csr_matrix, np.ndarray]:
    """(x, y) of `split` in store order: x a CSR float32 matrix [rows, features] with the shift-free
    `sparse_safe(transform)` applied; y int64 class indices."""
    safe = sparse_safe(transform)
    rows = store.split_indices(split)
    y = store.labels()[rows].astype(np.int64)
    per_chunk = split_rows_by_chunk(store, split)
    indptr_all = getattr(store, "indptr", None)
    if indptr_all is None:
        blocks = [apply_sparse(safe, _chunk_rows(store, local, c)) for c, local in enumerate(per_chunk) if len(local)]
        if not blocks:
            return sp.csr_matrix((0, store.n_genes), dtype=np.float32), y
        return sp.vstack(blocks, format="csr", dtype=np.float32), y
    row_nnz = np.diff(np.asarray(indptr_all, dtype=np.int64))[rows]
    indptr = np.concatenate([[0], np.cumsum(row_nnz)])
    index_type = np.int32 if indptr[-1] < np.iinfo(np.int32).max else np.int64
    data = np.empty(int(indptr[-1]), dtype=np.float32)
    indices = np.empty(int(indptr[-1]), dtype=index_type)
    at = 0
    for chunk, local in enumerate(per_chunk):
        if len(local) == 0:
            continue
        block = apply_sparse(safe, _chunk_rows(store, local, chunk))
        data[at : at + block.nnz] = block.data
        indices[at : at + block.nnz] = block.indices
        at += block.nnz
    x = sp.csr_matrix((data, indices, indptr.astype(index_type)), shape=(len(rows), store.n_genes))
    return x, y
