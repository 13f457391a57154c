"""Readers for delimited expression tables (csv / tsv, plain or gzip/bz2/xz), cells as rows or as columns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from omicsweep.datasets.readers._common import (
    READ_INFO_KEY,
    _anndata,
    _first_names,
    _read_text_head,
    _sniff_delimiter,
    _split,
    _why,
)
from omicsweep.errors import InputError


def read_csv(path: Path, *, orient: str = "auto", label_col: str | None = None):
    """Comma-separated table (plain or gzip/bz2/xz); see `read_table`."""
    return read_table(path, delimiter=",", orient=orient, label_col=label_col)


def read_tsv(path: Path, *, orient: str = "auto", label_col: str | None = None):
    """Tab-separated table (plain or gzip/bz2/xz); see `read_table`."""
    return read_table(path, delimiter="\t", orient=orient, label_col=label_col)


def read_table(path: Path, *, delimiter: str = ",", orient: str = "auto", label_col: str | None = None):
    """A delimited expression table: the first column holds ids, the header row the other axis' names.

    orient='rows': one cell per row (header = genes); `label_col` may name a column of the table.
    orient='columns': one cell per column (first column = genes); `label_col` may name a row of the table.
    orient='auto': 'rows' unless `label_col` is not a header name, in which case it must be a row name.
    A header with one field fewer than the rows (R's write.csv) is read as having no corner cell.
    """
    import polars as pl

    path = Path(path)
    data, head = _read_text_head(path, 3)
    delimiter, names = _table_header(path, head, delimiter)
    orient, label_index = _table_orient(path, names, orient, label_col)

    columns = [f"_{i}" for i in range(len(names) + 1)]
    label_row = orient == "columns" and label_col is not None
    string_cols = {columns[0]} | ({columns[label_index + 1]} if label_index is not None else set())
    schema = {c: (pl.String if (c in string_cols or label_row) else pl.Float32) for c in columns}
    kwargs = dict(has_header=False, skip_rows=1, separator=delimiter, quote_char='"', schema=schema)
    try:
        df = pl.read_csv(data, **kwargs)
    except Exception as exc:
        if label_row:
            raise _parse_failure(path, exc) from None
        _raise_table_error(path, data, kwargs, columns, names, string_cols, exc)
    labels = None
    if label_row:
        df, labels = _pop_label_row(path, df, columns, names, label_col)
    ids_col = df.get_column(columns[0])
    matrix, numeric = _numeric_matrix(path, df, columns, names, string_cols)
    row_ids = pd.Index(ids_col.to_numpy().astype(str))
    col_ids = pd.Index([names[columns.index(c) - 1] for c in numeric])
    if orient == "rows":
        obs = pd.DataFrame(index=row_ids)
        if label_index is not None:
            obs[label_col] = df.get_column(columns[label_index + 1]).to_numpy()
        adata = _anndata(matrix, obs=obs, var=pd.DataFrame(index=col_ids))
    else:
        obs = pd.DataFrame(index=col_ids)
        if labels is not None:
            obs[label_col] = np.asarray(labels, dtype=object)
        adata = _anndata(np.ascontiguousarray(matrix.T), obs=obs, var=pd.DataFrame(index=row_ids))
    adata.uns[READ_INFO_KEY] = {"orient": orient}
    return adata


def _table_header(path: Path, head: list[str], delimiter: str) -> tuple[str, list[str]]:
    """The sniffed delimiter and the names of the data columns, from the first three lines."""
    if not head or not head[0].strip():
        raise InputError(f"{path}: the expression matrix is empty (empty file)")
    delimiter = _sniff_delimiter(head[0], delimiter)
    header = _split(head[0], delimiter)
    if len(head) < 2 or not head[1].strip():
        raise InputError(f"{path}: the expression matrix is empty (a header but no data rows)")
    first = _split(head[1], delimiter)
    if len(head) > 2 and head[2].strip() and len(_split(head[2], delimiter)) != len(first):
        raise InputError(f"{path}: line 2 has {len(first)} fields but line 3 has {len(_split(head[2], delimiter))}")
    if len(first) == len(header) + 1:
        names = header  # R write.csv: no corner cell
    elif len(first) == len(header):
        names = header[1:]
    else:
        raise InputError(f"{path}: the header has {len(header)} fields but line 2 has {len(first)}")
    if not names:
        raise InputError(f"{path}: the expression matrix is empty (no data columns)")
    return delimiter, names


def _table_orient(path: Path, names: list[str], orient: str, label_col: str | None) -> tuple[str, int | None]:
    """Resolve orient='auto' and check `label_col` against it; the label's index among `names` for cells as rows."""
    if orient == "auto":
        orient = "columns" if (label_col is not None and label_col not in names) else "rows"
    label_index = None
    if label_col is not None:
        if orient == "rows" and label_col not in names:
            raise InputError(
                f"{path}: no label column {label_col!r} in the header (cells as rows); "
                f"use --orient columns if the labels are a row, or --labels FILE"
            )
        if orient == "columns" and label_col in names:
            raise InputError(f"{path}: {label_col!r} is a column, but cells are columns here (--orient columns); use --orient rows")
        if orient == "rows":
            label_index = names.index(label_col)
    return orient, label_index


def _pop_label_row(path: Path, df, columns: list[str], names: list[str], label_col: str):
    """Cells as columns, read as text: take out the row named `label_col`, cast the rest to float32.

    Returns the numeric frame (ids column first) and the labels, one per data column.
    """
    import polars as pl

    ids_col = df.get_column(columns[0])
    is_label = (ids_col == label_col).fill_null(False)
    if not is_label.any():
        raise InputError(f"{path}: no label column or row named {label_col!r} (first column: {_first_names(ids_col)}, ...)")
    labels = df.filter(is_label).row(0)[1:]
    df = df.filter(~is_label)
    ids_col = df.get_column(columns[0])
    strings = df.select(columns[1:])
    df = strings.select(pl.col(c).cast(pl.Float32, strict=False) for c in columns[1:]).insert_column(0, ids_col)
    for c in columns[1:]:
        bad = (df.get_column(c).is_null() & strings.get_column(c).is_not_null()).arg_true()
        if len(bad):
            raise InputError(
                f"{path}: non-numeric value {strings.get_column(c)[bad[0]]!r} at row {ids_col[bad[0]]!r}, "
                f"column {names[columns.index(c) - 1]!r}"
            )
    return df, labels


def _numeric_matrix(path: Path, df, columns: list[str], names: list[str], string_cols: set[str]):
    """The float32 matrix of the numeric columns (and their names), after checking ids and values are all there."""
    ids_col = df.get_column(columns[0])
    if ids_col.null_count():
        row = int(ids_col.is_null().arg_true()[0]) + 2
        raise InputError(f"{path}: line {row} has an empty id in the first column")
    numeric = [c for c in columns[1:] if c not in string_cols]
    if not numeric or df.height == 0:
        raise InputError(f"{path}: the expression matrix is empty ({df.height} rows x {len(numeric)} numeric columns)")
    values = df.select(numeric)
    nulls = values.null_count().row(0)
    if any(nulls):
        c = numeric[next(i for i, n in enumerate(nulls) if n)]
        row = int(values.get_column(c).is_null().arg_true()[0])
        raise InputError(
            f"{path}: {sum(nulls)} empty/missing values (first at row {ids_col[row]!r}, column {names[columns.index(c) - 1]!r})"
        )
    return values.to_numpy().astype(np.float32, copy=False), numeric


def _parse_failure(path: Path, exc: BaseException) -> InputError:
    if "more fields" in str(exc):
        return InputError(f"{path}: a data line has more fields than the header")
    return InputError(f"{path}: cannot parse as a table ({_why(exc)})")


def _raise_table_error(path, data, kwargs, columns, names, string_cols, exc):
    """Re-read as text to say exactly which value is not a number; otherwise pass polars' first line on."""
    import polars as pl

    try:
        text = pl.read_csv(data, **{**kwargs, "schema": {c: pl.String for c in columns}})
    except Exception as exc2:
        raise _parse_failure(path, exc2) from None
    ids = text.get_column(columns[0])
    for c in columns[1:]:
        if c in string_cols:
            continue
        col = text.get_column(c)
        bad = (col.cast(pl.Float32, strict=False).is_null() & col.is_not_null()).arg_true()
        if len(bad):
            raise InputError(
                f"{path}: non-numeric value {col[bad[0]]!r} at row {ids[bad[0]]!r}, column {names[columns.index(c) - 1]!r}"
            ) from None
    raise _parse_failure(path, exc) from None
