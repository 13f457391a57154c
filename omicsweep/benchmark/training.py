"""Fitting loops for the two model families. They know nothing of Ray: results go to a `report` callable.

report(metrics: dict, checkpoint_files: dict[str, callable] | None) is called once per epoch (torch) or once
(estimator). `checkpoint_files` maps a file name to a function that writes that file given its path: trial.json,
transform.npz, the model (model.pt: a state_dict of `build_torch_model(entry, config, task)`, or estimator.skops:
`save_estimator`, skops' format) and test_predictions.npz (y_true, proba of the test split), so two runs can be compared.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from omicsweep.benchmark.metrics import classification_metrics
from omicsweep.benchmark.options import (  # noqa: F401 - LOSSES, SCHEDULES, ... re-exported
    LOSSES, OPTIMIZERS, SCHEDULES, TORCH_CONFIG_KEYS, TRIAL_CONFIG_KEYS, option, validate_options,
)
from omicsweep.benchmark.strategies import Strategy
from omicsweep.datasets.loader import CellBatches, ExpressionTransform, load_split, training_batches
from omicsweep.datasets.resample import apply_class_weight, resample_arrays
from omicsweep.datasets.store import Store
from omicsweep.errors import ConfigError
from omicsweep.models.base import ModelEntry, Task
from omicsweep.models.ensemble import EnsembleClassifier, build_torch_model, ensemble_size  # noqa: F401 - re-exported
from omicsweep.models.estimator_state import ESTIMATOR_FILE, save_estimator

Report = Callable[[dict[str, Any], "dict[str, Callable[[str], None]] | None"], None]


@dataclass
class FitInputs:
    store: Store
    transform: ExpressionTransform
    task: Task
    config: dict[str, Any]
    seed: int
    metric: str  # name in classification_metrics, maximised
    strategy: Strategy = field(default_factory=Strategy)  # torch: single process, DDP or DeepSpeed (strategies.py)


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
# declared once, typed, in benchmark/options.py (LOSSES, OPTIMIZERS, SCHEDULES and the key lists re-exported here)


def _option(config: dict[str, Any], key: str, allowed: tuple[str, ...]) -> str:
    """config[key] checked as options.py declares it; absent or null means the default (the first of `allowed`)."""
    return option(config, key)


def config_keys(family: str) -> tuple[str, ...]:
    """Keys a configuration of a model of `family` may set besides its own search-space keys."""
    return (*TRIAL_CONFIG_KEYS, *(TORCH_CONFIG_KEYS if family == "torch" else ()))


def check_config(
    entry: ModelEntry, config: dict[str, Any], task: Task, *, where: str | None = None,
    sources: dict[str, str] | None = None,
) -> None:
    """Raise ConfigError for a configuration a trial would reject, before any trial starts (the CLI's check).

    The shared options are validated by their typed declaration (options.py): one message per bad key, naming
    `where` the configuration came from (default: the model's search-space file) or the key's own `sources`
    entry (e.g. '--set'); then the model is built once."""
    validate_options(config, family=entry.family, where=str(where or entry.space_file), sources=sources)
    try:
        entry.build(config, task)
    except ConfigError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"model {entry.name}: configuration rejected ({type(exc).__name__}: {exc})") from None


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
    """Per-epoch learning-rate schedule: none, cosine over max_epochs, or halving every step_size epochs (5).

    `optimizer` is a torch optimiser: under DeepSpeed, the one its engine wraps (`Strategy.torch_optimizer`)."""
    kind = _option(config, "schedule", SCHEDULES)
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, int(config["max_epochs"])))
    if kind == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, int(config.get("step_size", 5))), gamma=0.5)
    return None


# ---- torch -------------------------------------------------------------------------------------------------------


@torch.no_grad()
def predict_torch(
    model: nn.Module, batches: CellBatches, strategy: Strategy | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """Class probabilities, labels and mean cross-entropy over a split (on the strategy's device)."""
    strategy = strategy or Strategy()
    model.eval()
    probas, labels, loss_sum = [], [], 0.0
    for x, y in batches:
        logits = model(strategy.to_device(x)).float().cpu()
        loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        probas.append(torch.softmax(logits, dim=1).numpy())
        labels.append(y.numpy())
    y_all = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)
    p_all = np.concatenate(probas) if probas else np.zeros((0, 0))
    return p_all, y_all, loss_sum / max(1, len(y_all))


def _eval_batches(inputs: FitInputs, split: str) -> CellBatches:
    return CellBatches(inputs.store, split, batch_size=1024, transform=inputs.transform, shuffle=False)


def train_epoch(
    model: nn.Module, batches, optimizer: torch.optim.Optimizer, loss_fn: nn.Module, *, grad_clip: float = 0.0,
    strategy: Strategy | None = None,
) -> float:
    """One pass over `batches` of (x, y); returns the mean training loss per cell (of this rank's shard)."""
    strategy = strategy or Strategy()
    model.train()
    loss_sum, seen = 0.0, 0
    for x, y in strategy.lockstep(batches):
        y = strategy.to_device(y)
        loss = loss_fn(model(strategy.to_device(x)).float(), y)
        strategy.step(model, optimizer, loss, grad_clip)
        loss_sum += loss.item() * len(y)
        seen += len(y)
    return loss_sum / max(1, seen)


@dataclass
class _Member:
    """One ensemble member: its model, optimiser, schedule, shuffled batches and its own torch RNG stream."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    batches: CellBatches
    rng_state: torch.Tensor
    pretrain_loss: float | None


def _make_member(entry: ModelEntry, inputs: FitInputs, index: int) -> _Member:
    """Member `index` seeded with seed + index (member 0 of a one-model run is exactly the plain run).

    A module with a `pretrain(train_batches, config)` method (e.g. autoencoder initialisation) gets it called
    here, before the classifier's optimiser exists.
    """
    cfg, seed, strategy = inputs.config, inputs.seed + index, inputs.strategy
    torch.manual_seed(seed)
    model = entry.build(cfg, inputs.task)
    # datasets: config `resample` (none/over/under streamed; smote loads the training split in memory);
    # this rank's shard of the epoch's rows, in as many batches as every other rank's
    batches = training_batches(
        inputs.store, inputs.transform, cfg, batch_size=int(cfg["batch_size"]), seed=seed,
        min_batch=2,  # BatchNorm needs two cells per batch
        rank=strategy.rank, world_size=strategy.world_size,
    )
    pretrain = getattr(model, "pretrain", None)
    pretrain_loss = pretrain(batches, cfg) if callable(pretrain) else None
    model = model.to(strategy.device)
    optimizer = make_optimizer(model.parameters(), cfg)
    model, optimizer = strategy.prepare(model, optimizer, cfg)
    scheduler = make_scheduler(strategy.torch_optimizer(model, optimizer), cfg)
    return _Member(model, optimizer, scheduler, batches, torch.get_rng_state(), pretrain_loss)


def _train_members_one_epoch(
    members: list[_Member], epoch: int, loss_fn: nn.Module, grad_clip: float, strategy: Strategy | None = None
) -> float:
    """Each member trains one epoch on its own RNG stream; returns their mean training loss."""
    losses = []
    for member in members:
        torch.set_rng_state(member.rng_state)
        member.batches.set_epoch(epoch)
        losses.append(train_epoch(member.model, member.batches, member.optimizer, loss_fn, grad_clip=grad_clip,
                                  strategy=strategy))
        if member.scheduler is not None:
            member.scheduler.step()
        member.rng_state = torch.get_rng_state()
    return float(np.mean(losses))


def _best_files(inputs: FitInputs, model: nn.Module, test_y: np.ndarray, test_proba: np.ndarray):
    state = inputs.strategy.state_dict(model)
    return {
        **_common_files(inputs),
        "model.pt": lambda path: torch.save(state, path),
        "test_predictions.npz": lambda path: np.savez(path, y_true=test_y, proba=test_proba),
    }


def fit_torch(entry: ModelEntry, inputs: FitInputs, report: Report) -> None:
    """Epochs with early stopping on the validation metric; the test split is scored at each new best.

    With config `ensemble` = N > 1, N members (seeds seed + i) train in lockstep, one epoch each per epoch;
    validation, early stopping, test scores and the checkpoint use their averaged probabilities.
    """
    cfg, strategy = inputs.config, inputs.strategy
    n_members = ensemble_size(cfg)
    if n_members > 1 and strategy.world_size > 1:
        raise ConfigError("ensemble > 1 trains its members in one process; use workers_per_trial 1 for ensembles")
    members = [_make_member(entry, inputs, i) for i in range(n_members)]
    # training goes through the strategy's wrapper (DDP, DeepSpeed engine); evaluation uses the plain module
    model = strategy.module(members[0].model) if n_members == 1 else EnsembleClassifier([m.model for m in members])
    loss_fn = make_loss(cfg, n_classes=inputs.task.n_classes, train_labels=_train_labels_if_needed(cfg, inputs.store))
    loss_fn = loss_fn.to(strategy.device)
    grad_clip = float(cfg.get("grad_clip") or 0.0)
    pretrained = [m.pretrain_loss for m in members if m.pretrain_loss is not None]
    val, test = _eval_batches(inputs, "val"), _eval_batches(inputs, "test")
    best, since_best, best_test = -np.inf, 0, {}
    for epoch in range(1, int(cfg["max_epochs"]) + 1):
        started = time.perf_counter()
        lr = float(members[0].optimizer.param_groups[0]["lr"])  # as the stepping optimiser (or wrapper) reads it
        train_loss = _train_members_one_epoch(members, epoch, loss_fn, grad_clip, strategy)
        val_proba, val_y, val_loss = predict_torch(model, val, strategy)
        val_metrics = classification_metrics(val_y, val_proba)
        score = val_metrics[inputs.metric]
        files = None
        if score > best:
            best, since_best = score, 0
            test_proba, test_y, test_loss = predict_torch(model, test, strategy)
            best_test = {**_prefixed("test", classification_metrics(test_y, test_proba)), "test_loss": test_loss}
            files = _best_files(inputs, model, test_y, test_proba)
        else:
            since_best += 1
        metrics = {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_lr": lr,
            **({"train_ae_loss": float(np.mean(pretrained))} if pretrained else {}),
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


def fit_estimator(entry: ModelEntry, inputs: FitInputs, report: Report) -> None:
    started = time.perf_counter()
    estimator = entry.build(inputs.config, inputs.task)
    x_train, y_train = load_split(inputs.store, "train", inputs.transform)
    # datasets: class imbalance on the training split only (config resample, class_weight)
    x_train, y_train = resample_arrays(x_train, y_train, inputs.config, seed=inputs.seed)
    apply_class_weight(estimator, inputs.config)
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
    test_y, test_proba = y, proba  # the loop ends on the test split
    files = {
        **_common_files(inputs),
        ESTIMATOR_FILE: lambda path: save_estimator(estimator, path),
        "test_predictions.npz": lambda path: np.savez(path, y_true=test_y, proba=test_proba),
    }
    report(metrics, files)


FITTERS = {"torch": fit_torch, "estimator": fit_estimator}
