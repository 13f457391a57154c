"""`omicsweep pretrain`: scBERT's Performer pretrained on a corpus store, as a plan (benchmark/pretrain_plan.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from omicsweep.cli.common import DEFAULT_RUNS, Address, CpusPerTrial, Runs, Seed, Settings, Space, TrackingUri, err_console
from omicsweep.cli.common import user_errors


@user_errors
def pretrain(
    corpus: Optional[Path] = typer.Option(None, "--corpus", help="corpus store (omicsweep corpus build, or datasets "
                                          "synth --vocab): its train split streams, its val split scores"),
    runs: Runs = DEFAULT_RUNS,
    trials: Optional[int] = typer.Option(None, min=1, help="a sweep of this many trials over lr, warm-up, mask "
                                         "probability and depth, with ASHA in step groups (default: one run)"),
    concurrency: int = typer.Option(1, min=1, help="sweep trials running at once"),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", min=1, help="optimiser steps per run"),
    eval_every: Optional[int] = typer.Option(None, "--eval-every", min=1,
                                             help="optimiser steps per step group: validation and one result"),
    workers_per_trial: int = typer.Option(1, min=1, help="Ray Train workers per run (data parallel shards)"),
    deepspeed: Optional[Path] = typer.Option(None, help="DeepSpeed JSON (ZeRO stage, bf16, gradient accumulation)"),
    gpus_per_trial: float = typer.Option(0.0, min=0.0, help="GPUs per run, or per worker"),
    seed: Seed = 0,
    set_: Settings = [],
    space: Space = None,
    cpus_per_trial: CpusPerTrial = 1.0,
    max_failures: int = typer.Option(0, min=0, help="retries of a run that fails; it continues from its checkpoint"),
    resume: Optional[Path] = typer.Option(None, help="run folder of an interrupted pretraining: continue it"),
    scheduler: str = typer.Option("asha", help="asha, or none"),
    tracking_uri: TrackingUri = None,
    address: Address = None,
) -> None:
    """Masked expression modelling (scBERT) on a corpus, tracked and swept like every model; prints the board."""
    from omicsweep.benchmark.plan import SweepOptions
    from omicsweep.benchmark.pretrain_plan import build_pretrain_plan, pretrain_options
    from omicsweep.cli.sweep import run_plan
    from omicsweep.errors import ConfigError

    if resume is not None:
        options = SweepOptions.load(resume, address=address)
    elif corpus is None:
        raise ConfigError("--corpus CORPUS.zarr is required (or --resume RUN_FOLDER)")
    else:
        options = pretrain_options(
            corpus=corpus, runs=runs, trials=trials, max_steps=max_steps, eval_every=eval_every, settings=list(set_),
            concurrency=concurrency, workers_per_trial=workers_per_trial, deepspeed=deepspeed,
            gpus_per_trial=gpus_per_trial, seed=seed, space=space, cpus_per_trial=cpus_per_trial,
            max_failures=max_failures, scheduler=scheduler, tracking_uri=tracking_uri, address=address,
        )
    plan = build_pretrain_plan(options, resuming=resume is not None)
    if options.fixed and not plan.resuming:
        plan.options.save()  # a single run is resumable too (`--resume RUNS`)
    outcomes = run_plan(plan)
    for outcome in outcomes:
        err_console.print(f"{outcome.dataset}/{outcome.model}: {outcome.trials_finished} finished, "
                          f"{outcome.trials_failed} failed, {outcome.wall_time_s:.1f}s wall", highlight=False)
    if outcomes and not any(o.trials_finished for o in outcomes):
        raise typer.Exit(code=1)


COMMANDS = {"pretrain": pretrain}
