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

    from omicsweep.benchmark.training import FITTERS, FitInputs, seed_everything
    from omicsweep.datasets.loader import fit_transform_on_train
    from omicsweep.datasets.store import Store
    from omicsweep.models import Task, get_model

    torch.set_num_threads(max(1, int(context.threads)))
    seed_everything(context.seed)
    store = Store(context.store_path)
    if store.fingerprint != context.fingerprint:
        raise InputError(
            f"{context.store_path}: fingerprint {store.fingerprint} differs from the sweep's {context.fingerprint}"
        )
    entry = get_model(context.model)
    inputs = FitInputs(
        store=store,
        transform=fit_transform_on_train(store),
        task=Task(n_features=store.n_genes, n_classes=len(store.classes)),
        config=trial_config(context, sampled),
        seed=context.seed,
        metric=context.metric,
    )
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


def run_trial(config: dict[str, Any], context: TrialContext) -> None:
    """Ray Tune function trainable (bind `context` with tune.with_parameters)."""
    execute_trial(context, config, tune_report)
