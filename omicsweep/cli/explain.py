"""`omicsweep explain`: which genes a trained attention model attends to, per class (issue 14; docs/explain.md)."""

from __future__ import annotations

from pathlib import Path

import typer

from omicsweep.cli.common import (DEFAULT_RUNS, Dataset, RunId, Runs, TrackingUri, console, note, tracking_store,
                                  user_errors)


@user_errors
def explain(
    run: RunId = ...,
    dataset: Dataset = ...,
    out: Path = typer.Option(..., "--out", help="CSV to write (atomic): class,gene,score,rank; the overlap with "
                             "rank_genes_groups goes beside it as OUT's name + .overlap.csv"),
    top: int = typer.Option(20, "--top", min=1, help="genes per class printed, plotted and compared"),
    split: str = typer.Option("test", "--split", help="the store's split whose cells are explained"),
    runs: Runs = DEFAULT_RUNS,
    tracking_uri: TrackingUri = None,
    attach: bool = typer.Option(True, help="log the plot and CSVs as artifacts of the run (plots/)"),
) -> None:
    """Rank genes by the attention they receive (averaged over heads and layers, summed over each class's cells of
    a split; FAVOR+ column sums in O(genes) memory), beside scanpy's rank_genes_groups on the same cells."""
    import tempfile

    from omicsweep.benchmark import explain as explaining
    from omicsweep.benchmark.predict import load_trained_model
    from omicsweep.datasets import resolve_dataset
    from omicsweep.errors import InputError
    from omicsweep.reports.tracking import download_checkpoint, read_trial_record

    if out.suffix.lower() != ".csv":
        raise InputError(f"--out {out}: explain writes a .csv file")
    uri = tracking_store(runs, tracking_uri)
    record = read_trial_record(uri, run)
    with tempfile.TemporaryDirectory(prefix="omicsweep-explain-") as tmp:
        trained = load_trained_model(download_checkpoint(uri, run, Path(tmp)), record.model)
    explaining.check_explainable(trained.model, record.model)
    store = resolve_dataset(dataset)[1]
    result = explaining.explain_store(trained, store, split=split, top=top)
    overlap_out = out.with_name(out.stem + ".overlap.csv")
    explaining.write_csv(result.table, out)
    explaining.write_csv(result.overlap, overlap_out)
    for line in result.notes:
        note(line)
    _print_top(result, top, f"{record.model} (run {run})")
    console.print(f"wrote {out} ({len(result.table)} rows) and {overlap_out}", highlight=False)
    if attach:
        from omicsweep.reports.importance import publish_explanation, top_genes_png

        png = top_genes_png(result.table, result.reference, top, title=f"{record.model} on {record.dataset}: "
                            f"attention received per class ({split} cells)")
        console.print(f"logged the plot and CSVs: {publish_explanation(uri, run, png, [out, overlap_out])}",
                      highlight=False)


def _print_top(result, top: int, by: str) -> None:
    """Each class's top genes (rich table: rank, gene, score, whether rank_genes_groups has it in its top), then
    the per-class overlap."""
    from rich.table import Table

    table = Table(title=f"top {top} genes per class by attention, {by}")
    for column in ("class", "rank", "gene", "score", f"in rank_genes_groups top {top}"):
        table.add_column(column, justify="right" if column in ("rank", "score") else "left")
    for name, group in result.table.groupby("class", sort=False):
        reference = set(result.reference.get(name, [])[:top])
        for row in group[group["rank"] <= top].itertuples(index=False):
            table.add_row(str(name), str(row.rank), str(row.gene), f"{row.score:.4g}",
                          ("yes" if row.gene in reference else "") if reference else "-")
    console.print(table)
    for row in result.overlap.itertuples(index=False):
        shared = f"{row.overlap}/{top}" if row.overlap is not None and row.overlap == row.overlap else "n/a (< 2 cells)"
        console.print(f"{row[0]}: attention top {top} vs rank_genes_groups top {top}: {shared} shared"
                      + (f" ({row.shared.replace(';', ', ')})" if row.shared else ""), highlight=False, soft_wrap=True)


COMMANDS = {"explain": explain}
