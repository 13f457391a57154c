"""Model families, one module each, registered by name."""

from __future__ import annotations

import importlib
import pkgutil

from omicsweep.models.base import (
    ModelEntry,
    Task,
    available_models,
    get_model,
    models_for_task,
    register,
)
from omicsweep.tasks import CELL_CLASSIFICATION, GENE_PAIR_IMAGE

__all__ = ["CELL_CLASSIFICATION", "GENE_PAIR_IMAGE", "ModelEntry", "Task", "available_models", "get_model",
           "load_all", "models_for_task", "register"]

_NOT_MODELS = {"base", "ensemble", "estimator_state", "featurise"}


def load_all() -> None:
    """Import every module in this package so each registers its models."""
    for info in pkgutil.iter_modules(__path__):
        if info.name not in _NOT_MODELS and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
