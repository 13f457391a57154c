"""Readers for L1000 / CMap expression files: GCT text (1.2, 1.3) and GCTX HDF5."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from omicsweep.datasets.readers._common import _anndata, _decode, _read_bytes, _require_file, _why
from omicsweep.errors import InputError


def read_gct(path: Path):
    """GCT 1.2 or 1.3 text (plain or gzip): samples (the GCT's columns) become cells, with column metadata in obs
    (e.g. pert_iname, pert_type) and row metadata in var; gene names are the row ids."""
    path = Path(path)
    lines = _gct_lines(path)
    n_rows, n_cols, n_rmeta, n_cmeta = _gct_dims(path, lines)
    width = 1 + n_rmeta + n_cols
    header = lines[2].split("\t")
    if len(header) != width:
        raise InputError(f"{path}: the header line has {len(header)} fields, expected {width} (1 id + {n_rmeta} row metadata + {n_cols} samples)")
    rmeta_names, cids = header[1 : 1 + n_rmeta], header[1 + n_rmeta :]
    body = lines[3:]
    if len(body) != n_cmeta + n_rows:
        raise InputError(
            f"{path}: truncated or malformed GCT: expected {n_cmeta} column-metadata + {n_rows} data lines, found {len(body)}"
        )
    obs = pd.DataFrame(index=pd.Index(cids))
    for i, line in enumerate(body[:n_cmeta]):
        fields = line.split("\t")
        if len(fields) != width:
            raise InputError(f"{path}: line {i + 4} has {len(fields)} fields, expected {width}")
        obs[fields[0]] = np.asarray(fields[1 + n_rmeta :], dtype=object)
    x = np.empty((n_rows, n_cols), dtype=np.float32)
    rids, rmeta = [], []
    for i, line in enumerate(body[n_cmeta:]):
        fields = line.split("\t")
        if len(fields) != width:
            raise InputError(f"{path}: line {i + 4 + n_cmeta} has {len(fields)} fields, expected {width}")
        rids.append(fields[0])
        rmeta.append(fields[1 : 1 + n_rmeta])
        try:
            x[i] = np.asarray(fields[1 + n_rmeta :], dtype=np.float32)
        except ValueError:
            bad = next(j for j, v in enumerate(fields[1 + n_rmeta :]) if not _is_float(v))
            raise InputError(
                f"{path}: non-numeric value {fields[1 + n_rmeta + bad]!r} at row {fields[0]!r}, column {cids[bad]!r}"
            ) from None
    var = pd.DataFrame(rmeta, columns=rmeta_names, index=pd.Index(rids), dtype=object) if n_rmeta else pd.DataFrame(index=pd.Index(rids))
    return _anndata(np.ascontiguousarray(x.T), obs=obs, var=var)


def _gct_lines(path: Path) -> list[str]:
    """The GCT's lines (decompressed, decoded), without trailing blank lines."""
    data = _read_bytes(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not a UTF-8 text file ({_why(exc)})") from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def _gct_dims(path: Path, lines: list[str]) -> tuple[int, int, int, int]:
    """(data rows, data columns, row-metadata fields, column-metadata lines) from the version and dimension lines."""
    if not lines or lines[0].strip() not in ("#1.2", "#1.3"):
        raise InputError(f"{path}: not a GCT file (the first line must be #1.2 or #1.3)")
    version = lines[0].strip()
    if len(lines) < 3:
        raise InputError(f"{path}: truncated GCT (no header line)")
    try:
        dims = [int(v) for v in lines[1].split("\t") if v.strip()]
    except ValueError:
        raise InputError(f"{path}: line 2 must hold the GCT dimensions, got {lines[1][:60]!r}") from None
    if version == "#1.3" and len(dims) == 4:
        n_rows, n_cols, n_rmeta, n_cmeta = dims
    elif version == "#1.2" and len(dims) >= 2:
        (n_rows, n_cols), n_rmeta, n_cmeta = dims[:2], 1, 0
    else:
        raise InputError(f"{path}: line 2 has {len(dims)} dimensions, expected {'4' if version == '#1.3' else '2'} for GCT {version[1:]}")
    if n_rows == 0 or n_cols == 0:
        raise InputError(f"{path}: the expression matrix is empty ({n_rows} rows x {n_cols} columns)")
    return n_rows, n_cols, n_rmeta, n_cmeta


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_gctx(path: Path):
    """GCTX (cmapPy HDF5 layout): 0/DATA/0/matrix (samples x genes), 0/META/COL (obs), 0/META/ROW (var)."""
    import h5py

    path = Path(path)
    _require_file(path)
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("0/DATA/0/matrix", "0/META/ROW/id", "0/META/COL/id") if k not in f]
            if missing:
                raise InputError(f"{path}: not a GCTX file (missing {', '.join(missing)})")
            rows = _h5_meta(f["0/META/ROW"], path, "row")
            cols = _h5_meta(f["0/META/COL"], path, "column")
            dset = f["0/DATA/0/matrix"]
            if dset.ndim != 2 or dset.dtype.kind not in "biuf":
                raise InputError(f"{path}: 0/DATA/0/matrix is not a 2-D numeric matrix ({dset.shape}, {dset.dtype})")
            n_r, n_c = len(rows.index), len(cols.index)
            if dset.shape == (n_c, n_r):  # cmapPy writes samples x genes
                x = np.asarray(dset[()], dtype=np.float32)
            elif dset.shape == (n_r, n_c):
                x = np.ascontiguousarray(np.asarray(dset[()], dtype=np.float32).T)
            else:
                raise InputError(
                    f"{path}: matrix is {dset.shape[0]} x {dset.shape[1]} but the metadata has {n_r} row ids and {n_c} column ids"
                )
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: cannot read as GCTX ({_why(exc)})") from None
    return _anndata(x, obs=cols, var=rows)


def _h5_meta(group, path: Path, axis: str) -> pd.DataFrame:
    import h5py

    ids = _decode(group["id"][()])
    frame = pd.DataFrame(index=pd.Index(np.asarray(ids).astype(str)))
    for key, dset in group.items():
        if key == "id" or not isinstance(dset, h5py.Dataset):
            continue
        values = _decode(dset[()])
        if values.ndim != 1 or len(values) != len(ids):
            raise InputError(f"{path}: {axis} metadata {key!r} has {len(values)} values for {len(ids)} {axis}s")
        frame[key] = values
    return frame
