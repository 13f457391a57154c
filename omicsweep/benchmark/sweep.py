"""A sweep: Ray Tune's Tuner over one model's search space, Optuna TPE proposing, ASHA stopping early.

The sweep never branches on model names: everything model-specific comes from the registry entry and its
search-space file. Tracking goes through a recorder (see `Recorder`), so this module does not know MLflow.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol

from ray.tune import Callback

from omicsweep.benchmark.resume import SweepHistory
from omicsweep.benchmark.space import SearchSpace
from omicsweep.datasets.remote import canonical_location
from omicsweep.benchmark.trial import RESOURCE_KEYS, TrialContext, run_trial, trial_config
from omicsweep.environment import git_commit, package_versions

LOGGED_PREFIXES = ("train_", "val_", "test_")
LOGGED_KEYS = ("epoch", "best_val", "epoch_time_s", "time_total_s", *RESOURCE_KEYS)
CONFIG_TAG = "omicsweep.config"  # the trial's full configuration as JSON: what `omicsweep reproduce` re-runs
STORE_TAG = "omicsweep.store_path"
THREADS_TAG = "omicsweep.threads"
CHECKPOINT_ARTIFACTS = "checkpoint"  # artifact folder of a trial's run holding its best checkpoint


class Recorder(Protocol):
    def start_sweep(self, *, dataset: str, model: str, params: dict[str, Any], tags: dict[str, str]) -> str: ...
    def end_sweep(self, *, status: str, summary: dict[str, float]) -> None: ...
    def start_trial(self, trial_id: str, *, params: dict[str, Any], tags: dict[str, str], role: str = "trial") -> str: ...
    def log_result(self, trial_id: str, metrics: dict[str, Any], *, step: int) -> None: ...
    def end_trial(self, trial_id: str, *, status: str, error: str | None = None) -> None: ...
    def resume_sweep(self, parent_run_id: str) -> list: ...
    def log_artifacts(self, trial_id: str, folder: str, *, artifact_path: str) -> None: ...


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
    seeds: int = 3  # seed re-runs of the best configuration after the sweep (0: none)
    workers_per_trial: int = 1  # Ray Train workers per torch trial (data parallel)
    gpus_per_trial: float = 0.0  # per trial, or per worker with workers_per_trial > 1
    deepspeed: dict[str, Any] | None = None  # DeepSpeed settings: torch trials train through Ray Train with them
    storage: str | None = None  # Ray results and checkpoints (shared path or URL); default run_folder/ray
    max_failures: int = 0  # retries of a trial that raises or whose process dies, before it counts as FAILED
    faults: str | None = None  # chaos tests: benchmark/faults.py
    resume_parent: str | None = None  # the parent run of an interrupted sweep of this model: resume it

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

    def __init__(self, recorder: Recorder, context: TrialContext, progress, *, dataset_files: str | None = None) -> None:
        self.recorder, self.context, self.progress = recorder, context, progress
        self.dataset_files = dataset_files  # folder with genes.txt and classes.json, logged beside each checkpoint
        self.started: dict[str, float] = {}
        self.retries: dict[str, int] = {}
        self.checkpoint_paths: dict[str, str] = {}  # Ray Train trials: rank 0's latest (= best) checkpoint
        self.configs: dict[str, dict[str, Any]] = {}
        self.completed: list[str] = []
        self.last: dict[str, dict[str, Any]] = {}
        self.overheads: list[float] = []
        self.finished = 0
        self.failed = 0
        self.best: float | None = None

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("recorder", "progress")}

    def restore(self, done: list, metric: str) -> None:
        """Count the trials of an interrupted sweep that finished or failed before its driver died."""
        for prior in done:
            self.configs[prior.trial_id] = prior.config
            if prior.status == "FAILED":
                self.failed += 1
                continue
            self.finished += 1
            self.completed.append(prior.trial_id)
            self.last[prior.trial_id] = dict(prior.metrics)
            value = prior.metrics.get("best_val")
            if value is not None and (self.best is None or value > self.best):
                self.best = float(value)

    def on_trial_start(self, iteration, trials, trial, **info):
        if trial.trial_id in self.started:  # restarted after a failure (--max-failures): same run, same record
            self.progress.update(self)
            return
        self.started[trial.trial_id] = time.time()
        config = trial_config(self.context, trial.config)
        self.configs[trial.trial_id] = config
        self.recorder.start_trial(
            trial.trial_id,
            params=config,
            tags={"omicsweep.seed": str(self.context.seed), CONFIG_TAG: config_json(config)},
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
        if result.get("checkpoint_path"):  # a Ray Train trial: its checkpoint lives in Train's storage
            self.checkpoint_paths[trial.trial_id] = str(result["checkpoint_path"])
        self.recorder.log_result(trial.trial_id, metrics, step=int(result.get("training_iteration", 0)))
        value = result.get("best_val")
        if isinstance(value, (int, float)) and (self.best is None or value > self.best):
            self.best = float(value)
        self.progress.update(self)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.finished += 1
        self.completed.append(trial.trial_id)
        last = self.last.get(trial.trial_id, {})
        if "epoch" in last:  # ASHA may have stopped it early: `reproduce` re-runs exactly this many epochs
            epochs = int(last["epoch"])
            self.recorder.log_result(trial.trial_id, {"epochs_run": epochs}, step=epochs)
        try:
            self._log_checkpoint(trial)
        except Exception as exc:  # an artifact store hiccup must not abort the sweep; the metrics are logged
            import warnings

            warnings.warn(f"trial {trial.trial_id}: checkpoint not logged to the tracking store ({exc})", stacklevel=1)
        self.recorder.end_trial(trial.trial_id, status="FINISHED")
        self.progress.update(self)

    def _log_checkpoint(self, trial) -> None:
        """The trial's best checkpoint (the only one kept) and the store's genes/classes as run artifacts."""
        checkpoint = getattr(trial, "checkpoint", None)
        if checkpoint is None and trial.trial_id in self.checkpoint_paths:
            checkpoint = _train_checkpoint(self.checkpoint_paths[trial.trial_id], self.context.storage)
        if checkpoint is None:
            return
        folder = checkpoint.path
        if not os.path.isdir(folder):  # remote storage: fetch a local copy first
            folder = checkpoint.to_directory()
        self.recorder.log_artifacts(trial.trial_id, folder, artifact_path=CHECKPOINT_ARTIFACTS)
        if self.dataset_files:
            self.recorder.log_artifacts(trial.trial_id, self.dataset_files, artifact_path=CHECKPOINT_ARTIFACTS)

    def on_trial_recover(self, iteration, trials, trial, **info):
        """A failed trial Tune will retry: counted on its run, which stays open for the next attempt."""
        self.retries[trial.trial_id] = self.retries.get(trial.trial_id, 0) + 1
        self.recorder.log_result(trial.trial_id, {"retries": self.retries[trial.trial_id]}, step=0)
        self.progress.update(self)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.failed += 1
        self.recorder.end_trial(trial.trial_id, status="FAILED", error=_read_error(trial))
        self.progress.update(self)


def _train_checkpoint(path: str, storage: str | None):
    """A Ray Train checkpoint path as Tune reported it (no scheme for remote storage) as a Checkpoint."""
    from ray import tune

    if os.path.isdir(path) or not storage or "://" not in storage:
        return tune.Checkpoint(path)
    import pyarrow.fs

    filesystem, _ = pyarrow.fs.FileSystem.from_uri(storage)
    return tune.Checkpoint(path, filesystem=filesystem)


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


def _trial_context(request: SweepRequest, defaults: dict[str, Any]) -> TrialContext:
    """What every trial of the sweep shares; distributed strategies apply to torch models only."""
    from omicsweep.models import get_model

    torch_model = get_model(request.model).family == "torch"
    return TrialContext(
        store_path=canonical_location(request.store_path),
        fingerprint=request.fingerprint,
        model=request.model,
        defaults=defaults,
        seed=request.seed,
        metric=request.metric,
        threads=max(1, int(request.cpus_per_trial)),
        workers=request.workers_per_trial if torch_model else 1,
        cpus=request.cpus_per_trial,
        gpus=request.gpus_per_trial,
        deepspeed=request.deepspeed if torch_model else None,
        storage=sweep_storage(request),
        faults=request.faults,
        fault_dir=str(Path(request.run_folder).resolve() / "faults"),
    )


def sweep_storage(request: SweepRequest) -> str:
    return request.storage or str((Path(request.run_folder) / "ray").resolve())


def _trainable(request: SweepRequest, context: TrialContext):
    """run_trial with its Tune resources: a distributed trial asks for almost nothing, its Train workers ask."""
    from ray import tune

    if context.distributed:
        resources: dict[str, float] = {"cpu": 0.01}  # Train V2 rejects 0; the workers reserve the real CPUs
    else:
        resources = {"cpu": request.cpus_per_trial, **({"gpu": request.gpus_per_trial} if request.gpus_per_trial else {})}
    return tune.with_resources(tune.with_parameters(run_trial, context=context), resources)


def _search_alg(request: SweepRequest, dims: dict[str, Any], history: SweepHistory | None):
    """TPE seeded from the sweep seed (ConcurrencyLimiter keeps proposals in a fixed order per seed), starting
    from a resumed sweep's history."""
    from optuna.samplers import TPESampler
    from ray.tune.search import ConcurrencyLimiter

    from omicsweep.benchmark.resume import HistoryOptunaSearch, searched_params

    if not dims:
        return None
    names, metric = list(dims), f"val_{request.metric}"
    done = history.done() if history else []
    past = [(searched_params(t.config, names), t.metrics.get(metric) if t.status == "FINISHED" else None) for t in done]
    requeue = [searched_params(t.config, names) for t in (history.interrupted() if history else [])]
    searcher = HistoryOptunaSearch(sampler=TPESampler(seed=sampler_seed(request.seed, len(past))), history=past,
                                   requeue=requeue)
    return ConcurrencyLimiter(searcher, request.concurrency)


def sampler_seed(sweep_seed: int, n_restored: int) -> int:
    """The sweep seed itself for a fresh sweep (the same seed proposes the same configurations); after a resume
    a seed derived from it and the trials restored, since TPE's random start-up would otherwise draw the killed
    driver's first proposals again (its RNG state died with it)."""
    if n_restored == 0:
        return sweep_seed
    import numpy as np

    return int(np.random.SeedSequence([sweep_seed, n_restored]).generate_state(1)[0])


def _open_sweep(request: SweepRequest, recorder: Recorder, context: TrialContext, name: str) -> SweepHistory | None:
    """Start the sweep's parent run, or reopen an interrupted one; note it in the run folder's state."""
    from omicsweep.benchmark.resume import SweepHistory, sweep_key, update_state

    key = sweep_key(request.dataset, request.model)
    if request.resume_parent:
        history = SweepHistory(request.resume_parent, recorder.resume_sweep(request.resume_parent))
        update_state(request.run_folder, key, status="running", resumed=True)
        return history
    defaults = context.defaults
    parent = recorder.start_sweep(
        dataset=request.dataset,
        model=request.model,
        params={"trials": request.n_trials, "concurrency": request.concurrency, "metric": f"val_{request.metric}",
                "seed": request.seed, "space_file": str(request.space.path), "ray_experiment": name,
                "workers_per_trial": context.workers, "gpus_per_trial": context.gpus,
                "deepspeed": _json(context.deepspeed), "max_failures": request.max_failures,
                **{f"default.{k}": v for k, v in defaults.items()}},
        tags={
            "omicsweep.fingerprint": request.fingerprint,
            STORE_TAG: context.store_path,
            THREADS_TAG: str(context.threads),
            "omicsweep.seed": str(request.seed),
            "omicsweep.metric": f"val_{request.metric}",
            "omicsweep.code_version": git_commit(),
            "omicsweep.packages": _json(package_versions()),
        },
    )
    update_state(request.run_folder, key, parent_run_id=parent, status="running")
    return None


def run_sweep(request: SweepRequest, recorder: Recorder, *, progress=None) -> SweepOutcome:
    """Run one (dataset, model) sweep in the current Ray session; returns counts, timing and the best value."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    import optuna

    from omicsweep.benchmark.resume import sweep_key, update_state

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # a failed trial's traceback is Tune's ERROR log line; its last line is recorded in MLflow and printed by
    # the leaderboard, so the console is not flooded when many trials fail (--max-failures, --inject-faults)
    logging.getLogger("ray.tune.execution.tune_controller").setLevel(logging.CRITICAL)
    progress = progress or NullProgress()
    defaults = dict(request.space.defaults)
    if request.max_epochs is not None:
        defaults["max_epochs"] = request.max_epochs
    context = _trial_context(request, defaults)
    metric, dims = f"val_{request.metric}", request.space.to_tune()
    max_t = int(defaults.get("max_epochs", 1))
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=max(1, max_t), grace_period=1, reduction_factor=3)
    dataset_files = tempfile.TemporaryDirectory(prefix="omicsweep-dataset-")
    write_dataset_files(request.store_path, Path(dataset_files.name))
    tracker = TrackingCallback(recorder, context, progress, dataset_files=dataset_files.name)
    name = f"{request.dataset}-{request.model}-{time.strftime('%Y%m%d-%H%M%S')}"
    history = _open_sweep(request, recorder, context, name)
    if history is not None:
        tracker.restore(history.done(), metric)
    remaining = request.n_trials - (len(history.done()) if history else 0)
    started = time.time()
    status, wall, rerun_wall = "FAILED", None, None
    try:
        if remaining > 0:
            tune.Tuner(
                _trainable(request, context),
                param_space=dims,
                tune_config=tune.TuneConfig(
                    metric=metric, mode="max", search_alg=_search_alg(request, dims, history), scheduler=scheduler,
                    num_samples=remaining, max_concurrent_trials=None if dims else request.concurrency,
                    # a finished trial's worker takes the next one (no per-trial process start); a distributed
                    # trial's Tune actor only waits on its Train run, so a fresh one is as cheap and cleaner
                    reuse_actors=not context.distributed,
                ),
                run_config=tune.RunConfig(
                    name=name + ("-resumed" if history else ""),
                    storage_path=sweep_storage(request),
                    callbacks=[tracker],
                    verbose=0,
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                    failure_config=tune.FailureConfig(max_failures=request.max_failures),
                ),
            ).fit()
        status = "FINISHED"
        wall = time.time() - started
        rerun_wall = record_seed_reruns(request, recorder, tracker, done=history.reruns_done() if history else set())
    finally:
        dataset_files.cleanup()
        wall = time.time() - started if wall is None else wall
        summary = {"wall_time_s": wall, "trials_finished": tracker.finished, "trials_failed": tracker.failed}
        if rerun_wall is not None:
            summary["rerun_wall_s"] = rerun_wall
        if history is not None:  # the wall time spans the interrupted part too (up to its last tracked trial)
            summary["restored_trials"] = len(history.done())
            summary["wall_time_s"] = wall + float(getattr(recorder, "wall_before_resume_s", 0.0))
        recorder.end_sweep(status=status, summary=summary)
        update_state(request.run_folder, sweep_key(request.dataset, request.model), status=status.lower())
    return SweepOutcome(
        model=request.model, dataset=request.dataset, trials_finished=tracker.finished,
        trials_failed=tracker.failed, wall_time_s=wall, best_value=tracker.best, overheads_s=tracker.overheads,
    )


def best_trial(tracker: TrackingCallback) -> str | None:
    """The completed trial with the highest best validation value (selection never looks at test)."""
    scored = [(float(tracker.last[t]["best_val"]), t) for t in tracker.completed if "best_val" in tracker.last.get(t, {})]
    return max(scored)[1] if scored else None


def record_seed_reruns(
    request: SweepRequest, recorder: Recorder, tracker: TrackingCallback, *, done: set[int] = frozenset()
) -> float | None:
    """Re-run the best configuration with `request.seeds` fresh seeds, each a child run of role 'seed-rerun'
    (seeds in `done` were recorded before a resumed sweep's driver died)."""
    from omicsweep.benchmark.reruns import RERUN_OF_TAG, RERUN_ROLE, rerun_seeds, run_seed_reruns

    best = best_trial(tracker)
    if request.seeds <= 0 or best is None:
        return None
    started = time.time()
    config = tracker.configs[best]
    seeds = [seed for seed in rerun_seeds(request.seed, request.seeds) if seed not in done]
    if not seeds:
        return None
    for seed, results, error in run_seed_reruns(tracker.context, config, seeds, cpus=request.cpus_per_trial):
        run_key = f"{best}-seed{seed}"
        full = {**config, "seed": seed}
        recorder.start_trial(
            run_key, params=full, role=RERUN_ROLE,
            tags={"omicsweep.seed": str(seed), CONFIG_TAG: config_json(full), RERUN_OF_TAG: best},
        )
        for result in results or []:
            recorder.log_result(run_key, logged_metrics(result), step=int(result.get("epoch", 0)))
        if results:
            epochs = int(results[-1].get("epoch", len(results)))
            recorder.log_result(run_key, {"epochs_run": epochs}, step=epochs)
        recorder.end_trial(run_key, status="FAILED" if error else "FINISHED", error=error)
    return time.time() - started


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _plain(value: Any) -> Any:
    """numpy scalars (from a sampler) as Python values, so JSON keeps their exact value and type."""
    item = getattr(value, "item", None)
    return item() if callable(item) else str(value)


def config_json(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, default=_plain)


def write_dataset_files(store_path: Path, folder: Path) -> None:
    """genes.txt (one name a line, store order) and classes.json: what `predict` needs to align new data."""
    from omicsweep.datasets.store import open_store

    store = open_store(store_path)
    (folder / "genes.txt").write_text("\n".join(store.genes()) + "\n")
    (folder / "classes.json").write_text(json.dumps(
        {"classes": store.classes, "fingerprint": store.fingerprint, "value_kind": store.provenance.get("value_kind")}
    ))
