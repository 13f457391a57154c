"""How a torch trial trains its model: one process, data-parallel workers (DDP), or DeepSpeed.

The shared loop (`training.fit_torch`) is one code path for all three; it asks its strategy for the device,
the rank and world size that pick its shard of the training split, to wrap the model and optimiser, to take
one optimisation step, and for the weights to checkpoint. Ray Train (benchmark/distributed.py) sets up the
process group; this module only uses it, so it imports no Ray.

Every rank evaluates the whole validation and test splits: parameters are identical across ranks after each
synchronised step, so all ranks take the same early-stopping decision, and ZeRO-3's collective forward passes
stay in step. Only the chief (rank 0) writes checkpoint files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import torch
from torch import nn

from omicsweep.errors import ConfigError


@dataclass
class Strategy:
    """One process, all of the training split (the default, and `omicsweep reproduce`)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def compute_dtype(self) -> torch.dtype:
        return torch.float32

    def to_device(self, x):
        """A tensor, or every tensor of a featuriser's dict, on this strategy's device (floats in its dtype)."""
        if isinstance(x, Mapping):
            return {key: self.to_device(value) for key, value in x.items()}
        x = x.to(self.device, non_blocking=True)
        return x.to(self.compute_dtype) if x.is_floating_point() else x

    def autocast(self, precision: str = "fp32"):
        """The forward passes' context: torch.autocast to bfloat16 on this device for precision 'bf16' (the
        trial's `precision` option), nothing for 'fp32'. DeepSpeed's own bf16/fp16 settings cast the weights
        instead (compute_dtype), so with them autocast is a no-op on already-cast tensors."""
        import contextlib

        if precision != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def lockstep(self, batches: Iterable) -> Iterator:
        """The training batches; several ranks stop together when the first runs out, since a rank left waiting
        in a collective would hang. The loader gives every rank as many batches (`loader.steps_per_epoch`), so
        this drops nothing; it guards against a loader that does not."""
        if self.world_size == 1:
            yield from batches
            return
        import torch.distributed as dist

        iterator = iter(batches)
        while True:
            item = next(iterator, None)
            have = torch.tensor([0 if item is None else 1], device=self.device)
            dist.all_reduce(have, op=dist.ReduceOp.MIN)
            if int(have.item()) == 0:
                return
            yield item

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer | None, config: dict[str, Any]):
        """(model, optimizer) ready to train; the optimizer is built by the loop from the model's parameters."""
        return model.to(self.device), optimizer

    def torch_optimizer(self, model, optimizer) -> torch.optim.Optimizer:
        """The torch optimiser whose param groups' `lr` the step uses: what a torch LR scheduler wraps."""
        return optimizer

    def step(self, model, optimizer, loss: torch.Tensor, grad_clip: float) -> bool:
        """One optimisation step on `loss`; True when the optimiser stepped (what a per-step schedule counts)."""
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), max_norm=grad_clip)
        optimizer.step()
        return True

    def module(self, model) -> nn.Module:
        """The plain nn.Module inside whatever `prepare` wrapped it in."""
        return model

    def state_dict(self, model) -> dict[str, torch.Tensor]:
        """float32 CPU weights of the plain module (what `build_torch_model` loads); called on every rank."""
        return {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).clone()
                for k, v in self.module(model).state_dict().items()}


@dataclass
class DataParallel(Strategy):
    """torch DistributedDataParallel over the process group Ray Train started (gloo on CPU, nccl on GPU)."""

    def prepare(self, model, optimizer, config):
        from torch.nn.parallel import DistributedDataParallel

        model = model.to(self.device)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids), optimizer

    def module(self, model) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        return model.module if isinstance(model, DistributedDataParallel) else model


@dataclass
class DeepSpeed(Strategy):
    """DeepSpeed's engine (ZeRO stage 0-3, bf16/fp16, gradient accumulation) from a JSON config's settings.

    The trial's batch_size is the per-worker micro-batch; train_batch_size follows from it, the config's
    gradient_accumulation_steps and the world size. The optimiser is the loop's torch optimiser unless the
    config file names its own (DeepSpeed's fused CPU Adam costs a C++ build on first use).

    The trial's `schedule` is a torch scheduler (or, per optimiser step, `training_options.StepSchedule`) on the
    engine's basic (torch) optimiser, stepped by the loop once per epoch (or once per accumulation boundary): with ZeRO or bf16/fp16 the optimiser `initialize` returns is DeepSpeed's wrapper, which
    torch schedulers reject, and whose param groups are the basic optimiser's. It is not passed to `initialize`
    as `lr_scheduler`, since the engine would step it at every optimiser step.
    """

    settings: dict[str, Any] = field(default_factory=dict)  # read by `load_deepspeed_config` on the driver

    def ds_config(self, config: dict[str, Any]) -> dict[str, Any]:
        ds = json.loads(json.dumps(self.settings))  # a copy: the trial fills in its batch sizes
        micro = int(config["batch_size"])
        accumulation = int(ds.get("gradient_accumulation_steps", 1))
        ds.update(train_micro_batch_size_per_gpu=micro, gradient_accumulation_steps=accumulation,
                  train_batch_size=micro * accumulation * self.world_size)
        clip = float(config.get("grad_clip") or 0.0)
        if clip > 0:
            ds["gradient_clipping"] = clip
        ds.setdefault("steps_per_print", 10**9)  # DeepSpeed's own progress lines would flood the worker logs
        return ds

    @property
    def compute_dtype(self) -> torch.dtype:
        ds = getattr(self, "_ds", {})
        if ds.get("bf16", {}).get("enabled"):
            return torch.bfloat16
        if ds.get("fp16", {}).get("enabled"):
            return torch.float16
        return torch.float32

    def prepare(self, model, optimizer, config):
        self._ds = self.ds_config(config)
        if "scheduler" in self._ds and str(config.get("schedule") or "none").lower() != "none":
            raise ConfigError(f"config schedule={config['schedule']!r} and the DeepSpeed config's own 'scheduler' "
                              "would both set the learning rate; drop one of them")
        _fit_buckets(self._ds, model)
        import deepspeed

        model = model.to(self.device)
        use_own = "optimizer" in self._ds
        engine, ds_optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=None if use_own else optimizer, config=self._ds,
            model_parameters=model.parameters() if use_own else None, dist_init_required=False,
        )
        return engine, ds_optimizer

    def torch_optimizer(self, model, optimizer) -> torch.optim.Optimizer:
        return getattr(model, "basic_optimizer", None) or optimizer  # DeepSpeedEngine: the optimiser ZeRO wraps

    def step(self, model, optimizer, loss, grad_clip) -> bool:
        boundary = bool(model.is_gradient_accumulation_boundary())  # this micro-batch ends an optimiser step
        model.backward(loss)  # the engine scales the loss by the accumulation steps and for fp16
        model.step()          # steps the optimiser at accumulation boundaries, zeroing the gradients
        return boundary

    def module(self, model) -> nn.Module:
        from deepspeed import DeepSpeedEngine

        return model.module if isinstance(model, DeepSpeedEngine) else model

    def state_dict(self, model) -> dict[str, torch.Tensor]:
        if int(self._ds.get("zero_optimization", {}).get("stage", 0)) == 3:
            import deepspeed

            params = list(self.module(model).parameters())
            with deepspeed.zero.GatheredParameters(params, modifier_rank=None):  # collective: every rank calls it
                return super().state_dict(model)
        return super().state_dict(model)


DEEPSPEED_BUCKET = 500_000_000  # DeepSpeed's default ZeRO-1/2 reduce and all-gather bucket, in elements
BUCKET_ALIGNMENT = 512


def _fit_buckets(ds: dict[str, Any], model: nn.Module) -> None:
    """ZeRO-1/2 buckets no larger than the model, unless the config sets them: DeepSpeed allocates its default
    (2 GB of float32) on each backward pass for any model, which costs seconds per step on a CPU worker."""
    zero = ds.get("zero_optimization", {})
    if int(zero.get("stage", 0)) in (1, 2):
        n_params = sum(p.numel() for p in model.parameters())
        # a multiple of BUCKET_ALIGNMENT: ZeRO-1/2 assert the all-gather bucket is one of its alignment (2)
        size = -(-max(1, n_params) // BUCKET_ALIGNMENT) * BUCKET_ALIGNMENT
        for key in ("reduce_bucket_size", "allgather_bucket_size"):
            zero.setdefault(key, int(min(DEEPSPEED_BUCKET, size)))


def load_deepspeed_config(path: str) -> dict[str, Any]:
    """The DeepSpeed JSON config at `path`, checked enough to fail before any worker starts."""
    file = Path(path)
    try:
        ds = json.loads(file.read_text())
    except OSError as exc:
        raise ConfigError(f"--deepspeed {path}: cannot read it ({exc.strerror})") from None
    except ValueError as exc:
        raise ConfigError(f"--deepspeed {path}: not valid JSON ({exc})") from None
    if not isinstance(ds, dict):
        raise ConfigError(f"--deepspeed {path}: expected a JSON object of DeepSpeed settings")
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise ConfigError(f"--deepspeed {path}: zero_optimization.stage {stage!r} must be 0, 1, 2 or 3")
    if ds.get("bf16", {}).get("enabled") and ds.get("fp16", {}).get("enabled"):
        raise ConfigError(f"--deepspeed {path}: enable bf16 or fp16, not both")
    steps = ds.get("gradient_accumulation_steps", 1)
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"--deepspeed {path}: gradient_accumulation_steps must be a positive integer")
    _check_deepspeed_keys(ds, path)
    check_extension_locks()
    return ds


STALE_BUILD_LOCK_S = 900  # a CPU build of DeepSpeed's shm_comm op takes about 2 minutes on 2 busy cores


def check_extension_locks(max_age_s: float = STALE_BUILD_LOCK_S) -> None:
    """Refuse a lock that a killed torch C++ extension build left (DeepSpeed builds its CPU ops on first use under
    torch's file lock): every DeepSpeed trial of this machine would wait on it forever."""
    import os
    import time

    from torch.utils.cpp_extension import get_default_build_root

    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())
    for lock in sorted(root.glob("*/*/lock")):
        age = time.time() - lock.stat().st_mtime
        if age > max_age_s:
            raise ConfigError(f"{lock}: a lock left by a killed C++ extension build ({age / 60:.0f} min old); "
                              f"DeepSpeed trials would wait on it forever: delete {lock.parent} (rebuilt on first use)")


# the top-level keys DeepSpeed 0.19 reads (runtime/config.py and its sub-configs; tests check each is a string of
# the installed DeepSpeed's sources). DeepSpeed itself ignores an unknown top-level key: a typo would silently
# train without the setting
DEEPSPEED_TOP_LEVEL_KEYS = frozenset('''
    train_batch_size train_micro_batch_size_per_gpu gradient_accumulation_steps optimizer scheduler
    communication_data_type seq_parallel_communication_data_type prescale_gradients gradient_predivide_factor
    sparse_gradients gradient_allreduce_op fp16 bf16 bfloat16 amp torch_autocast gradient_clipping
    zero_optimization zero_allow_untested_optimizer zero_force_ds_cpu_optimizer steps_per_print
    wall_clock_breakdown dump_state memory_breakdown flops_profiler activation_checkpointing sparse_attention
    data_efficiency curriculum_learning data_types checkpoint aio tensorboard wandb csv_monitor comet comms_logger
    elasticity autotuning compression_training pipeline progressive_layer_drop eigenvalue quantize_training
    hybrid_engine compile dataloader_drop_last disable_allgather use_data_before_expert_parallelism timers nebula
    weight_quantization graph_harvesting tensor_parallel expert_parallel mics_shard_size
    mics_hierarchical_params_gather disable_python_gc legacy_fusion log_level managed_gradient_accumulation
    vocabulary_size
'''.split())


def _deepspeed_schemas() -> dict[str, Any]:
    """DeepSpeed's own pydantic models (extra keys forbidden) for the sections that have one."""
    from deepspeed.runtime.precision_config import DeepSpeedBF16Config, DeepSpeedFP16Config
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    return {"zero_optimization": DeepSpeedZeroConfig, "bf16": DeepSpeedBF16Config, "bfloat16": DeepSpeedBF16Config,
            "fp16": DeepSpeedFP16Config}


def _check_deepspeed_keys(ds: dict[str, Any], path: str) -> None:
    """A ConfigError naming the file and the first unknown (or invalid) key of a DeepSpeed config."""
    unknown = sorted(set(ds) - DEEPSPEED_TOP_LEVEL_KEYS)
    if unknown:
        raise ConfigError(f"--deepspeed {path}: unknown top-level key {unknown[0]!r} (DeepSpeed would ignore it; "
                          "see https://www.deepspeed.ai/docs/config-json/)")
    import pydantic

    try:
        schemas = _deepspeed_schemas()
    except ImportError:
        raise ConfigError(f"--deepspeed {path}: DeepSpeed is not installed; pip install -e '.[deepspeed]'") from None
    for section, schema in schemas.items():
        if section not in ds:
            continue
        if not isinstance(ds[section], dict):
            raise ConfigError(f"--deepspeed {path}: {section} must be a JSON object")
        try:
            schema(**ds[section])
        except pydantic.ValidationError as exc:
            error = exc.errors()[0]
            key = ".".join(str(part) for part in (section, *error["loc"]))
            problem = "unknown key" if error["type"] == "extra_forbidden" else f"invalid value ({error['msg']})"
            raise ConfigError(f"--deepspeed {path}: {key}: {problem} in DeepSpeed's schema") from None


def make_strategy(
    *, workers: int, rank: int = 0, deepspeed: dict[str, Any] | None = None, device: torch.device | None = None
) -> Strategy:
    """The strategy for a trial: DeepSpeed when it has settings, DDP for several workers, else single."""
    device = device or torch.device("cpu")
    if deepspeed is not None:
        return DeepSpeed(rank=rank, world_size=workers, device=device, settings=deepspeed)
    if workers > 1:
        return DataParallel(rank=rank, world_size=workers, device=device)
    return Strategy(device=device)
