"""Reader for plain HDF5 files: one dense 2-D matrix plus 1-D vectors (labels, cell ids, gene names)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from omicsweep.datasets.readers._common import READ_INFO_KEY, _anndata, _as_label_values, _decode, _require_file, _why
from omicsweep.errors import InputError

_BLOCK_ROWS = 4096
_CELL_ID_KEYS = ("cell_ids", "cells", "barcodes", "obs_names", "cell_names")
_GENE_KEYS = ("gene_names", "genes", "var_names", "gene_symbols", "features", "gene_ids")


def read_hdf5(path: Path, *, orient: str = "auto", label_col: str | None = None):
    """A plain HDF5 file with a dense matrix `X` (or the only 2-D dataset) and 1-D vectors such as labels `Y`.

    Every top-level 1-D vector as long as the cell axis goes to obs under its own name (`--label-col Y`).
    orient='auto': cells are the rows unless the label vector (or, without one, every vector) matches the
    columns. Cell ids and gene names come from vectors like cell_ids / gene_names, or are made up
    (cell_0.., gene_0..).
    """
    import h5py

    path = Path(path)
    _require_file(path)
    try:
        f = h5py.File(path, "r")
    except Exception as exc:
        raise InputError(f"{path}: cannot read as HDF5 ({_why(exc)})") from None
    try:
        with f:
            return _read_hdf5_open(f, path, orient, label_col)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: cannot read as HDF5 ({_why(exc)})") from None


def _read_hdf5_open(f, path: Path, orient: str, label_col: str | None):
    import h5py

    dsets = {k: v for k, v in f.items() if isinstance(v, h5py.Dataset)}
    matrices = {k: v for k, v in dsets.items() if v.ndim == 2}
    vectors = {k: v for k, v in dsets.items() if v.ndim == 1}
    if "X" in matrices:
        name = "X"
    elif len(matrices) == 1:
        name = next(iter(matrices))
    elif "X" in f:
        raise InputError(f"{path}: X is a group, not a dense 2-D dataset; for AnnData files use --format h5ad")
    else:
        raise InputError(
            f"{path}: no 2-D dataset named X ({'candidates: ' + ', '.join(matrices) if matrices else 'no 2-D datasets'})"
        )
    dset = matrices[name]
    if dset.dtype.kind not in "biuf":
        raise InputError(f"{path}: {name} holds non-numeric values ({dset.dtype})")
    n0, n1 = dset.shape
    if label_col is not None and label_col not in vectors:
        raise InputError(
            f"{path}: no label vector {label_col!r}; 1-D datasets: {', '.join(vectors) or '(none)'}"
        )
    if orient == "auto":
        if label_col is not None:
            n = len(vectors[label_col])
            orient = "rows" if n == n0 else "columns" if n == n1 else "rows"
        else:
            lengths = {len(v) for v in vectors.values()}
            orient = "columns" if (n1 in lengths and n0 not in lengths) else "rows"
    n_cells, n_genes = (n0, n1) if orient == "rows" else (n1, n0)
    if label_col is not None and len(vectors[label_col]) != n_cells:
        raise InputError(
            f"{path}: label vector {label_col!r} has {len(vectors[label_col])} values but {name} has {n_cells} cells "
            f"({n0} x {n1}, cells as {orient})"
        )
    x = _read_dense_as_csr(dset, transpose=orient == "columns")
    obs = pd.DataFrame(index=pd.RangeIndex(n_cells))
    cell_ids = gene_names = None
    for key, vec in vectors.items():
        if len(vec) == n_cells:
            values = _decode(vec[()])
            if key in _CELL_ID_KEYS and values.dtype == object and cell_ids is None:
                cell_ids = values
            else:
                obs[key] = _as_label_values(values)
        elif len(vec) == n_genes and key in _GENE_KEYS and gene_names is None:
            gene_names = _decode(vec[()])
    obs.index = pd.Index(np.asarray(cell_ids).astype(str) if cell_ids is not None else [f"cell_{i}" for i in range(n_cells)])
    var = pd.DataFrame(index=pd.Index(np.asarray(gene_names).astype(str) if gene_names is not None else [f"gene_{i}" for i in range(n_genes)]))
    adata = _anndata(x, obs=obs, var=var)
    adata.uns[READ_INFO_KEY] = {"orient": orient}
    return adata


def _read_dense_as_csr(dset, *, transpose: bool) -> sp.csr_matrix:
    """Read a dense HDF5 matrix in chunk-aligned blocks along the cell axis, keeping memory near one block."""
    axis = 1 if transpose else 0
    n = dset.shape[axis]
    chunk = dset.chunks[axis] if dset.chunks else _BLOCK_ROWS
    step = chunk * max(1, -(-_BLOCK_ROWS // chunk))  # whole chunks, about _BLOCK_ROWS cells
    parts = []
    for start in range(0, n, step):
        block = dset[start : start + step] if axis == 0 else dset[:, start : start + step].T
        parts.append(sp.csr_matrix(np.asarray(block, dtype=np.float32)))
    if not parts:
        return sp.csr_matrix((0, dset.shape[1 - axis]), dtype=np.float32)
    return sp.vstack(parts, format="csr")
