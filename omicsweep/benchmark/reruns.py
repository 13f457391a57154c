"""Seed re-runs: after a sweep, its best configuration trained again with fresh seeds.

The leaderboard reports test metrics as mean +/- sd over these runs and pairs them by seed across models for a
significance test. The seeds are the same for every model of a sweep seed, so the pairs line up.

A re-run trains the way its trial did, so its numbers are comparable with the trial's: a single-process trial's
re-runs are Ray tasks holding the trial's CPUs and GPUs (side by side); a distributed trial's (DDP, DeepSpeed) go
through the trial's own trainable, `run_trial`, in one Tune experiment, and so through the same Ray Train path
(benchmark/distributed.py) on the same workers. Without a Ray session they run in this process. Each outcome
names the setup it actually trained with (`trial.training_setup`), which the sweep records as the run's tag.
"""

from __future__ import annotations

import dataclasses
import tempfile
import uuid
from pathlib import Path
from typing import Any

from omicsweep.benchmark.trial import TrialContext, execute_trial, training_setup, with_resources
from omicsweep.schema import PREDICTIONS_FILE, RERUN_SEED_KEY

TUNE_ACTOR_CPU = 0.01  # a distributed trial's Tune actor, as in the sweep: its Train workers hold the real CPUs


@dataclasses.dataclass
class RerunOutcome:
    seed: int
    results: list[dict[str, Any]] | None  # every per-epoch result, None when it failed
    error: str | None
    setup: str  # how it trained (trial.training_setup of the context it ran with)
    predictions: bytes | None = None  # its best checkpoint's test_predictions.npz: the leaderboard pairs test cells


def rerun_seeds(sweep_seed: int, n: int) -> list[int]:
    """n fresh training seeds, distinct from the sweep seed and identical for every model of that sweep."""
    return [sweep_seed + 1000 * (i + 1) for i in range(n)]


def _train(context: TrialContext, config: dict[str, Any]) -> tuple[list[dict[str, Any]], bytes | None]:
    """Every result, and the test predictions of the best checkpoint (the last one the fitter handed over)."""
    results: list[dict[str, Any]] = []
    best: dict[str, Any] = {}

    def report(metrics, files):
        results.append(dict(metrics))
        if files and PREDICTIONS_FILE in files:
            best["write"] = files[PREDICTIONS_FILE]

    execute_trial(context, config, with_resources(report))
    if "write" not in best:
        return results, None
    with tempfile.TemporaryDirectory(prefix="omicsweep-rerun-") as tmp:
        path = Path(tmp) / PREDICTIONS_FILE
        best["write"](str(path))
        return results, path.read_bytes()


def run_seed_reruns(context: TrialContext, config: dict[str, Any], seeds: list[int]) -> list[RerunOutcome]:
    """Train `config` once per seed with the trial's strategy and resources; outcomes in seed order."""
    import ray

    context = dataclasses.replace(context, faults=None)  # injected faults are for the sweep's trials only
    config = {k: v for k, v in config.items() if k != "seed"}
    if context.distributed:
        trained = train_through_tune(context, config, seeds, predictions=(found := {}))
        return [RerunOutcome(seed, *trained[seed], training_setup(context), found.get(seed)) for seed in seeds]
    contexts = [dataclasses.replace(context, seed=seed) for seed in seeds]
    if not ray.is_initialized():
        return [_in_process(ctx, config) for ctx in contexts]
    task = ray.remote(num_cpus=context.cpus, num_gpus=context.gpus, max_retries=0)(_train)
    refs = [task.remote(ctx, config) for ctx in contexts]
    outcomes = []
    for ctx, ref in zip(contexts, refs):
        try:
            results, predictions = ray.get(ref)
            outcomes.append(RerunOutcome(ctx.seed, results, None, training_setup(ctx), predictions))
        except Exception as exc:  # a failed re-run is recorded, the others still count
            outcomes.append(RerunOutcome(ctx.seed, None, _last_line(exc), training_setup(ctx)))
    return outcomes


def _in_process(context: TrialContext, config: dict[str, Any]) -> RerunOutcome:
    """One re-run here: on this machine's GPU only when the trial had one and torch sees one."""
    import torch

    if context.gpus > 0 and not torch.cuda.is_available():
        context = dataclasses.replace(context, gpus=0.0)
    try:
        results, predictions = _train(context, config)
        return RerunOutcome(context.seed, results, None, training_setup(context), predictions)
    except Exception as exc:
        return RerunOutcome(context.seed, None, _last_line(exc), training_setup(context))


def train_through_tune(
    context: TrialContext, config: dict[str, Any], seeds: list[int], *, max_epochs: int | None = None,
    storage: str | None = None, predictions: dict[int, bytes] | None = None,
) -> dict[int, tuple[list[dict[str, Any]] | None, str | None]]:
    """seed -> (every result, error) of `config` trained once per seed by the trial's trainable in the current Ray
    session, stopping after `max_epochs` epochs when given (`reproduce` of an ASHA-stopped trial). With
    `predictions`, it is filled with each seed's best-checkpoint test_predictions.npz."""
    from ray import tune

    from omicsweep.benchmark.tune_trial import run_trial

    class Collector(tune.Callback):
        """Every result of every re-run, on the driver, by seed."""

        def __init__(self) -> None:
            self.results: dict[int, list[dict[str, Any]]] = {}

        def on_trial_result(self, iteration, trials, trial, result, **info):
            metrics = {k: v for k, v in result.items() if k != "config"}
            self.results.setdefault(int(trial.config[RERUN_SEED_KEY]), []).append(metrics)

    collector = Collector()
    resources = {"cpu": TUNE_ACTOR_CPU} if context.distributed else {
        "cpu": context.cpus, **({"gpu": context.gpus} if context.gpus else {})}
    storage = storage or context.storage or str(Path(tempfile.gettempdir()) / "omicsweep-reruns")
    grid = tune.Tuner(
        tune.with_resources(tune.with_parameters(run_trial, context=context), resources),
        param_space={**config, RERUN_SEED_KEY: tune.grid_search(list(seeds))},
        tune_config=tune.TuneConfig(reuse_actors=False),
        run_config=tune.RunConfig(
            name=f"reruns-{uuid.uuid4().hex[:8]}", storage_path=storage, callbacks=[collector], verbose=0,
            stop={"training_iteration": max_epochs} if max_epochs else None,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    ).fit()
    errors = {int(result.config[RERUN_SEED_KEY]): result.error for result in grid}
    if predictions is not None:
        for result in grid:
            if result.checkpoint is not None:
                with result.checkpoint.as_directory() as folder:
                    path = Path(folder) / PREDICTIONS_FILE
                    if path.exists():
                        predictions[int(result.config[RERUN_SEED_KEY])] = path.read_bytes()
    trained = {}
    for seed in seeds:
        results, error = collector.results.get(seed), errors.get(seed)
        if error is not None:
            trained[seed] = (None, _last_line(error))
        else:
            trained[seed] = (results, None) if results else (None, "the re-run reported no result")
    return trained


def _last_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__
