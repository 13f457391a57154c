"""The one trainable every model runs through: seed -> data -> model -> fit -> per-epoch report + checkpoint."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable

from omicsweep.errors import InputError


@dataclass(frozen=True)
class TrialContext:
    """Everything fixed for all trials of one sweep; the sampled hyperparameters arrive as the Tune config."""

    store_path: str
    fingerprint: str
    model: str
    defaults: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    metric: str = "accuracy"
    threads: int = 1


def trial_config(context: TrialContext, sampled: dict[str, Any]) -> dict[str, Any]:
    """The full configuration a trial runs: model defaults overridden by the sampled values."""
    return {**context.defaults, **sampled, "seed": context.seed}


def execute_trial(context: TrialContext, sampled: dict[str, Any], report: Callable) -> None:
    """Run one trial outside or inside Ray; `report(metrics, checkpoint_files)` receives every result."""
    import torch
    from threadpoolctl import threadpool_limits

    from omicsweep.benchmark.training import FITTERS, FitInputs, seed_everything
    from omicsweep.datasets.loader import fit_transform_on_train
    from omicsweep.datasets.store import open_store
    from omicsweep.models import Task, get_model

    torch.set_num_threads(max(1, int(context.threads)))
    seed_everything(context.seed)
    config = trial_config(context, sampled)
    # k-fold stores: config `fold` picks the test fold; pair-task stores: config `bins`/`sigma` shape the images
    store = open_store(context.store_path, fold=config.get("fold"), config=config)
    if store.fingerprint != context.fingerprint:
        raise InputError(
            f"{context.store_path}: fingerprint {store.fingerprint} differs from the sweep's {context.fingerprint}"
        )
    entry = get_model(context.model)
    inputs = FitInputs(
        store=store,
        transform=fit_transform_on_train(store, scaling=config.get("scaling", "minmax")),
        # gene names too: a model may align prior knowledge (a gene graph) to the store's genes
        task=Task(n_features=store.n_genes, n_classes=len(store.classes), genes=tuple(map(str, store.genes())),
                  kind=store.task_kind, input_shape=store.input_shape),
        config=config,
        seed=context.seed,
        metric=context.metric,
    )
    # BLAS thread pools (scikit-learn, scipy) held to the trial's threads too: a Ray worker gets
    # OMP_NUM_THREADS=its CPUs, so an in-process re-run (`reproduce`) must match it to sum in the same order
    with threadpool_limits(limits=max(1, int(context.threads))):
        FITTERS[entry.family](entry, inputs, report)


def tune_report(metrics: dict[str, Any], files: dict[str, Callable[[str], None]] | None) -> None:
    """Send one result to Ray Tune, with a checkpoint folder when the fitter provided files."""
    from ray import tune

    if not files:
        tune.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="omicsweep-ckpt-") as folder:
        for name, write in files.items():
            write(os.path.join(folder, name))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


RESOURCE_KEYS = ("trial_wall_s", "cpu_s", "peak_rss_mb")


def with_resources(report: Callable) -> Callable:
    """Wrap `report` so every result also carries the trial's wall time, CPU seconds and peak memory so far.

    CPU seconds are this process's user+system time since the wrapper was made (torch's threads included);
    peak memory is the process's high-water mark (ru_maxrss), an upper bound when a worker is reused.
    """
    import resource
    import sys
    import time

    def cpu_seconds() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    started, cpu_started = time.perf_counter(), cpu_seconds()
    kib = 1 / 1024 if sys.platform != "darwin" else 1 / 1024**2  # ru_maxrss: KiB on Linux, bytes on macOS

    def wrapped(metrics: dict[str, Any], files=None) -> None:
        metrics = {
            **metrics,
            "trial_wall_s": time.perf_counter() - started,
            "cpu_s": cpu_seconds() - cpu_started,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kib,
        }
        report(metrics, files)

    return wrapped


def run_trial(config: dict[str, Any], context: TrialContext) -> None:
    """Ray Tune function trainable (bind `context` with tune.with_parameters)."""
    execute_trial(context, config, with_resources(tune_report))
