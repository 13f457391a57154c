"""Ingest: read a user file, validate it, filter and encode labels, split, preprocess, and write a store atomically.

Order: matrix checks -> gene names (unique) -> label filters -> split (stratified, group, k-fold or test-only) ->
preprocessing recipes (train-fitted ones see only the training split) -> write. Every check that can fail runs
before the store is written, and the store is written atomically, so a failure leaves nothing. `out` may be an
fsspec URL (s3://bucket/x.zarr): the store is written to a local temporary folder, then uploaded with its root
`zarr.json` last (see `omicsweep.datasets.remote`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from omicsweep.datasets.filters import filter_labels, make_genes_unique
from omicsweep.datasets.preprocess import Expression, apply_recipes, check_recipes, parse_recipes, value_kind
from omicsweep.datasets.readers import READ_INFO_KEY, read_any, read_h5ad  # noqa: F401  (read_h5ad: kept importable here)
from omicsweep.datasets.remote import is_url, staged_store, store_exists
from omicsweep.datasets.splits import (
    TRAIN,
    check_fold_count,
    check_folds,
    fold_to_split,
    group_folds,
    group_split,
    stratified_folds,
    stratified_split,
    test_only_split,
)
from omicsweep.datasets.store import SPLITS, write_store
from omicsweep.datasets.store_layout import StoreLayout, parse_layout
from omicsweep.errors import ConfigError, InputError


def select_matrix(adata, *, layer: str | None, use_raw: bool, source: str):
    """Pick X, a layer, or .raw.X; return (matrix, gene names, description)."""
    if use_raw and layer:
        raise InputError(f"{source}: choose either --layer or --raw, not both")
    if use_raw:
        if adata.raw is None:
            raise InputError(f"{source}: has no .raw matrix")
        return adata.raw.X, np.asarray(adata.raw.var_names, dtype=str), "raw.X"
    if layer:
        if layer not in adata.layers:
            raise InputError(f"{source}: no layer {layer!r}; layers: {', '.join(adata.layers.keys()) or '(none)'}")
        return adata.layers[layer], np.asarray(adata.var_names, dtype=str), f"layers/{layer}"
    return adata.X, np.asarray(adata.var_names, dtype=str), "X"


def validate_matrix(matrix, source: str) -> sp.csr_matrix:
    """CSR float32 with finite values, or an InputError naming the file."""
    if matrix is None:
        raise InputError(f"{source}: the expression matrix is empty")
    csr = sp.csr_matrix(matrix, dtype=np.float32) if not sp.issparse(matrix) else matrix.tocsr().astype(np.float32)
    if csr.shape[0] == 0 or csr.shape[1] == 0:
        raise InputError(f"{source}: the expression matrix is empty ({csr.shape[0]} x {csr.shape[1]})")
    bad = ~np.isfinite(csr.data)
    if bad.any():
        rows = np.searchsorted(csr.indptr, np.flatnonzero(bad)[0], side="right") - 1
        raise InputError(f"{source}: {int(bad.sum())} NaN/inf values in the expression matrix (first in cell {rows})")
    csr.eliminate_zeros()
    return csr


def encode_labels(values, *, label_col: str, source: str, min_classes: int = 2) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Integer codes over sorted class names; cells with a missing label are dropped (mask returned)."""
    import pandas as pd

    series = pd.Series(values)
    keep = series.notna().to_numpy() & (series.astype(str).str.strip() != "").to_numpy()
    names = series[keep].astype(str).to_numpy()
    classes = sorted(set(names))
    if len(classes) < min_classes:
        raise InputError(
            f"{source}: label column {label_col!r} has {len(classes)} class(es) ({', '.join(classes) or 'none'}); "
            f"at least {min_classes} are needed"
        )
    lookup = {name: i for i, name in enumerate(classes)}
    codes = np.fromiter((lookup[n] for n in names), dtype=np.int64, count=len(names))
    return codes, classes, keep


@dataclass(frozen=True)
class IngestOptions:
    """What `omicsweep ingest` does beyond reading: label filters, gene names, split scheme and preprocessing.

    fractions, seed: train/val/test fractions and seed of the split (stratified by class, or by group).
    drop_labels: labels whose cells are removed (case-insensitive, e.g. unknown, NA).
    min_class_size: classes with fewer cells are removed (after drop_labels).
    unique_genes: rename duplicate gene names (GENE-1, ...) instead of refusing them.
    group_col: obs column whose groups (donor, batch) stay whole within one split (or fold).
    folds: K for k-fold: the store records a fold id per cell; a trial picks its test fold (config `fold`).
    test_only: every cell in the test split (an external test set).
    preprocess: recipe specs, e.g. "normalize_log1p,hvg:2000" (see `preprocess.RECIPES`).
    layout: X's on-disk layout, words of `store_layout.parse_layout` (e.g. "shuffled": rows permuted once within
    each split with `seed`, labels, splits and cell ids travelling with their rows); None: the default layout.
    """

    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int = 0
    drop_labels: tuple[str, ...] = ()
    min_class_size: int = 0
    unique_genes: bool = False
    group_col: str | None = None
    folds: int | None = None
    test_only: bool = False
    preprocess: str | tuple[str, ...] | None = None
    layout: str | None = None

    def store_layout(self) -> StoreLayout:
        return parse_layout(self.layout, seed=self.seed)

    def check(self):
        """Option-level checks, before any data is read; returns the parsed recipes."""
        if self.min_class_size < 0:
            raise ConfigError(f"--min-class-size {self.min_class_size}: expected a number of cells >= 0")
        if self.folds is not None:
            check_fold_count(self.folds)
        if self.test_only and (self.folds is not None or self.group_col):
            raise ConfigError("--test-only puts every cell in the test split; --folds and --group-col do not apply")
        self.store_layout()
        recipes = parse_recipes(list(self.preprocess) if isinstance(self.preprocess, tuple) else self.preprocess)
        check_recipes(recipes, has_train=not self.test_only, folds=self.folds)
        return recipes


def _groups(adata, keep: np.ndarray, group_col: str | None, source: str) -> np.ndarray | None:
    if not group_col:
        return None
    if group_col not in adata.obs.columns:
        cols = [str(c) for c in adata.obs.columns]
        listed = ", ".join(cols[:25]) + (", ..." if len(cols) > 25 else "")
        raise InputError(f"--group-col {group_col!r}: no such column in {source}; columns: {listed or '(none)'}")
    values = adata.obs[group_col].to_numpy()[keep]
    missing = np.asarray([v is None or (isinstance(v, float) and np.isnan(v)) or str(v).strip() == "" for v in values])
    if missing.any():
        raise InputError(f"--group-col {group_col!r}: {int(missing.sum())} labelled cells of {source} have no group")
    return np.asarray(values).astype(str)


def _assign_splits(codes, classes, groups, opts: IngestOptions) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """(split codes, fold ids or None, provenance['split'])."""
    info: dict[str, Any] = {"seed": opts.seed, "names": list(SPLITS)}
    if groups is not None:
        info["group_column"] = opts.group_col
        info["groups"] = int(len(np.unique(groups)))
    if opts.test_only:
        return test_only_split(len(codes)), None, {**info, "method": "test-only"}
    if opts.folds is not None:
        check_folds(opts.folds, codes=codes, classes=classes, groups=groups)
        if groups is None:
            folds, method = stratified_folds(codes, folds=opts.folds, seed=opts.seed), "stratified-kfold"
        else:
            folds, method = group_folds(groups, folds=opts.folds, seed=opts.seed), "group-kfold"
        info.update(method=method, folds=opts.folds, fold_sizes=np.bincount(folds, minlength=opts.folds).tolist(),
                    recorded_fold=0, rule="fold i = test, fold i+1 (mod K) = val, the rest train")
        if groups is not None:
            info["fold_groups"] = {str(f): sorted(set(groups[folds == f])) for f in range(opts.folds)}
        return fold_to_split(folds, 0, opts.folds), folds, info
    if groups is not None:
        split = group_split(groups, fractions=opts.fractions, seed=opts.seed)
        info.update(method="group", fractions=list(opts.fractions),
                    split_groups={name: sorted(set(groups[split == i])) for i, name in enumerate(SPLITS)})
        missing = sorted(set(classes[c] for c in np.unique(codes)) - set(classes[c] for c in np.unique(codes[split == TRAIN])))
        if missing:
            info["classes_missing_from_train"] = missing
        return split, None, info
    return stratified_split(codes, fractions=opts.fractions, seed=opts.seed), None, {
        **info, "method": "stratified", "fractions": list(opts.fractions),
    }


def ingest_anndata(
    adata,
    *,
    label_col: str,
    out: Path | str,
    source: str,
    layer: str | None = None,
    use_raw: bool = False,
    fractions: tuple[float, float, float] | None = None,
    seed: int | None = None,
    overwrite: bool = False,
    extra_provenance: dict[str, Any] | None = None,
    options: IngestOptions | None = None,
    messages: list[str] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> str:
    """Validate an in-memory AnnData and write it as a store. Returns the store's fingerprint.

    out: a local path or an fsspec URL (written locally, then uploaded; `storage_options` for its filesystem).
    options: filters, split scheme, preprocessing and layout (`fractions`/`seed` override its fields for convenience).
    messages: when given, receives one line per filter or preprocessing step that changed the data (for the CLI).
    """
    opts = options or IngestOptions()
    if fractions is not None or seed is not None:
        opts = replace(opts, fractions=fractions or opts.fractions, seed=opts.seed if seed is None else seed)
    recipes = opts.check()
    if label_col not in adata.obs.columns:
        raise InputError(
            f"{source}: no label column {label_col!r} in obs; columns: {', '.join(map(str, adata.obs.columns))}"
        )
    matrix, genes, matrix_name = select_matrix(adata, layer=layer, use_raw=use_raw, source=source)
    csr = validate_matrix(matrix, source)
    genes, renamed = make_genes_unique(genes, unique=opts.unique_genes, source=source)
    min_classes = 1 if opts.test_only else 2
    keep, label_report = filter_labels(
        adata.obs[label_col].to_numpy(), label_col=label_col, source=source, drop_labels=opts.drop_labels,
        min_class_size=opts.min_class_size, min_classes=min_classes,
    )
    codes, classes, _ = encode_labels(np.asarray(adata.obs[label_col].to_numpy(), dtype=object)[keep],
                                      label_col=label_col, source=source, min_classes=min_classes)
    groups = _groups(adata, keep, opts.group_col, source)
    csr, cell_ids = csr[keep], np.asarray(adata.obs_names, dtype=str)[keep]
    if len(set(cell_ids)) != len(cell_ids):
        raise InputError(f"{source}: cell ids are not unique")
    split_codes, folds, split_info = _assign_splits(codes, classes, groups, opts)
    input_kind = value_kind(csr)
    data, steps, lines = apply_recipes(recipes, Expression(csr, genes, input_kind, train=split_codes == TRAIN,
                                                           source=source))
    if messages is not None:
        messages.extend(_filter_lines(label_report, renamed) + lines)
    provenance = {
        "source": source, "label_column": label_col, "matrix": matrix_name, "value_kind": data.kind,
        "input_value_kind": input_kind, "preprocessing": steps, **label_report, "genes_renamed_unique": renamed,
        "split": split_info, **(extra_provenance or {}),
    }
    return _write_store_at(
        out, storage_options=storage_options, overwrite=overwrite, matrix=data.matrix, genes=data.genes, codes=codes,
        classes=classes, split_codes=split_codes, cell_ids=cell_ids, provenance=provenance, folds=folds,
        layout=opts.store_layout(),
    )


def _write_store_at(out: Path | str, *, storage_options: dict[str, Any] | None, overwrite: bool, **store) -> str:
    """write_store to a local path, or to a temporary local store that is then uploaded to a URL."""
    if is_url(out):
        with staged_store(str(out), storage_options=storage_options, overwrite=overwrite) as local:
            return write_store(local, overwrite=True, **store)
    return write_store(Path(out), overwrite=overwrite, **store)


def _filter_lines(report: dict[str, Any], renamed: int) -> list[str]:
    lines = []
    if report.get("cells_dropped_by_label"):
        counts = ", ".join(f"{k} {v}" for k, v in report["cells_dropped_by_label"].items())
        lines.append(f"--drop-labels: dropped {sum(report['cells_dropped_by_label'].values())} cells ({counts})")
    if report.get("classes_dropped_small"):
        small = report["classes_dropped_small"]
        lines.append(
            f"--min-class-size {report['min_class_size']}: dropped {len(small)} class(es), "
            f"{report['cells_dropped_small_classes']} cells ({', '.join(f'{k} {v}' for k, v in small.items())})"
        )
    if renamed:
        lines.append(f"--unique-genes: renamed {renamed} duplicate gene names")
    return lines


def ingest_file(
    path: Path,
    *,
    label_col: str,
    out: Path | str,
    layer: str | None = None,
    use_raw: bool = False,
    fractions: tuple[float, float, float] | None = None,
    seed: int | None = None,
    overwrite: bool = False,
    format: str | None = None,
    orient: str = "auto",
    labels_file: Path | None = None,
    options: IngestOptions | None = None,
    messages: list[str] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> str:
    """`omicsweep ingest`: any supported input (see `readers.READERS`) to a store (a local path or a URL).

    format: reader name, default detected from the path; orient: 'rows' | 'columns' | 'auto' for tables and plain
    HDF5; labels_file: a cell id + label table joined by cell id, whose label column is `label_col` (a
    `options.group_col` column of that file comes along too); options, messages: as in `ingest_anndata`.
    """
    path = Path(path)
    opts = options or IngestOptions()
    opts.check()  # bad options fail before a possibly long read
    if not overwrite and store_exists(out if is_url(out) else Path(out), storage_options):
        raise InputError(f"{out}: already exists; pass --overwrite to replace it")
    adata = read_any(
        path, format=format, orient=orient, labels_file=labels_file, label_col=label_col,
        check_values=not (layer or use_raw), unique_genes=opts.unique_genes, extra_cols=(opts.group_col or "",),
    )
    read_info = dict(adata.uns.pop(READ_INFO_KEY, {}))
    return ingest_anndata(
        adata,
        label_col=label_col,
        out=out,
        source=str(path),
        layer=layer,
        use_raw=use_raw,
        fractions=fractions,
        seed=seed,
        overwrite=overwrite,
        extra_provenance={"input": read_info},
        options=opts,
        messages=messages,
        storage_options=storage_options,
    )
