"""The format registry: READERS by name, aliases, and `detect_format` (folders by contents, files by suffix/content)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from omicsweep.datasets.readers._common import _find, _why
from omicsweep.datasets.readers.anndata_files import read_h5ad, read_loom, read_zarr
from omicsweep.datasets.readers.hdf5 import read_hdf5
from omicsweep.datasets.readers.l1000 import read_gct, read_gctx
from omicsweep.datasets.readers.tables import read_csv, read_tsv
from omicsweep.datasets.readers.tenx import read_10x_h5, read_10x_mtx
from omicsweep.errors import InputError

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"

Reader = Callable[..., object]

READERS: dict[str, Reader] = {
    "h5ad": read_h5ad,
    "zarr": read_zarr,
    "10x-mtx": read_10x_mtx,
    "10x-h5": read_10x_h5,
    "loom": read_loom,
    "csv": read_csv,
    "tsv": read_tsv,
    "gct": read_gct,
    "gctx": read_gctx,
    "hdf5": read_hdf5,
}
ALIASES = {"mtx": "10x-mtx", "10x": "10x-mtx", "h5": "hdf5", "txt": "tsv", "anndata": "h5ad"}
_SUFFIXES = {
    ".h5ad": "h5ad",
    ".zarr": "zarr",
    ".loom": "loom",
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".txt": "tsv",
    ".gct": "gct",
    ".gctx": "gctx",
    ".mtx": "10x-mtx",
}
_COMPRESSED = (".gz", ".bz2", ".xz")


def formats() -> list[str]:
    return list(READERS)


def _sniff_hdf5(path: Path) -> str:
    """hdf5 file -> 10x-h5, gctx, h5ad, loom or plain hdf5, from its layout."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            keys = set(f.keys())
            if "matrix" in f and isinstance(f["matrix"], h5py.Group) and "barcodes" in f["matrix"]:
                return "10x-h5"
            if any(isinstance(f[k], h5py.Group) and {"barcodes", "genes"} <= set(f[k].keys()) for k in keys):
                return "10x-h5"  # Cell Ranger 2: one group per genome
            if "0" in f and "0/DATA/0/matrix" in f:
                return "gctx"
            if "matrix" in keys and "col_attrs" in keys and "row_attrs" in keys:
                return "loom"
            if {"obs", "var"} <= keys and "encoding-type" in f.attrs:
                return "h5ad"
            return "hdf5"
    except Exception as exc:
        raise InputError(f"{path}: cannot read as HDF5 ({_why(exc)})") from None


def detect_format(path: Path) -> str:
    """The format name (a READERS key) of a path: folders by their contents, files by suffix, then by content."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir():
        if (path / "zarr.json").exists() or (path / ".zgroup").exists():
            return "zarr"
        if _find(path, "matrix.mtx", "matrix.mtx.gz"):
            return "10x-mtx"
        raise InputError(
            f"{path}: a folder that is neither an AnnData zarr store (zarr.json/.zgroup) nor a 10x mtx folder (matrix.mtx[.gz])"
        )
    name = path.name.lower()
    for ext in _COMPRESSED:
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    suffix = Path(name).suffix
    if suffix in _SUFFIXES:
        return _SUFFIXES[suffix]
    if suffix in (".h5", ".hdf5", ".he5", ".hdf"):
        return _sniff_hdf5(path)
    with path.open("rb") as fh:
        magic = fh.read(8)
    if magic == _HDF5_MAGIC:
        return _sniff_hdf5(path)
    raise InputError(f"{path}: cannot tell the format from the file name; pass --format ({', '.join(READERS)})")


def _check_format(name: str) -> str:
    key = ALIASES.get(name.lower(), name.lower())
    if key not in READERS:
        raise InputError(f"unknown format {name!r}; known: {', '.join(READERS)}")
    return key
