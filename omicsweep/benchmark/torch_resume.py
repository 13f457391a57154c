"""Where a torch trial stands after an epoch, so a retried trial (Tune's --max-failures) continues from there.

A trial asked to keep it (`TrialContext.resume_checkpoints`, set when --max-failures > 0) writes `resume.pt`
into the checkpoint it reports each epoch: each ensemble member's model, optimiser, learning-rate schedule and
torch RNG state, the epoch, the best validation value, epochs since it and the best epoch's test metrics. The
same checkpoint carries the best epoch's model.pt and test_predictions.npz (not the current epoch's), so the
checkpoint Tune keeps last, the one the tracking logs, is still the best model. `load_resume` reads it back
(benchmark/tune_trial.py hands what `ray.tune.get_checkpoint()` holds to `execute_trial`); `fit_torch` restores
the members and continues at the next epoch, so every epoch is trained and reported once and the retried trial
ends exactly as an uninterrupted one. Ray-free.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

RESUME_FILE = "resume.pt"


@dataclass
class Progress:
    """The fit loop's state after `epoch` epochs (0: none yet), with the best epoch's weights and test scores."""

    epoch: int = 0
    best: float = -np.inf
    since_best: int = 0
    best_test: dict[str, float] = field(default_factory=dict)
    train_s: float = 0.0
    best_state: dict[str, torch.Tensor] | None = None  # the best epoch's model.pt (kept only to carry it)
    best_predictions: tuple[np.ndarray, np.ndarray] | None = None  # its (y_true, proba) of the test split


@dataclass
class Resume:
    """What a retried trial starts from: the loop's progress and one saved state per ensemble member."""

    progress: Progress
    members: list[dict[str, Any]]
    config: str  # the trial's configuration as JSON: a checkpoint of another configuration is not resumed


def config_text(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, default=str)


def schedule_state(schedule) -> dict[str, Any] | None:
    """training_options' EpochSchedule (a torch scheduler) or StepSchedule (step and epoch counters), or None."""
    if schedule is None:
        return None
    inner = getattr(schedule, "scheduler", None)
    if inner is not None:
        return {"scheduler": inner.state_dict()}
    return {"steps": int(schedule.steps), "epochs": int(schedule.epochs)}


def member_state(module: torch.nn.Module, optimizer, schedule, rng_state: torch.Tensor,
                 pretrain_loss: float | None) -> dict[str, Any]:
    return {"model": module.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule_state(schedule),
            "rng_state": rng_state, "pretrain_loss": pretrain_loss}


def restore_member(module: torch.nn.Module, optimizer, torch_optimizer, schedule, state: dict[str, Any]) -> None:
    """Load a saved member into freshly built ones (weights, optimiser moments and lr, the schedule's position)."""
    module.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    saved = state["schedule"]
    if schedule is None or saved is None:
        return
    if "scheduler" in saved:
        schedule.scheduler.load_state_dict(saved["scheduler"])
        return
    schedule.groups = torch_optimizer.param_groups  # load_state_dict replaced the optimiser's group dicts
    schedule.steps, schedule.epochs = saved["steps"], saved["epochs"]
    schedule._apply()


def resume_payload(progress: Progress, members: list[dict[str, Any]], config: dict[str, Any]) -> dict[str, Any]:
    return {"epoch": progress.epoch, "best": float(progress.best), "since_best": progress.since_best,
            "best_test": dict(progress.best_test), "train_s": progress.train_s, "members": members,
            "config": config_text(config)}


def load_resume(folder: str) -> Resume | None:
    """A checkpoint folder's resume state (with its best model and test predictions), or None without one."""
    path = os.path.join(folder, RESUME_FILE)
    if not os.path.exists(path):
        return None
    saved = torch.load(path, weights_only=True)
    best_state = torch.load(os.path.join(folder, "model.pt"), weights_only=True)
    with np.load(os.path.join(folder, "test_predictions.npz")) as predictions:
        best_predictions = (predictions["y_true"], predictions["proba"])
    progress = Progress(epoch=int(saved["epoch"]), best=float(saved["best"]), since_best=int(saved["since_best"]),
                        best_test=dict(saved["best_test"]), train_s=float(saved["train_s"]), best_state=best_state,
                        best_predictions=best_predictions)
    return Resume(progress, list(saved["members"]), str(saved["config"]))
