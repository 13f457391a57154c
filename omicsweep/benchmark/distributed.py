"""A trial trained by several Ray Train workers: data-parallel (DDP) or DeepSpeed, on CPUs (gloo) or GPUs (nccl).

Ray 2.60's Train V2 cannot be a Tune trainable itself: the Tune function trainable (`run_on_workers`, asking
Tune for almost no CPU) calls `TorchTrainer.fit()`, and `TuneReportCallback` forwards rank 0's results and
checkpoint path to Tune, so metrics, ASHA and the MLflow callback see the trial like any other. Each worker
runs the same `execute_trial` as a single-process trial with its strategy (benchmark/strategies.py), streaming
its own shard of the zarr store (rank and world size reach the loader).
"""

from __future__ import annotations

import re
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable

from omicsweep.benchmark.trial import TrialContext, checkpoint_folder, execute_trial, faulty, with_resources
from omicsweep.errors import ConfigError

# `_stoppable_trainer_class` overrides a private method of Ray Train and imports its private modules: it follows
# Ray 2.60's code and is refused on any other release (pyproject.toml pins ray the same way)
PRIVATE_RAY_WRITTEN_FOR = "2.60"
WORKER_START_ATTEMPTS = 20  # x 60 s: room for an autoscaler to start GPU nodes from zero
TRAIN_FOLDER = "train"  # under the sweep's storage: Ray Train runs (one per trial attempt) and their checkpoints


def train_report(rank: int) -> Callable:
    """report(metrics, files) for a Ray Train worker: every rank reports (Train V2 waits for all), the chief
    also uploads the checkpoint files."""
    import ray.train

    def report(metrics: dict[str, Any], files: dict[str, Callable[[str], None]] | None) -> None:
        if rank != 0 or not files:
            ray.train.report(metrics)
            return
        with checkpoint_folder(files) as folder:
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))

    return report


def train_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train's train_loop_per_worker: one rank of the trial."""
    import ray.train
    import torch

    from omicsweep.benchmark.strategies import make_strategy

    context: TrialContext = loop_config["context"]
    sampled: dict[str, Any] = loop_config["sampled"]
    train_context = ray.train.get_context()
    rank, world = train_context.get_world_rank(), train_context.get_world_size()
    if context.gpus > 0:
        import ray.train.torch

        device = ray.train.torch.get_device()
    else:
        device = torch.device("cpu")
    strategy = make_strategy(workers=world, rank=rank, deepspeed=context.deepspeed, device=device)
    report = with_resources(train_report(rank))
    if rank == 0:
        report = faulty(report, context, sampled)
    execute_trial(context, sampled, report, strategy=strategy)


def check_ray_version(version: str | None = None) -> None:
    """A ConfigError unless `version` (default: the installed Ray's) is a release of the Ray the Train controller
    override was written for."""
    if version is None:
        import ray

        version = ray.__version__
    if not re.fullmatch(re.escape(PRIVATE_RAY_WRITTEN_FOR) + r"\.\d+", version):
        raise ConfigError(
            f"Ray {version} is installed, but omicsweep's distributed trials (benchmark/distributed.py) override "
            f"Ray Train internals written for Ray {PRIVATE_RAY_WRITTEN_FOR}.x; install "
            f"'ray[tune,train]=={PRIVATE_RAY_WRITTEN_FOR}.*' or train with one worker and no DeepSpeed"
        )


def _stoppable_trainer_class():
    """TorchTrainer whose controller outlives a trial that Tune stops (ASHA, max_t), then aborts cleanly.

    Tune ends a stopped trial by terminating its actor. Ray Train's controller is that actor's child, so it would
    die with it and leave its workers' placement group behind: Ray's own cleaner needs the dashboard's state API,
    which a local session here does not run, and the next trial would wait for CPUs forever. Here the controller
    is detached and a watcher asks it to abort (stop the workers, free the group) as soon as Tune signals stop.
    The body otherwise follows Ray 2.60's `DataParallelTrainer._initialize_and_run_controller`; another Ray
    version is refused before its private modules are imported (`check_ray_version`).
    """
    import threading

    import ray

    check_ray_version()
    from ray.train.torch import TorchTrainer
    from ray.train._internal.session import get_session
    from ray.train.v2._internal.constants import get_env_vars_to_propagate
    from ray.train.v2._internal.execution.controller import TrainController

    class StoppableTorchTrainer(TorchTrainer):
        def _initialize_and_run_controller(self, **controller_init_kwargs):
            controller = ray.remote(
                num_cpus=0, lifetime="detached",
                label_selector={ray._raylet.RAY_NODE_ID_KEY: ray.get_runtime_context().get_node_id()},
                runtime_env={"env_vars": get_env_vars_to_propagate()},
            )(TrainController).remote(**controller_init_kwargs)
            done, stop = threading.Event(), getattr(get_session(), "stop_event", None)

            def watch() -> None:
                while stop is not None and not done.is_set():
                    if stop.wait(0.5) and not done.is_set():
                        controller.abort.remote()
                        return

            threading.Thread(target=watch, name="omicsweep-train-stop", daemon=True).start()
            try:
                ray.get(controller.run.remote())
                return ray.get(controller.get_result.remote())
            finally:
                done.set()

    return StoppableTorchTrainer


def run_on_workers(config: dict[str, Any], context: TrialContext) -> None:
    """Ray Tune function trainable for a distributed trial: runs `context.workers` Ray Train workers."""
    from ray import tune
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig
    from ray.tune.integration.ray_train import TuneReportCallback

    use_gpu = context.gpus > 0
    resources = {"CPU": float(context.cpus), **({"GPU": float(context.gpus)} if use_gpu else {})}
    storage = context.storage or str(Path(tempfile.gettempdir()) / "omicsweep-train")
    attempt = f"{tune.get_context().get_trial_id()}-{uuid.uuid4().hex[:6]}"  # a retry starts a fresh Train run
    trainer = _stoppable_trainer_class()(
        train_worker,
        train_loop_config={"context": context, "sampled": config},
        scaling_config=ScalingConfig(num_workers=context.workers, use_gpu=use_gpu, resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(
            name=attempt,
            storage_path=_join(storage, TRAIN_FOLDER),
            callbacks=[TuneReportCallback()],
            checkpoint_config=CheckpointConfig(num_to_keep=1),  # the best so far: a trial checkpoints on improvement
            # retries are Tune's (--max-failures), counted per trial; a worker group that cannot start (60 s per
            # attempt) fails the trial after WORKER_START_ATTEMPTS instead of waiting forever
            failure_config=FailureConfig(max_failures=0, controller_failure_limit=WORKER_START_ATTEMPTS),
        ),
    )
    trainer.fit()


def _join(storage: str, name: str) -> str:
    return f"{storage.rstrip('/')}/{name}" if "://" in storage else str(Path(storage) / name)
