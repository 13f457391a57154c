"""What the sweep's driver records: the tracking callback (Tune -> recorder), the recorder protocol, run tags.

All tracking happens on the driver, from Tune's callbacks, so a SQLite store never sees concurrent writers and
every trial is nested under its sweep's parent run. This module does not know MLflow: reports/tracking.py
implements the recorder.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Protocol

from ray.tune import Callback

from omicsweep.benchmark.trial import TrialContext, trial_config, training_setup
from omicsweep.schema import (
    CHECKPOINT_ARTIFACTS,
    CONFIG_TAG,
    EPOCHS_RUN,
    LOGGED_PREFIXES,
    RESOURCE_KEYS,
    SEARCH_METRIC,
    SEED_TAG,
    TRAINING_SETUP_TAG,
    TRIAL_ROLE,
)

LOGGED_KEYS = ("epoch", SEARCH_METRIC, "epoch_time_s", "time_total_s", *RESOURCE_KEYS)


class Recorder(Protocol):
    def start_sweep(self, *, dataset: str, model: str, params: dict[str, Any], tags: dict[str, str]) -> str: ...
    def end_sweep(self, *, status: str, summary: dict[str, float]) -> None: ...
    def start_trial(
        self, trial_id: str, *, params: dict[str, Any], tags: dict[str, str], role: str = TRIAL_ROLE
    ) -> str: ...
    def log_result(self, trial_id: str, metrics: dict[str, Any], *, step: int) -> None: ...
    def end_trial(self, trial_id: str, *, status: str, error: str | None = None) -> None: ...
    def resume_sweep(self, parent_run_id: str) -> list: ...
    def log_artifacts(self, trial_id: str, folder: str, *, artifact_path: str) -> None: ...


def logged_metrics(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k.startswith(LOGGED_PREFIXES) or k in LOGGED_KEYS}


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
        self.restored = 0  # trials of an interrupted sweep, counted in finished/failed, not started here
        self.checkpoint_paths: dict[str, str] = {}  # Ray Train trials: rank 0's latest (= best) checkpoint
        self.configs: dict[str, dict[str, Any]] = {}
        self.completed: list[str] = []
        self.last: dict[str, dict[str, Any]] = {}
        self.overheads: list[float] = []
        self.finished = 0
        self.failed = 0
        self.best: float | None = None
        self.ended: float | None = None  # when the sweep's last trial so far ended (a grid's pairs end apart)

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("recorder", "progress")}

    def restore(self, done: list) -> None:
        """Count the trials of an interrupted sweep that finished or failed before its driver died."""
        self.restored = len(done)
        for prior in done:
            self.configs[prior.trial_id] = prior.config
            if prior.status == "FAILED":
                self.failed += 1
                continue
            self.finished += 1
            self.completed.append(prior.trial_id)
            self.last[prior.trial_id] = dict(prior.metrics)
            value = prior.metrics.get(SEARCH_METRIC)
            if value is not None and (self.best is None or value > self.best):
                self.best = float(value)

    @property
    def running(self) -> int:
        return len(self.started) - (self.finished + self.failed - self.restored)

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
            tags={SEED_TAG: str(self.context.seed), CONFIG_TAG: config_json(config),
                  TRAINING_SETUP_TAG: training_setup(self.context)},
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
        value = result.get(SEARCH_METRIC)
        if isinstance(value, (int, float)) and (self.best is None or value > self.best):
            self.best = float(value)
        self.progress.update(self)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.finished += 1
        self.ended = time.time()
        self.completed.append(trial.trial_id)
        last = self.last.get(trial.trial_id, {})
        if "epoch" in last:  # ASHA may have stopped it early: `reproduce` re-runs exactly this many epochs
            epochs = int(last["epoch"])
            self.recorder.log_result(trial.trial_id, {EPOCHS_RUN: epochs}, step=epochs)
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
        self.ended = time.time()
        self.recorder.end_trial(trial.trial_id, status="FAILED", error=_read_error(trial))
        self.progress.update(self)


def tune_loggers() -> list[Callback]:
    """Tune's per-result file loggers for a sweep: result.json and params.json in each trial folder (JSON), but not
    progress.csv or TensorBoard event files, which Tune adds by default and nothing here reads: on the driver
    they cost ~40 ms a result (an fsync each for TensorBoard), several times the JSON logger."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback

    return [JsonLoggerCallback(), _off(CSVLoggerCallback)(), _off(TBXLoggerCallback)()]


def _off(logger: type) -> type:
    """A logger callback of `logger`'s type that writes nothing (so Tune does not add a working one)."""

    def nothing(self, *args, **kwargs) -> None:
        pass

    hooks = ("log_trial_start", "log_trial_restore", "log_trial_save", "log_trial_result", "log_trial_end",
             "on_experiment_end")
    return type(f"No{logger.__name__}", (logger,), {"__init__": nothing, **{h: nothing for h in hooks}})


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


def _plain(value: Any) -> Any:
    """numpy scalars (from a sampler) as Python values, so JSON keeps their exact value and type."""
    item = getattr(value, "item", None)
    return item() if callable(item) else str(value)


def config_json(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, default=_plain)
