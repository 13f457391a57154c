"""Cell and gene filters applied at ingest: missing and unwanted labels, small classes, duplicate gene names."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from omicsweep.errors import ConfigError, InputError


def _class_list(names: pd.Series) -> str:
    classes = sorted(set(names))
    return ", ".join(classes[:10]) + (", ..." if len(classes) > 10 else "") if classes else "none"


def filter_labels(
    values, *, label_col: str, source: str, drop_labels: list[str] | tuple[str, ...] = (), min_class_size: int = 0,
    min_classes: int = 2,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Which cells to keep, and what was dropped: missing labels, `drop_labels` (case-insensitive), small classes.

    Returns (bool mask per cell, provenance counts). Raises when fewer than `min_classes` classes remain, naming
    the label column (input) or the option that removed them.
    """
    series = pd.Series(values).reset_index(drop=True)
    keep = (series.notna() & (series.astype(str).str.strip() != "")).to_numpy()
    names = series.astype(str)
    report: dict[str, Any] = {"cells_dropped_missing_label": int((~keep).sum())}
    present = names[keep]
    if present.nunique() < min_classes:
        raise InputError(
            f"{source}: label column {label_col!r} has {present.nunique()} class(es) ({_class_list(present)}); "
            f"at least {min_classes} are needed"
        )
    if drop_labels:
        wanted = {d.strip().lower() for d in drop_labels if d.strip()}
        hit = keep & names.str.strip().str.lower().isin(wanted).to_numpy()
        report["drop_labels"] = sorted(wanted)
        report["cells_dropped_by_label"] = {str(k): int(v) for k, v in names[hit].value_counts().sort_index().items()}
        keep &= ~hit
        if names[keep].nunique() < min_classes:
            raise ConfigError(
                f"--drop-labels {','.join(drop_labels)}: leaves {names[keep].nunique()} class(es) "
                f"({_class_list(names[keep])}) in {label_col!r}; at least {min_classes} are needed"
            )
    if min_class_size > 1:
        counts = names[keep].value_counts()
        small = counts[counts < min_class_size].sort_index()
        dropped = keep & names.isin(small.index).to_numpy()
        keep &= ~dropped
        report["min_class_size"] = int(min_class_size)
        report["classes_dropped_small"] = {str(k): int(v) for k, v in small.items()}
        report["cells_dropped_small_classes"] = int(dropped.sum())
        left = names[keep].nunique()
        if left < min_classes:
            raise ConfigError(
                f"--min-class-size {min_class_size}: leaves {left} class(es) ({_class_list(names[keep])}) in "
                f"{label_col!r}; the largest has {int(counts.max())} cells; at least {min_classes} classes are needed"
            )
    return keep, report


def make_genes_unique(genes: np.ndarray, *, unique: bool, source: str) -> tuple[np.ndarray, int]:
    """Gene names as given, or, with `unique`, duplicates renamed GENE-1, GENE-2 (anndata's var_names_make_unique).

    Returns (names, how many were renamed). Without `unique`, duplicates are an InputError.
    """
    index = pd.Index(np.asarray(genes, dtype=str))
    if not index.has_duplicates:
        return np.asarray(index, dtype=str), 0
    if not unique:
        dup = index[index.duplicated()].unique()
        raise InputError(
            f"{source}: gene names are not unique ({len(dup)} duplicated, e.g. {', '.join(map(str, dup[:3]))}); "
            f"pass --unique-genes to rename them (GENE, GENE-1, ...)"
        )
    from anndata.utils import make_index_unique

    renamed = make_index_unique(index, join="-")
    return np.asarray(renamed, dtype=str), int((renamed != index).sum())
