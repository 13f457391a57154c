"""A pretraining trial: scBERT's Performer trained by masked expression modelling, in optimiser steps.

`fit_pretrain(context, config, report, strategy)` is what `trial.execute_trial` runs for a model of a
pretraining task (models/performer.py `scbert_pretrain`). The corpus store streams through
datasets/corpus_stream.TokenStream (block-shuffled, sharded by rank); each micro-batch is masked as scBERT masks
(datasets/tokens.mask_tokens: 15% of a cell's non-zero tokens, 90% of those replaced by the mask token) and the
loss is the cross-entropy on the masked positions only, divided by the micro-batches of an optimiser step
(DeepSpeed divides by its own gradient_accumulation_steps). Optimiser, warm-up and schedule (counted in optimiser
steps over max_steps) and bf16 come from benchmark/training_options.py.

A step group is `eval_every` optimiser steps: one result per group, as an epoch is for other trials, so Tune's
training_iteration and ASHA count step groups and `max_epochs` is the number of groups (`reproduce` re-runs
`epochs_run` of them). Each result holds val_mlm_loss / val_mlm_accuracy / val_mlm_baseline_accuracy on the same
masked validation cells every time (the baseline predicts each cell's most common visible non-zero bin),
train_tokens_per_s, train_cells_per_s (and train_gpu_memory_mb on CUDA), and best_val = -(lowest val_mlm_loss):
the sweep's SEARCH_METRIC is maximised, so ASHA and the searcher minimise the validation loss.

Checkpoints (every `checkpoint_every` steps and at the end) go two ways: as the result's files (Tune's checkpoint;
the trial's last one becomes its MLflow artifact: module.pt, pretrain.json with config and vocabulary
fingerprint, train_state.pt), and, in a sweep, to a folder of the run folder keyed by the trial's seed and
configuration, from which a restarted trial (a Tune retry, `omicsweep pretrain --resume`) continues at the same
step and stream position.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from omicsweep.benchmark.pretrain_checkpoint import vocabulary_fingerprint
from omicsweep.errors import ConfigError, InputError
from omicsweep.schema import MLM_ACCURACY, MLM_BASELINE_ACCURACY, MLM_LOSS, SEARCH_METRIC, THROUGHPUT_KEYS

# a checkpoint's files (benchmark/pretrain_checkpoint.py): the float32 module fine-tuning loads (weights_only); config,
# vocabulary fingerprint, genes count, step, every rank's stream position; optimiser (one process / DDP) and schedule
from omicsweep.benchmark.pretrain_checkpoint import MODULE_FILE, STATE_FILE as META_FILE, TORCH_FILE as STATE_FILE
NOT_IN_KEY = ("max_epochs",)  # a resumed or extended run continues from the same checkpoints


@dataclass(frozen=True)
class PretrainSettings:
    max_steps: int
    eval_every: int
    checkpoint_every: int
    accumulation: int
    mask_prob: float
    val_cells: int
    block_rows: int

    @classmethod
    def of(cls, config: dict[str, Any]) -> "PretrainSettings":
        values = {}
        for key, low in (("max_steps", 1), ("eval_every", 1), ("checkpoint_every", 1), ("accumulation", 1),
                         ("val_cells", 1), ("block_rows", 1)):
            value = config.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"config {key}={value!r}: expected a whole number >= {low}")
            values[key] = value
        mask_prob = config.get("mask_prob", 0.15)
        if not isinstance(mask_prob, (int, float)) or not 0 < float(mask_prob) <= 1:
            raise ConfigError(f"config mask_prob={mask_prob!r}: expected a number in (0, 1]")
        groups = int(config.get("max_epochs") or -(-values["max_steps"] // values["eval_every"]))
        values["max_steps"] = min(values["max_steps"], groups * values["eval_every"])  # max_epochs = step groups
        return cls(mask_prob=float(mask_prob), **values)


def checkpoint_folder_for(root: str | None, seed: int, config: dict[str, Any]) -> Path | None:
    """The durable checkpoint folder of a trial (seed and configuration), or None outside a sweep."""
    if not root:
        return None
    from omicsweep.benchmark.faults import trial_key

    return Path(root) / trial_key(seed, {k: v for k, v in config.items() if k not in NOT_IN_KEY})


# ---- checkpoint save / load: benchmark/pretrain_checkpoint.py (every strategy, DeepSpeed's own format) ---------
def save_pretrain_state(folder: str | Path, *, strategy, model, optimizer, schedule, step: int,
                        streams: list[dict[str, Any]], meta: dict[str, Any]) -> Path:
    """Write the checkpoint of `step` to `folder`, swapped in whole (a run killed while writing keeps the previous
    one): the consolidated fp32 module, optimiser and schedule, and under DeepSpeed the engine's own checkpoint
    (ZeRO partitions). A collective: call on every rank."""
    from omicsweep.benchmark.pretrain_checkpoint import save_checkpoint

    return save_checkpoint(folder, strategy=strategy, model=model, optimizer=optimizer, scheduler=schedule,
                           step=step, streams=streams, vocabulary_fingerprint=meta["vocabulary_fingerprint"],
                           n_genes=int(meta["n_genes"]), extra=meta)


def load_pretrain_state(folder: str | Path, *, strategy, model, optimizer, schedule,
                        fingerprint: str) -> dict[str, Any]:
    """Restore model, optimiser and schedule from `folder` (a collective); returns its meta (step, streams)."""
    from omicsweep.benchmark.pretrain_checkpoint import load_checkpoint

    return load_checkpoint(folder, strategy=strategy, model=model, optimizer=optimizer, scheduler=schedule,
                           vocabulary_fingerprint=fingerprint).as_json()


def read_meta(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / META_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{folder}: not a pretraining checkpoint (no {META_FILE})") from None
    except ValueError as exc:
        raise InputError(f"{path}: not a pretraining checkpoint ({exc})") from None


def _is_deepspeed(strategy) -> bool:
    from omicsweep.benchmark.strategies import DeepSpeed

    return isinstance(strategy, DeepSpeed)


# ---- the loop ---------------------------------------------------------------------------------------------------
def _gather_streams(strategy, state: dict[str, Any]) -> list[dict[str, Any]]:
    if strategy.world_size == 1:
        return [state]
    import torch.distributed as dist

    out: list[Any] = [None] * strategy.world_size
    dist.all_gather_object(out, state)
    return out


def _mask(tokens: torch.Tensor, seed: int, *parts: int, mask_prob: float):
    from omicsweep.datasets.tokens import mask_tokens

    generator = torch.Generator().manual_seed(int.from_bytes(
        hashlib.sha256(json.dumps([seed, *parts]).encode()).digest()[:7], "little"))
    return mask_tokens(tokens, generator=generator, mask_prob=mask_prob)


@torch.no_grad()
def evaluate(module, batches, strategy, *, seed: int, mask_prob: float, precision: str) -> dict[str, float]:
    """val_mlm_loss / accuracy / baseline accuracy over the masked positions of `batches` (the same masks on
    every call: they are seeded by (seed, batch index) alone)."""
    import torch.nn.functional as F

    from omicsweep.datasets.tokens import IGNORE_INDEX, mlm_baseline_counts

    module.eval()
    loss_sum, correct, baseline, total = 0.0, 0, 0, 0
    for index, tokens in enumerate(batches):
        masked, labels = _mask(tokens, seed, -1, index, mask_prob=mask_prob)
        with strategy.autocast(precision):
            logits = module(strategy.to_device(masked)).float()
        labels = labels.to(logits.device)
        loss_sum += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                          ignore_index=IGNORE_INDEX, reduction="sum"))
        target = labels != IGNORE_INDEX
        correct += int((logits.argmax(dim=-1)[target] == labels[target]).sum())
        hits, count = mlm_baseline_counts(masked, labels.cpu())
        baseline, total = baseline + hits, total + count
    module.train()
    total = max(total, 1)
    return {MLM_LOSS: loss_sum / total, MLM_ACCURACY: correct / total, MLM_BASELINE_ACCURACY: baseline / total}


def _micro_batches(stream):
    """Micro-batches forever, epoch after epoch (the stream's position advances with each one)."""
    while True:
        empty = True
        for tokens in stream:
            empty = False
            yield tokens
        if empty:
            raise InputError("the corpus's train split has fewer cells than one batch per worker")


def _one_step(step: int, micro, settings: PretrainSettings, run) -> tuple[float, int]:
    """One optimiser step over `accumulation` micro-batches; (mean unscaled loss, cells)."""
    from omicsweep.models.performer import mlm_loss

    strategy, model, optimizer = run["strategy"], run["model"], run["optimizer"]
    deepspeed, losses, cells = _is_deepspeed(strategy), [], 0
    accumulation = int(strategy._ds.get("gradient_accumulation_steps", 1)) if deepspeed else settings.accumulation
    if not deepspeed:
        optimizer.zero_grad(set_to_none=True)
    for index in range(accumulation):
        tokens = next(micro)
        masked, labels = _mask(tokens, run["seed"], strategy.rank, step, index, mask_prob=settings.mask_prob)
        strategy.module(model).set_feature_step(step)  # FAVOR+ redraws counted in optimiser steps
        with strategy.autocast(run["precision"]):
            loss = mlm_loss(model(strategy.to_device(masked)), strategy.to_device(labels))
        losses.append(float(loss.detach()))
        cells += tokens.shape[0]
        if deepspeed:
            strategy.step(model, optimizer, loss, run["grad_clip"])  # the engine divides by its accumulation
        else:
            (loss / accumulation).backward()
    if not deepspeed:
        if run["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=run["grad_clip"])
        optimizer.step()
    run["schedule"].optimizer_step()
    return sum(losses) / len(losses), cells


def _setup(context, config: dict[str, Any], strategy) -> dict[str, Any]:
    """Store, streams, model, optimiser and schedule of a trial (as `strategy` prepares them)."""
    from omicsweep.benchmark.options import option
    from omicsweep.benchmark.training_options import StepSchedule, make_optimizer, model_parameters
    from omicsweep.datasets.corpus_stream import TokenStream
    from omicsweep.datasets.open import open_store
    from omicsweep.models.base import Task, get_model
    from omicsweep.models.performer import NUM_TOKENS
    from omicsweep.tasks import MASKED_EXPRESSION

    settings = PretrainSettings.of(config)
    store = open_store(context.store_path)
    if store.fingerprint != context.fingerprint:
        raise InputError(f"{context.store_path}: fingerprint {store.fingerprint} differs from the sweep's "
                         f"{context.fingerprint}")
    genes = tuple(map(str, store.genes()))
    task = Task(n_features=store.n_genes, n_classes=NUM_TOKENS, kind=MASKED_EXPRESSION, genes=genes)
    model = get_model("scbert_pretrain").build(config, task)  # load_priors reads gene2vec once per process
    optimizer = make_optimizer(model_parameters(model, config), config)
    model, optimizer = strategy.prepare(model, optimizer, config)
    schedule = StepSchedule(strategy.torch_optimizer(model, optimizer),
                            {**config, "schedule_unit": "step", "max_epochs": 1}, steps_per_epoch=settings.max_steps)
    seed = int(context.seed)
    stream = TokenStream(store, "train", batch_size=int(config["batch_size"]), seed=seed, rank=strategy.rank,
                         world_size=strategy.world_size, block_rows=settings.block_rows)
    val = TokenStream(store, "val", batch_size=int(config["batch_size"]), seed=seed, shuffle=False,
                      max_cells=settings.val_cells, block_rows=settings.block_rows)
    return {"settings": settings, "store": store, "genes": genes, "strategy": strategy, "model": model,
            "optimizer": optimizer, "schedule": schedule, "stream": stream, "val": val, "seed": seed,
            "precision": str(option(config, "precision")), "grad_clip": float(config.get("grad_clip") or 0.0),
            "fingerprint": vocabulary_fingerprint(genes), "config": config}


def _meta(run) -> dict[str, Any]:
    return {"config": run["config"], "seed": run["seed"], "vocabulary_fingerprint": run["fingerprint"],
            "n_genes": len(run["genes"]), "store_fingerprint": run["store"].fingerprint,
            "genes": list(run["genes"])}  # the vocabulary a fine-tune maps a store onto (models/scbert.py)


def _resume(run, folder: Path | None) -> tuple[int, float]:
    """(step to continue from, best val loss so far) from the durable checkpoint, or (0, inf)."""
    if folder is None or not (folder / META_FILE).is_file():
        return 0, float("inf")
    meta = load_pretrain_state(folder, strategy=run["strategy"], model=run["model"], optimizer=run["optimizer"],
                               schedule=run["schedule"], fingerprint=run["fingerprint"])
    run["stream"].load_state_dict(meta["streams"][run["strategy"].rank])
    return int(meta["step"]), float(meta.get("best_val_loss", float("inf")))


def fit_pretrain(context, config: dict[str, Any], report: Callable, strategy) -> None:
    """Masked expression modelling for max_steps optimiser steps; one result per step group. See the module."""
    run = _setup(context, config, strategy)
    settings, strategy = run["settings"], run["strategy"]
    folder = checkpoint_folder_for(getattr(context, "checkpoint_root", None), context.seed, config)
    step, best = _resume(run, folder)
    module, micro = strategy.module(run["model"]), _micro_batches(run["stream"])
    module.train()
    finished = step >= settings.max_steps  # a checkpoint of the last step (killed before its report): report it
    while step < settings.max_steps or finished:
        started, losses, cells = time.perf_counter(), [], 0
        lr = float(strategy.torch_optimizer(run["model"], run["optimizer"]).param_groups[0]["lr"])
        group_end = min(settings.max_steps, (step // settings.eval_every + 1) * settings.eval_every)
        while step < group_end:
            loss, n = _one_step(step, micro, settings, run)
            losses.append(loss)
            cells, step = cells + n, step + 1
        finished = False
        seconds = time.perf_counter() - started
        metrics = evaluate(module, run["val"], strategy, seed=run["seed"], mask_prob=settings.mask_prob,
                           precision=run["precision"])
        best = min(best, metrics[MLM_LOSS])
        files = None
        if step % settings.checkpoint_every == 0 or step >= settings.max_steps:
            files = _checkpoint(run, folder, step, best)
        report({"epoch": -(-step // settings.eval_every), "step": step,
                "train_loss": sum(losses) / len(losses) if losses else float("nan"),
                "train_lr": lr, **metrics, SEARCH_METRIC: -best,
                **_throughput(cells * strategy.world_size, len(run["genes"]) + 1, seconds, strategy),
                "epoch_time_s": seconds}, files)


def _checkpoint(run, folder: Path | None, step: int, best: float):
    """Save the durable checkpoint (in a sweep; else a scratch one) and return the result's checkpoint files."""
    run_meta = {**_meta(run), "best_val_loss": best}
    streams = _gather_streams(run["strategy"], run["stream"].state_dict())
    args = dict(strategy=run["strategy"], model=run["model"], optimizer=run["optimizer"], schedule=run["schedule"],
                step=step, streams=streams, meta=run_meta)
    return _write_and_files(folder, args, run["strategy"].rank)


def _write_and_files(folder: Path | None, args: dict[str, Any], rank: int):
    import tempfile

    scratch = None if folder is not None else Path(tempfile.mkdtemp(prefix="omicsweep-pretrain-"))
    saved = save_pretrain_state(folder if folder is not None else scratch / "ckpt", **args)
    contents = {name: (saved / name).read_bytes() for name in (MODULE_FILE, META_FILE, STATE_FILE)} if rank == 0 else {}
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)
    if rank != 0:
        return None
    return {name: (lambda path, data=data: Path(path).write_bytes(data)) for name, data in contents.items()}


def _throughput(cells: int, seq_len: int, seconds: float, strategy) -> dict[str, float]:
    """Cells and tokens per second over all ranks; peak GPU memory on CUDA."""
    seconds = max(seconds, 1e-9)
    tokens_key, cells_key, memory_key = THROUGHPUT_KEYS
    out = {cells_key: cells / seconds, tokens_key: cells * seq_len / seconds}
    if strategy.device.type == "cuda":
        out[memory_key] = torch.cuda.max_memory_allocated(strategy.device) / 2**20
    return out
