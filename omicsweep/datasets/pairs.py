"""Ingest a gene-pair label file against an expression store into a pair-task store (atomic: a failure leaves nothing).

Genes are matched by symbol, case-insensitively (CNNC's files are lower-case mouse symbols); pairs with a gene
missing from the expression data are dropped and counted. Splits: a CNNC file's data parts (one TF or gene each)
are cut into `folds` contiguous groups of parts, as CNNC's three-fold script does (`ceil(k * parts / folds)`), so
one part's pairs never straddle train and test; within the other folds the trailing whole parts holding at least
VAL_SHARE of their pairs are the validation split (CNNC: Keras `validation_split=0.2`, the last 20% of the training
arrays, here rounded to whole parts so no part straddles train and validation either). A GGIPNN folder's split is
the one its files give. See `omicsweep.datasets.pair_store` for the layout.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from omicsweep.atomic import replace_folder, temp_sibling
from omicsweep.datasets.pair_files import PairFile, read_pairs
from omicsweep.datasets.pair_store import FORMAT_VERSION, META_KEY, SPLITS, PairTaskStore
from omicsweep.errors import ConfigError, InputError

VAL_SHARE = 0.2


@dataclass
class GeneMatch:
    """Expression column of each pair's genes (-1: not in the expression data), and the gene-level overlap."""

    col_a: np.ndarray
    col_b: np.ndarray
    genes_in_pairs: int
    genes_found: int
    ambiguous: list[str] = field(default_factory=list)  # symbols that differ only in case in the expression data


def match_genes(pairs: PairFile, expression_genes: np.ndarray) -> GeneMatch:
    """Case-insensitive symbol lookup; a symbol present twice in different cases takes its first column."""
    lookup: dict[str, int] = {}
    ambiguous = []
    for column, name in enumerate(np.char.lower(np.asarray(expression_genes, dtype=str))):
        if name in lookup:
            ambiguous.append(str(name))
        else:
            lookup[name] = column
    lower_a, lower_b = np.char.lower(pairs.gene_a), np.char.lower(pairs.gene_b)
    wanted = np.unique(np.concatenate([lower_a, lower_b]))
    found = {name: lookup.get(name, -1) for name in wanted.tolist()}
    col_a = np.array([found[g] for g in lower_a.tolist()], dtype=np.int64)
    col_b = np.array([found[g] for g in lower_b.tolist()], dtype=np.int64)
    return GeneMatch(col_a, col_b, len(wanted), sum(v >= 0 for v in found.values()), ambiguous)


def fold_of_parts(n_parts: int, n_folds: int) -> np.ndarray:
    """Fold of each part: contiguous groups, fold k = parts ceil(k * n / K) .. ceil((k + 1) * n / K) - 1."""
    bounds = [-(-k * n_parts // n_folds) for k in range(n_folds + 1)]
    return np.searchsorted(bounds, np.arange(n_parts), side="right") - 1


def validation_parts(parts: np.ndarray, counts: np.ndarray) -> list[int]:
    """Trailing whole parts (from the last back) until they hold VAL_SHARE of the pairs; a part that would push the
    validation split past 1.5 times its share is skipped, and at least one part is always left for training."""
    target, total, chosen = VAL_SHARE * counts[parts].sum(), 0, []
    for part in parts[::-1]:
        if len(chosen) == len(parts) - 1 or total >= target:
            break
        if total + counts[part] <= 1.5 * target:
            chosen.append(int(part))
            total += counts[part]
    if not chosen:  # every part is large: the smallest one validates
        chosen = [int(parts[np.argmin(counts[parts])])]
    return chosen


def fold_split_table(parts: np.ndarray, n_parts: int, n_folds: int, source: str) -> np.ndarray:
    """Split codes [folds, pairs]: row k holds fold k's parts as test, trailing whole parts of the rest as val."""
    fold = fold_of_parts(n_parts, n_folds)[parts]
    table = np.zeros((n_folds, len(parts)), dtype=np.int8)
    for k in range(n_folds):
        held_out = fold == k
        rest = np.unique(parts[~held_out])
        if not held_out.any() or len(rest) < 2:
            raise InputError(f"{source}: fold {k} of {n_folds} needs test pairs and two other data parts with pairs "
                             f"({int(held_out.sum())} test pairs, {len(rest)} other parts); use fewer --folds")
        val_parts = validation_parts(rest, np.bincount(parts[~held_out], minlength=n_parts))
        table[k, held_out] = SPLITS.index("test")
        table[k, np.isin(parts, val_parts) & ~held_out] = SPLITS.index("val")
    return table


def _fingerprint(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps({k: meta[k] for k in ("format_version", "classes", "genes", "n_folds")}).encode())
    digest.update(str(meta["expression"]["fingerprint"]).encode())
    for key in sorted(arrays):
        digest.update(key.encode())
        digest.update(np.ascontiguousarray(arrays[key]).tobytes())
    return "sha256:" + digest.hexdigest()


def _write_atomically(out: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any], *, overwrite: bool) -> None:
    import zarr

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(out)
    try:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        for key, values in arrays.items():
            root.create_array(key, data=values)
        root.attrs[META_KEY] = meta
        if out.exists() and not overwrite:
            raise InputError(f"{out}: already exists; pass --overwrite to replace it")
        replace_folder(tmp, out)  # the old store stays whole until the new one is in place
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class PairIngestOptions:
    parts_file: Path | None = None
    folds: int = 3
    binary: bool = False  # keep labels 0 and 1 only: drop CNNC's reversed pairs (label 2)
    max_pairs: int | None = None  # seeded random subset of the kept pairs (file order kept)
    seed: int = 0
    overwrite: bool = False


def _kept_pairs(pairs: PairFile, match: GeneMatch, options: PairIngestOptions) -> tuple[np.ndarray, dict[str, int]]:
    found = (match.col_a >= 0) & (match.col_b >= 0)
    counts = {"pairs_read": pairs.n_pairs, "dropped_missing_gene": int((~found).sum())}
    keep = found
    if options.binary:
        if pairs.format != "cnnc":
            raise ConfigError(f"{pairs.source}: --binary applies to CNNC's three-class files; this task is already binary")
        reversed_pairs = pairs.labels == 2
        counts["dropped_reversed"] = int((found & reversed_pairs).sum())
        keep = found & ~reversed_pairs
    kept = np.flatnonzero(keep)
    if options.max_pairs is not None and len(kept) > options.max_pairs:
        counts["dropped_subsample"] = len(kept) - options.max_pairs
        kept = np.sort(np.random.default_rng(options.seed).choice(kept, options.max_pairs, replace=False))
    counts["pairs_kept"] = len(kept)
    return kept, counts


def _split_assignment(pairs: PairFile, kept: np.ndarray, options: PairIngestOptions):
    """(folds, part per kept pair, split table): CNNC's folds of data parts, or the split a GGIPNN folder gives."""
    if pairs.parts is None:
        return 0, np.full(len(kept), -1, dtype=np.int32), pairs.split_codes[kept][None, :].astype(np.int8)
    folds = options.folds if isinstance(options.folds, int) and not isinstance(options.folds, bool) else 0
    if folds < 2:
        raise ConfigError(f"--folds {options.folds}: expected at least 2 folds of data parts")
    part = pairs.parts[kept]
    return folds, part, fold_split_table(part, int(pairs.parts.max()) + 1, folds, pairs.source)


def ingest_pairs(pairs_path: Path, *, expression: Path | str, out: Path, options: PairIngestOptions) -> PairTaskStore:
    """Match a pair file's genes to an expression store and write the pair-task store `out`. Returns it opened."""
    from omicsweep.datasets.remote import canonical_location
    from omicsweep.datasets.store import Store

    out = Path(out)
    if out.exists() and not options.overwrite:
        raise InputError(f"{out}: already exists; pass --overwrite to replace it")
    if options.max_pairs is not None and options.max_pairs < 1:
        raise ConfigError(f"--max-pairs {options.max_pairs}: expected a positive number of pairs")
    pairs = read_pairs(pairs_path, parts_file=options.parts_file)
    store = Store(expression)
    match = match_genes(pairs, store.genes())
    kept, counts = _kept_pairs(pairs, match, options)
    if not len(kept):
        raise InputError(f"{pairs_path}: none of its {pairs.n_pairs} pairs has both genes in {expression} "
                         f"({match.genes_found} of {match.genes_in_pairs} pair genes found among {store.n_genes}); "
                         "check the organism and the gene symbols")
    columns, local = np.unique(np.concatenate([match.col_a[kept], match.col_b[kept]]), return_inverse=True)
    labels = pairs.labels[kept]
    present = np.unique(labels)
    if len(present) < 2:
        raise InputError(f"{pairs_path}: the kept pairs hold a single class ({pairs.classes[present[0]]}); nothing to learn")
    n_folds, part, splits = _split_assignment(pairs, kept, options)
    arrays = {
        "gene_a": local[: len(kept)].astype(np.int32), "gene_b": local[len(kept) :].astype(np.int32),
        "label": labels.astype(np.int64), "part": part.astype(np.int32), "splits": splits,
        "columns": columns.astype(np.int32),
    }
    genes = np.asarray(store.genes(), dtype=str)[columns].tolist()
    counts.update(genes_in_pairs=match.genes_in_pairs, genes_found=match.genes_found, expression_genes=store.n_genes,
                  expression_cells=store.n_cells, ambiguous_symbols=len(match.ambiguous))
    provenance = {
        "source": str(Path(pairs_path).resolve()), "format": pairs.format, "parts_file": pairs.parts_source,
        "binary": options.binary, "max_pairs": options.max_pairs, "seed": options.seed,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    meta = {
        "format_version": FORMAT_VERSION, "task_kind": PairTaskStore.task_kind,
        "classes": [c for i, c in enumerate(pairs.classes) if not (options.binary and i == 2)],
        "genes": genes, "n_folds": n_folds, "counts": counts,
        "expression": {"location": canonical_location(expression), "fingerprint": store.fingerprint},
        "provenance_json": json.dumps(provenance, sort_keys=True),
    }
    meta["fingerprint"] = _fingerprint(meta, arrays)
    _write_atomically(out, arrays, meta, overwrite=options.overwrite)
    return PairTaskStore(out)
