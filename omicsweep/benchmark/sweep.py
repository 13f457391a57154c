"""A sweep: Ray Tune's Tuner over one model's search space, Optuna TPE proposing, ASHA stopping early.

The sweep never branches on model names: everything model-specific comes from the registry entry and its
search-space file. Tracking goes through a recorder (see `Recorder`), so this module does not know MLflow.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol

from ray.tune import Callback

from omicsweep.benchmark.space import SearchSpace
from omicsweep.benchmark.trial import TrialContext, run_trial, trial_config
from omicsweep.environment import git_commit, package_versions

LOGGED_PREFIXES = ("train_", "val_", "test_")
LOGGED_KEYS = ("epoch", "best_val", "epoch_time_s", "time_total_s")


class Recorder(Protocol):
    def start_sweep(self, *, dataset: str, model: str, params: dict[str, Any], tags: dict[str, str]) -> str: ...
    def end_sweep(self, *, status: str, summary: dict[str, float]) -> None: ...
    def start_trial(self, trial_id: str, *, params: dict[str, Any], tags: dict[str, str]) -> str: ...
    def log_result(self, trial_id: str, metrics: dict[str, Any], *, step: int) -> None: ...
    def end_trial(self, trial_id: str, *, status: str, error: str | None = None) -> None: ...


@dataclass
class SweepRequest:
    dataset: str
    store_path: Path
    fingerprint: str
    model: str
    space: SearchSpace
    trials: int
    concurrency: int
    seed: int
    metric: str
    run_folder: Path
    cpus_per_trial: float = 1.0
    max_epochs: int | None = None  # overrides the space's default when set

    @property
    def n_trials(self) -> int:
        return self.space.n_trials(self.trials)


@dataclass
class SweepOutcome:
    model: str
    dataset: str
    trials_finished: int
    trials_failed: int
    wall_time_s: float
    best_value: float | None
    overheads_s: list[float] = field(default_factory=list)


def logged_metrics(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k.startswith(LOGGED_PREFIXES) or k in LOGGED_KEYS}


@contextlib.contextmanager
def ray_session(*, address: str | None, num_cpus: int | None, temp_dir: Path | None = None) -> Iterator[None]:
    """Use a running Ray session as is; otherwise start an embedded one (or connect) and stop it afterwards."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the legacy reporter honours verbose=0; we draw our own
    # we checkpoint only on improvement and keep one; Tune's snapshot-frequency advice does not apply
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if ray.is_initialized():
        yield
        return
    kwargs: dict[str, Any] = {"log_to_driver": False, "include_dashboard": False, "configure_logging": False}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, _temp_dir=str(temp_dir) if temp_dir else None, **kwargs)
    try:
        yield
    finally:
        ray.shutdown()


class TrackingCallback(Callback):
    """Driver-side tracking of every trial: start, per-epoch results, completion or failure.

    Tune pickles its run config (callbacks included) into the experiment folder for restore; the recorder
    and progress display stay out of that state and are supplied again by whoever restores.
    """

    def __init__(self, recorder: Recorder, context: TrialContext, progress) -> None:
        self.recorder, self.context, self.progress = recorder, context, progress
        self.started: dict[str, float] = {}
        self.last: dict[str, dict[str, Any]] = {}
        self.overheads: list[float] = []
        self.finished = 0
        self.failed = 0
        self.best: float | None = None

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("recorder", "progress")}

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started[trial.trial_id] = time.time()
        self.recorder.start_trial(
            trial.trial_id,
            params=trial_config(self.context, trial.config),
            tags={"omicsweep.seed": str(self.context.seed)},
        )
        self.progress.update(self)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        metrics = logged_metrics(result)
        if trial.trial_id not in self.last:
            # trial start to first epoch: worker start-up, imports, data opening; minus the epoch itself
            overhead = time.time() - self.started[trial.trial_id] - float(result.get("epoch_time_s", 0.0))
            self.overheads.append(overhead)
            metrics["overhead_s"] = overhead
        self.last[trial.trial_id] = metrics
        self.recorder.log_result(trial.trial_id, metrics, step=int(result.get("training_iteration", 0)))
        value = result.get("best_val")
        if isinstance(value, (int, float)) and (self.best is None or value > self.best):
            self.best = float(value)
        self.progress.update(self)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.finished += 1
        self.recorder.end_trial(trial.trial_id, status="FINISHED")
        self.progress.update(self)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.failed += 1
        self.recorder.end_trial(trial.trial_id, status="FAILED", error=_read_error(trial))
        self.progress.update(self)


def _read_error(trial) -> str:
    """The last line of a failed trial's traceback, which names the exception."""
    for attr in ("error_msg", "error_message"):
        text = getattr(trial, attr, None)
        if text:
            lines = [line for line in str(text).strip().splitlines() if line.strip()]
            return lines[-1] if lines else str(text)
    path = getattr(trial, "error_file", None)
    if path and os.path.exists(path):
        lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
        return lines[-1] if lines else ""
    return "trial failed"


class NullProgress:
    def update(self, tracker) -> None:  # noqa: D401 - protocol method
        pass


def run_sweep(request: SweepRequest, recorder: Recorder, *, progress=None) -> SweepOutcome:
    """Run one (dataset, model) sweep in the current Ray session; returns counts, timing and the best value."""
    from optuna.samplers import TPESampler
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    progress = progress or NullProgress()
    defaults = dict(request.space.defaults)
    if request.max_epochs is not None:
        defaults["max_epochs"] = request.max_epochs
    context = TrialContext(
        store_path=str(Path(request.store_path).resolve()),
        fingerprint=request.fingerprint,
        model=request.model,
        defaults=defaults,
        seed=request.seed,
        metric=request.metric,
        threads=max(1, int(request.cpus_per_trial)),
    )
    metric = f"val_{request.metric}"
    n_trials = request.n_trials
    dims = request.space.to_tune()
    search_alg = None
    if dims:
        # TPE seeded from the sweep seed; ConcurrencyLimiter keeps proposals in a fixed order per seed
        search_alg = ConcurrencyLimiter(OptunaSearch(sampler=TPESampler(seed=request.seed)), request.concurrency)
    max_t = int(defaults.get("max_epochs", 1))
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=max(1, max_t), grace_period=1, reduction_factor=3)
    tracker = TrackingCallback(recorder, context, progress)
    name = f"{request.dataset}-{request.model}-{time.strftime('%Y%m%d-%H%M%S')}"
    recorder.start_sweep(
        dataset=request.dataset,
        model=request.model,
        params={"trials": n_trials, "concurrency": request.concurrency, "metric": metric, "seed": request.seed,
                "space_file": str(request.space.path), "ray_experiment": name, **{f"default.{k}": v for k, v in defaults.items()}},
        tags={
            "omicsweep.fingerprint": request.fingerprint,
            "omicsweep.seed": str(request.seed),
            "omicsweep.metric": metric,
            "omicsweep.code_version": git_commit(),
            "omicsweep.packages": _json(package_versions()),
        },
    )
    started = time.time()
    status = "FAILED"
    try:
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(run_trial, context=context), {"cpu": request.cpus_per_trial}),
            param_space=dims,
            tune_config=tune.TuneConfig(
                metric=metric, mode="max", search_alg=search_alg, scheduler=scheduler,
                num_samples=n_trials, max_concurrent_trials=None if search_alg else request.concurrency,
                reuse_actors=True,  # a finished trial's worker takes the next one: no per-trial process start
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=str((Path(request.run_folder) / "ray").resolve()),
                callbacks=[tracker],
                verbose=0,
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                failure_config=tune.FailureConfig(max_failures=0),
            ),
        )
        tuner.fit()
        status = "FINISHED"
    finally:
        wall = time.time() - started
        recorder.end_sweep(
            status=status,
            summary={"wall_time_s": wall, "trials_finished": tracker.finished, "trials_failed": tracker.failed},
        )
    return SweepOutcome(
        model=request.model, dataset=request.dataset, trials_finished=tracker.finished,
        trials_failed=tracker.failed, wall_time_s=wall, best_value=tracker.best, overheads_s=tracker.overheads,
    )


def _json(value: Any) -> str:
    import json

    return json.dumps(value, sort_keys=True)
