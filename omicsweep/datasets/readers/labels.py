"""Labels from a separate file: read a cell id + label table (or one label per line) and join it onto the cells."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from omicsweep.datasets.readers._common import (
    READ_INFO_KEY,
    _first_names,
    _read_text_head,
    _sniff_delimiter,
    _split,
    _why,
)
from omicsweep.errors import InputError


@dataclass
class _LabelTable:
    path: Path
    column: str
    ids: np.ndarray | None  # None: one label per cell, in order
    values: np.ndarray
    extra: dict[str, np.ndarray] | None = None  # other requested columns (e.g. --group-col), when the file has them


def _read_labels_file(
    path: Path, label_col: str | None, known_ids: set[str], extra_cols: tuple[str, ...] = ()
) -> _LabelTable:
    """cell id + label table (csv/tsv, optionally compressed, header optional) or a single column of labels.

    extra_cols: other columns to bring along when the file has a header naming them (e.g. a donor column).
    """
    import polars as pl

    path = Path(path)
    data, head = _read_text_head(path, 2)
    if not head or not head[0].strip():
        raise InputError(f"{path}: the labels file is empty")
    delimiter = _sniff_delimiter(head[0], "\t" if "\t" in head[0] else ",")
    first = _split(head[0], delimiter)
    second = _split(head[1], delimiter) if len(head) > 1 and head[1].strip() else None
    column = label_col or "label"
    has_header, names, id_index, label_index = _labels_layout(path, first, second, label_col, known_ids)
    try:
        df = pl.read_csv(
            data, has_header=False, skip_rows=1 if has_header else 0, separator=delimiter, quote_char='"',
            schema={n: pl.String for n in names}, null_values=["NA"],
        )
    except Exception as exc:
        raise InputError(f"{path}: cannot parse the labels file ({_why(exc)})") from None
    values = df.get_column(names[label_index]).to_numpy()
    header = _header_names(first, second) if has_header and id_index is not None else []
    extra = {c: df.get_column(names[header.index(c)]).to_numpy() for c in extra_cols if c in header[1:]}
    if id_index is None:
        return _LabelTable(path, column, None, values)
    ids = df.get_column(names[id_index])
    if ids.null_count():
        raise InputError(f"{path}: {ids.null_count()} empty cell ids in the labels file")
    dup = ids.filter(ids.is_duplicated())
    if len(dup):
        raise InputError(f"{path}: duplicate cell ids in the labels file ({_first_names(dup.unique(maintain_order=True))})")
    return _LabelTable(path, column, ids.to_numpy().astype(str), values, extra or None)


def _header_names(first: list[str], second: list[str] | None) -> list[str]:
    """Column names of a headed table, with R write.csv's missing corner cell restored (as in _labels_layout)."""
    width = len(second) if second is not None else len(first)
    return ["", *first] if width == len(first) + 1 else first


def _labels_layout(path: Path, first: list[str], second: list[str] | None, label_col: str | None, known_ids: set[str]):
    """From the first two lines: (has a header, column names, id column index or None, label column index)."""
    if len(first) == 1 and (second is None or len(second) == 1):  # one label per line, in cell order
        has_header = label_col is not None and first[0] == label_col
        return has_header, ["_0"], None, 0
    has_header = (label_col is not None and label_col in first) or first[0] not in known_ids
    if has_header:
        header = first
        width = len(second) if second is not None else len(header)
        if width == len(header) + 1:
            header = ["", *header]  # R write.csv: no corner cell
        elif width != len(header):
            raise InputError(f"{path}: the header has {len(header)} fields but line 2 has {width}")
        if label_col is None:
            if len(header) != 2:
                raise InputError(f"{path}: name the label column with --label-col; columns: {', '.join(header[1:])}")
            label_index = 1
        elif label_col in header[1:]:
            label_index = header.index(label_col, 1)
        else:
            cols = ", ".join(header[1:21]) + (", ..." if len(header) > 21 else "")
            raise InputError(f"{path}: no label column {label_col!r} in the labels file; columns: {cols}")
        names = [f"_{i}" for i in range(len(header))]
    else:  # id <sep> label [<sep> ...] without a header: columns are numbered from 1
        if label_col is not None and label_col.isdigit() and 2 <= int(label_col) <= len(first):
            label_index = int(label_col) - 1
        elif len(first) == 2:
            label_index = 1
        else:
            raise InputError(
                f"{path}: the labels file has no header and {len(first)} columns; pick one with --label-col 2..{len(first)}"
            )
        names = [f"_{i}" for i in range(len(first))]
    return has_header, names, 0, label_index


def _transposed(adata):
    """Cells become genes and back; the recorded orientation flips with them."""
    flipped = adata.T.copy()
    info = dict(flipped.uns.get(READ_INFO_KEY, {}))
    info["orient"] = "columns" if info.get("orient", "rows") == "rows" else "rows"
    flipped.uns[READ_INFO_KEY] = info
    return flipped


def _attach_labels(adata, table: _LabelTable, *, source: Path, orient: str, orientable: bool):
    """Join the labels onto the cells (transposing an 'auto' table whose other axis matches); returns AnnData."""
    may_transpose = orientable and orient == "auto"
    if table.ids is None:
        n = len(table.values)
        if n != adata.n_obs:
            if may_transpose and n == adata.n_vars:
                adata = _transposed(adata)
            elif may_transpose:
                raise InputError(
                    f"{table.path}: {n} labels (one per line) match neither the {adata.n_obs} rows nor the "
                    f"{adata.n_vars} columns of {source}"
                )
            else:
                raise InputError(
                    f"{table.path}: {n} labels for {adata.n_obs} cells in {source} (one label per line, in cell order)"
                )
        adata.obs[table.column] = table.values
        return adata
    ids = pd.Index(table.ids)
    hits = adata.obs_names.isin(ids)
    if not hits.any():
        other = adata.var_names.isin(ids).any()
        if other and may_transpose:
            adata = _transposed(adata)
            hits = adata.obs_names.isin(ids)
        elif other and orientable:
            # the reader put the file's orient-axis on the cells, so the ids sit on the other axis
            flip = "columns" if orient == "rows" else "rows"
            raise InputError(
                f"{table.path}: its ids match the {flip} of {source}, not its {orient} (the cells with --orient {orient}); "
                f"use --orient {flip}"
            )
        elif other:
            raise InputError(f"{table.path}: its ids match the genes of {source}, not the cells")
        else:
            raise InputError(
                f"{table.path}: none of its {len(ids)} ids matches a cell id of {source} "
                f"(cells: {_first_names(adata.obs_names)}, ...; labels file: {_first_names(ids)}, ...)"
            )
    lookup = pd.Series(table.values, index=ids)
    adata.obs[table.column] = lookup.reindex(adata.obs_names).to_numpy()
    for name, values in (table.extra or {}).items():
        if name != table.column:
            adata.obs[name] = pd.Series(values, index=ids).reindex(adata.obs_names).to_numpy()
    return adata
