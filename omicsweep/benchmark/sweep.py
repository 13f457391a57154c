"""One (dataset, model) sweep's parts: its request, its parent run, its trial context, its Optuna searcher (TPE by
default; see benchmark/searchers.py) and its scheduler (ASHA, or none). benchmark/grid.py runs every sweep of a
plan in one Tuner from these parts.

The sweep never branches on model names: everything model-specific comes from the registry entry and its
search-space file. Tracking goes through a recorder (see `Recorder`), so this module does not know MLflow.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from omicsweep.benchmark.resume import SweepHistory
from omicsweep.benchmark.searchers import DEFAULT_SCHEDULER, DEFAULT_SEARCHER, StudyRef, study_name, study_url
from omicsweep.benchmark.space import SearchSpace
from omicsweep.datasets.remote import canonical_location
from omicsweep.benchmark.distributed import check_ray_version
from omicsweep.benchmark.sweep_tracking import Recorder
from omicsweep.benchmark.trial import TrialContext, training_setup
from omicsweep.environment import git_commit, package_versions
from omicsweep.errors import ConfigError
from omicsweep.schema import (
    CLASSES_FILE, CODE_TAG, FINGERPRINT_TAG, GENES_FILE, METRIC_TAG, PACKAGES_TAG, SCHEDULER_TAG, SEARCH_METRIC,
    SEARCHER_TAG, SEED_TAG, STORE_TAG, THREADS_TAG, TRAINING_SETUP_TAG, TRANSFORM_CACHE, VAL_PREFIX,
)


@dataclass
class SweepRequest:
    dataset: str
    store_path: Path
    fingerprint: str
    model: str
    space: SearchSpace
    trials: int
    concurrency: int
    seed: int
    metric: str
    run_folder: Path
    cpus_per_trial: float = 1.0
    max_epochs: int | None = None  # overrides the space's default when set
    reruns: int = 3  # seed re-runs of the best configuration after the sweep (0: none)
    workers_per_trial: int = 1  # Ray Train workers per torch trial (data parallel)
    gpus_per_trial: float = 0.0  # per trial, or per worker with workers_per_trial > 1
    deepspeed: dict[str, Any] | None = None  # DeepSpeed settings: torch trials train through Ray Train with them
    storage: str | None = None  # Ray results and checkpoints (shared path or URL); default run_folder/ray
    max_failures: int = 0  # retries of a trial that raises or whose process dies, before it counts as FAILED
    faults: str | None = None  # chaos tests: benchmark/faults.py
    resume_parent: str | None = None  # the parent run of an interrupted sweep of this model: resume it
    searcher: str = DEFAULT_SEARCHER  # an Optuna sampler by name: benchmark/searchers.py SEARCHERS
    scheduler: str = DEFAULT_SCHEDULER  # asha | none (FIFO: every trial to max_epochs)
    optuna_storage: str | None = None  # RDB URL of the sweep's Optuna study; default SQLite in the run folder
    variant: str = ""  # --vary KEY=VALUE: this model's sweep of one value (its own pair, parent run and re-runs)

    @property
    def n_trials(self) -> int:
        return self.space.n_trials(self.trials)

    @property
    def key(self) -> str:
        from omicsweep.benchmark.resume import sweep_key

        return sweep_key(self.dataset, self.model, self.variant)


@dataclass
class SweepOutcome:
    model: str
    dataset: str
    trials_finished: int
    trials_failed: int
    wall_time_s: float
    overheads_s: list[float] = field(default_factory=list)
    variant: str = ""  # the request's --vary KEY=VALUE


def check_address(address: str | None) -> None:
    """Refuse a Ray Client address (ray://): the sweep's driver writes the run folder, checkpoints and MLflow store
    where it runs and Tune wants its driver on the cluster, so it is submitted there as a job instead."""
    if address and address.strip().lower().startswith("ray://"):
        raise ConfigError(
            f"--address {address}: Ray Client (ray://) is not supported; run the sweep on the cluster as a job: "
            "ray job submit --address http://HEAD:8265 --working-dir . -- omicsweep sweep ... (no --address there)"
        )


def cluster_address(address: str | None) -> str | None:
    """The cluster to join: --address, else RAY_ADDRESS (set by `ray job submit` for its entrypoint), else None
    (start a local Ray); "local" is None."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    return None if address is None or address.strip().lower() == "local" else address


@contextlib.contextmanager
def ray_session(*, address: str | None, num_cpus: int | None, temp_dir: Path | None = None) -> Iterator[None]:
    """Use a running Ray session as is; otherwise start an embedded one (or connect) and stop it afterwards."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the legacy reporter honours verbose=0; we draw our own
    # we checkpoint only on improvement and keep one; Tune's snapshot-frequency advice does not apply
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if ray.is_initialized():
        yield
        return
    kwargs: dict[str, Any] = {"log_to_driver": False, "include_dashboard": False, "configure_logging": False}
    address = cluster_address(address)
    if address:
        check_address(address)
        ray.init(address=address, **kwargs)
    else:
        # "local": a new embedded Ray, never one that `ray start` left on this machine (Ray's default attaches)
        ray.init(address="local", num_cpus=num_cpus, _temp_dir=str(temp_dir) if temp_dir else None, **kwargs)
    try:
        yield
    finally:
        ray.shutdown()


class _NoTuneRestoreHint(logging.Filter):
    """Drop Tune's "Resume experiment with: Tuner.restore(...)" after Ctrl-C: `omicsweep sweep --resume` is the
    way back (it restores the searcher and tracking too), and the sweep prints that instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore" not in record.getMessage()


def _hide_tune_restore_hint() -> None:
    logger = logging.getLogger("ray.tune.tune")
    if not any(isinstance(f, _NoTuneRestoreHint) for f in logger.filters):
        logger.addFilter(_NoTuneRestoreHint())


def _trial_context(request: SweepRequest, defaults: dict[str, Any]) -> TrialContext:
    """What every trial of the sweep shares; distributed strategies apply to torch models only."""
    from omicsweep.models import get_model

    torch_model = get_model(request.model).family == "torch"
    context = TrialContext(
        store_path=canonical_location(request.store_path),
        fingerprint=request.fingerprint,
        model=request.model,
        defaults=defaults,
        seed=request.seed,
        metric=request.metric,
        threads=max(1, int(request.cpus_per_trial)),
        workers=request.workers_per_trial if torch_model else 1,
        cpus=request.cpus_per_trial,
        gpus=request.gpus_per_trial,
        deepspeed=request.deepspeed if torch_model else None,
        storage=sweep_storage(request),
        faults=request.faults,
        fault_dir=str(Path(request.run_folder).resolve() / "faults"),
        checkpoint_root=str(Path(request.run_folder).resolve() / "checkpoints"),
        transform_cache=str(Path(request.run_folder).resolve() / TRANSFORM_CACHE),
        resume_checkpoints=request.max_failures > 0,  # a retried torch trial continues from its last epoch
    )
    if context.distributed:  # refused here, before the sweep's run is opened, rather than in every trial
        check_ray_version()
    return context


def sweep_storage(request: SweepRequest) -> str:
    return request.storage or str((Path(request.run_folder) / "ray").resolve())


def trial_resources(request: SweepRequest, context: TrialContext) -> dict[str, float]:
    """What one trial of the sweep asks Tune for: a distributed trial almost nothing, its Train workers ask."""
    if context.distributed:
        return {"CPU": 0.01}  # Train V2 rejects 0; the workers reserve the real CPUs
    return {"CPU": request.cpus_per_trial, **({"GPU": request.gpus_per_trial} if request.gpus_per_trial else {})}


def searcher_settings(request: SweepRequest, *, n_restored: int = 0) -> dict[str, Any]:
    """The searcher and its settings (recorded on the sweep's parent run): an Optuna sampler named by
    `request.searcher`, seeded from the sweep seed, its study in `searcher.storage`. TPE treats running trials
    as bad with concurrent trials (constant liar, optuna #4714), so parallel workers do not propose the same
    point; off for one trial at a time, where nothing is running when TPE proposes."""
    from omicsweep.benchmark.searchers import SEARCHERS, shown_url, study_url

    if not request.space.dimensions:
        return {"searcher": "none"}
    entry = SEARCHERS[request.searcher]
    seed = sampler_seed(request.seed, n_restored) if entry.reseed_on_resume else request.seed
    settings = {"searcher": "optuna", "searcher.name": entry.name, "searcher.sampler": entry.sampler,
                "searcher.metric": SEARCH_METRIC, "searcher.seed": seed,
                "searcher.storage": shown_url(study_url(request.run_folder, request.optuna_storage))}
    if entry.name == "tpe":
        settings.update({"searcher.multivariate": True, "searcher.constant_liar": request.concurrency > 1})
    return settings


def _search_alg(request: SweepRequest, dims: dict[str, Any], history: SweepHistory | None, *,
                study: StudyRef | None = None):
    """Ray's OptunaSearch with the sampler of `searcher_settings`, its study in `study`'s RDB storage (in memory
    without one), where a resumed sweep finds its history (`prepare_study`); each trial is told its best_val.
    ConcurrencyLimiter keeps proposals in a fixed order per seed."""
    from optuna.storages import InMemoryStorage
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from omicsweep.benchmark.resume import prepare_study
    from omicsweep.benchmark.searchers import build_sampler, open_storage

    if not dims:
        return None
    settings = searcher_settings(request, n_restored=len(history.done()) if history else 0)
    sampler = build_sampler(request.searcher, seed=settings["searcher.seed"], concurrent=request.concurrency > 1)
    storage = open_storage(study.url) if study else InMemoryStorage()
    name = study.name if study else "optuna"
    prepare_study(storage, name, distributions=OptunaSearch.convert_search_space(dims), history=history)
    searcher = OptunaSearch(sampler=sampler, metric=SEARCH_METRIC, mode="max", storage=storage, study_name=name)
    return ConcurrencyLimiter(searcher, request.concurrency)


def tune_config(request: SweepRequest, context: TrialContext, dims: dict[str, Any], history: SweepHistory | None, *,
                num_samples: int, study: StudyRef | None = None):
    """How Tune would run this sweep alone; a grid (benchmark/grid.py) gives each pair this same searcher
    (`_search_alg`) and scheduler (`build_scheduler`). The searcher, ASHA and the sweep's best all rank trials by
    one number, `best_val` (the best validation value so far, in every epoch's result), so an ASHA-stopped trial
    reaches the sampler with its best epoch, not its last. `--scheduler none` runs every trial to max_epochs."""
    from ray import tune

    from omicsweep.benchmark.searchers import build_scheduler

    scheduler = build_scheduler(request.scheduler, max_t=int(context.defaults.get("max_epochs", 1)))
    return tune.TuneConfig(
        metric=SEARCH_METRIC, mode="max", search_alg=_search_alg(request, dims, history, study=study),
        scheduler=scheduler, num_samples=num_samples, max_concurrent_trials=None if dims else request.concurrency,
        # a finished trial's worker takes the next one (no per-trial process start); a distributed
        # trial's Tune actor only waits on its Train run, so a fresh one is as cheap and cleaner
        reuse_actors=not context.distributed,
    )


def sampler_seed(sweep_seed: int, n_restored: int) -> int:
    """The sweep seed itself for a fresh sweep (the same seed proposes the same configurations); after a resume
    a seed derived from it and the trials restored, since TPE's random start-up would otherwise draw the killed
    driver's first proposals again (its RNG state died with it)."""
    if n_restored == 0:
        return sweep_seed
    import numpy as np

    return int(np.random.SeedSequence([sweep_seed, n_restored]).generate_state(1)[0])


def _open_sweep(request: SweepRequest, recorder: Recorder, context: TrialContext,
                name: str) -> tuple[SweepHistory | None, str]:
    """Start the sweep's parent run, or reopen an interrupted one; note it in the run folder's state.
    Returns the resumed history (None for a fresh sweep) and the parent run's id."""
    from omicsweep.benchmark.resume import SweepHistory, update_state
    from omicsweep.benchmark.searchers import scheduler_settings

    key = request.key
    if request.resume_parent:
        history = SweepHistory(request.resume_parent, recorder.resume_sweep(request.resume_parent))
        update_state(request.run_folder, key, status="running", resumed=True)
        return history, request.resume_parent
    defaults = context.defaults
    parent = recorder.start_sweep(
        dataset=request.dataset,
        model=request.model,
        params={"trials": request.n_trials, "concurrency": request.concurrency,
                "metric": f"{VAL_PREFIX}{request.metric}",
                "seed": request.seed, "space_file": str(request.space.path), "ray_experiment": name,
                "workers_per_trial": context.workers, "gpus_per_trial": context.gpus,
                "deepspeed": _json(context.deepspeed), "max_failures": request.max_failures,
                **searcher_settings(request),
                **scheduler_settings(request.scheduler, max_t=int(defaults.get("max_epochs", 1))),
                **{f"default.{k}": v for k, v in defaults.items()}},
        tags={
            FINGERPRINT_TAG: request.fingerprint,
            STORE_TAG: context.store_path,
            THREADS_TAG: str(context.threads),
            TRAINING_SETUP_TAG: training_setup(context),
            SEED_TAG: str(request.seed),
            METRIC_TAG: f"{VAL_PREFIX}{request.metric}",
            CODE_TAG: git_commit(),
            PACKAGES_TAG: _json(package_versions()),
            # what proposed and what stopped the trials, so the leaderboard can tell such sweeps apart
            SEARCHER_TAG: request.searcher if request.space.dimensions else "none",
            SCHEDULER_TAG: request.scheduler,
        },
    )
    update_state(request.run_folder, key, parent_run_id=parent, status="running")
    return None, parent


def quiet_logs() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # a failed trial's traceback is Tune's ERROR log line; its last line is recorded in MLflow and printed by
    # the leaderboard, so the console is not flooded when many trials fail (--max-failures, --inject-faults)
    logging.getLogger("ray.tune.execution.tune_controller").setLevel(logging.CRITICAL)
    _hide_tune_restore_hint()


def sweep_summary(tracker, wall: float, rerun_wall: float | None, history, recorder) -> dict[str, float]:
    """The parent run's closing metrics; a resumed sweep's wall time spans the interrupted part too (up to its
    last tracked trial)."""
    summary = {"wall_time_s": wall, "trials_finished": tracker.finished, "trials_failed": tracker.failed}
    if rerun_wall is not None:
        summary["rerun_wall_s"] = rerun_wall
    if history is not None:
        summary["restored_trials"] = len(history.done())
        summary["wall_time_s"] = wall + float(getattr(recorder, "wall_before_resume_s", 0.0))
    return summary


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def write_dataset_files(store_path: Path, folder: Path) -> None:
    """genes.txt (one name a line, store order) and classes.json: what `predict` needs to align new data."""
    from omicsweep.datasets.open import open_store

    store = open_store(store_path)
    (folder / GENES_FILE).write_text("\n".join(store.genes()) + "\n")
    (folder / CLASSES_FILE).write_text(json.dumps(
        {"classes": store.classes, "fingerprint": store.fingerprint, "value_kind": store.provenance.get("value_kind")}
    ))
