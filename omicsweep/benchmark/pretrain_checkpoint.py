"""Pretraining checkpoints under every strategy (benchmark/strategies.py): one process, DDP, DeepSpeed ZeRO 0-3.

A checkpoint is a folder, written by every rank together (`save_checkpoint` and `load_checkpoint` are
collectives: call them on all ranks) and swapped into place whole (atomic.replace_folder), so a run killed while
writing leaves the previous checkpoint intact:

    STATE_FILE    pretrain.json: step, every rank's TokenStream position, the vocabulary fingerprint and gene
                  count, the strategy and world size, and the loop's own meta (config, seed, best val loss) at
                  the top level. Written last: a folder without it is not a checkpoint
    MODULE_FILE   module.pt: the consolidated float32 state_dict of the plain module (what fine-tuning loads,
                  `load_module_state`, torch.load(weights_only=True)). Under DeepSpeed the weights are the
                  optimiser's fp32 master copy (deepspeed.utils.safe_get_full_fp32_param: gathered from the
                  ZeRO-1/2/3 partitions), not the bf16 weights the module computes with
    TORCH_FILE    train_state.pt: the optimiser state dict (one process, DDP) and the LR schedule's position
    DEEPSPEED_DIR deepspeed/ (DeepSpeed): the engine's own format, `engine.save_checkpoint(tag="step<N>")`, with
                  step, stream positions and fingerprint in its client_state; each rank writes its own ZeRO
                  partition files, so ranks on several nodes need one shared folder (or Ray Train's merged
                  checkpoint upload, where every rank reports its folder). The trial's LR scheduler (a torch
                  one on the engine's basic optimiser, see strategies.DeepSpeed) is in TORCH_FILE beside it

Ranks may write one shared folder or each its own (Ray Train gives each worker a temporary folder; node-local
disks): of the ranks that see the same folder, the lowest swaps it into place.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from omicsweep.atomic import atomic_write_text, replace_folder
from omicsweep.errors import InputError
from omicsweep.models.performer import vocabulary_fingerprint  # noqa: F401 - defined beside the model it fits

STATE_FILE = "pretrain.json"  # benchmark/pretrain.py's META_FILE: its meta (config, seed, ...) at the top level
MODULE_FILE = "module.pt"
TORCH_FILE = "train_state.pt"
DEEPSPEED_DIR = "deepspeed"
FORMAT_VERSION = 1


@dataclass
class PretrainState:
    """What a checkpoint records besides the weights: where to continue."""

    step: int
    streams: list[dict[str, Any]]  # TokenStream.state_dict() of each rank, by rank
    vocabulary_fingerprint: str
    n_genes: int
    strategy: str = "single"
    world_size: int = 1
    extra: dict[str, Any] = field(default_factory=dict)  # the loop's own meta (config, best val loss): JSON values
    format: int = FORMAT_VERSION

    def as_json(self) -> dict[str, Any]:
        own = asdict(self)
        return {**own.pop("extra"), **own}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "PretrainState":
        names = set(cls.__dataclass_fields__) - {"extra"}
        return cls(**{k: v for k, v in raw.items() if k in names},
                   extra={k: v for k, v in raw.items() if k not in names})

    def stream(self, rank: int) -> dict[str, Any]:
        """This rank's stream position (a run resumed on fewer ranks has no position for the others)."""
        if rank >= len(self.streams):
            raise InputError(f"checkpoint of {len(self.streams)} ranks has no stream position for rank {rank}; "
                             f"resume with --workers-per-trial {len(self.streams)}")
        return self.streams[rank]


# ---- collectives ------------------------------------------------------------------------------------------------
def _distributed(strategy) -> bool:
    import torch.distributed as dist

    return strategy.world_size > 1 and dist.is_available() and dist.is_initialized()


def _barrier(strategy) -> None:
    if _distributed(strategy):
        import torch.distributed as dist

        dist.barrier()


def _gather(strategy, value: Any) -> list[Any]:
    """`value` of every rank, by rank (a list of one without a process group)."""
    if not _distributed(strategy):
        return [value]
    import torch.distributed as dist

    out: list[Any] = [None] * strategy.world_size
    dist.all_gather_object(out, value)
    return out


def _is_deepspeed(strategy) -> bool:
    from omicsweep.benchmark.strategies import DeepSpeed

    return isinstance(strategy, DeepSpeed)


def strategy_name(strategy) -> str:
    if _is_deepspeed(strategy):
        return f"deepspeed zero={int(strategy._ds.get('zero_optimization', {}).get('stage', 0))}"
    return "ddp" if strategy.world_size > 1 else "single"


# ---- the consolidated module ------------------------------------------------------------------------------------
def consolidated_state_dict(strategy, model) -> dict[str, torch.Tensor]:
    """float32 CPU state_dict of the plain module, full size on every rank (a collective under DeepSpeed).

    Trainable parameters under DeepSpeed come from the optimiser's fp32 master weights (ZeRO-1/2/3 partitions
    and bf16 gathered); frozen ones and buffers from the module (gathered first under ZeRO-3)."""
    if not _is_deepspeed(strategy):
        return strategy.state_dict(model)
    from deepspeed.utils import safe_get_full_fp32_param

    state = strategy.state_dict(model)  # ZeRO-3: gathers every parameter (GatheredParameters)
    for name, param in strategy.module(model).named_parameters():
        full = safe_get_full_fp32_param(param) if param.requires_grad else None  # collective per parameter
        if full is not None and name in state:
            state[name] = full.detach().to("cpu", torch.float32).reshape(state[name].shape).clone()
    return state


def load_module_state(path: str | os.PathLike, *, vocabulary_fingerprint: str | None = None) -> dict[str, torch.Tensor]:
    """The consolidated module of a checkpoint folder (or its module.pt), checked against a vocabulary."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    state = read_state(folder)
    if vocabulary_fingerprint is not None:
        check_vocabulary(state, folder, vocabulary_fingerprint)
    return torch.load(folder / MODULE_FILE, map_location="cpu", weights_only=True)


# ---- the state file ---------------------------------------------------------------------------------------------
def read_state(folder: str | os.PathLike) -> PretrainState:
    folder = Path(folder)
    file = folder / STATE_FILE
    try:
        return PretrainState.from_json(json.loads(file.read_text()))
    except FileNotFoundError:
        raise InputError(f"{folder}: not a pretraining checkpoint (no {STATE_FILE})") from None
    except (ValueError, TypeError) as exc:
        raise InputError(f"{file}: not a pretraining checkpoint state ({exc})") from None


def check_vocabulary(state: PretrainState, folder: Path, fingerprint: str) -> None:
    if state.vocabulary_fingerprint != fingerprint:
        raise InputError(
            f"{Path(folder) / STATE_FILE}: checkpoint of another gene vocabulary (fingerprint "
            f"{state.vocabulary_fingerprint}, {state.n_genes} genes; this corpus's is {fingerprint}); resume or "
            "fine-tune on the corpus it was pretrained on"
        )


def is_checkpoint(folder: str | os.PathLike) -> bool:
    return (Path(folder) / STATE_FILE).is_file()


# ---- save -------------------------------------------------------------------------------------------------------
def _staging(folder: Path, step: int) -> Path:
    """The same hidden sibling on every rank (names agreed without communication)."""
    return folder.parent / f".{folder.name}.partial-step{step}"


def _swappers(strategy, folder: Path, step: int) -> bool:
    """True on the one rank of each group of ranks that see the same `folder` (a folder shared by all ranks, Ray
    Train's per-worker temporary folders, node-local folders of one path): the lowest rank that sees it swaps it
    into place. Ranks find who shares by the probe files they see, not by path, which differs from filesystem to
    filesystem."""
    if strategy.world_size == 1:
        return True
    folder.parent.mkdir(parents=True, exist_ok=True)
    nonce = _gather(strategy, uuid.uuid4().hex)[0]  # rank 0's: a killed run's stale probes never match
    probe = folder.parent / f".{folder.name}.probe-{nonce}-rank"
    Path(f"{probe}{strategy.rank}").touch()
    _barrier(strategy)
    seen = [r for r in range(strategy.world_size) if Path(f"{probe}{r}").exists()]
    _barrier(strategy)
    Path(f"{probe}{strategy.rank}").unlink(missing_ok=True)
    return min(seen) == strategy.rank


def save_checkpoint(folder: str | os.PathLike, *, strategy, model, optimizer, scheduler=None, step: int,
                    vocabulary_fingerprint: str, n_genes: int, stream_state: dict[str, Any] | None = None,
                    streams: list[dict[str, Any]] | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write the checkpoint of `step` to `folder` (replacing the one there); a collective. Returns `folder`.

    stream_state: this rank's TokenStream.state_dict() (gathered here), or streams: every rank's, gathered.
    scheduler: a torch LR scheduler or the loop's StepSchedule (training_options), or None."""
    folder = Path(folder)
    staging = _staging(folder, step)
    swapper = _swappers(strategy, folder, step)
    if swapper:
        shutil.rmtree(staging, ignore_errors=True)  # a run killed while writing this step left it
    _barrier(strategy)
    staging.mkdir(parents=True, exist_ok=True)
    streams = list(streams) if streams is not None else _gather(strategy, stream_state)
    state = PretrainState(step=int(step), streams=streams,
                          vocabulary_fingerprint=vocabulary_fingerprint, n_genes=int(n_genes),
                          strategy=strategy_name(strategy), world_size=strategy.world_size,
                          extra={k: v for k, v in (extra or {}).items() if k not in PretrainState.__dataclass_fields__})
    module_state = consolidated_state_dict(strategy, model)
    if _is_deepspeed(strategy):
        client = {"step": state.step, "streams": state.streams, "vocabulary_fingerprint": vocabulary_fingerprint}
        model.save_checkpoint(str(staging / DEEPSPEED_DIR), tag=f"step{state.step}", client_state=client)
    _barrier(strategy)  # every rank's partition files are written
    if swapper:
        torch_state = {"scheduler": _schedule_state(scheduler)}
        if not _is_deepspeed(strategy):
            torch_state["optimizer"] = optimizer.state_dict() if optimizer is not None else None
        torch.save(torch_state, staging / TORCH_FILE)
        torch.save(module_state, staging / MODULE_FILE)
        atomic_write_text(staging / STATE_FILE, json.dumps(state.as_json(), indent=1, default=str))  # last: complete
        replace_folder(staging, folder)
    _barrier(strategy)
    return folder


# ---- load -------------------------------------------------------------------------------------------------------
def load_checkpoint(folder: str | os.PathLike, *, strategy, model, optimizer, scheduler=None,
                    vocabulary_fingerprint: str) -> PretrainState:
    """Restore model, optimiser and scheduler (as prepared by `strategy`) from `folder`; a collective. Returns
    the state: the step to continue from and `state.stream(rank)` for this rank's TokenStream."""
    folder = Path(folder)
    state = read_state(folder)
    check_vocabulary(state, folder, vocabulary_fingerprint)
    if state.world_size != strategy.world_size:
        raise InputError(f"{folder / STATE_FILE}: written by {state.world_size} ranks; resume with "
                         f"--workers-per-trial {state.world_size} (the stream positions are per rank)")
    torch_state = torch.load(folder / TORCH_FILE, map_location="cpu", weights_only=True)
    if _is_deepspeed(strategy):
        _load_deepspeed(folder, state, model)
    else:
        module_state = torch.load(folder / MODULE_FILE, map_location="cpu", weights_only=True)
        strategy.module(model).load_state_dict(module_state)
        if optimizer is not None and torch_state.get("optimizer") is not None:
            optimizer.load_state_dict(torch_state["optimizer"])
    _restore_schedule(scheduler, torch_state.get("scheduler"), strategy.torch_optimizer(model, optimizer))
    return state


def _schedule_state(schedule) -> dict[str, Any] | None:
    if schedule is None:
        return None
    if hasattr(schedule, "optimizer_step"):  # training_options.StepSchedule: its position is its counters
        return {"steps": int(schedule.steps), "epochs": int(schedule.epochs)}
    return schedule.state_dict()


def _restore_schedule(schedule, saved: dict[str, Any] | None, torch_optimizer) -> None:
    """Put the schedule back; a StepSchedule also re-points at the optimiser's param groups, which
    Optimizer.load_state_dict (and DeepSpeed's load) replace: it would otherwise set the lr of the old ones."""
    if schedule is None or saved is None:
        return
    if hasattr(schedule, "optimizer_step"):
        schedule.steps, schedule.epochs = int(saved["steps"]), int(saved["epochs"])
        schedule.groups = torch_optimizer.param_groups
        schedule._apply()
        return
    schedule.load_state_dict(saved)


def _load_deepspeed(folder: Path, state: PretrainState, engine) -> None:
    """The engine's own checkpoint: module, ZeRO optimiser partitions (this rank's), fp32 master weights."""
    path, client = engine.load_checkpoint(str(folder / DEEPSPEED_DIR), tag=f"step{state.step}",
                                          load_optimizer_states=True, load_lr_scheduler_states=False)
    if path is None:
        raise InputError(f"{folder / DEEPSPEED_DIR}: DeepSpeed found no checkpoint of tag step{state.step}")
    if int(client.get("step", -1)) != state.step:
        raise InputError(f"{folder}: DeepSpeed checkpoint of step {client.get('step')} beside a state of step "
                         f"{state.step}; the folder is not one checkpoint")

