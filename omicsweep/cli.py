"""The `omicsweep` command line. User errors print one line and exit 2; nothing half-written is left behind."""

from __future__ import annotations

import functools
import os
import statistics
import sys
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.console import Console

from omicsweep.errors import ConfigError, OmicsweepError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Hyperparameter sweeps and leaderboards for deep learning on gene expression.",
)
datasets_app = typer.Typer(no_args_is_help=True, help="Built-in and stored datasets.")
app.add_typer(datasets_app, name="datasets")
# a pipe or CI log gets a wide table instead of rich's 80-column default
console = Console() if sys.stdout.isatty() else Console(width=160)
err_console = Console(stderr=True) if sys.stderr.isatty() else Console(stderr=True, width=160)

DEFAULT_OUT = Path("omicsweep-runs")


def user_errors(func: Callable) -> Callable:
    """Turn the project's own exceptions into one line on stderr and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except OmicsweepError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=exc.exit_code) from None

    return wrapper


def _parse_fractions(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise ConfigError(f"--split {text!r}: expected three comma-separated numbers, e.g. 0.7,0.15,0.15") from None
    if len(parts) != 3:
        raise ConfigError(f"--split {text!r}: expected three comma-separated numbers, e.g. 0.7,0.15,0.15")
    return parts  # type: ignore[return-value]


@app.command()
@user_errors
def ingest(
    input: Path = typer.Argument(
        ...,
        help="expression input: .h5ad, AnnData .zarr folder, 10x mtx folder, 10x .h5, .loom, .csv/.tsv[.gz], "
        ".gct[.gz], .gctx, or a plain HDF5 matrix (X + label vectors)",
    ),
    label_col: str = typer.Option(
        ..., "--label-col",
        help="the labels: an obs column / table column or row / GCT column-metadata field / HDF5 vector; "
        "with --labels, the column of that file",
    ),
    out: Path = typer.Option(..., "--out", help="zarr store to write (STORE.zarr)"),
    input_format: Optional[str] = typer.Option(
        None, "--format",
        help="h5ad, zarr, 10x-mtx, 10x-h5, loom, csv, tsv, gct, gctx or hdf5 (default: detected from the path)",
    ),
    orient: str = typer.Option(
        "auto", "--orient", help="csv/tsv/hdf5: cells are the 'rows' or the 'columns' of the matrix; auto: from the labels",
    ),
    labels: Optional[Path] = typer.Option(
        None, "--labels", help="file of cell id + label, joined by cell id (--label-col names its column)",
    ),
    layer: Optional[str] = typer.Option(None, help="use this layer instead of X"),
    raw: bool = typer.Option(False, "--raw", help="use .raw.X instead of X"),
    split: str = typer.Option("0.7,0.15,0.15", help="train,val,test fractions (stratified)"),
    seed: int = typer.Option(0, help="seed of the split"),
    overwrite: bool = typer.Option(False, help="replace an existing store"),
) -> None:
    """Ingest an expression file into a chunked zarr store (atomic: a failure leaves nothing)."""
    from omicsweep.datasets import Store, ingest_file
    from omicsweep.datasets.splits import check_fractions

    fractions = check_fractions(_parse_fractions(split))
    ingest_file(
        input, label_col=label_col, out=out, layer=layer, use_raw=raw, fractions=fractions, seed=seed,
        overwrite=overwrite, format=input_format, orient=orient, labels_file=labels,
    )
    summary = Store(out).summary()
    console.print(
        f"wrote {out}: {summary['cells']} cells x {summary['genes']} genes, {len(summary['classes'])} classes, "
        f"splits {summary['splits']}, {summary['fingerprint']}"
    )


@app.command("models")
def list_models() -> None:
    """List the registered models."""
    from rich.table import Table

    from omicsweep.models import available_models, get_model

    table = Table(title="Registered models")
    for column in ("name", "family", "role", "description"):
        table.add_column(column)
    for name in available_models():
        entry = get_model(name)
        table.add_row(entry.name, entry.family, entry.role, entry.description)
    console.print(table)


@datasets_app.command("list")
def datasets_list() -> None:
    """List the built-in datasets."""
    from omicsweep.datasets.builtin import BUILTIN

    for spec in BUILTIN.values():
        console.print(f"[bold]{spec.name}[/]  {spec.description}")


@datasets_app.command("show")
@user_errors
def datasets_show(name: str = typer.Argument(..., help="built-in name or store path")) -> None:
    """Shape, classes, splits, fingerprint and provenance of a dataset."""
    from omicsweep.datasets import Store, resolve_dataset

    _, path = resolve_dataset(name)
    console.print_json(data=Store(path).summary())


@datasets_app.command("synth")
@user_errors
def datasets_synth(
    out: Path = typer.Option(..., "--out", help="zarr store to write"),
    cells: int = typer.Option(1_000_000, min=10, help="number of cells"),
    genes: int = typer.Option(20_000, min=200, help="number of genes"),
    nnz: int = typer.Option(1000, min=1, help="non-zero genes per cell (about)"),
    types: int = typer.Option(20, min=2, help="number of cell types"),
    seed: int = typer.Option(0, help="generator seed"),
    overwrite: bool = typer.Option(False, help="replace an existing store"),
) -> None:
    """Write a synthetic count corpus with cell-type structure, chunk by chunk (memory bounded)."""
    from rich.progress import Progress

    from omicsweep.datasets import Store
    from omicsweep.datasets.synth import write_synthetic

    with Progress(console=err_console, transient=True) as progress:
        task = progress.add_task(f"writing {out}", total=cells)
        write_synthetic(out, cells=cells, genes=genes, nnz_per_cell=nnz, n_types=types, seed=seed,
                        overwrite=overwrite, progress=lambda done: progress.update(task, completed=done))
    summary = Store(out).summary()
    console.print(f"wrote {out}: {summary['cells']} cells x {summary['genes']} genes, {len(summary['classes'])} types, "
                  f"{summary['fingerprint']}", highlight=False)


class RichProgress:
    """Trials running/done/failed and the best value so far, updated by the sweep's callback."""

    def __init__(self, total: int, label: str) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=err_console, transient=False,
        )
        self.label = label
        self.task = self.progress.add_task(label, total=total)

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def update(self, tracker) -> None:
        done = tracker.finished + tracker.failed
        running = len(tracker.started) - done
        best = "-" if tracker.best is None else f"{tracker.best:.3f}"
        self.progress.update(
            self.task, completed=done,
            description=f"{self.label}  running {running}  done {tracker.finished}  failed {tracker.failed}  best {best}",
        )


@app.command()
@user_errors
def sweep(
    dataset: str = typer.Option("pbmc68k", help="built-in dataset name or store path"),
    model: str = typer.Option("mlp", help="registered model name, comma-separated names, or 'all'"),
    trials: int = typer.Option(16, min=1, help="trials per model (models with nothing to search run one)"),
    concurrency: int = typer.Option(2, min=1, help="trials running at once"),
    seed: int = typer.Option(0, help="sweep seed: split, sampler and training seeds derive from it"),
    metric: str = typer.Option("accuracy", help="validation metric to maximise"),
    space: Optional[Path] = typer.Option(None, help="search-space YAML to use instead of the model's own"),
    max_epochs: Optional[int] = typer.Option(None, min=1, help="override max_epochs of every torch model"),
    out: Path = typer.Option(DEFAULT_OUT, help="run folder: Ray results, checkpoints, MLflow store, leaderboard"),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI (default: SQLite in the run folder)"),
    address: Optional[str] = typer.Option(None, help="Ray cluster address; default starts a local Ray"),
    cpus_per_trial: float = typer.Option(1.0, min=0.01, help="CPUs reserved by each trial"),
) -> None:
    """Sweep models over a dataset with Ray Tune + Optuna (TPE) + ASHA, tracked in MLflow; print the leaderboard."""
    from omicsweep.benchmark.metrics import METRIC_NAMES
    from omicsweep.benchmark.space import load_space
    from omicsweep.benchmark.sweep import SweepRequest, ray_session, run_sweep
    from omicsweep.datasets import Store, resolve_dataset
    from omicsweep.models import available_models, get_model
    from omicsweep.reports.leaderboard import build_leaderboard, render_leaderboard, write_leaderboard
    from omicsweep.reports.tracking import MlflowRecorder, default_tracking_uri

    # validate everything before the run folder exists
    names = available_models() if model == "all" else [m.strip() for m in model.split(",") if m.strip()]
    entries = [get_model(n) for n in names]
    if space is not None and len(entries) != 1:
        raise ConfigError("--space applies to a single --model")
    spaces = {e.name: load_space(space or e.space_file) for e in entries}
    if metric not in METRIC_NAMES:
        raise ConfigError(f"--metric {metric!r}: expected one of {', '.join(METRIC_NAMES)}")
    dataset_name, store_path = resolve_dataset(dataset, seed=seed)
    store = Store(store_path)

    out.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri or default_tracking_uri(out)
    outcomes = []
    with ray_session(address=address, num_cpus=os.cpu_count()):
        for entry in entries:
            request = SweepRequest(
                dataset=dataset_name, store_path=store_path, fingerprint=store.fingerprint, model=entry.name,
                space=spaces[entry.name], trials=trials, concurrency=concurrency, seed=seed, metric=metric,
                run_folder=out, cpus_per_trial=cpus_per_trial, max_epochs=max_epochs,
            )
            recorder = MlflowRecorder(uri, artifact_root=out / "mlartifacts")
            with RichProgress(request.n_trials, f"{dataset_name}/{entry.name}") as progress:
                outcome = run_sweep(request, recorder, progress=progress)
            outcomes.append(outcome)
            overhead = "-"
            if outcome.overheads_s:  # the first trial on a worker starts a process; later ones reuse it
                overhead = f"first {outcome.overheads_s[0]:.1f}s, median {statistics.median(outcome.overheads_s):.1f}s"
            err_console.print(
                f"{dataset_name}/{entry.name}: {outcome.trials_finished} finished, {outcome.trials_failed} failed, "
                f"{outcome.wall_time_s:.1f}s wall; trial start-to-first-epoch overhead {overhead}",
                highlight=False,
            )
    table = build_leaderboard(uri)
    render_leaderboard(table, console)
    csv, parquet = write_leaderboard(table, out)
    console.print(f"leaderboard: {csv}, {parquet}; MLflow: {uri}", highlight=False)


@app.command()
@user_errors
def leaderboard(
    out: Path = typer.Option(DEFAULT_OUT, help="run folder holding the MLflow store"),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI (default: SQLite in the run folder)"),
) -> None:
    """Print the leaderboard from a tracking store and write it as CSV and Parquet."""
    from omicsweep.errors import InputError
    from omicsweep.reports.leaderboard import build_leaderboard, render_leaderboard, write_leaderboard
    from omicsweep.reports.tracking import default_tracking_uri

    if tracking_uri is None and not (out / "mlflow.db").exists():
        raise InputError(f"{out}: no MLflow store (mlflow.db) here; run `omicsweep sweep --out {out}` first")
    table = build_leaderboard(tracking_uri or default_tracking_uri(out))
    render_leaderboard(table, console)
    csv, parquet = write_leaderboard(table, out)
    console.print(f"leaderboard: {csv}, {parquet}", highlight=False)


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
