"""Re-run one recorded trial exactly (same configuration, seed, store and epoch count) and compare its metrics.

The run record arrives as a plain `TrialRecord` (reports/tracking.py reads it from MLflow), so this module knows
nothing about the tracking store. On CPU the same seed on the same store gives bit-identical metrics; any
difference is reported with the code and package versions recorded then and found now, to explain it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omicsweep.benchmark.trial import RESOURCE_KEYS, TrialContext, execute_trial
from omicsweep.environment import git_commit, package_versions
from omicsweep.errors import InputError

COMPARED_PREFIXES = ("train_", "val_", "test_")
COMPARED_KEYS = ("best_val", "epoch")
NOT_COMPARED = {"epoch_time_s", "time_total_s", "overhead_s", "epochs_run", *RESOURCE_KEYS}


@dataclass
class TrialRecord:
    """What a tracked trial recorded: enough to run it again and to explain a mismatch."""

    run_id: str
    model: str
    dataset: str
    store_path: str | None
    fingerprint: str
    seed: int
    metric: str  # the validation metric maximised, without the 'val_' prefix
    config: dict[str, Any]
    threads: int = 1
    epochs_run: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # final (last-step) values
    code_version: str = "unknown"
    packages: dict[str, str] = field(default_factory=dict)
    status: str = "FINISHED"


@dataclass
class Difference:
    key: str
    recorded: float | None
    reproduced: float | None


@dataclass
class ReproduceOutcome:
    record: TrialRecord
    store_path: str
    compared: dict[str, tuple[float | None, float | None]]
    differences: list[Difference]
    epochs: int
    version_changes: list[tuple[str, str, str]]  # (what, recorded, now)

    @property
    def matched(self) -> bool:
        return not self.differences


class _EnoughEpochs(Exception):
    """Raised from the report callback once the recorded number of epochs has run."""


def comparable(key: str) -> bool:
    return key not in NOT_COMPARED and (key.startswith(COMPARED_PREFIXES) or key in COMPARED_KEYS)


def check_store(record: TrialRecord, store_path: str | Path | None = None) -> str:
    """The store to re-run on, refusing one whose fingerprint is not the recorded one."""
    from omicsweep.datasets.store import open_store

    path = store_path or record.store_path
    if not path:
        raise InputError(f"run {record.run_id}: no dataset store path recorded; pass --store STORE.zarr")
    store = open_store(path)
    if store.fingerprint != record.fingerprint:
        raise InputError(
            f"{path}: the store changed since run {record.run_id} (fingerprint {store.fingerprint}, recorded "
            f"{record.fingerprint}); re-ingest the original data or pass --store with the original store"
        )
    return str(path)


def rerun(record: TrialRecord, store_path: str, *, seed: int | None = None, max_epochs: int | None = None) -> list[dict]:
    """Every result the trial's configuration reports, stopping after `max_epochs` epochs when given."""
    config = dict(record.config)
    config.pop("seed", None)
    context = TrialContext(
        store_path=store_path, fingerprint=record.fingerprint, model=record.model, defaults=config,
        seed=record.seed if seed is None else seed, metric=record.metric, threads=max(1, record.threads),
    )
    results: list[dict] = []

    def report(metrics: dict[str, Any], files) -> None:
        results.append(dict(metrics))
        if max_epochs is not None and int(metrics.get("epoch", 0)) >= max_epochs:
            raise _EnoughEpochs

    try:
        execute_trial(context, {}, report)
    except _EnoughEpochs:
        pass
    return results


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return float(a) == float(b) or (math.isnan(float(a)) and math.isnan(float(b)))


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(float(value)) else None


def compare_metrics(recorded: dict[str, float], reproduced: dict[str, Any]) -> tuple[dict, list[Difference]]:
    """Exact comparison of every comparable final metric (a metric present on only one side is a difference)."""
    keys = sorted({k for k in recorded if comparable(k)} | {k for k, v in reproduced.items() if comparable(k) and _finite(v) is not None})
    compared, differences = {}, []
    for key in keys:
        before, now = recorded.get(key), _finite(reproduced.get(key))
        compared[key] = (before, now)
        if not _same(before, now):
            differences.append(Difference(key, before, now))
    return compared, differences


def version_changes(record: TrialRecord) -> list[tuple[str, str, str]]:
    changes = []
    now_commit = git_commit()
    if record.code_version != now_commit:
        changes.append(("code", record.code_version, now_commit))
    now_packages = package_versions()
    for name in sorted(set(record.packages) | set(now_packages)):
        before, now = record.packages.get(name, "-"), now_packages.get(name, "-")
        if before != now:
            changes.append((name, before, now))
    return changes


def reproduce(record: TrialRecord, *, store_path: str | Path | None = None) -> ReproduceOutcome:
    """Re-run `record` in-process for the epochs it ran and compare every final metric exactly."""
    path = check_store(record, store_path)
    epochs = record.epochs_run or int(record.metrics.get("epoch", 0)) or None
    results = rerun(record, path, max_epochs=epochs)
    if not results:
        raise InputError(f"run {record.run_id}: the re-run reported no result")
    compared, differences = compare_metrics(record.metrics, results[-1])
    return ReproduceOutcome(
        record=record, store_path=path, compared=compared, differences=differences,
        epochs=int(results[-1].get("epoch", len(results))), version_changes=version_changes(record),
    )
