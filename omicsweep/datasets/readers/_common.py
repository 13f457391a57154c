"""Helpers every reader shares: one-line errors, file checks, decompression, text sniffing, AnnData building."""

from __future__ import annotations

import bz2
import csv
import gzip
import lzma
import warnings
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from omicsweep.errors import InputError

ORIENTS = ("auto", "rows", "columns")
READ_INFO_KEY = "omicsweep_read"  # .uns entry read_any leaves for ingest's provenance
_UTF8_BOM = b"\xef\xbb\xbf"


def _why(exc: BaseException) -> str:
    """First line of an exception, for a one-line message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _require_file(path: Path) -> None:
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if not path.is_file():
        raise InputError(f"{path}: is a folder, expected a file")


def _require_dir(path: Path, what: str) -> None:
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if not path.is_dir():
        raise InputError(f"{path}: expected a folder ({what})")


def _find(folder: Path, *names: str) -> Path | None:
    """The first of `names` that is a file in `folder`."""
    return next((folder / n for n in names if (folder / n).is_file()), None)


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gzip/bz2/xz decompressed by content; truncated or corrupt archives are InputErrors."""
    _require_file(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({_why(exc)})") from None
    try:
        if raw[:2] == b"\x1f\x8b":
            return gzip.decompress(raw)
        if raw[:3] == b"BZh":
            return bz2.decompress(raw)
        if raw[:6] == b"\xfd7zXZ\x00":
            return lzma.decompress(raw)
    except (EOFError, OSError, zlib.error, lzma.LZMAError, ValueError) as exc:
        raise InputError(f"{path}: truncated or corrupt compressed file ({_why(exc)})") from None
    return raw


def _text_lines(data: bytes, path: Path, n: int) -> list[str]:
    """The first n lines (fewer if the file is shorter), decoded, without line endings."""
    if data.startswith(_UTF8_BOM):
        data = data[3:]
    head = data.split(b"\n", n)[:n]
    try:
        return [line.rstrip(b"\r").decode("utf-8") for line in head]
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not a UTF-8 text file ({_why(exc)})") from None


def _read_text_head(path: Path, n: int) -> tuple[bytes, list[str]]:
    """A delimited text file's bytes (decompressed, without a UTF-8 BOM) and its first n lines, decoded."""
    data = _read_bytes(path)
    if data.startswith(_UTF8_BOM):
        data = data[3:]
    return data, _text_lines(data, path, n)


def _sniff_delimiter(line: str, preferred: str) -> str:
    other = "\t" if preferred == "," else ","
    return other if preferred not in line and other in line else preferred


def _split(line: str, delimiter: str) -> list[str]:
    return next(csv.reader([line], delimiter=delimiter, quotechar='"'), [])


def _decode(values: np.ndarray) -> np.ndarray:
    """HDF5 bytes/object arrays to str; numbers stay numbers."""
    values = np.asarray(values)
    if values.dtype.kind in "SO":
        return np.array([v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values], dtype=object)
    return values


def _as_label_values(values: np.ndarray) -> np.ndarray:
    """Integral floats (R / HDF5 label codes like 5.0) become ints, so class names read '5', not '5.0'."""
    values = np.asarray(values)
    if values.dtype.kind == "f":
        finite = np.isfinite(values)
        if finite.all() and np.all(values == np.round(values)):
            return values.astype(np.int64)
    return values


def _first_names(values, k: int = 3) -> str:
    return ", ".join(repr(str(v)) for v in list(values)[:k])


def _anndata(x, *, obs: pd.DataFrame, var: pd.DataFrame):
    import anndata as ad

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ad.AnnData(X=x, obs=obs, var=var)
