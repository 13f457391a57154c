"""Preprocessing recipes applied at ingest, chosen by name: `--preprocess normalize_log1p,hvg:2000`.

A recipe is a small class with `parse(arg)` (checks its argument before any data is read) and `apply(data)`
(returns the transformed data and a provenance entry naming the recipe and its parameters). Recipes run in
the order given. Per-cell recipes (normalize_log1p, scbert_tokens) and gene lists are applied to every cell;
`hvg:N` is fitted on the training split's cells only. Scaling fitted on the training split (min-max, z-score)
is chosen per trial instead (config key `scaling`, see `loader.fit_transform_on_train`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from omicsweep.errors import ConfigError, InputError

OPTION = "--preprocess"
TARGET_SUM = 1e4
SCBERT_MAX_TOKEN = 5  # expression tokens 0..5; token 6 is the mask/pad token (scBERT's 7-token vocabulary)
MISSING_LISTED = 2000  # missing gene names kept in provenance (the count is always exact)


def value_kind(csr: sp.csr_matrix) -> str:
    """'counts' (non-negative integers), 'log' (non-negative non-integers below 50) or 'other'."""
    data = csr.data
    if data.size == 0:
        return "counts"
    if data.min() < 0:
        return "other"
    if np.all(data == np.round(data)):
        return "counts"
    return "log" if data.max() < 50 else "other"


@dataclass(frozen=True)
class Expression:
    """What a recipe sees and returns: the matrix, its gene names, its value kind, and the training rows."""

    matrix: sp.csr_matrix
    genes: np.ndarray
    kind: str  # counts | log | tokens | other
    train: np.ndarray  # bool per row: the cells a fitted recipe may learn from
    source: str = "input"


def _require_counts(data: Expression, spec: str) -> None:
    """Per-cell normalisation needs raw counts; refuse log-scale input rather than log it twice."""
    if data.kind == "counts":
        return
    top = float(data.matrix.data.max()) if data.matrix.nnz else 0.0
    if data.kind in ("log", "tokens"):
        raise InputError(
            f"{OPTION} {spec}: {data.source} is already log-scale ({data.kind}: non-integer values, max {top:.3g}); "
            f"it would be logged twice. Drop {spec}, or ingest the raw counts (e.g. without --raw, or --layer counts)"
        )
    raise InputError(
        f"{OPTION} {spec}: {data.source} does not hold raw counts (negative or large non-integer values, max "
        f"{top:.3g}); {spec} needs counts"
    )


def normalize_total(matrix: sp.csr_matrix, target_sum: float = TARGET_SUM) -> sp.csr_matrix:
    """Each cell scaled to `target_sum` total (scanpy's normalize_total); empty cells stay zero."""
    totals = np.asarray(matrix.sum(axis=1), dtype=np.float64).ravel()
    factors = np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0)
    out = matrix.astype(np.float64, copy=True)
    out.data *= np.repeat(factors, np.diff(out.indptr))
    return out


class Recipe:
    """One preprocessing step. Subclasses set `name`, `usage`, and implement `apply`."""

    name: ClassVar[str]
    usage: ClassVar[str]
    fitted_on_train: ClassVar[bool] = False

    def __init__(self, spec: str) -> None:
        self.spec = spec

    @classmethod
    def parse(cls, arg: str | None, spec: str) -> "Recipe":
        if arg is not None:
            raise ConfigError(f"{OPTION} {spec}: {cls.name} takes no argument; write {cls.usage}")
        return cls(spec)

    def apply(self, data: Expression) -> tuple[Expression, dict[str, Any]]:
        """Transform the expression data; return it with the parameters to record in provenance."""
        raise NotImplementedError  # abstract: every registered recipe subclass overrides it

    def describe(self, entry: dict[str, Any]) -> str:
        """One line for the CLI about what the step did."""
        return self.spec


class NormalizeLog1p(Recipe):
    """normalize_total to 1e4 per cell, then natural log1p (raw counts only)."""

    name, usage = "normalize_log1p", "normalize_log1p"

    def apply(self, data):
        _require_counts(data, self.spec)
        out = normalize_total(data.matrix)
        np.log1p(out.data, out=out.data)
        entry = {"recipe": self.name, "target_sum": TARGET_SUM, "log": "ln(1+x)", "input_kind": data.kind}
        return replace(data, matrix=out.astype(np.float32), kind="log"), entry

    def describe(self, entry):
        return f"{self.spec}: counts scaled to {entry['target_sum']:,.0f} per cell, then ln(1+x)"


class ScbertTokens(Recipe):
    """scBERT's expression tokens: normalize to 1e4, log2(1+x), floor, cap at 5 (token 6 is the mask)."""

    name, usage = "scbert_tokens", "scbert_tokens"

    def apply(self, data):
        _require_counts(data, self.spec)
        out = normalize_total(data.matrix)
        out.data = np.minimum(np.floor(np.log2(1.0 + out.data)), SCBERT_MAX_TOKEN)
        out = out.astype(np.float32)
        out.eliminate_zeros()
        entry = {
            "recipe": self.name, "target_sum": TARGET_SUM, "log": "log2(1+x)", "rounding": "floor",
            "max_token": SCBERT_MAX_TOKEN, "mask_token": SCBERT_MAX_TOKEN + 1, "n_tokens": SCBERT_MAX_TOKEN + 2,
            "input_kind": data.kind,
        }
        return replace(data, matrix=out, kind="tokens"), entry

    def describe(self, entry):
        return (f"{self.spec}: tokens 0..{entry['max_token']} = floor(log2(1 + counts scaled to "
                f"{entry['target_sum']:,.0f})), capped; token {entry['mask_token']} is the mask")


class HighlyVariableGenes(Recipe):
    """The N most variable genes by scanpy's highly_variable_genes (flavor 'seurat'), fitted on training cells."""

    name, usage, fitted_on_train = "hvg", "hvg:N", True

    def __init__(self, spec: str, n_top: int) -> None:
        super().__init__(spec)
        self.n_top = n_top

    @classmethod
    def parse(cls, arg, spec):
        if arg is None or not arg.strip().isdigit() or int(arg) < 1:
            raise ConfigError(f"{OPTION} {spec}: write hvg:N with N a positive number of genes, e.g. hvg:2000")
        return cls(spec, int(arg))

    def apply(self, data):
        import anndata as ad
        import pandas as pd
        import scanpy as sc

        n_genes = data.matrix.shape[1]
        if self.n_top > n_genes:
            raise ConfigError(f"{OPTION} {self.spec}: asks for {self.n_top} genes but the data have only {n_genes}")
        if data.kind == "other":
            raise InputError(
                f"{OPTION} {self.spec}: {data.source} holds negative or non-count values (scaled data?); hvg needs "
                f"counts or log-normalised values"
            )
        n_train = int(data.train.sum())
        if n_train < 2:
            raise ConfigError(f"{OPTION} {self.spec}: hvg is fitted on the training split, which has {n_train} cells")
        train = data.matrix[data.train]
        prepared = "as stored"
        if data.kind == "counts":  # scanpy's seurat flavor expects log-normalised values
            train = normalize_total(train)
            np.log1p(train.data, out=train.data)
            prepared = "normalize_total 1e4 + log1p of the counts (for ranking only)"
        adata = ad.AnnData(X=sp.csr_matrix(train, dtype=np.float32), var=pd.DataFrame(index=pd.Index(data.genes)))
        sc.pp.highly_variable_genes(adata, n_top_genes=self.n_top, flavor="seurat")
        keep = np.flatnonzero(adata.var["highly_variable"].to_numpy())
        entry = {
            "recipe": self.name, "n_top_genes": self.n_top, "flavor": "seurat", "fitted_on": "train",
            "train_cells": n_train, "ranked_on": prepared, "genes_before": n_genes, "genes_after": int(len(keep)),
        }
        return replace(data, matrix=data.matrix[:, keep].tocsr(), genes=data.genes[keep]), entry

    def describe(self, entry):
        return f"{self.spec}: kept {entry['genes_after']} of {entry['genes_before']} genes (fitted on {entry['train_cells']} training cells)"


def read_gene_list(path: Path, known: np.ndarray | None = None) -> tuple[list[str], str | None]:
    """Gene names from a file: one per line, or a table with a header (the column matching `known` best).

    Returns (names in file order without duplicates, the column used or None).
    """
    import gzip

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{OPTION} genes:{path}: gene-list file not found")
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt") as fh:
            lines = [line.rstrip("\r\n") for line in fh if line.strip() and not line.startswith("#")]
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the gene list ({exc})") from None
    if not lines:
        raise InputError(f"{path}: the gene list is empty")
    sep = "\t" if "\t" in lines[0] else ("," if "," in lines[0] else None)
    column = None
    if sep is None:
        names = [line.strip() for line in lines]
    else:
        rows = [[field.strip().strip('"') for field in line.split(sep)] for line in lines]
        header, body = rows[0], rows[1:]
        known_set = set(map(str, known)) if known is not None else set()
        scores = [sum(len(r) > i and r[i] in known_set for r in body) for i in range(len(header))]
        best = int(np.argmax(scores)) if any(scores) else 0
        column = header[best]
        names = [r[best] for r in body if len(r) > best and r[best]]
    return list(dict.fromkeys(names)), column


class GeneList(Recipe):
    """Keep the genes named in a file, in the file's order (e.g. the 978 L1000 landmarks)."""

    name, usage = "genes", "genes:FILE"

    def __init__(self, spec: str, path: Path) -> None:
        super().__init__(spec)
        self.path = path

    @classmethod
    def parse(cls, arg, spec):
        if not arg:
            raise ConfigError(f"{OPTION} {spec}: write genes:FILE with a file of gene names, one per line")
        path = Path(arg).expanduser()
        if not path.is_file():
            raise InputError(f"{OPTION} {spec}: gene-list file {path} not found")
        return cls(spec, path)

    def apply(self, data):
        names, column = read_gene_list(self.path, data.genes)
        index = {g: i for i, g in enumerate(map(str, data.genes))}
        found = [g for g in names if g in index]
        missing = [g for g in names if g not in index]
        if not found:
            raise InputError(
                f"{OPTION} {self.spec}: none of the {len(names)} genes in {self.path} is in {data.source} "
                f"(file: {', '.join(names[:3])}, ...; data: {', '.join(map(str, data.genes[:3]))}, ...)"
            )
        keep = np.asarray([index[g] for g in found], dtype=np.int64)
        entry = {
            "recipe": self.name, "file": str(self.path), "sha256": hashlib.sha256(self.path.read_bytes()).hexdigest(),
            "column": column, "requested": len(names), "found": len(found), "missing": len(missing),
            "missing_genes": missing[:MISSING_LISTED], "genes_before": int(data.matrix.shape[1]),
        }
        return replace(data, matrix=data.matrix[:, keep].tocsr(), genes=data.genes[keep]), entry

    def describe(self, entry):
        text = f"{self.spec}: kept {entry['found']} of {entry['requested']} listed genes"
        if entry["missing"]:
            shown = ", ".join(entry["missing_genes"][:10])
            text += f"; {entry['missing']} missing from the data ({shown}{', ...' if entry['missing'] > 10 else ''})"
        return text


RECIPES: dict[str, type[Recipe]] = {r.name: r for r in (NormalizeLog1p, HighlyVariableGenes, GeneList, ScbertTokens)}


def parse_recipes(text: str | list[str] | None) -> list[Recipe]:
    """`normalize_log1p,hvg:2000` (or a list of such specs) -> recipes; unknown names raise ConfigError."""
    if not text:
        return []
    specs = text if isinstance(text, list) else text.split(",")
    recipes = []
    for spec in (s.strip() for s in specs):
        if not spec:
            continue
        name, _, arg = spec.partition(":")
        cls = RECIPES.get(name.strip().lower())
        if cls is None:
            known = ", ".join(sorted(r.usage for r in RECIPES.values()))
            raise ConfigError(f"{OPTION} {spec!r}: unknown recipe; known: {known}")
        recipes.append(cls.parse(arg if _ else None, spec))
    return recipes


def check_recipes(recipes: list[Recipe], *, has_train: bool, folds: int | None) -> None:
    """Refuse train-fitted recipes where no single training split exists (test-only and k-fold stores)."""
    for recipe in recipes:
        if recipe.fitted_on_train and not has_train:
            raise ConfigError(
                f"{OPTION} {recipe.spec}: fitted on the training split, but a --test-only store has none; "
                f"subset to the training store's genes instead (genes:FILE)"
            )
        if recipe.fitted_on_train and folds:
            raise ConfigError(
                f"{OPTION} {recipe.spec}: fitted on the training split, which differs per fold with --folds; "
                f"it would see the test folds. Use genes:FILE, or a stratified/group split"
            )


def apply_recipes(recipes: list[Recipe], data: Expression) -> tuple[Expression, list[dict[str, Any]], list[str]]:
    """Run the recipes in order; returns the result, their provenance entries and one line per step for the CLI."""
    entries, lines = [], []
    for recipe in recipes:
        data, entry = recipe.apply(data)
        entries.append(entry)
        lines.append(recipe.describe(entry))
    return data, entries, lines
