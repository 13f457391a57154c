"""`read_any`: one entry point that picks the reader, attaches a labels file and checks the result."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from omicsweep.datasets.readers._common import ORIENTS, READ_INFO_KEY, _first_names, _require_file
from omicsweep.datasets.readers._registry import READERS, _check_format, detect_format
from omicsweep.datasets.readers.labels import _attach_labels, _read_labels_file
from omicsweep.errors import InputError

def read_any(
    path: Path,
    *,
    format: str | None = None,
    orient: str | None = "auto",
    labels_file: Path | None = None,
    label_col: str | None = None,
    check_values: bool = True,
    unique_genes: bool = False,
    extra_cols: tuple[str, ...] = (),
):
    """Read any supported input into an AnnData (cells x genes) with the labels in `.obs[label_col]`.

    format: a READERS name (or alias); default: detected from the path (`detect_format`).
    orient: 'rows' | 'columns' | 'auto', for formats whose readers take it (csv, tsv, hdf5).
    labels_file: a table of cell id + label joined by cell id (`label_col` names its column; without a header,
        the second column or `label_col` as a 1-based column number), or a single column with one label per cell.
    check_values: check X for NaN/inf and unique gene names (ingest turns it off when it uses a layer or .raw).
    unique_genes: accept duplicate gene names (the caller renames them, e.g. ingest --unique-genes).
    extra_cols: columns of a labels file to join onto the cells besides the label (e.g. ingest --group-col).
    """
    path = Path(path)
    orient = (orient or "auto").lower()
    if orient not in ORIENTS:
        raise InputError(f"--orient {orient!r}: expected one of {', '.join(ORIENTS)}")
    fmt = _check_format(format) if format else detect_format(path)
    reader = READERS[fmt]
    params = inspect.signature(reader).parameters
    orientable = "orient" in params
    if orient != "auto" and not orientable:
        takes = ", ".join(k for k, r in READERS.items() if "orient" in inspect.signature(r).parameters)
        raise InputError(f"{path}: --orient applies to {takes}; the layout of {fmt} input is fixed")
    if labels_file is not None:
        _require_file(Path(labels_file))
    kwargs = {}
    if orientable:
        kwargs["orient"] = orient
    if "label_col" in params and labels_file is None:
        kwargs["label_col"] = label_col
    adata = reader(path, **kwargs)
    if labels_file is not None:
        known = set(map(str, adata.obs_names)) | set(map(str, adata.var_names))
        table = _read_labels_file(Path(labels_file), label_col, known, tuple(c for c in extra_cols if c))
        adata = _attach_labels(adata, table, source=path, orient=orient, orientable=orientable)
        label_col = table.column
    _check_adata(adata, path, check_values=check_values, unique_genes=unique_genes)
    if label_col is not None and label_col not in adata.obs.columns:
        cols = [str(c) for c in adata.obs.columns]
        listed = ", ".join(cols[:25]) + (", ..." if len(cols) > 25 else "")
        raise InputError(f"{path}: no label column {label_col!r} in obs; columns: {listed or '(none)'}")
    resolved = adata.uns.get(READ_INFO_KEY, {}).get("orient", orient) if orientable else "fixed"
    adata.uns[READ_INFO_KEY] = {
        "format": fmt,
        "orient": resolved,
        "labels_file": str(labels_file) if labels_file is not None else None,
    }
    return adata


def _check_adata(adata, path: Path, *, check_values: bool, unique_genes: bool = False) -> None:
    n_obs, n_vars = adata.shape
    if n_obs == 0 or n_vars == 0:
        raise InputError(f"{path}: the expression matrix is empty ({n_obs} cells x {n_vars} genes)")
    cells = adata.obs_names
    if cells.has_duplicates:
        dup = cells[cells.duplicated()].unique()
        raise InputError(f"{path}: duplicate cell ids ({len(dup)}, e.g. {_first_names(dup)})")
    if not check_values:
        return
    x = adata.X
    if x is None:
        raise InputError(f"{path}: has no expression matrix X")
    dtype = x.dtype
    if dtype.kind not in "biuf":
        raise InputError(f"{path}: the expression matrix holds non-numeric values ({dtype})")
    if dtype.kind == "f":
        if sp.issparse(x):
            csr = x.tocsr()
            bad = ~np.isfinite(csr.data)
            if bad.any():
                k = int(np.flatnonzero(bad)[0])
                row, col = int(np.searchsorted(csr.indptr, k, side="right") - 1), int(csr.indices[k])
                _raise_nonfinite(path, int(bad.sum()), cells[row], adata.var_names[col])
        else:
            bad = ~np.isfinite(np.asarray(x))
            if bad.any():
                row, col = np.argwhere(bad)[0]
                _raise_nonfinite(path, int(bad.sum()), cells[row], adata.var_names[col])
    genes = adata.var_names
    if genes.has_duplicates and not unique_genes:
        dup = genes[genes.duplicated()].unique()
        raise InputError(
            f"{path}: gene names are not unique ({len(dup)} duplicated, e.g. {_first_names(dup)}); "
            f"pass --unique-genes to rename them (GENE, GENE-1, ...)"
        )


def _raise_nonfinite(path: Path, count: int, cell, gene) -> None:
    raise InputError(f"{path}: {count} NaN/inf values in the expression matrix (first at cell {str(cell)!r}, gene {str(gene)!r})")
