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
from omicsweep.errors import ConfigError
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


# ---- torch training options (config keys loss, optimizer, schedule, grad_clip; all optional) --------------------

LOSSES = ("ce", "weighted_ce", "focal")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("none", "cosine", "step")


def _option(config: dict[str, Any], key: str, allowed: tuple[str, ...]) -> str:
    """config[key] checked against `allowed`; absent or null means the first (the historical behaviour)."""
    value = config.get(key)
    value = allowed[0] if value is None else str(value).lower()
    if value not in allowed:
        raise ConfigError(f"config {key}={config.get(key)!r} is not supported; use one of {', '.join(allowed)}")
    return value


def balanced_class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """n / (k * count_c) over the k classes present in `labels`; classes absent from them get weight 0."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(n_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return torch.as_tensor(weights, dtype=torch.float32)


class FocalLoss(nn.Module):
    """Multi-class focal loss, mean over the batch: -(1 - p_t)^gamma * log p_t (Lin et al. 2017)."""

    def __init__(self, gamma: float = 2.0):
        super().__init__()
        self.gamma = float(gamma)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_pt = torch.log_softmax(logits, dim=1).gather(1, target.unsqueeze(1)).squeeze(1)
        return (-((1.0 - log_pt.exp()) ** self.gamma) * log_pt).mean()


def make_loss(config: dict[str, Any], *, n_classes: int, train_labels: np.ndarray | None = None) -> nn.Module:
    """The training objective named by config['loss']; weighted_ce needs the training split's labels."""
    kind = _option(config, "loss", LOSSES)
    if kind == "focal":
        return FocalLoss(gamma=float(config.get("focal_gamma", 2.0)))
    if kind == "weighted_ce":
        if train_labels is None:
            raise ValueError("loss=weighted_ce needs the training labels to weight the classes")
        return nn.CrossEntropyLoss(weight=balanced_class_weights(train_labels, n_classes))
    return nn.CrossEntropyLoss()


def _train_labels_if_needed(config: dict[str, Any], store: Store) -> np.ndarray | None:
    if _option(config, "loss", LOSSES) != "weighted_ce":
        return None
    return store.labels()[store.split_indices("train")]


def make_optimizer(params, config: dict[str, Any]) -> torch.optim.Optimizer:
    """Adam (default), AdamW (decoupled weight decay) or SGD with momentum 0.9; lr and weight_decay from config."""
    kind = _option(config, "optimizer", OPTIMIZERS)
    lr, weight_decay = float(config["lr"]), float(config.get("weight_decay", 0.0))
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, config: dict[str, Any]):
    """Per-epoch learning-rate schedule: none, cosine over max_epochs, or halving every step_size epochs (5)."""
    kind = _option(config, "schedule", SCHEDULES)
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, int(config["max_epochs"])))
    if kind == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, int(config.get("step_size", 5))), gamma=0.5)
    return None


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


def train_epoch(
    model: nn.Module, batches, optimizer: torch.optim.Optimizer, loss_fn: nn.Module, *, grad_clip: float = 0.0
) -> float:
    """One pass over `batches` of (x, y); returns the mean training loss per cell."""
    model.train()
    loss_sum, seen = 0.0, 0
    for x, y in batches:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), max_norm=grad_clip)
        optimizer.step()
        loss_sum += loss.item() * len(y)
        seen += len(y)
    return loss_sum / max(1, seen)


def fit_torch(entry: ModelEntry, inputs: FitInputs, report: Report) -> None:
    """Epochs with early stopping on the validation metric; the test split is scored at each new best."""
    cfg = inputs.config
    model = entry.build(cfg, inputs.task)
    loss_fn = make_loss(cfg, n_classes=inputs.task.n_classes, train_labels=_train_labels_if_needed(cfg, inputs.store))
    optimizer = make_optimizer(model.parameters(), cfg)
    scheduler = make_scheduler(optimizer, cfg)
    grad_clip = float(cfg.get("grad_clip") or 0.0)
    train = CellBatches(
        inputs.store, "train", batch_size=int(cfg["batch_size"]), transform=inputs.transform,
        shuffle=True, seed=inputs.seed, min_batch=2,  # BatchNorm needs two cells per batch
    )
    val, test = _eval_batches(inputs, "val"), _eval_batches(inputs, "test")
    best, since_best, best_test = -np.inf, 0, {}
    for epoch in range(1, int(cfg["max_epochs"]) + 1):
        started = time.perf_counter()
        train.set_epoch(epoch)
        train_loss = train_epoch(model, train, optimizer, loss_fn, grad_clip=grad_clip)
        if scheduler is not None:
            scheduler.step()
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
            "train_loss": train_loss,
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
