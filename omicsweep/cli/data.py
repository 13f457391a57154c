"""`omicsweep ingest` and `omicsweep ingest-pairs`: expression files and gene-pair label files into stores."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from omicsweep.cli.common import Overwrite, say, user_errors
from omicsweep.errors import ConfigError


def _parse_fractions(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise ConfigError(f"--split {text!r}: expected three comma-separated numbers, e.g. 0.7,0.15,0.15") from None
    if len(parts) != 3:
        raise ConfigError(f"--split {text!r}: expected three comma-separated numbers, e.g. 0.7,0.15,0.15")
    return parts  # type: ignore[return-value]


# `omicsweep ingest`'s options, declared once here so the command's signature is one line per option
Input = Annotated[Path, typer.Argument(
    help="expression input: .h5ad, AnnData .zarr folder, 10x mtx folder, 10x .h5, .loom, .csv/.tsv[.gz], "
    ".gct[.gz], .gctx, or a plain HDF5 matrix (X + label vectors)")]
LabelCol = Annotated[str, typer.Option(
    "--label-col", help="the labels: an obs column / table column or row / GCT column-metadata field / HDF5 "
    "vector; with --labels, the column of that file")]
OutStore = Annotated[str, typer.Option(
    "--out", help="zarr store to write: STORE.zarr, or an fsspec URL (s3://bucket/STORE.zarr; uploaded when "
    "complete, root zarr.json last)")]
StorageOptions = Annotated[Optional[str], typer.Option(
    "--storage-options", help='URL --out: fsspec options as JSON, e.g. \'{"endpoint_url": "http://127.0.0.1:9000"}\' '
    "(default: $OMICSWEEP_STORAGE_OPTIONS, then the filesystem's own environment)")]
InputFormat = Annotated[Optional[str], typer.Option(
    "--format", help="h5ad, zarr, 10x-mtx, 10x-h5, loom, csv, tsv, gct, gctx or hdf5 (default: detected from the path)")]
Orient = Annotated[str, typer.Option(
    "--orient", help="csv/tsv/hdf5: cells are the 'rows' or the 'columns' of the matrix; auto: from the labels")]
LabelsFile = Annotated[Optional[Path], typer.Option(
    "--labels", help="file of cell id + label, joined by cell id (--label-col names its column)")]
Layer = Annotated[Optional[str], typer.Option("--layer", help="use this layer instead of X")]
Raw = Annotated[bool, typer.Option("--raw", help="use .raw.X instead of X")]
Split = Annotated[str, typer.Option("--split", help="train,val,test fractions (stratified, or by group)")]
SplitSeed = Annotated[int, typer.Option("--seed", help="seed of the split")]
Preprocess = Annotated[Optional[str], typer.Option(
    "--preprocess", help="recipes in order, comma-separated: normalize_log1p (counts: normalize_total 1e4 + log1p), "
    "hvg:N (N highly variable genes fitted on the training split), genes:FILE (keep the genes listed in FILE), "
    "scbert_tokens (scBERT's expression tokens 0..5)")]
DropLabels = Annotated[Optional[str], typer.Option(
    "--drop-labels", help="labels whose cells are dropped, comma-separated, case-insensitive (e.g. unknown,NA)")]
MinClassSize = Annotated[int, typer.Option("--min-class-size", help="drop classes with fewer cells than this")]
UniqueGenes = Annotated[bool, typer.Option(
    "--unique-genes", help="rename duplicate gene names GENE-1, GENE-2, ... instead of refusing them")]
GroupCol = Annotated[Optional[str], typer.Option(
    "--group-col", help="column of groups (donor, batch) kept whole within one split or fold")]
Folds = Annotated[Optional[int], typer.Option(
    "--folds", help="K-fold: record a fold id per cell; a trial's config `fold` picks the test fold")]
TestOnly = Annotated[bool, typer.Option("--test-only", help="every cell in the test split (an external test set)")]
Layout = Annotated[Optional[str], typer.Option(
    "--layout", help="X on disk: shuffled (rows permuted once within each split, with --seed), zstd, lz4, "
    "uint16, legacy; comma-separated")]


@user_errors
def ingest(
    input: Input, label_col: LabelCol, out: OutStore, storage_options: StorageOptions = None,
    input_format: InputFormat = None, orient: Orient = "auto", labels: LabelsFile = None, layer: Layer = None,
    raw: Raw = False, split: Split = "0.7,0.15,0.15", seed: SplitSeed = 0, overwrite: Overwrite = False,
    preprocess: Preprocess = None, drop_labels: DropLabels = None, min_class_size: MinClassSize = 0,
    unique_genes: UniqueGenes = False, group_col: GroupCol = None, folds: Folds = None, test_only: TestOnly = False,
    layout: Layout = None,
) -> None:
    """Ingest an expression file into a chunked zarr store (atomic: a failure leaves nothing)."""
    from omicsweep.datasets import IngestOptions, Store, ingest_file
    from omicsweep.datasets.remote import as_location, parse_storage_options
    from omicsweep.datasets.splits import check_fractions

    fs_options = parse_storage_options(storage_options)
    target = as_location(out)  # a URL stays a string; a path becomes a Path

    fractions = check_fractions(_parse_fractions(split))
    options = IngestOptions(
        fractions=fractions, seed=seed, preprocess=preprocess, min_class_size=min_class_size,
        drop_labels=tuple(d for d in (drop_labels or "").split(",") if d.strip()), unique_genes=unique_genes,
        group_col=group_col, folds=folds, test_only=test_only, layout=layout,
    )
    messages: list[str] = []
    ingest_file(
        input, label_col=label_col, out=target, layer=layer, use_raw=raw, overwrite=overwrite, format=input_format,
        orient=orient, labels_file=labels, options=options, messages=messages, storage_options=fs_options,
    )
    for line in messages:
        say(line)
    summary = Store(target, storage_options=fs_options).summary()
    folds_text = f", folds {summary['folds']}" if "folds" in summary else ""
    say(
        f"wrote {out}: {summary['cells']} cells x {summary['genes']} genes, {len(summary['classes'])} classes, "
        f"splits {summary['splits']}{folds_text}, {summary['fingerprint']}"
    )


@user_errors
def ingest_pairs_command(
    pairs: Path = typer.Argument(
        ..., help="CNNC pair file (geneA<TAB>geneB<TAB>label, .txt[.xz|.gz]; its *_num.txt data parts beside it) "
        "or a GGIPNN folder ({train,valid,test}_text.txt + _label.txt, e.g. gene2vec's)",
    ),
    expression: str = typer.Option(
        ..., "--expression", help="expression store (from `omicsweep ingest`) or dataset name the images are drawn from",
    ),
    out: Path = typer.Option(..., "--out", help="pair-task store to write (a small zarr folder)"),
    parts: Optional[Path] = typer.Option(None, "--parts", help="CNNC data-part boundaries (default: PAIRS' *_num.txt)"),
    folds: int = typer.Option(3, "--folds", help="CNNC: folds of whole data parts (test fold: config `fold`, default 0)"),
    binary: bool = typer.Option(False, "--binary", help="CNNC: keep labels 0 and 1 (drop the reversed pairs, label 2)"),
    max_pairs: Optional[int] = typer.Option(None, "--max-pairs", help="keep a seeded random subset of this many pairs"),
    seed: int = typer.Option(0, help="seed of --max-pairs"),
    overwrite: Overwrite = False,
) -> None:
    """Match a gene-pair label file to an expression store (symbols, case-insensitive) into a pair-task store.

    The images (CNNC's 2-D histograms) are built at trial start for the trial's `bins` and `sigma`."""
    from omicsweep.datasets import resolve_dataset
    from omicsweep.datasets.pairs import PairIngestOptions, ingest_pairs

    expression_name, expression_path = resolve_dataset(expression)
    options = PairIngestOptions(parts_file=parts, folds=folds, binary=binary, max_pairs=max_pairs, seed=seed,
                                overwrite=overwrite)
    store = ingest_pairs(pairs, expression=expression_path, out=out, options=options)
    summary = store.summary()
    c = summary["counts"]
    dropped = ", ".join(f"{c[k]} {what}" for k, what in (
        ("dropped_missing_gene", "with a gene missing from the expression data"),
        ("dropped_reversed", "reversed (--binary)"), ("dropped_subsample", "left out by --max-pairs")) if c.get(k))
    lines = [
        f"genes: {c['genes_found']} of {c['genes_in_pairs']} pair genes found in {expression_name} "
        f"({c['expression_genes']} genes x {c['expression_cells']} cells; symbols matched case-insensitively)",
        f"pairs: {c['pairs_kept']} of {c['pairs_read']} kept" + (f"; dropped {dropped}" if dropped else ""),
        "classes: " + ", ".join(f"{k} {v}" for k, v in summary["classes"].items()),
    ]
    for k, split in enumerate(summary.get("folds", [summary["splits"]])):
        lines.append(f"{'fold ' + str(k) if 'folds' in summary else 'given split'}: "
                     + ", ".join(f"{name} {n}" for name, n in split.items()))
    lines.append(f"wrote {out}: {summary['pairs']} pairs, {summary['task']}, {summary['fingerprint']}")
    for line in lines:
        say(line)


COMMANDS = {"ingest": ingest, "ingest-pairs": ingest_pairs_command}
