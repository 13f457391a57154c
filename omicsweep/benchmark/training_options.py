"""The shared torch training options: loss, optimiser (with a model's parameter groups), learning-rate schedule
(per epoch, or per optimiser step with linear warm-up) and precision. The keys are declared and validated in
benchmark/options.py; this module turns them into torch objects. Config keys, all optional:

    loss           ce | weighted_ce | focal (focal_gamma)
    optimizer      adam | adamw | sgd (lr, weight_decay); a module's `param_groups(config)` gives its groups
    schedule       none | cosine | step (step_size)
    schedule_unit  epoch (default: stepped once per epoch, as always) | step (once per optimiser step)
    warmup_steps   optimiser steps of linear warm-up from lr / (warmup_steps + 1) to lr (default 0)
    precision      fp32 (default) | bf16 (forward passes under torch.autocast on the trial's device)
    accumulation   micro-batches per optimiser step (default 1), the loss divided by it (Accumulator)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from omicsweep.benchmark.options import LOSSES, OPTIMIZERS, SCHEDULES, option  # noqa: F401 - the declaration
from omicsweep.errors import ConfigError



def warmup_steps(config: dict[str, Any]) -> int:
    return int(option(config, "warmup_steps"))


def accumulation_steps(config: dict[str, Any]) -> int:
    """config `accumulation`: micro-batches per optimiser step (absent or null: 1), the loss divided by it."""
    value = config.get("accumulation")
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, (int, float, str)) or str(value).strip() == "":
        raise ConfigError(f"config accumulation={value!r}: expected a whole number of micro-batches >= 1")
    try:
        steps = float(value)
    except ValueError:
        steps = 0.0
    if steps < 1 or steps != int(steps):
        raise ConfigError(f"config accumulation={value!r}: expected a whole number of micro-batches >= 1")
    return int(steps)


class Accumulator:
    """Gradient accumulation for the shared loop: each micro-batch's loss / `steps` is back-propagated, and the
    optimiser steps (after clipping) every `steps` micro-batches and once more for an epoch's remainder, so a
    step's gradient is the mean over its micro-batches' cells (for equal micro-batches: the gradient of one batch
    `steps` times as large)."""

    def __init__(self, model, optimizer, steps: int, grad_clip: float) -> None:
        self.model, self.optimizer, self.steps, self.grad_clip = model, optimizer, int(steps), float(grad_clip)
        self.pending = 0
        optimizer.zero_grad(set_to_none=True)

    def add(self, loss: torch.Tensor) -> bool:
        """Back-propagate one micro-batch's loss; True when this completed an optimiser step."""
        (loss / self.steps).backward()
        self.pending += 1
        return self.pending == self.steps and self.flush()

    def flush(self) -> bool:
        """Step on what is accumulated (an epoch's last, partial step); False when nothing is."""
        if not self.pending:
            return False
        if self.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), max_norm=self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.pending = 0
        return True


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
    kind = option(config, "loss")
    if kind == "focal":
        return FocalLoss(gamma=float(config.get("focal_gamma", 2.0)))
    if kind == "weighted_ce":
        if train_labels is None:
            raise ValueError("loss=weighted_ce needs the training labels to weight the classes")
        return nn.CrossEntropyLoss(weight=balanced_class_weights(train_labels, n_classes))
    return nn.CrossEntropyLoss()


def model_parameters(model: nn.Module, config: dict[str, Any]):
    """What the optimiser steps: the module's `param_groups(config)` (a list of torch parameter-group dicts, e.g.
    a backbone at a lower `lr` than the head) when it offers them, else all its parameters."""
    groups = getattr(model, "param_groups", None)
    return groups(config) if callable(groups) else model.parameters()


def make_optimizer(params, config: dict[str, Any]) -> torch.optim.Optimizer:
    """Adam (default), AdamW (decoupled weight decay) or SGD with momentum 0.9; lr and weight_decay from config
    (parameter groups keep their own lr or weight_decay where they set one)."""
    kind = option(config, "optimizer")
    lr, weight_decay = float(config["lr"]), float(config.get("weight_decay", 0.0))
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, config: dict[str, Any]):
    """Per-epoch learning-rate schedule: none, cosine over max_epochs, or halving every step_size epochs (5).

    `optimizer` is a torch optimiser: under DeepSpeed, the one its engine wraps (`Strategy.torch_optimizer`)."""
    kind = option(config, "schedule")
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, int(config["max_epochs"])))
    if kind == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, int(config.get("step_size", 5))), gamma=0.5)
    return None


class EpochSchedule:
    """A torch scheduler stepped once per epoch (the default): what the loop calls after each step and epoch."""

    def __init__(self, scheduler) -> None:
        self.scheduler = scheduler

    def optimizer_step(self) -> None:
        pass

    def epoch_end(self) -> None:
        self.scheduler.step()


class StepSchedule:
    """Linear warm-up over `warmup` optimiser steps, times the schedule's factor counted in optimiser steps
    (unit 'step': cosine over max_epochs x steps_per_epoch, halving every step_size steps) or in epochs (unit
    'epoch'). It sets each parameter group's lr = its initial lr x factor, so groups keep their ratios."""

    def __init__(self, optimizer: torch.optim.Optimizer, config: dict[str, Any], *, steps_per_epoch: int) -> None:
        self.groups = optimizer.param_groups
        self.base = [float(group["lr"]) for group in self.groups]
        self.kind, self.unit = option(config, "schedule"), option(config, "schedule_unit")
        self.warmup, self.step_size = warmup_steps(config), max(1, int(config.get("step_size", 5)))
        epochs = max(1, int(config["max_epochs"]))
        self.horizon = epochs * max(1, int(steps_per_epoch)) if self.unit == "step" else epochs
        self.steps, self.epochs = 0, 0
        self._apply()

    def factor(self) -> float:
        warm = min(1.0, (self.steps + 1) / (self.warmup + 1)) if self.warmup else 1.0
        t = self.steps if self.unit == "step" else self.epochs
        if self.kind == "cosine":
            return warm * 0.5 * (1.0 + math.cos(math.pi * min(t, self.horizon) / self.horizon))
        if self.kind == "step":
            return warm * 0.5 ** (t // self.step_size)
        return warm

    def _apply(self) -> None:
        for group, base in zip(self.groups, self.base):
            group["lr"] = base * self.factor()

    def optimizer_step(self) -> None:
        self.steps += 1
        self._apply()

    def epoch_end(self) -> None:
        self.epochs += 1
        self._apply()


def make_lr_schedule(optimizer: torch.optim.Optimizer, config: dict[str, Any], *, steps_per_epoch: int):
    """The loop's schedule (optimizer_step / epoch_end), or None: today's per-epoch torch scheduler unless the
    config asks for schedule_unit step or a warm-up."""
    if option(config, "schedule_unit") == "epoch" and not warmup_steps(config):
        scheduler = make_scheduler(optimizer, config)
        return None if scheduler is None else EpochSchedule(scheduler)
    return StepSchedule(optimizer, config, steps_per_epoch=steps_per_epoch)
