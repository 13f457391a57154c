"""Readers for files that already hold an AnnData layout: h5ad, AnnData zarr stores and loom."""

from __future__ import annotations

import warnings
from pathlib import Path

from omicsweep.datasets.readers._common import _require_dir, _require_file, _why
from omicsweep.errors import InputError

_LOOM_OBS_KEYS = ("CellID", "obs_names", "cell_names", "cell_ids", "barcodes", "Barcode")
_LOOM_VAR_KEYS = ("Gene", "var_names", "gene_names", "gene_symbols", "Accession", "gene_ids")


def read_h5ad(path: Path):
    """Open an h5ad file fully in memory, turning every failure into a one-line InputError."""
    import anndata as ad

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    try:
        return ad.read_h5ad(path)
    except Exception as exc:  # h5py/anndata raise OSError, KeyError, ValueError... for damaged files
        raise InputError(f"{path}: cannot read as h5ad ({type(exc).__name__}: {exc})") from None


def read_zarr(path: Path):
    """An AnnData zarr store (a folder holding zarr.json or .zgroup), fully in memory."""
    import anndata as ad

    path = Path(path)
    _require_dir(path, "an AnnData zarr store")
    if not ((path / "zarr.json").exists() or (path / ".zgroup").exists()):
        raise InputError(f"{path}: not a zarr store (no zarr.json or .zgroup)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ad.read_zarr(path)
    except Exception as exc:
        raise InputError(f"{path}: cannot read as AnnData zarr ({_why(exc)})") from None


def read_loom(path: Path):
    """A loom file (genes x cells HDF5); cell ids from CellID/obs_names, gene names from Gene/var_names."""
    import h5py
    from anndata.io import read_loom as anndata_read_loom

    path = Path(path)
    _require_file(path)
    try:
        with h5py.File(path, "r") as f:
            if "matrix" not in f:
                raise InputError(f"{path}: not a loom file (no /matrix)")
            cols = set(f["col_attrs"].keys()) if "col_attrs" in f else set()
            rows = set(f["row_attrs"].keys()) if "row_attrs" in f else set()
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: cannot read as loom ({_why(exc)})") from None
    obs_key = next((k for k in _LOOM_OBS_KEYS if k in cols), "CellID")
    var_key = next((k for k in _LOOM_VAR_KEYS if k in rows), "Gene")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            adata = anndata_read_loom(path, sparse=True, X_name="", obs_names=obs_key, var_names=var_key, dtype="float32")
    except Exception as exc:
        raise InputError(f"{path}: cannot read as loom ({_why(exc)})") from None
    adata.obs_names.name = None
    adata.var_names.name = None
    return adata
