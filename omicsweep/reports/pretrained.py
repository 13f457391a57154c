"""`pretrained: RUN_ID` (models/scbert.py): the checkpoint a trial run of `omicsweep pretrain` logged, found with
the MLflow client of the tracking store the sweep uses. The CLI installs `resolver(tracking_uri)` before it
prepares the models (`models.scbert.set_run_resolver`); the models layer knows no MLflow.

A run's `checkpoint` artifacts (module.pt, pretrain.json) are read in place when the artifact store is a local
folder (the default: RUNS/mlartifacts), else downloaded once into a cache folder named by the run id; the folder
is what the sweep pins (with module.pt's sha256), so workers on this machine read the same files.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable
from urllib.parse import unquote, urlparse

from omicsweep.errors import InputError
from omicsweep.reports.tracking import _client, get_run
from omicsweep.schema import CHECKPOINT_ARTIFACTS, COMMAND_TAG, MODEL_TAG, PRETRAIN_COMMAND, ROLE_TAG, SWEEP_ROLE

PRETRAIN_MODEL = "scbert_pretrain"
NEEDED = ("module.pt", "pretrain.json")


def pretraining_checkpoint(tracking_uri: str, run_id: str) -> Path:
    """The folder holding the run's module.pt and pretrain.json; an InputError for a run that is not a
    pretraining trial (another model's run, a sweep's parent run, a run without a checkpoint)."""
    run = get_run(tracking_uri, run_id)
    tags = run.data.tags
    model = tags.get(MODEL_TAG, "")
    if tags.get(ROLE_TAG) == SWEEP_ROLE and (model == PRETRAIN_MODEL or tags.get(COMMAND_TAG) == PRETRAIN_COMMAND):
        raise InputError(f"run {run_id}: the parent run of a pretraining sweep; give one of its trial runs (the "
                         "leaderboard's best run of the pretraining section)")
    if model != PRETRAIN_MODEL:
        raise InputError(f"run {run_id}: not a pretraining run (model {model or 'unknown'}); give a trial run of "
                         "`omicsweep pretrain`")
    client = _client(tracking_uri)
    names = {Path(item.path).name for item in client.list_artifacts(run_id, CHECKPOINT_ARTIFACTS)}
    missing = [name for name in NEEDED if name not in names]
    if missing:
        raise InputError(f"run {run_id}: its checkpoint artifacts lack {', '.join(missing)} (a failed or unfinished "
                         "pretraining trial?)")
    local = _local_folder(run.info.artifact_uri)
    if local is not None and all((local / CHECKPOINT_ARTIFACTS / name).is_file() for name in NEEDED):
        return local / CHECKPOINT_ARTIFACTS
    cache = Path(tempfile.gettempdir()) / "omicsweep-pretrained" / run_id
    if not all((cache / CHECKPOINT_ARTIFACTS / name).is_file() for name in NEEDED):
        cache.mkdir(parents=True, exist_ok=True)
        for name in NEEDED:
            client.download_artifacts(run_id, f"{CHECKPOINT_ARTIFACTS}/{name}", str(cache))
    return cache / CHECKPOINT_ARTIFACTS


def _local_folder(artifact_uri: str) -> Path | None:
    parsed = urlparse(artifact_uri)
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path))
    return None


def resolver(runs: Path, tracking_uri: str | None) -> Callable[[str], Path]:
    """`run_id -> checkpoint folder` in the sweep's tracking store (--tracking-uri, else RUNS/mlflow.db), for
    `models.scbert.set_run_resolver`. A run folder without a store is not created by a look-up."""
    from omicsweep.reports.tracking import default_tracking_uri

    def resolve(run_id: str) -> Path:
        if not tracking_uri and not (Path(runs) / "mlflow.db").is_file():
            raise InputError(f"pretrained={run_id}: a run id, but {runs} has no MLflow store (mlflow.db); pass the "
                             "--runs folder (or --tracking-uri) the pretraining used, or the checkpoint folder")
        return pretraining_checkpoint(tracking_uri or default_tracking_uri(Path(runs)), run_id)

    return resolve
