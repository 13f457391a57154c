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

ROLE_TAG = "omicsweep.role"
DATASET_TAG = "omicsweep.dataset"
MODEL_TAG = "omicsweep.model"
METRIC_TAG = "omicsweep.metric"
FINGERPRINT_TAG = "omicsweep.fingerprint"
SEED_TAG = "omicsweep.seed"
ERROR_TAG = "omicsweep.error"
PARENT_TAG = "mlflow.parentRunId"

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


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
            self.experiment_id, run_name=f"sweep-{model}", tags={**self._common_tags, ROLE_TAG: "sweep"}
        )
        self.parent_id = run.info.run_id
        self._log_params(self.parent_id, params)
        return self.parent_id

    def end_sweep(self, *, status: str, summary: dict[str, float]) -> None:
        if self.parent_id is None:
            return
        self.log_metrics(self.parent_id, summary, step=0)
        self.client.set_terminated(self.parent_id, status=status)

    # ---- trials -----------------------------------------------------------------------------------------------
    def start_trial(self, trial_id: str, *, params: dict[str, Any], tags: dict[str, str]) -> str:
        assert self.parent_id is not None, "start_sweep first"
        run = self.client.create_run(
            self.experiment_id,
            run_name=trial_id,
            tags={**self._common_tags, **tags, ROLE_TAG: "trial", PARENT_TAG: self.parent_id, "omicsweep.trial_id": trial_id},
        )
        self.trial_runs[trial_id] = run.info.run_id
        self._log_params(run.info.run_id, params)
        return run.info.run_id

    def log_result(self, trial_id: str, metrics: dict[str, Any], *, step: int) -> None:
        self.log_metrics(self.trial_runs[trial_id], metrics, step=step)

    def end_trial(self, trial_id: str, *, status: str, error: str | None = None) -> None:
        """Close a trial's run; its metrics were logged epoch by epoch as they arrived."""
        run_id = self.trial_runs[trial_id]
        if error:
            self.client.set_tag(run_id, ERROR_TAG, error[:4000])
        self.client.set_terminated(run_id, status=status)

    # ---- helpers ----------------------------------------------------------------------------------------------
    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(str(k), _param_value(v)) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[start : start + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, Any], *, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(str(k), float(v), now, int(step))
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
        ]
        for start in range(0, len(items), 500):
            self.client.log_batch(run_id, metrics=items[start : start + 500])
