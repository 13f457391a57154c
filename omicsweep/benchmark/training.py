"""Fitting loops for the two model families. They know nothing of Ray: results go to a `report` callable.

report(metrics: dict, checkpoint_files: dict[str, callable] | None) is called once per epoch (torch) or once
(estimator). `checkpoint_files` maps a file name to a function that writes that file given its path.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from omicsweep.benchmark.metrics import classification_metrics
from omicsweep.datasets.loader import CellBatches, ExpressionTransform, load_split
from omicsweep.datasets.store import Store
from omicsweep.models.base import ModelEntry, Task

Report = Callable[[dict[str, Any], "dict[str, Callable[[str], None]] | None"], None]


@dataclass
class FitInputs:
    store: Store
    transform: ExpressionTransform
    task: Task
    config: dict[str, Any]
    seed: int
    metric: str  # name in classification_metrics, maximised


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def _prefixed(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}_{k}": v for k, v in metrics.items()}


def _common_files(inputs: FitInputs) -> dict[str, Callable[[str], None]]:
    def write_config(path: str) -> None:
        with open(path, "w") as fh:
            json.dump({"config": inputs.config, "seed": inputs.seed, "classes": inputs.store.classes}, fh, default=str)

    return {
        "transform.npz": lambda path: np.savez(path, **inputs.transform.to_arrays()),
        "trial.json": write_config,
    }


# ---- torch -------------------------------------------------------------------------------------------------------


@torch.no_grad()
def predict_torch(model: nn.Module, batches: CellBatches) -> tuple[np.ndarray, np.ndarray, float]:
    """Class probabilities, labels and mean cross-entropy over a split."""
    model.eval()
    probas, labels, loss_sum = [], [], 0.0
    for x, y in batches:
        logits = model(x)
        loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        probas.append(torch.softmax(logits, dim=1).numpy())
        labels.append(y.numpy())
    y_all = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)
    p_all = np.concatenate(probas) if probas else np.zeros((0, 0))
    return p_all, y_all, loss_sum / max(1, len(y_all))


def _eval_batches(inputs: FitInputs, split: str) -> CellBatches:
    return CellBatches(inputs.store, split, batch_size=1024, transform=inputs.transform, shuffle=False)


def fit_torch(entry: ModelEntry, inputs: FitInputs, report: Report) -> None:
    """Epochs with early stopping on the validation metric; the test split is scored at each new best."""
    cfg = inputs.config
    model = entry.build(cfg, inputs.task)
    optimizer = torch.optim.Adam(model.parameters(), lr=float(cfg["lr"]), weight_decay=float(cfg["weight_decay"]))
    train = CellBatches(
        inputs.store, "train", batch_size=int(cfg["batch_size"]), transform=inputs.transform,
        shuffle=True, seed=inputs.seed, min_batch=2,  # BatchNorm needs two cells per batch
    )
    val, test = _eval_batches(inputs, "val"), _eval_batches(inputs, "test")
    best, since_best, best_test = -np.inf, 0, {}
    for epoch in range(1, int(cfg["max_epochs"]) + 1):
        started = time.perf_counter()
        model.train()
        train.set_epoch(epoch)
        loss_sum, seen = 0.0, 0
        for x, y in train:
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(y)
            seen += len(y)
        val_proba, val_y, val_loss = predict_torch(model, val)
        val_metrics = classification_metrics(val_y, val_proba)
        score = val_metrics[inputs.metric]
        files = None
        if score > best:
            best, since_best = score, 0
            test_proba, test_y, test_loss = predict_torch(model, test)
            best_test = {**_prefixed("test", classification_metrics(test_y, test_proba)), "test_loss": test_loss}
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            files = {**_common_files(inputs), "model.pt": lambda path, s=state: torch.save(s, path)}
        else:
            since_best += 1
        metrics = {
            "epoch": epoch,
            "train_loss": loss_sum / max(1, seen),
            "val_loss": val_loss,
            **_prefixed("val", val_metrics),
            "best_val": best,
            **best_test,
            "epoch_time_s": time.perf_counter() - started,
        }
        report(metrics, files)
        if since_best >= int(cfg["patience"]):
            break


# ---- estimators --------------------------------------------------------------------------------------------------


def full_proba(estimator, x: np.ndarray, n_classes: int) -> np.ndarray:
    """predict_proba with a column for every class, including classes absent from training."""
    proba = np.zeros((len(x), n_classes))
    proba[:, np.asarray(estimator.classes_, dtype=np.int64)] = estimator.predict_proba(x)
    return proba


def estimator_state(estimator) -> dict[str, np.ndarray]:
    """Fitted attributes as plain arrays (saved as npz, loaded without pickle)."""
    state = {}
    for key, value in vars(estimator).items():
        if key.endswith("_") and not key.startswith("__"):
            array = np.asarray(value)
            if array.dtype != object:
                state[key] = array
    return state


def fit_estimator(entry: ModelEntry, inputs: FitInputs, report: Report) -> None:
    started = time.perf_counter()
    estimator = entry.build(inputs.config, inputs.task)
    x_train, y_train = load_split(inputs.store, "train", inputs.transform)
    estimator.fit(x_train, y_train)
    n_classes = inputs.task.n_classes
    metrics: dict[str, Any] = {"epoch": 1}
    for split in ("val", "test"):
        x, y = load_split(inputs.store, split, inputs.transform)
        proba = full_proba(estimator, x, n_classes)
        metrics.update(_prefixed(split, classification_metrics(y, proba)))
        metrics[f"{split}_loss"] = float(-np.mean(np.log(np.clip(proba[np.arange(len(y)), y], 1e-12, None))))
    metrics["best_val"] = metrics[f"val_{inputs.metric}"]
    metrics["epoch_time_s"] = time.perf_counter() - started
    files = {**_common_files(inputs), "estimator.npz": lambda path: np.savez(path, **estimator_state(estimator))}
    report(metrics, files)


FITTERS = {"torch": fit_torch, "estimator": fit_estimator}
