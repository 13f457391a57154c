"""Fitting loops for the two model families. They know nothing of Ray: results go to a `report` callable.

report(metrics: dict, checkpoint_files: dict[str, callable] | None) is called once per epoch (torch) or once
(estimator). `checkpoint_files` maps a file name to a function that writes that file given its path: trial.json,
transform.npz, the model (model.pt: a state_dict of `build_torch_model(entry, config, task)`, or estimator.skops:
`save_estimator`, skops' format) and test_predictions.npz (y_true, proba of the test split), so two runs can be compared.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from omicsweep.benchmark.estimator_fit import common_files as _common_files, fit_estimator, prefixed as _prefixed
from omicsweep.benchmark.metrics import classification_metrics
from omicsweep.benchmark.options import LOSSES, TORCH_CONFIG_KEYS, TRIAL_CONFIG_KEYS, option, validate_options
from omicsweep.benchmark.strategies import Strategy
from omicsweep.benchmark.torch_resume import RESUME_FILE, Progress, Resume, config_text, member_state, restore_member
from omicsweep.benchmark.torch_resume import resume_payload
from omicsweep.benchmark.training_options import Accumulator, accumulation_steps, make_loss, make_lr_schedule
from omicsweep.benchmark.training_options import make_optimizer, model_parameters
from omicsweep.datasets.loader import CellBatches, training_batches
from omicsweep.datasets.transform import ExpressionTransform
from omicsweep.datasets.store import Store
from omicsweep.errors import ConfigError
from omicsweep.models.base import ModelEntry, Task
from omicsweep.models.ensemble import EnsembleClassifier, ensemble_size
from omicsweep.models.featurise import DEFAULT_FEATURISER, as_inputs, run_model
from omicsweep.schema import TRAIN_SECONDS

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
    resume: Resume | None = None  # torch: a retried trial's last epoch (benchmark/torch_resume.py)
    keep_resume: bool = False     # torch: write the resume state into each epoch's checkpoint


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


# ---- torch training options (config keys loss, optimizer, schedule, grad_clip; all optional) --------------------
# declared once, typed, in benchmark/options.py; the makers live in benchmark/training_options.py


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
    if entry.family == "torch":
        accumulation_steps(config)
    try:
        entry.build(config, task)
    except ConfigError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"model {entry.name}: configuration rejected ({type(exc).__name__}: {exc})") from None


def _train_labels_if_needed(config: dict[str, Any], store: Store) -> np.ndarray | None:
    if _option(config, "loss", LOSSES) != "weighted_ce":
        return None
    return store.labels()[store.split_indices("train")]


# ---- torch -------------------------------------------------------------------------------------------------------


@torch.no_grad()
def predict_torch(
    model: nn.Module, batches: CellBatches, strategy: Strategy | None = None, *, precision: str = "fp32",
) -> tuple[np.ndarray, np.ndarray, float]:
    """Class probabilities, labels and mean cross-entropy over a split (on the strategy's device).

    A batch's x is the model's featurised inputs (a dict of tensors: the forward's keyword arguments) or a bare
    dense tensor (the default featuriser's "x")."""
    strategy = strategy or Strategy()
    model.eval()
    probas, labels, loss_sum = [], [], 0.0
    for x, y in batches:
        with strategy.autocast(precision):
            logits = run_model(model, strategy.to_device(as_inputs(x)))
        logits = logits.float().cpu()
        loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        probas.append(torch.softmax(logits, dim=1).numpy())
        labels.append(y.numpy())
    y_all = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)
    p_all = np.concatenate(probas) if probas else np.zeros((0, 0))
    return p_all, y_all, loss_sum / max(1, len(y_all))


def _eval_batches(inputs: FitInputs, split: str, featurise=None) -> CellBatches:
    return CellBatches(inputs.store, split, batch_size=1024, transform=inputs.transform, shuffle=False,
                       featurise=featurise)


def train_epoch(
    model: nn.Module, batches, optimizer: torch.optim.Optimizer, loss_fn: nn.Module, *, grad_clip: float = 0.0,
    strategy: Strategy | None = None, schedule=None, precision: str = "fp32", accumulation: int = 1,
) -> float:
    """One pass over `batches` of (inputs, y); returns the mean training loss per cell (of this rank's shard).

    schedule: a per-step learning-rate schedule (training_options.make_lr_schedule), told of each optimiser step;
    precision 'bf16': forward passes under torch.autocast; accumulation > 1: one optimiser step every that many
    micro-batches, each loss divided by it (training_options.Accumulator; DeepSpeed accumulates by its JSON)."""
    strategy = strategy or Strategy()
    model.train()
    loss_sum, seen = 0.0, 0
    accumulator = Accumulator(model, optimizer, accumulation, grad_clip) if accumulation > 1 else None
    for x, y in strategy.lockstep(batches):
        y = strategy.to_device(y)
        with strategy.autocast(precision):
            logits = run_model(model, strategy.to_device(as_inputs(x)))
        loss = loss_fn(logits.float(), y)
        stepped = accumulator.add(loss) if accumulator else strategy.step(model, optimizer, loss, grad_clip)
        if schedule is not None and stepped is not False:
            schedule.optimizer_step()
        loss_sum += loss.item() * len(y)
        seen += len(y)
    if accumulator is not None and accumulator.flush() and schedule is not None:
        schedule.optimizer_step()
    return loss_sum / max(1, seen)


@dataclass
class _Member:
    """One ensemble member: its model, optimiser, schedule, shuffled batches and its own torch RNG stream."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any  # training_options.EpochSchedule / StepSchedule, or None
    batches: CellBatches
    rng_state: torch.Tensor
    pretrain_loss: float | None


def _accumulation(config: dict[str, Any], strategy: Strategy) -> int:
    steps = accumulation_steps(config)
    if steps > 1 and hasattr(strategy, "_ds"):
        raise ConfigError("config accumulation applies to one process or DDP; under DeepSpeed set "
                          "gradient_accumulation_steps in its JSON (the engine divides the loss by it)")
    return steps


def _steps_per_epoch(batches, world_size: int) -> int:
    """Optimiser steps of one epoch on this rank, for a per-step schedule's horizon (resampled epochs vary a
    little; the first epoch's count is used)."""
    from omicsweep.datasets.loader import steps_per_epoch

    n_rows = getattr(batches, "n_rows_all_ranks", None) or getattr(batches, "n_cells", 0)
    return steps_per_epoch(int(n_rows), world_size, batch_size=batches.batch_size, min_batch=batches.min_batch)


def _make_member(entry: ModelEntry, inputs: FitInputs, index: int, featurise=None, saved=None) -> _Member:
    """Member `index` seeded with seed + index (member 0 of a one-model run is exactly the plain run).

    A module with a `pretrain(train_batches, config)` method (e.g. autoencoder initialisation) gets it called
    here, before the classifier's optimiser exists. The optimiser steps the module's `param_groups(config)` when
    it has them (training_options.model_parameters). `saved` (torch_resume.member_state of a retried trial's last
    epoch): the member is built as always, then its weights, optimiser, schedule and RNG state are loaded (no
    pretraining: the saved weights already hold it).
    """
    cfg, seed, strategy = inputs.config, inputs.seed + index, inputs.strategy
    torch.manual_seed(seed)
    model = entry.build(cfg, inputs.task)
    # datasets: config `resample` (none/over/under streamed; smote loads the training split in memory);
    # this rank's shard of the epoch's rows, in as many batches as every other rank's
    batches = training_batches(
        inputs.store, inputs.transform, cfg, batch_size=int(cfg["batch_size"]), seed=seed,
        min_batch=2,  # BatchNorm needs two cells per batch
        rank=strategy.rank, world_size=strategy.world_size, featurise=featurise,
    )
    pretrain = getattr(model, "pretrain", None)
    pretrain_loss = pretrain(batches, cfg) if callable(pretrain) and saved is None else None
    model = model.to(strategy.device)
    optimizer = make_optimizer(model_parameters(model, cfg), cfg)
    model, optimizer = strategy.prepare(model, optimizer, cfg)
    scheduler = make_lr_schedule(strategy.torch_optimizer(model, optimizer), cfg,
                                 steps_per_epoch=-(-_steps_per_epoch(batches, strategy.world_size)
                                                   // accumulation_steps(cfg)))
    if saved is None:
        return _Member(model, optimizer, scheduler, batches, torch.get_rng_state(), pretrain_loss)
    restore_member(strategy.module(model), optimizer, strategy.torch_optimizer(model, optimizer), scheduler, saved)
    return _Member(model, optimizer, scheduler, batches, saved["rng_state"], saved["pretrain_loss"])


def _train_members_one_epoch(
    members: list[_Member], epoch: int, loss_fn: nn.Module, grad_clip: float, strategy: Strategy | None = None,
    precision: str = "fp32", accumulation: int = 1,
) -> float:
    """Each member trains one epoch on its own RNG stream; returns their mean training loss."""
    losses = []
    for member in members:
        torch.set_rng_state(member.rng_state)
        member.batches.set_epoch(epoch)
        losses.append(train_epoch(member.model, member.batches, member.optimizer, loss_fn, grad_clip=grad_clip,
                                  strategy=strategy, schedule=member.scheduler, precision=precision,
                                  accumulation=accumulation))
        if member.scheduler is not None:
            member.scheduler.epoch_end()
        member.rng_state = torch.get_rng_state()
    return float(np.mean(losses))


def _best_files(inputs: FitInputs, state: dict[str, torch.Tensor], test_y: np.ndarray, test_proba: np.ndarray):
    return {
        **_common_files(inputs),
        "model.pt": lambda path: torch.save(state, path),
        "test_predictions.npz": lambda path: np.savez(path, y_true=test_y, proba=test_proba),
    }


def _resumed(inputs: FitInputs, n_members: int) -> Resume | None:
    """The retried trial's resume state when it belongs to this configuration, else None (start at epoch 1)."""
    resume = inputs.resume
    if resume is None or resume.config != config_text(inputs.config) or len(resume.members) != n_members:
        return None
    return resume


def _checkpoint_files(inputs: FitInputs, progress: Progress, members: list[_Member], improved: bool):
    """This epoch's checkpoint: on a new best its files (as always); with keep_resume every epoch, the best
    epoch's files carried plus the resume state."""
    if not inputs.keep_resume:
        return _best_files(inputs, progress.best_state, *progress.best_predictions) if improved else None
    module = inputs.strategy.module
    saved = [member_state(module(m.model), m.optimizer, m.scheduler, m.rng_state, m.pretrain_loss) for m in members]
    payload = resume_payload(progress, saved, inputs.config)
    return {**_best_files(inputs, progress.best_state, *progress.best_predictions),
            RESUME_FILE: lambda path: torch.save(payload, path)}


def fit_torch(entry: ModelEntry, inputs: FitInputs, report: Report) -> None:
    """Epochs with early stopping on the validation metric; the test split is scored at each new best.

    With config `ensemble` = N > 1, N members (seeds seed + i) train in lockstep, one epoch each per epoch;
    validation, early stopping, test scores and the checkpoint use their averaged probabilities. A retried trial
    (`inputs.resume`) continues after its last reported epoch (benchmark/torch_resume.py).
    """
    cfg, strategy = inputs.config, inputs.strategy
    n_members = ensemble_size(cfg)
    if n_members > 1 and strategy.world_size > 1:
        raise ConfigError("ensemble > 1 trains its members in one process; use workers_per_trial 1 for ensembles")
    # what the model eats, made from CSR batches; the default's batches are the loader's own dense tensors (the
    # same values; as_inputs reads them as {"x": ...}), so a `pretrain` hook still gets (x, y) tensors
    featurise = entry.featurise.fit(inputs.store, cfg)
    featurise = None if featurise is DEFAULT_FEATURISER else featurise
    precision, accumulation = str(option(cfg, "precision")), _accumulation(cfg, strategy)
    resume = _resumed(inputs, n_members)
    progress = resume.progress if resume is not None else Progress()
    members = [_make_member(entry, inputs, i, featurise, resume.members[i] if resume else None)
               for i in range(n_members)]
    # training goes through the strategy's wrapper (DDP, DeepSpeed engine); evaluation uses the plain module
    model = strategy.module(members[0].model) if n_members == 1 else EnsembleClassifier([m.model for m in members])
    loss_fn = make_loss(cfg, n_classes=inputs.task.n_classes, train_labels=_train_labels_if_needed(cfg, inputs.store))
    loss_fn = loss_fn.to(strategy.device)
    grad_clip = float(cfg.get("grad_clip") or 0.0)
    pretrained = [m.pretrain_loss for m in members if m.pretrain_loss is not None]
    val, test = _eval_batches(inputs, "val", featurise), _eval_batches(inputs, "test", featurise)
    for epoch in range(progress.epoch + 1, int(cfg["max_epochs"]) + 1):
        started = time.perf_counter()
        lr = float(members[0].optimizer.param_groups[0]["lr"])  # as the stepping optimiser (or wrapper) reads it
        train_loss = _train_members_one_epoch(members, epoch, loss_fn, grad_clip, strategy, precision, accumulation)
        val_proba, val_y, val_loss = predict_torch(model, val, strategy, precision=precision)
        val_metrics = classification_metrics(val_y, val_proba)
        progress.train_s += time.perf_counter() - started  # the fit loop: test scoring, checkpoints are overhead
        progress.epoch, improved = epoch, val_metrics[inputs.metric] > progress.best
        if improved:
            progress.best, progress.since_best = val_metrics[inputs.metric], 0
            test_proba, test_y, test_loss = predict_torch(model, test, strategy, precision=precision)
            test_metrics = _prefixed("test", classification_metrics(test_y, test_proba))
            progress.best_test = {**test_metrics, "test_loss": test_loss}
            progress.best_state, progress.best_predictions = strategy.state_dict(model), (test_y, test_proba)
        else:
            progress.since_best += 1
        metrics = {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_lr": lr,
            **({"train_ae_loss": float(np.mean(pretrained))} if pretrained else {}),
            "val_loss": val_loss,
            **_prefixed("val", val_metrics),
            "best_val": progress.best,
            **progress.best_test,
            "epoch_time_s": time.perf_counter() - started,
            TRAIN_SECONDS: progress.train_s,
        }
        report(metrics, _checkpoint_files(inputs, progress, members, improved))
        if progress.since_best >= int(cfg["patience"]):
            break


FITTERS = {"torch": fit_torch, "estimator": fit_estimator}
