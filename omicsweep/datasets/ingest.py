"""Ingest: read a user file, validate it, encode labels, split, fingerprint, and write a store atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from omicsweep.datasets.readers import READ_INFO_KEY, read_any, read_h5ad  # noqa: F401  (read_h5ad: kept importable here)
from omicsweep.datasets.splits import stratified_split
from omicsweep.datasets.store import SPLITS, write_store
from omicsweep.errors import InputError


def select_matrix(adata, *, layer: str | None, use_raw: bool, source: str):
    """Pick X, a layer, or .raw.X; return (matrix, gene names, description)."""
    if use_raw and layer:
        raise InputError(f"{source}: choose either --layer or --raw, not both")
    if use_raw:
        if adata.raw is None:
            raise InputError(f"{source}: has no .raw matrix")
        return adata.raw.X, np.asarray(adata.raw.var_names, dtype=str), "raw.X"
    if layer:
        if layer not in adata.layers:
            raise InputError(f"{source}: no layer {layer!r}; layers: {', '.join(adata.layers.keys()) or '(none)'}")
        return adata.layers[layer], np.asarray(adata.var_names, dtype=str), f"layers/{layer}"
    return adata.X, np.asarray(adata.var_names, dtype=str), "X"


def validate_matrix(matrix, source: str) -> sp.csr_matrix:
    """CSR float32 with finite values, or an InputError naming the file."""
    if matrix is None:
        raise InputError(f"{source}: the expression matrix is empty")
    csr = sp.csr_matrix(matrix, dtype=np.float32) if not sp.issparse(matrix) else matrix.tocsr().astype(np.float32)
    if csr.shape[0] == 0 or csr.shape[1] == 0:
        raise InputError(f"{source}: the expression matrix is empty ({csr.shape[0]} x {csr.shape[1]})")
    bad = ~np.isfinite(csr.data)
    if bad.any():
        rows = np.searchsorted(csr.indptr, np.flatnonzero(bad)[0], side="right") - 1
        raise InputError(f"{source}: {int(bad.sum())} NaN/inf values in the expression matrix (first in cell {rows})")
    csr.eliminate_zeros()
    return csr


def value_kind(csr: sp.csr_matrix) -> str:
    """'counts' (non-negative integers), 'log' (non-negative, small range) or 'other'."""
    data = csr.data
    if data.size == 0:
        return "counts"
    if data.min() < 0:
        return "other"
    if np.all(data == np.round(data)):
        return "counts"
    return "log" if data.max() < 50 else "other"


def encode_labels(values, *, label_col: str, source: str, min_classes: int = 2) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Integer codes over sorted class names; cells with a missing label are dropped (mask returned)."""
    import pandas as pd

    series = pd.Series(values)
    keep = series.notna().to_numpy() & (series.astype(str).str.strip() != "").to_numpy()
    names = series[keep].astype(str).to_numpy()
    classes = sorted(set(names))
    if len(classes) < min_classes:
        raise InputError(
            f"{source}: label column {label_col!r} has {len(classes)} class(es) ({', '.join(classes) or 'none'}); "
            f"at least {min_classes} are needed"
        )
    lookup = {name: i for i, name in enumerate(classes)}
    codes = np.fromiter((lookup[n] for n in names), dtype=np.int64, count=len(names))
    return codes, classes, keep


def ingest_anndata(
    adata,
    *,
    label_col: str,
    out: Path,
    source: str,
    layer: str | None = None,
    use_raw: bool = False,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    overwrite: bool = False,
    extra_provenance: dict[str, Any] | None = None,
) -> str:
    """Validate an in-memory AnnData and write it as a store. Returns the store's fingerprint."""
    if label_col not in adata.obs.columns:
        raise InputError(
            f"{source}: no label column {label_col!r} in obs; columns: {', '.join(map(str, adata.obs.columns))}"
        )
    matrix, genes, matrix_name = select_matrix(adata, layer=layer, use_raw=use_raw, source=source)
    csr = validate_matrix(matrix, source)
    if len(set(genes)) != len(genes):
        raise InputError(f"{source}: gene names are not unique ({len(genes) - len(set(genes))} duplicates)")
    codes, classes, keep = encode_labels(adata.obs[label_col].to_numpy(), label_col=label_col, source=source)
    csr = csr[keep]
    cell_ids = np.asarray(adata.obs_names, dtype=str)[keep]
    if len(set(cell_ids)) != len(cell_ids):
        raise InputError(f"{source}: cell ids are not unique")
    split_codes = stratified_split(codes, fractions=fractions, seed=seed)
    provenance = {
        "source": source,
        "label_column": label_col,
        "matrix": matrix_name,
        "value_kind": value_kind(csr),
        "preprocessing": [],
        "cells_dropped_missing_label": int((~keep).sum()),
        "split": {"method": "stratified", "fractions": list(fractions), "seed": seed, "names": list(SPLITS)},
        **(extra_provenance or {}),
    }
    return write_store(
        Path(out),
        matrix=csr,
        genes=genes,
        codes=codes,
        classes=classes,
        split_codes=split_codes,
        cell_ids=cell_ids,
        provenance=provenance,
        overwrite=overwrite,
    )


def ingest_file(
    path: Path,
    *,
    label_col: str,
    out: Path,
    layer: str | None = None,
    use_raw: bool = False,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    overwrite: bool = False,
    format: str | None = None,
    orient: str = "auto",
    labels_file: Path | None = None,
) -> str:
    """`omicsweep ingest`: any supported input (see `readers.READERS`) to a store.

    format: reader name, default detected from the path; orient: 'rows' | 'columns' | 'auto' for tables and plain
    HDF5; labels_file: a cell id + label table joined by cell id, whose label column is `label_col`.
    """
    path = Path(path)
    if Path(out).exists() and not overwrite:
        raise InputError(f"{out}: already exists; pass --overwrite to replace it")
    adata = read_any(
        path, format=format, orient=orient, labels_file=labels_file, label_col=label_col,
        check_values=not (layer or use_raw),
    )
    read_info = dict(adata.uns.pop(READ_INFO_KEY, {}))
    return ingest_anndata(
        adata,
        label_col=label_col,
        out=out,
        source=str(path),
        layer=layer,
        use_raw=use_raw,
        fractions=fractions,
        seed=seed,
        overwrite=overwrite,
        extra_provenance={"input": read_info},
    )
