"""`omicsweep leaderboard | reproduce | predict | export | report`: what a run folder's tracking store holds."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from omicsweep.cli.common import DEFAULT_RUNS, RunId, Runs, TrackingUri, console, tracking_store, user_errors


@user_errors
def leaderboard(
    runs: Runs = DEFAULT_RUNS,
    tracking_uri: TrackingUri = None,
    wide: bool = typer.Option(False, "--wide", help="every column (setup, validation value, rank, balanced accuracy, "
                              "collapse check, F1 over seeds, AUROC, resources); the files always have them"),
) -> None:
    """Print the leaderboard from a tracking store (one section per store and selection metric, then the summary
    across datasets), write it as CSV and Parquet, and refresh its copy in MLflow."""
    from omicsweep.errors import InputError
    from omicsweep.reports.board_mlflow import refresh_leaderboard
    from omicsweep.reports.tracking import default_tracking_uri

    if tracking_uri is None and not (runs / "mlflow.db").exists():
        raise InputError(f"{runs}: no MLflow store (mlflow.db) here; run `omicsweep sweep --runs {runs}` first")
    _, (csv, parquet) = refresh_leaderboard(tracking_uri or default_tracking_uri(runs), runs, console, wide=wide)
    console.print(f"leaderboard: {csv}, {parquet}", highlight=False)


@user_errors
def reproduce(
    run_id: str = typer.Argument(..., help="MLflow run id of a trial (see the leaderboard's best_run_id)"),
    runs: Runs = DEFAULT_RUNS,
    tracking_uri: TrackingUri = None,
    store: Optional[Path] = typer.Option(None, help="the dataset store, if it moved (its fingerprint must match)"),
    workers: Optional[int] = typer.Option(
        None, min=1, help="train on this many workers instead of the trial's (1: in this process); the setup then "
        "differs and the metrics are not expected to match",
    ),
) -> None:
    """Re-run a trial's exact configuration (same seed, store, epochs and training setup where this machine allows)
    and compare every final metric."""
    from rich.table import Table

    from omicsweep.benchmark.reproduce import reproduce as reproduce_trial
    from omicsweep.reports.tracking import read_trial_record
    from omicsweep.schema import TRANSFORM_CACHE

    record = read_trial_record(tracking_store(runs, tracking_uri), run_id)
    # the run folder's fitted transforms (its sweep's): the same statistics, not streamed again
    outcome = reproduce_trial(record, store_path=store, workers=workers, transform_cache=runs / TRANSFORM_CACHE)
    where = f"run {run_id} ({record.dataset}/{record.model}, seed {record.seed}, {outcome.epochs} epoch(s)) on {outcome.store_path}"
    for note in outcome.setup_notes:
        console.print(f"warning: {note}", highlight=False, soft_wrap=True)
    if outcome.setup_differs:
        _print_other_setup(outcome, where)
        raise typer.Exit(code=1)
    if outcome.matched:
        console.print(f"reproduced {where}: all {len(outcome.compared)} metrics match exactly", highlight=False)
        return
    table = Table(title=f"{len(outcome.differences)} of {len(outcome.compared)} metrics differ")
    for column in ("metric", "recorded", "reproduced", "difference"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for diff in outcome.differences:
        delta = "-" if diff.recorded is None or diff.reproduced is None else f"{diff.reproduced - diff.recorded:+.3g}"
        table.add_row(diff.key, repr(diff.recorded), repr(diff.reproduced), delta)
    console.print(f"NOT reproduced: {where}", highlight=False)
    console.print(table)
    if outcome.version_changes:
        for what, before, now in outcome.version_changes:
            console.print(f"  {what}: recorded {before}, now {now}", highlight=False)
    else:
        console.print("  code and package versions are the ones recorded", highlight=False)
    raise typer.Exit(code=1)


def _print_other_setup(outcome, where: str) -> None:
    """A re-run that could not train the way its trial did: its metrics side by side, not as a reproduction."""
    from rich.table import Table

    console.print(f"setup differs: {where} trained as '{outcome.recorded_setup}', this re-run as '{outcome.setup}'; "
                  "the metrics are not expected to match", highlight=False, soft_wrap=True)
    table = Table(title="metrics under a different training setup (not comparable)")
    for column in ("metric", "recorded", "re-run"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for key, (before, now) in outcome.compared.items():
        table.add_row(key, repr(before), repr(now))
    console.print(table)


@user_errors
def predict(
    input: Path = typer.Argument(..., help="what to label: cells (.h5ad or AnnData .zarr), or for a gene-pair model "
                                 "a pair-task store (`omicsweep ingest-pairs`)"),
    run: RunId = ...,
    out: Path = typer.Option(..., "--out", help="file to write (atomic): .h5ad = INPUT plus prediction columns in "
                             "obs, .csv = one row per cell or gene pair"),
    runs: Runs = DEFAULT_RUNS,
    tracking_uri: TrackingUri = None,
    layer: Optional[str] = typer.Option(None, help="use this layer instead of X"),
    raw: bool = typer.Option(False, "--raw", help="use .raw.X instead of X"),
    normalize: str = typer.Option(
        "auto", help="auto (counts into a model trained on log data get cp10k-log1p), none, log1p or cp10k-log1p",
    ),
    truth: Optional[str] = typer.Option(None, help="obs column of known labels: print the agreement"),
    truth_map: Optional[Path] = typer.Option(None, "--truth-map", help="with --truth: JSON {label: model class} or "
                                             "'label,class' lines, for labels named unlike the model's classes"),
) -> None:
    """Label cells with a trained model: genes aligned by name (missing ones zero), the training transform applied.
    A gene-pair model labels every pair of a pair-task store from its images, made as its trial made them."""
    import tempfile

    import numpy as np

    from omicsweep.benchmark import predict as prediction
    from omicsweep.datasets.pair_store import is_pair_store
    from omicsweep.errors import InputError
    from omicsweep.reports.tracking import download_checkpoint, read_trial_record
    from omicsweep.tasks import GENE_PAIR_IMAGE

    uri = tracking_store(runs, tracking_uri)
    record = read_trial_record(uri, run)
    with tempfile.TemporaryDirectory(prefix="omicsweep-predict-") as tmp:
        trained = prediction.load_trained_model(download_checkpoint(uri, run, Path(tmp)), record.model)
    prediction.check_output(trained, out)
    if trained.task.kind == GENE_PAIR_IMAGE:
        _predict_pairs(input, trained, out, f"{record.model} (run {run}")
        return
    if is_pair_store(input):
        raise InputError(f"{input}: is a gene-pair task store, but {record.model} labels cells; pass an h5ad")
    adata, matrix, genes, matrix_name = prediction.read_input(input, layer=layer, use_raw=raw)
    if truth is not None and truth not in adata.obs.columns:
        raise InputError(f"{input}: no obs column {truth!r} for --truth")
    aligned, how = _aligned_cells(input, trained, record, matrix, genes, matrix_name, normalize)
    result = prediction.predict_cells(trained, aligned.matrix)
    info = {
        "run_id": run, "model": record.model, "dataset": record.dataset, "genes_present": aligned.present,
        "genes_missing": aligned.missing, "normalization": how, "matrix": matrix_name,
    }
    prediction.write_predictions(adata, result, out, info=info)
    labels, counts = np.unique(np.asarray(result.labels, dtype=str), return_counts=True)
    console.print(
        f"wrote {out}: {adata.n_obs} cells labelled by {record.model} (run {run}); "
        + ", ".join(f"{label} {n}" for n, label in sorted(zip(counts, labels), key=lambda c: -c[0])),
        highlight=False,
    )
    if truth is not None:
        mapping = prediction.read_label_map(truth_map) if truth_map is not None else None
        _print_agreement(prediction.label_agreement(adata.obs[truth], result.labels, trained.classes, mapping=mapping),
                         truth)


def _aligned_cells(input: Path, trained, record, matrix, genes, matrix_name: str, normalize: str):
    """The input normalised the way the model's training data was, on the model's genes (missing ones zero)."""
    from omicsweep.benchmark import predict as prediction
    from omicsweep.errors import InputError

    if trained.value_kind is None and record.store_path and Path(record.store_path).exists():
        from omicsweep.datasets import Store

        trained.value_kind = Store(record.store_path).provenance.get("value_kind")
    values, how = prediction.normalize(matrix, normalize, trained_kind=trained.value_kind)
    aligned = prediction.align_genes(values, genes, trained.genes)
    console.print(
        f"genes: {aligned.present} of {len(trained.genes)} model genes present in {input.name} "
        f"({len(aligned.missing)} missing, set to 0; {aligned.unused} input genes unused); "
        f"input {matrix_name}, normalization {how}",
        highlight=False,
    )
    if aligned.present == 0:
        raise InputError(f"{input}: none of the model's {len(trained.genes)} genes are in {matrix_name}'s gene names")
    vocabulary = prediction.vocabulary_coverage(trained, aligned, input.name)  # scbert: its own genes, through them
    if vocabulary is not None:
        console.print(vocabulary, highlight=False)
    return aligned, how


def _predict_pairs(input: Path, trained, out: Path, by: str) -> None:
    """A gene-pair model labels every pair of a pair-task store, from images made as its trial made them."""
    from omicsweep.benchmark import predict as prediction

    store = prediction.read_pair_store(input, trained)
    prediction.write_pair_predictions(store, prediction.predict_pairs(trained, store), out)
    console.print(f"wrote {out}: {store.n_samples} gene pairs labelled by {by}; images "
                  f"{store.bins}x{store.bins}, sigma {store.sigma:g})", highlight=False)


def _print_agreement(found, column: str) -> None:
    """--truth: the share of cells whose known label (one the model knows, through --truth-map) is the predicted
    one; and what the cells of each true label were called."""
    console.print(f"agreement with obs[{column!r}]: {found.agreement:.3f} over {found.known} cells whose label the "
                  f"model knows ({found.others} others)", highlight=False)
    for label, n, top in found.table:
        called = ", ".join(f"{name} {count / n:.0%}" for name, count in top)
        console.print(f"  {label} ({n}): {called}", highlight=False)


@user_errors
def export(
    run: RunId = ...,
    name: str = typer.Option(..., "--name", help="registered model name"),
    runs: Runs = DEFAULT_RUNS,
    tracking_uri: TrackingUri = None,
) -> None:
    """Register a trial's model in MLflow's model registry (pyfunc with a gene-column signature)."""
    from omicsweep.reports.export import export_model

    uri = tracking_store(runs, tracking_uri)
    model_uri, version = export_model(uri, run, name)
    console.print(f"registered {name} version {version} from run {run} ({model_uri}); "
                  f"load with mlflow.pyfunc.load_model('models:/{name}/{version}')", highlight=False)


@user_errors
def report(
    out: Path = typer.Option(Path("report.html"), "--out", help="HTML file to write (self-contained)"),
    runs: Runs = DEFAULT_RUNS,
    tracking_uri: TrackingUri = None,
    attach: bool = typer.Option(True, help="also log each plot as an artifact of the MLflow run it describes"),
) -> None:
    """Write one self-contained HTML report: leaderboards and plots per dataset (images embedded)."""
    from omicsweep.reports.figures import collect_figures
    from omicsweep.reports.html import report_html, write_report
    from omicsweep.reports.board_mlflow import publish_report
    from omicsweep.reports.board_mlflow import refresh_leaderboard

    uri = tracking_store(runs, tracking_uri)
    table, _ = refresh_leaderboard(uri, None)
    figures = collect_figures(uri, table, attach_to_runs=attach)
    written = write_report(report_html(table, figures, source=uri), out)
    publish_report(uri, table, written)
    n_figures = sum(len(f.figures) for found in figures.values() for f in found)
    console.print(f"wrote {written}: {len(table)} leaderboard rows, {n_figures} figures", highlight=False)


COMMANDS = {"leaderboard": leaderboard, "reproduce": reproduce, "predict": predict, "export": export,
            "report": report}
