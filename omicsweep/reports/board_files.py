"""Leaderboard tables written atomically (a hidden sibling renamed into place), so a reader never sees half."""

from __future__ import annotations

from pathlib import Path

import polars as pl


def atomic_table(table: pl.DataFrame, path: Path, kind: str) -> Path:
    from omicsweep.atomic import atomic_file

    with atomic_file(path) as tmp:
        if kind == "csv":
            table.write_csv(tmp)
        else:
            table.write_parquet(tmp)
    return Path(path)
