"""Fitting an estimator (scikit-learn, xgboost, the controls): one fit on the training split as CSR, one score.

The splits are read by `datasets.split_matrix.split_csr`: one CSR float32 matrix each, never dense, so memory is
the split's non-zeros (8 bytes each) plus what the estimator itself copies. The transform is the trial's with
its per-gene shift removed (`sparse_safe`, see there why that is safe for these models); that transform is the
one saved in the checkpoint's transform.npz, so predict, export and reproduce feed the estimator the same values.

Also the two helpers every fitter's checkpoint uses (`common_files`, `prefixed`), shared with benchmark/training.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import Any, Callable

import numpy as np

from omicsweep.benchmark.metrics import classification_metrics
from omicsweep.datasets.resample import apply_class_weight, resample_arrays
from omicsweep.datasets.split_matrix import sparse_safe, split_csr
from omicsweep.models.base import ModelEntry
from omicsweep.models.estimator_state import save_estimator, state_file


def prefixed(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}_{k}": v for k, v in metrics.items()}


def common_files(inputs) -> dict[str, Callable[[str], None]]:
    """trial.json (config, seed, classes) and transform.npz of a trial's `FitInputs`, as checkpoint writers."""

    def write_config(path: str) -> None:
        with open(path, "w") as fh:
            json.dump({"config": inputs.config, "seed": inputs.seed, "classes": inputs.store.classes}, fh, default=str)

    return {
        "transform.npz": lambda path: np.savez(path, **inputs.transform.to_arrays()),
        "trial.json": write_config,
    }


def full_proba(estimator, x, n_classes: int) -> np.ndarray:
    """predict_proba (dense or CSR rows) with a column for every class, including classes absent from training."""
    proba = np.zeros((x.shape[0], n_classes))
    proba[:, np.asarray(estimator.classes_, dtype=np.int64)] = estimator.predict_proba(x)
    return proba


def _log_loss(y: np.ndarray, proba: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(proba[np.arange(len(y)), y], 1e-12, None))))


def fit_estimator(entry: ModelEntry, inputs, report: Callable) -> None:
    """Fit `entry`'s estimator on `inputs` (a training.FitInputs) and report val/test metrics once, with the
    checkpoint files (trial.json, transform.npz, estimator.skops or the model's own state file, test predictions)."""
    started = time.perf_counter()
    inputs = replace(inputs, transform=sparse_safe(inputs.transform))
    estimator = entry.build(inputs.config, inputs.task)
    x_train, y_train = split_csr(inputs.store, "train", inputs.transform)
    # datasets: class imbalance on the training split only (config resample, class_weight)
    x_train, y_train = resample_arrays(x_train, y_train, inputs.config, seed=inputs.seed)
    apply_class_weight(estimator, inputs.config)
    estimator.fit(x_train, y_train)
    del x_train, y_train
    n_classes = inputs.task.n_classes
    metrics: dict[str, Any] = {"epoch": 1}
    for split in ("val", "test"):
        x, y = split_csr(inputs.store, split, inputs.transform)
        proba = full_proba(estimator, x, n_classes)
        metrics.update(prefixed(split, classification_metrics(y, proba)))
        metrics[f"{split}_loss"] = _log_loss(y, proba)
    metrics["best_val"] = metrics[f"val_{inputs.metric}"]
    metrics["epoch_time_s"] = time.perf_counter() - started
    test_y, test_proba = y, proba  # the loop ends on the test split
    files = {
        **common_files(inputs),
        state_file(type(estimator)): lambda path: save_estimator(estimator, path),  # skops, or xgboost's UBJSON
        "test_predictions.npz": lambda path: np.savez(path, y_true=test_y, proba=test_proba),
    }
    report(metrics, files)
