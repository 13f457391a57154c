"""Re-run one recorded trial exactly (same configuration, seed, store, epoch count and training setup) and compare
its metrics.

The run record arrives as a plain `TrialRecord` (reports/tracking.py reads it from MLflow), so this module knows
nothing about the tracking store. On CPU the same seed on the same store and setup gives bit-identical metrics;
any difference is reported with the code and package versions recorded then and found now, to explain it.

A single-process trial re-runs in this process; a distributed one (DDP, DeepSpeed) through the trial's own
trainable and Ray Train (benchmark/reruns.py), on its number of workers. Where this machine cannot give the
trial's setup (no GPU, too few CPUs, or --workers), it trains what it can and the outcome says that the setups
differ, so the metrics are not presented as comparable.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omicsweep.benchmark.trial import TrialContext, execute_trial, training_setup
from omicsweep.environment import git_commit, package_versions
from omicsweep.errors import InputError
from omicsweep.schema import EPOCHS_RUN, LOGGED_PREFIXES, RESOURCE_KEYS, SEARCH_METRIC, THROUGHPUT_KEYS

COMPARED_PREFIXES = LOGGED_PREFIXES
COMPARED_KEYS = (SEARCH_METRIC, "epoch")
NOT_COMPARED = {"epoch_time_s", "time_total_s", "overhead_s", EPOCHS_RUN, *RESOURCE_KEYS, *THROUGHPUT_KEYS}


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
    # how it trained: its training-setup tag (None for runs from before it) and the settings behind it
    training_setup: str | None = None
    workers: int = 1
    cpus: float = 1.0
    gpus: float = 0.0
    deepspeed: dict[str, Any] | None = None


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
    recorded_setup: str = ""
    setup: str = ""  # how this re-run trained
    setup_notes: list[str] = field(default_factory=list)  # why it differs, one line each

    @property
    def setup_differs(self) -> bool:
        return self.setup != self.recorded_setup

    @property
    def matched(self) -> bool:
        return not self.differences and not self.setup_differs


class _EnoughEpochs(Exception):
    """Raised from the report callback once the recorded number of epochs has run."""


def comparable(key: str) -> bool:
    return key not in NOT_COMPARED and (key.startswith(COMPARED_PREFIXES) or key in COMPARED_KEYS)


def check_store(record: TrialRecord, store_path: str | Path | None = None) -> str:
    """The store to re-run on, refusing one whose fingerprint is not the recorded one."""
    from omicsweep.datasets.open import open_store

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


def record_context(record: TrialRecord, store_path: str, *, transform_cache: str | Path | None = None) -> TrialContext:
    """The trial's context as recorded: its configuration as the defaults, its seed, threads and setup;
    `transform_cache`: the run folder's fitted transforms (its sweep's, reused rather than fitted again)."""
    config = {k: v for k, v in record.config.items() if k != "seed"}
    return TrialContext(
        store_path=store_path, fingerprint=record.fingerprint, model=record.model, defaults=config,
        seed=record.seed, metric=record.metric, threads=max(1, record.threads), workers=max(1, record.workers),
        cpus=record.cpus, gpus=record.gpus, deepspeed=record.deepspeed,
        transform_cache=None if transform_cache is None else str(transform_cache),
    )


def runnable_context(
    context: TrialContext, *, workers: int | None = None, cpus_here: float, gpus_here: float
) -> tuple[TrialContext, list[str]]:
    """The closest setup to the trial's this machine can train, and one line per way it differs.

    Workers are kept (the world size shapes each rank's shard and so the metrics); CPUs per worker shrink to
    fit; without enough GPUs it trains on CPU. A change that would leave `training_setup` as it was is not made
    (an estimator has no workers and uses no GPU).
    """
    notes: list[str] = []

    def adjust(new: TrialContext, note: str) -> None:
        nonlocal context
        if training_setup(new) != training_setup(context):
            notes.append(note)
            context = new

    if workers is not None and workers != context.workers:
        adjust(dataclasses.replace(context, workers=workers),
               f"--workers {workers}: the trial trained on {context.workers} worker(s)")
    n = context.workers if context.distributed else 1
    if context.gpus > 0 and context.gpus * n > gpus_here:
        adjust(dataclasses.replace(context, gpus=0.0),
               f"the trial had {context.gpus * n:g} GPU(s), this machine has {gpus_here:g}: training on CPU")
    if context.distributed and context.cpus * n > cpus_here:
        cpus = max(0.01, math.floor(cpus_here / n * 100) / 100)
        adjust(dataclasses.replace(context, cpus=cpus),
               f"{n} workers x {context.cpus:g} CPU need {context.cpus * n:g} CPUs, this machine has {cpus_here:g}: "
               f"{cpus:g} CPU per worker")
    return context, notes


def _resources_here(distributed: bool) -> tuple[float, float]:
    """(CPUs, GPUs) a re-run can have: the Ray session's (less the Tune actor's share) for a distributed one,
    else this machine's."""
    import ray
    import torch

    from omicsweep.benchmark.reruns import TUNE_ACTOR_CPU

    if distributed and ray.is_initialized():
        total = ray.cluster_resources()
        return float(total.get("CPU", 0.0)) - TUNE_ACTOR_CPU, float(total.get("GPU", 0.0))
    return float(os.cpu_count() or 1), float(torch.cuda.device_count())


def _in_process(context: TrialContext, *, max_epochs: int | None) -> list[dict]:
    """Every result the trial reports in this process (on this machine's GPU when the context asks for one and
    torch sees one), stopping after `max_epochs` epochs when given."""
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


def _through_ray_train(record: TrialRecord, context: TrialContext, epochs: int | None) -> list[dict]:
    """A distributed trial re-run the way it trained: its trainable, Ray Train workers, in a Ray session."""
    from omicsweep.benchmark.reruns import train_through_tune
    from omicsweep.benchmark.sweep import ray_session

    sampled, context = dict(context.defaults), dataclasses.replace(context, defaults={})
    # a local session gets a spare CPU for the Tune actor, as `omicsweep sweep` gives its own
    with ray_session(address=None, num_cpus=(os.cpu_count() or 1) + 1):
        results, error = train_through_tune(context, sampled, [context.seed], max_epochs=epochs)[context.seed]
    if error:
        raise InputError(f"run {record.run_id}: the re-run failed: {error}")
    return results or []


def reproduce(
    record: TrialRecord, *, store_path: str | Path | None = None, workers: int | None = None,
    transform_cache: str | Path | None = None,
) -> ReproduceOutcome:
    """Re-run `record` for the epochs it ran, the way it trained where this machine allows (`workers`: force
    another number of workers), and compare every final metric exactly."""
    path = check_store(record, store_path)
    epochs = record.epochs_run or int(record.metrics.get("epoch", 0)) or None
    recorded = record_context(record, path, transform_cache=transform_cache)
    wanted = recorded if workers is None else dataclasses.replace(recorded, workers=workers)
    cpus_here, gpus_here = _resources_here(wanted.distributed)
    context, notes = runnable_context(recorded, workers=workers, cpus_here=cpus_here, gpus_here=gpus_here)
    results = _through_ray_train(record, context, epochs) if context.distributed else _in_process(
        context, max_epochs=epochs)
    if not results:
        raise InputError(f"run {record.run_id}: the re-run reported no result")
    compared, differences = compare_metrics(record.metrics, results[-1])
    return ReproduceOutcome(
        record=record, store_path=path, compared=compared, differences=differences,
        epochs=int(results[-1].get("epoch", len(results))), version_changes=version_changes(record),
        recorded_setup=record.training_setup or training_setup(recorded), setup=training_setup(context),
        setup_notes=notes,
    )
