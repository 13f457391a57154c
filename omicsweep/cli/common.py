"""What the commands share: the consoles, the user-error wrapper and the options declared once.

An option used by several commands is one `Annotated` alias here, so its name, help and checks cannot drift
apart: the run folder is `--runs` everywhere; `--out` is only ever a file or store being written.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape

from omicsweep.errors import OmicsweepError

# a pipe or CI log gets a wide table instead of rich's 80-column default
console = Console() if sys.stdout.isatty() else Console(width=160)
err_console = Console(stderr=True) if sys.stderr.isatty() else Console(stderr=True, width=160)

DEFAULT_RUNS = Path("omicsweep-runs")

Runs = Annotated[Path, typer.Option("--runs", help="run folder: Ray results, checkpoints, MLflow store, leaderboard")]
TrackingUri = Annotated[
    Optional[str], typer.Option("--tracking-uri", help="MLflow tracking URI (default: SQLite in the run folder)")]
Address = Annotated[Optional[str], typer.Option("--address", help="Ray cluster address; default starts a local Ray")]
CpusPerTrial = Annotated[float, typer.Option("--cpus-per-trial", min=0.01, help="CPUs (and torch threads) per trial")]
Dataset = Annotated[str, typer.Option("--dataset", help="built-in or registered dataset name, or store path")]
Seed = Annotated[int, typer.Option("--seed", help="seed: split, sampler and training seeds derive from it")]
Metric = Annotated[Optional[str], typer.Option(
    "--metric", help="validation metric to maximise, for early stopping and the best checkpoint (default: the "
    "dataset's: accuracy for cells, balanced_accuracy for gene pairs)")]
Space = Annotated[Optional[Path], typer.Option(
    "--space", help="search-space YAML to use instead of the model's own (train: its defaults)")]
Ensemble = Annotated[Optional[int], typer.Option(
    "--ensemble", min=1, help="members per torch model trial (seeds seed..seed+N-1, probabilities averaged; one row)")]
Settings = Annotated[list[str], typer.Option(
    "--set", help="KEY=VALUE fixed over the model's defaults, out of the search (repeatable; in a sweep it applies "
    "to the models that know KEY; MODEL.KEY=VALUE to one model only), e.g. --set lr=1e-3, --set scbert.lr=1e-3 or "
    "--set graph=../shared/data/string_v12_human_ppi")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="replace an existing store")]
RunId = Annotated[str, typer.Option("--run", help="MLflow run id of a trained trial (see the leaderboard's best_run_id)")]


def user_errors(func: Callable) -> Callable:
    """Turn the project's own exceptions into one line on stderr and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except OmicsweepError as exc:
            # escaped, no emoji: a message quotes user text ("hvg:100" is not :100:, "[x]" is not markup)
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True, emoji=False)
            raise typer.Exit(code=exc.exit_code) from None

    return wrapper


def say(line: str) -> None:
    """A line of the program's own words on stdout (no markup, no highlighting)."""
    console.print(line, highlight=False, soft_wrap=True, markup=False, emoji=False)


def note(line: str) -> None:
    """A note for the user on stderr (progress, warnings), kept off the results on stdout."""
    err_console.print(line, highlight=False, markup=False, soft_wrap=True)


def tracking_store(runs: Path, tracking_uri: Optional[str]) -> str:
    """--tracking-uri, else the SQLite store of the run folder (which must exist)."""
    from omicsweep.errors import InputError
    from omicsweep.reports.tracking import default_tracking_uri

    if tracking_uri:
        return tracking_uri
    if not (runs / "mlflow.db").exists():
        raise InputError(f"{runs}: no MLflow store (mlflow.db) here; pass --runs RUN_FOLDER or --tracking-uri")
    return default_tracking_uri(runs)
