"""`omicsweep sweep` and `omicsweep train`: options parsed into a plan (benchmark/plan.py), run, then the
leaderboard. `train` is the same plan with one fixed configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from omicsweep.cli.common import (
    DEFAULT_RUNS, Address, CpusPerTrial, Dataset, Ensemble, Metric, Runs, Seed, Settings, Space, TrackingUri,
    console, err_console, note, user_errors,
)


class RichProgress:
    """One bar per (dataset, model) sweep of the plan (all run at once): trials running/done/failed and the best
    value so far, each updated by its sweep's tracking callback. Entering yields one updater per sweep."""

    def __init__(self, sweeps: list[tuple[int, str]]) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=err_console, transient=False,
        )
        self.bars = [PairBar(self.progress, total, label) for total, label in sweeps]

    def __enter__(self) -> list[PairBar]:
        self.progress.start()
        return self.bars

    def __exit__(self, *exc):
        self.progress.stop()


class PairBar:
    """The bar of one sweep: `update(tracker)` is the sweep's progress protocol (benchmark/sweep_tracking.py)."""

    def __init__(self, progress, total: int, label: str) -> None:
        from rich.markup import escape

        self.progress, self.label = progress, escape(label)  # a --vary label's [KEY=VALUE] is no rich style tag
        self.task = progress.add_task(label, total=total)

    def update(self, tracker) -> None:
        best = "-" if tracker.best is None else f"{tracker.best:.3f}"
        self.progress.update(
            self.task, completed=tracker.finished + tracker.failed,
            description=f"{self.label}  running {tracker.running}  done {tracker.finished}  failed {tracker.failed}  "
                        f"best {best}",
        )


Vary = Annotated[Optional[str], typer.Option(
    "--vary", help="KEY=V1,V2: sweep each model that knows KEY once per value, each its own sweep (searcher, ASHA, "
    "--trials, seed re-runs, parent run, leaderboard row), e.g. pretrained=RUN_ID,none; one --vary per sweep")]
DeepSpeedConfig = Annotated[Optional[Path], typer.Option(
    "--deepspeed", help="DeepSpeed JSON config (ZeRO stage, bf16/fp16, gradient_accumulation_steps): torch trials "
    "train with DeepSpeed in Ray Train workers")]


@user_errors
def sweep(
    dataset: str = typer.Option("pbmc68k", help="dataset name or store path, comma-separated names, or "
                                "'all-registered': every (dataset, model) pair runs, all in one Tuner"),
    model: str = typer.Option("mlp", help="registered model name, comma-separated names, or 'all' (each dataset "
                              "gets the named models that fit its task)"),
    trials: int = typer.Option(16, min=1, help="trials per (dataset, model) pair (one where nothing is searched)"),
    concurrency: int = typer.Option(2, min=1, help="trials running at once, over all pairs"),
    seed: Seed = 0,
    metric: Metric = None,
    space: Space = None,
    max_epochs: Optional[int] = typer.Option(None, min=1, help="override max_epochs of every torch model"),
    runs: Runs = DEFAULT_RUNS,
    tracking_uri: TrackingUri = None,
    address: Address = None,
    cpus_per_trial: CpusPerTrial = 1.0,
    reruns: int = typer.Option(3, min=0, help="re-run each model's best configuration with this many fresh seeds "
                               "(0: none)"),
    ensemble: Ensemble = None,
    set_: Settings = [],
    vary: Vary = None,
    workers_per_trial: int = typer.Option(
        1, min=1, help="Ray Train workers per torch trial (data parallel, each streams its own shard of the store)",
    ),
    gpus_per_trial: float = typer.Option(0.0, min=0.0, help="GPUs per trial, or per worker (fractions allowed)"),
    storage: Optional[str] = typer.Option(
        None, help="Ray results and checkpoints: a path shared by all nodes or an s3:// URL (default: run folder)",
    ),
    deepspeed: DeepSpeedConfig = None,
    max_failures: int = typer.Option(0, min=0, help="retries of a trial that raises or dies before it counts as FAILED"),
    resume: Optional[Path] = typer.Option(
        None, help="run folder of an interrupted sweep: finish it with its own options (finished trials are kept)",
    ),
    inject_faults: Optional[str] = typer.Option(
        None, help="chaos testing: KIND:RATE[:once], KIND raise or kill, e.g. raise:0.3 fails ~30% of trials",
    ),
    searcher: str = typer.Option("tpe", help="Optuna sampler proposing the trials: tpe | gp | cmaes | qmc | random"),
    scheduler: str = typer.Option("asha", help="early stopping: asha, or none (every trial to max_epochs)"),
    optuna_storage: Optional[str] = typer.Option(
        None, help="RDB URL for the sweeps' Optuna studies, e.g. postgresql://USER@HOST/DB on a cluster "
        "(default: sqlite:///RUN_FOLDER/optuna.db); optuna-dashboard URL shows them live",
    ),
) -> None:
    """Sweep models over a dataset with Ray Tune + Optuna (TPE by default) + ASHA, tracked in MLflow; print the
    leaderboard."""
    from omicsweep.benchmark.plan import SweepOptions

    if resume is not None:
        options = SweepOptions.load(resume, address=address)
    else:
        options = SweepOptions(
            dataset=dataset, model=model, trials=trials, concurrency=concurrency, seed=seed, metric=metric,
            space=space, max_epochs=max_epochs, runs=runs, tracking_uri=tracking_uri, address=address,
            cpus_per_trial=cpus_per_trial, reruns=reruns, ensemble=ensemble, settings=list(set_), vary=vary,
            workers_per_trial=workers_per_trial, gpus_per_trial=gpus_per_trial, storage=storage, deepspeed=deepspeed,
            max_failures=max_failures, inject_faults=inject_faults, searcher=searcher, scheduler=scheduler,
            optuna_storage=optuna_storage,
        )
    run_plan(_plan(options, resuming=resume is not None))


def _plan(options, *, resuming: bool = False):
    """The plan of `options`, a model config's RUN_ID (scbert's `pretrained`) looked up in its tracking store."""
    from omicsweep.benchmark.plan import build_plan
    from omicsweep.models.scbert import set_run_resolver
    from omicsweep.reports.pretrained import resolver

    set_run_resolver(resolver(options.runs, options.tracking_uri))
    return build_plan(options, resuming=resuming)


@user_errors
def train(
    dataset: Dataset = "pbmc68k",
    model: str = typer.Option(..., help="registered model name"),
    ensemble: Ensemble = None,
    set_: Settings = [],
    seed: Seed = 0,
    metric: Metric = None,
    space: Space = None,
    runs: Runs = DEFAULT_RUNS,
    tracking_uri: TrackingUri = None,
    address: Address = None,
    cpus_per_trial: CpusPerTrial = 1.0,
) -> None:
    """One run of a model's defaults (the study's setting) plus --set overrides: no search, same tracking.

    It is a sweep with nothing to search: one MLflow parent run with one child, one leaderboard row.
    """
    from omicsweep.benchmark.plan import SweepOptions

    options = SweepOptions(
        dataset=dataset, model=model, seed=seed, metric=metric, space=space, runs=runs, tracking_uri=tracking_uri,
        address=address, cpus_per_trial=cpus_per_trial, ensemble=ensemble, settings=list(set_), fixed=True,
    )
    plan = _plan(options)
    outcome, = run_plan(plan)
    err_console.print(
        f"{outcome.dataset}/{outcome.model}: {'finished' if outcome.trials_finished else 'FAILED'} in "
        f"{outcome.wall_time_s:.1f}s wall; overrides of the defaults: {plan.overrides}",
        highlight=False,
    )
    if not outcome.trials_finished:
        raise typer.Exit(code=1)


def run_plan(plan) -> list:
    """Run a plan with MLflow tracking in its run folder and rich progress bars; then refresh the leaderboard."""
    from omicsweep.reports.board_mlflow import refresh_leaderboard
    from omicsweep.reports.tracking import MlflowRecorder, default_tracking_uri

    for line in plan.notes:
        note(line)
    runs = plan.options.runs
    uri = plan.options.tracking_uri or default_tracking_uri(runs)
    outcomes = plan.run(lambda: MlflowRecorder(uri, artifact_root=runs / "mlartifacts"), RichProgress, say=note)
    _, (csv, parquet) = refresh_leaderboard(uri, runs, console)
    console.print(f"leaderboard: {csv}, {parquet}; MLflow: {uri} (run 'leaderboard' of each experiment)",
                  highlight=False)
    return outcomes


COMMANDS = {"sweep": sweep, "train": train}
