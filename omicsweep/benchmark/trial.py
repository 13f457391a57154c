"""The one trainable every model runs through: seed -> data -> model -> fit -> per-epoch report + checkpoint.

This module imports no Ray: the same `execute_trial` runs in a Tune trial (benchmark/tune_trial.py), a Ray Train
worker (benchmark/distributed.py), a seed re-run and `omicsweep reproduce` in this process.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from omicsweep.errors import InputError
from omicsweep.schema import TRAIN_SECONDS, TRIAL_OVERHEAD, WORLD_SIZE_KEY
from omicsweep.tasks import PRETRAINING_TASKS


@dataclass(frozen=True)
class TrialContext:
    """Everything fixed for all trials of one sweep; the sampled hyperparameters arrive as the Tune config."""

    store_path: str
    fingerprint: str
    model: str
    defaults: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    metric: str = "accuracy"
    threads: int = 1
    # distributed strategies (benchmark/strategies.py, benchmark/distributed.py): torch models only
    workers: int = 1                        # Ray Train workers per trial (data parallel) when > 1
    cpus: float = 1.0                       # CPUs reserved per trial, or per worker (fractions allowed)
    gpus: float = 0.0                       # GPUs per trial (single worker) or per worker (Ray Train)
    deepspeed: dict[str, Any] | None = None  # DeepSpeed settings (the --deepspeed JSON), trained by Ray Train
    storage: str | None = None              # Ray Train's storage for a distributed trial's checkpoints
    faults: str | None = None               # chaos tests: benchmark/faults.py spec, sweep trials only
    fault_dir: str | None = None            # where `:once` faults remember they fired
    checkpoint_root: str | None = None      # a sweep's durable per-trial checkpoints (pretraining: resume from them)
    transform_cache: str | None = None      # folder of fitted transforms, one per (fingerprint, fold, scaling)
    resume_checkpoints: bool = False        # torch: each epoch's checkpoint holds the resume state (--max-failures)

    @property
    def distributed(self) -> bool:
        return self.workers > 1 or self.deepspeed is not None


def training_setup(context: TrialContext) -> str:
    """How a run trains, as one canonical line: strategy, workers, CPUs and GPUs (per worker when distributed).

    "single cpu=1 gpu=0", "ddp workers=2 cpu=0.5 gpu=0", "deepspeed zero=2 bf16 workers=2 cpu=1 gpu=0"; an
    estimator is always "single cpu=N" (it never uses a GPU or workers). Two runs with the same line trained the
    same way, so their metrics may be compared.
    """
    from omicsweep.models import get_model

    if get_model(context.model).family != "torch":
        return f"single cpu={_number(context.cpus)}"
    if context.deepspeed is not None:
        ds = context.deepspeed
        precision = next((p for p in ("bf16", "fp16") if ds.get(p, {}).get("enabled")), "fp32")
        words = ["deepspeed", f"zero={int(ds.get('zero_optimization', {}).get('stage', 0))}", precision]
        accumulation = int(ds.get("gradient_accumulation_steps", 1))
        words += [f"accum={accumulation}"] if accumulation != 1 else []
    else:
        words = ["ddp" if context.workers > 1 else "single"]
    if context.distributed:
        words.append(f"workers={context.workers}")
    return " ".join([*words, f"cpu={_number(context.cpus)}", f"gpu={_number(context.gpus)}"])


def parse_training_setup(text: str) -> dict[str, Any]:
    """`training_setup`'s line back as {strategy, workers, cpus, gpus} (the DeepSpeed settings are not in it)."""
    words = text.split()
    values = dict(word.split("=", 1) for word in words if "=" in word)
    return {"strategy": words[0] if words else "single", "workers": int(values.get("workers", 1)),
            "cpus": float(values.get("cpu", 1)), "gpus": float(values.get("gpu", 0))}


def _number(value: float) -> str:
    return f"{float(value):g}"


def trial_config(context: TrialContext, sampled: dict[str, Any]) -> dict[str, Any]:
    """The full configuration a trial runs: model defaults overridden by the sampled values, then the model's
    `resolve` (ModelEntry) of the choices that depend on the data, e.g. logreg's `solver: auto` by the training
    split's size, so the params the driver records and the trial's fit agree (the store opened only if needed)."""
    from omicsweep.models import get_model

    config = {**context.defaults, **sampled, "seed": context.seed}
    entry = get_model(context.model)

    def open_store():
        from omicsweep.datasets.open import open_store

        return entry.featurised_store(open_store(context.store_path, fold=config.get("fold")), config)

    return entry.resolved(config, open_store)


def execute_trial(
    context: TrialContext, sampled: dict[str, Any], report: Callable, *, strategy=None, resume=None,
) -> None:
    """Run one trial outside or inside Ray; `report(metrics, checkpoint_files)` receives every result.

    strategy: how a torch model trains (benchmark/strategies.py); default one process, on a GPU when the
    context asks for one and torch sees one. resume: a retried torch trial's last epoch
    (torch_resume.load_resume of its checkpoint), continued from; context.resume_checkpoints: write it each epoch.
    """
    import torch
    from threadpoolctl import threadpool_limits

    from omicsweep.benchmark.strategies import Strategy
    from omicsweep.benchmark.training import FITTERS, FitInputs, seed_everything
    from omicsweep.models import Task, get_model

    torch.set_num_threads(max(1, int(context.threads)))
    seed_everything(context.seed)
    config = trial_config(context, sampled)
    # k-fold stores: config `fold` picks the test fold; the model's featuriser picks the rows it reads (CNNC: a
    # pair store's images at config `bins`/`sigma`)
    entry = get_model(context.model)
    if set(entry.tasks) <= set(PRETRAINING_TASKS):  # masked expression: steps on a corpus store (pretrain.py)
        from omicsweep.benchmark.pretrain import fit_pretrain

        with threadpool_limits(limits=max(1, int(context.threads))):
            fit_pretrain(context, config, _with_world_size(report, strategy), strategy or Strategy(
                device=_local_device(context)))
        return
    store, transform = _store_and_transform(context, entry, config)
    inputs = FitInputs(
        store=store,
        transform=transform,
        # gene names too: a model may align prior knowledge (a gene graph) to the store's genes
        task=Task(n_features=store.n_genes, n_classes=len(store.classes), genes=tuple(map(str, store.genes())),
                  kind=store.task_kind, input_shape=store.input_shape),
        config=config,
        seed=context.seed,
        metric=context.metric,
        strategy=strategy or Strategy(device=_local_device(context)),
        resume=resume,
        keep_resume=context.resume_checkpoints and not context.distributed,  # Ray Train trials start over
    )
    # BLAS thread pools (scikit-learn, scipy) held to the trial's threads too: a Ray worker gets
    # OMP_NUM_THREADS=its CPUs, so an in-process re-run (`reproduce`) must match it to sum in the same order
    with threadpool_limits(limits=max(1, int(context.threads))):
        FITTERS[entry.family](entry, inputs, _with_world_size(report, inputs.strategy))


def _store_and_transform(context: TrialContext, entry, config: dict[str, Any]):
    """The store the model reads (its featuriser's view of the sweep's store, same fingerprint) and its transform:
    fitted once per (fingerprint, fold, scaling) and cached; a featuriser's view (CNNC images at `bins`) shares the
    store's fingerprint but not its features, so it is fitted here (the view caches it in memory)."""
    from omicsweep.datasets.open import open_store
    from omicsweep.datasets.transform import fit_transform_on_train, load_or_fit_transform

    opened = open_store(context.store_path, fold=config.get("fold"))
    store = entry.featurised_store(opened, config)
    if store.fingerprint != context.fingerprint:
        raise InputError(
            f"{context.store_path}: fingerprint {store.fingerprint} differs from the sweep's {context.fingerprint}"
        )
    scaling = config.get("scaling", "minmax")
    if store is opened:
        return store, load_or_fit_transform(store, scaling, context.transform_cache)
    return store, fit_transform_on_train(store, scaling=scaling)


def _with_world_size(report: Callable, strategy) -> Callable:
    world_size = strategy.world_size if strategy is not None else 1
    return lambda metrics, files=None: report({**metrics, WORLD_SIZE_KEY: world_size}, files)


@contextlib.contextmanager
def checkpoint_folder(files: dict[str, Callable[[str], None]]) -> Iterator[str]:
    """A temporary folder holding the fitter's checkpoint files, for Tune or Train to upload while it exists
    (benchmark/tune_trial.py, benchmark/distributed.py)."""
    with tempfile.TemporaryDirectory(prefix="omicsweep-ckpt-") as folder:
        for name, write in files.items():
            write(os.path.join(folder, name))
        yield folder


def with_resources(report: Callable) -> Callable:
    """Wrap `report` so every result also carries the trial's wall time, CPU seconds and peak memory so far.

    train_s is the fitter's time inside its fit loop so far (an estimator: its epoch's time) and
    trial_overhead_s the rest of the wall time: data opening, the transform, checkpoints, test scoring, reports.
    CPU seconds are this process's user+system time since the wrapper was made (torch's threads included);
    peak memory is the process's resident high-water mark since then (`peak_rss_mb`).
    """
    import resource
    import time

    def cpu_seconds() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    started, cpu_started = time.perf_counter(), cpu_seconds()
    peak_mb = peak_rss_meter()
    epochs_s = [0.0]  # a fitter that reports no train_s (an estimator): its epochs' time is its training

    def wrapped(metrics: dict[str, Any], files=None) -> None:
        wall = time.perf_counter() - started
        epochs_s[0] += float(metrics.get("epoch_time_s", 0.0))
        train_s = float(metrics.get(TRAIN_SECONDS, epochs_s[0]))
        metrics = {
            **metrics,
            TRAIN_SECONDS: train_s,
            TRIAL_OVERHEAD: wall - train_s,
            "trial_wall_s": wall,
            "cpu_s": cpu_seconds() - cpu_started,
            "peak_rss_mb": peak_mb(),
        }
        report(metrics, files)

    return wrapped


def peak_rss_meter() -> Callable[[], float]:
    """A function giving this process's peak resident MB from now on. Linux: the high-water mark (VmHWM) is reset
    to the current RSS here (`echo 5 > /proc/self/clear_refs`), so a reused Ray worker's earlier, larger trial
    is not this trial's peak; elsewhere, or where the reset is refused, the lifetime peak (ru_maxrss, an upper
    bound when a worker is reused)."""
    import resource
    import sys

    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")

        def vm_hwm() -> float:
            with open("/proc/self/status") as fh:
                return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 1024

        vm_hwm()
        return vm_hwm
    except (OSError, StopIteration, ValueError):
        kib = 1 / 1024 if sys.platform != "darwin" else 1 / 1024**2  # ru_maxrss: KiB on Linux, bytes on macOS
        return lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kib


def _local_device(context: TrialContext):
    import torch

    return torch.device("cuda") if context.gpus > 0 and torch.cuda.is_available() else torch.device("cpu")


def faulty(report: Callable, context: TrialContext, sampled: dict[str, Any]) -> Callable:
    """`report` with the sweep's injected faults (chaos tests; a no-op unless --inject-faults was given)."""
    from omicsweep.benchmark.faults import parse_faults, trial_key, with_faults

    plan = parse_faults(context.faults)
    key = trial_key(context.seed, trial_config(context, sampled))
    return with_faults(report, plan, key=key, marker_dir=context.fault_dir)
