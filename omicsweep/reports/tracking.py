"""MLflow tracking: one parent run per (dataset, model) sweep, one nested child run per trial.

All writes happen on the driver (a Ray Tune callback calls this recorder), so a SQLite store never sees
concurrent writers and trials are always nested under their sweep.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from omicsweep.schema import (
    CHECKPOINT_ARTIFACTS,
    CODE_TAG,
    CONFIG_TAG,
    DATASET_TAG,
    DEGENERATE_METRIC,
    DEGENERATE_TAG,
    EPOCHS_RUN,
    ERROR_TAG,
    FINGERPRINT_TAG,
    METRIC_TAG,
    MODEL_TAG,
    PACKAGES_TAG,
    PARENT_TAG,
    RERUN_ROLE,
    ROLE_TAG,
    SEED_TAG,
    STORE_TAG,
    SWEEP_ROLE,
    THREADS_TAG,
    TRAINING_SETUP_TAG,
    TRIAL_ID_TAG,
    TRIAL_ROLE,
    VAL_PREFIX,
)

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars in a CLI's output


def default_tracking_uri(run_folder: Path) -> str:
    return f"sqlite:///{Path(run_folder).resolve() / 'mlflow.db'}"


def _client(tracking_uri: str):
    import logging

    from mlflow import MlflowClient

    for name in ("alembic", "mlflow.store.db.utils"):  # migration chatter on first open of a SQLite store
        logging.getLogger(name).setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=tracking_uri)


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:6000]


class MlflowRecorder:
    """Implements the sweep's recorder protocol on an MLflow tracking store."""

    def __init__(self, tracking_uri: str, *, artifact_root: Path | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.artifact_root = artifact_root
        self.client = _client(tracking_uri)
        self.parent_id: str | None = None
        self.experiment_id: str | None = None
        self.trial_runs: dict[str, str] = {}
        self._common_tags: dict[str, str] = {}
        self._degenerate: dict[str, str] = {}  # run id -> the degenerate tag last set

    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = None
        if self.artifact_root is not None:
            location = (Path(self.artifact_root).resolve() / name).as_uri()
        return self.client.create_experiment(name, artifact_location=location)

    # ---- sweep ------------------------------------------------------------------------------------------------
    def start_sweep(self, *, dataset: str, model: str, params: dict[str, Any], tags: dict[str, str]) -> str:
        self.experiment_id = self._experiment(dataset)
        self._common_tags = {DATASET_TAG: dataset, MODEL_TAG: model, **tags}
        run = self.client.create_run(
            self.experiment_id, run_name=f"sweep-{model}", tags={**self._common_tags, ROLE_TAG: SWEEP_ROLE}
        )
        self.parent_id = run.info.run_id
        self._log_params(self.parent_id, params)
        return self.parent_id

    def resume_sweep(self, parent_run_id: str, *, tags: dict[str, str] | None = None):
        """Reopen a sweep's parent run after its driver died; returns its child runs as `PriorTrial`s.

        Interrupted children (still RUNNING: their driver never closed them) are deleted, so the trials that
        re-run them are not tracked twice; the others become this recorder's runs again.
        """
        from mlflow.entities import RunStatus

        from omicsweep.benchmark.resume import PriorTrial
        from omicsweep.errors import InputError

        parent = get_run(self.tracking_uri, parent_run_id)
        if parent.data.tags.get(ROLE_TAG) != SWEEP_ROLE:
            raise InputError(f"run {parent_run_id}: not a sweep's parent run")
        self.parent_id, self.experiment_id = parent_run_id, parent.info.experiment_id
        keep = (DATASET_TAG, MODEL_TAG)
        self._common_tags = {k: v for k, v in parent.data.tags.items() if k in keep or k in (tags or {})}
        self._common_tags.update(tags or {})
        self.client.update_run(parent_run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        priors, last_end = [], parent.info.start_time
        for child in self._children(parent_run_id):
            last_end = max(last_end, child.info.end_time or child.info.start_time or 0)
            trial_id, status = child.data.tags.get(TRIAL_ID_TAG, child.info.run_name), child.info.status
            config = json.loads(child.data.tags.get(CONFIG_TAG, "{}"))
            priors.append(PriorTrial(trial_id=trial_id, role=child.data.tags.get(ROLE_TAG, TRIAL_ROLE), status=status,
                                     config=config, metrics=dict(child.data.metrics)))
            if status in ("FINISHED", "FAILED"):
                self.trial_runs[trial_id] = child.info.run_id
            else:
                self.client.delete_run(child.info.run_id)
        self.wall_before_resume_s = max(0.0, (last_end - parent.info.start_time) / 1000)  # the killed driver's part
        return priors

    def _children(self, parent_run_id: str) -> list:
        runs, token = [], None
        while True:
            page = self.client.search_runs(
                [self.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
                max_results=1000, page_token=token,
            )
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def end_sweep(self, *, status: str, summary: dict[str, float]) -> None:
        if self.parent_id is None:
            return
        self.log_metrics(self.parent_id, summary, step=0)
        self.client.set_terminated(self.parent_id, status=status)

    # ---- trials -----------------------------------------------------------------------------------------------
    def start_trial(
        self, trial_id: str, *, params: dict[str, Any], tags: dict[str, str], role: str = TRIAL_ROLE
    ) -> str:
        """A child run of the sweep; role 'trial' (a sampled configuration) or 'seed-rerun' (best one, new seed)."""
        assert self.parent_id is not None, "start_sweep first"
        run = self.client.create_run(
            self.experiment_id,
            run_name=trial_id,
            tags={**self._common_tags, **tags, ROLE_TAG: role, PARENT_TAG: self.parent_id, TRIAL_ID_TAG: trial_id},
        )
        self.trial_runs[trial_id] = run.info.run_id
        self._log_params(run.info.run_id, params)
        return run.info.run_id

    def log_result(self, trial_id: str, metrics: dict[str, Any], *, step: int) -> None:
        self.log_results(trial_id, [(metrics, step)])

    def log_results(self, trial_id: str, results: list[tuple[dict[str, Any], int]]) -> None:
        """Several (metrics, step) results of one trial in one write (benchmark/recorder_queue.py queues them)."""
        run_id = self.trial_runs[trial_id]
        self._log_items(run_id, [item for metrics, step in results for item in _metric_items(metrics, step)])
        for metrics, _ in results:
            if DEGENERATE_METRIC in metrics:  # a tag too, so the MLflow UI and searches show a collapsed model
                flag = "true" if metrics[DEGENERATE_METRIC] else "false"
                if self._degenerate.get(run_id) != flag:
                    self.client.set_tag(run_id, DEGENERATE_TAG, flag)
                    self._degenerate[run_id] = flag

    def end_trial(self, trial_id: str, *, status: str, error: str | None = None) -> None:
        """Close a trial's run; its metrics were logged epoch by epoch as they arrived."""
        run_id = self.trial_runs[trial_id]
        if error:
            self.client.set_tag(run_id, ERROR_TAG, error[:4000])
        self.client.set_terminated(run_id, status=status)

    def log_artifacts(self, trial_id: str, folder: str, *, artifact_path: str) -> None:
        """Copy a folder (a trial's best checkpoint) into the trial run's artifacts under `artifact_path`."""
        self.client.log_artifacts(self.trial_runs[trial_id], str(folder), artifact_path=artifact_path)

    # ---- helpers ----------------------------------------------------------------------------------------------
    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(str(k), _param_value(v)) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[start : start + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, Any], *, step: int) -> None:
        self._log_items(run_id, _metric_items(metrics, step))

    def _log_items(self, run_id: str, items: list) -> None:
        for start in range(0, len(items), 500):
            self.client.log_batch(run_id, metrics=items[start : start + 500])


def _metric_items(metrics: dict[str, Any], step: int) -> list:
    """MLflow Metric entities of a result's finite numbers (booleans and text are not metrics)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [
        Metric(str(k), float(v), now, int(step))
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
    ]


# ---- reading runs back ---------------------------------------------------------------------------------------------


def get_run(tracking_uri: str, run_id: str):
    """The MLflow run, or an InputError naming the store when it is not there."""
    from mlflow.exceptions import MlflowException

    from omicsweep.errors import InputError

    try:
        return _client(tracking_uri).get_run(run_id)
    except MlflowException:
        raise InputError(f"run {run_id}: not found in the tracking store {tracking_uri}") from None


def read_trial_record(tracking_uri: str, run_id: str):
    """A trial's (or seed re-run's) record as `benchmark.reproduce.TrialRecord`: config, seed, store, metrics."""
    from omicsweep.benchmark.reproduce import TrialRecord
    from omicsweep.errors import InputError

    run = get_run(tracking_uri, run_id)
    tags = run.data.tags
    if tags.get(ROLE_TAG) not in (TRIAL_ROLE, RERUN_ROLE):
        raise InputError(f"run {run_id}: not a trial run (role {tags.get(ROLE_TAG)!r}); pass a trial's run id")
    for tag in (CONFIG_TAG, TRAINING_SETUP_TAG):  # every trial and seed re-run the sweep tracks carries both
        if tag not in tags:
            raise InputError(f"run {run_id}: no {tag} tag; not a trial tracked by this version of omicsweep")
    config = json.loads(tags[CONFIG_TAG])
    metric = tags.get(METRIC_TAG, f"{VAL_PREFIX}accuracy").removeprefix(VAL_PREFIX)
    metrics = dict(run.data.metrics)
    epochs = metrics.get(EPOCHS_RUN)
    setup = _recorded_setup(tracking_uri, tags)
    return TrialRecord(
        run_id=run_id,
        model=tags.get(MODEL_TAG, ""),
        dataset=tags.get(DATASET_TAG, ""),
        store_path=tags.get(STORE_TAG),
        fingerprint=tags.get(FINGERPRINT_TAG, ""),
        seed=int(config.get("seed", tags.get(SEED_TAG, 0))),
        metric=metric,
        config=config,
        threads=int(tags.get(THREADS_TAG, 1)),
        epochs_run=int(epochs) if epochs is not None else None,
        metrics=metrics,
        code_version=tags.get(CODE_TAG, "unknown"),
        packages=json.loads(tags[PACKAGES_TAG]) if PACKAGES_TAG in tags else {},
        status=run.info.status,
        **setup,
    )


def _recorded_setup(tracking_uri: str, tags: dict[str, str]) -> dict[str, Any]:
    """How the run trained, as TrialRecord fields: its training-setup tag, with the DeepSpeed settings from its
    sweep's parameters."""
    from omicsweep.benchmark.trial import parse_training_setup

    text = tags[TRAINING_SETUP_TAG]
    parent_id = tags.get(PARENT_TAG)
    deepspeed = None
    if parent_id and text.startswith("deepspeed"):
        deepspeed = json.loads(get_run(tracking_uri, parent_id).data.params.get("deepspeed", "null"))
    setup = parse_training_setup(text)
    return {"training_setup": text, "workers": setup["workers"], "cpus": setup["cpus"], "gpus": setup["gpus"],
            "deepspeed": deepspeed if setup["strategy"] == "deepspeed" else None}


def download_checkpoint(tracking_uri: str, run_id: str, folder: Path) -> Path:
    """A trial run's `checkpoint` artifacts copied into `folder`; an InputError when the run logged none."""
    from mlflow.exceptions import MlflowException

    from omicsweep.errors import InputError

    client = _client(tracking_uri)
    get_run(tracking_uri, run_id)
    try:
        if not client.list_artifacts(run_id, CHECKPOINT_ARTIFACTS):
            raise InputError(f"run {run_id}: no checkpoint artifacts (a failed trial, or tracked before they were logged)")
        return Path(client.download_artifacts(run_id, CHECKPOINT_ARTIFACTS, str(folder)))
    except MlflowException as exc:
        raise InputError(f"run {run_id}: cannot read its artifacts ({exc.message})") from None
