"""Searchers and schedulers by name, and the storage a sweep's Optuna study lives in.

A searcher is one of Optuna's samplers behind Ray's `OptunaSearch`; a scheduler is a Tune trial scheduler.
Each is a table entry (`SEARCHERS`, `SCHEDULERS`): adding one is an entry, not a branch in the sweep. Every
sampler is seeded from the sweep seed, so the same seed proposes the same configurations.

The study of a (dataset, model) sweep is a normal Optuna RDB study (SQLite in the run folder by default, or a
PostgreSQL URL on a cluster), named `DATASET/MODEL:PARENT_RUN_ID`, so `optuna-dashboard` shows it while the sweep
runs and a resumed sweep reads its history from there.
"""

from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from omicsweep.errors import ConfigError

DEFAULT_SEARCHER = "tpe"
DEFAULT_SCHEDULER = "asha"
STUDY_FILE = "optuna.db"  # in the run folder: one study per (dataset, model) sweep


@dataclass(frozen=True)
class SearcherEntry:
    """One `--searcher` value: the Optuna sampler it builds and what it needs or cannot do."""

    name: str
    sampler: str  # the Optuna class, recorded on the sweep's parent run
    build: Callable[[int, bool], Any]  # (seed, trials run concurrently) -> an Optuna sampler
    needs: tuple[str, ...] = ()  # modules beyond Optuna; missing ones stop the sweep before it starts
    numeric_only: bool = False  # categorical dimensions go to Optuna's independent sampler (random)
    reseed_on_resume: bool = True  # False where the sampler's position lives in the study (QMC's sample id)


def _tpe(seed: int, concurrent: bool):
    from optuna.samplers import TPESampler

    # multivariate: dimensions modelled jointly (lr with weight_decay, width with dropout); constant liar: running
    # trials count as bad, so concurrent workers do not propose the same point (optuna #4714); nothing is running
    # when one trial at a time proposes, so it is off there
    return TPESampler(seed=seed, multivariate=True, constant_liar=concurrent)


def _gp(seed: int, concurrent: bool):
    from optuna.samplers import GPSampler

    return GPSampler(seed=seed)  # handles categorical dimensions itself; needs torch and scipy


def _cmaes(seed: int, concurrent: bool):
    from optuna.samplers import CmaEsSampler, RandomSampler

    # Optuna's documented fallback: what CMA-ES cannot handle (categorical dimensions) comes from the independent
    # sampler; its per-trial warning is replaced by the one line of `searcher_notes`
    return CmaEsSampler(seed=seed, independent_sampler=RandomSampler(seed=seed), warn_independent_sampling=False)


def _qmc(seed: int, concurrent: bool):
    from optuna.samplers import QMCSampler

    return QMCSampler(qmc_type="sobol", scramble=True, seed=seed)  # the seed scrambles the Sobol sequence


def _random(seed: int, concurrent: bool):
    from optuna.samplers import RandomSampler

    return RandomSampler(seed=seed)


SEARCHERS: dict[str, SearcherEntry] = {e.name: e for e in (
    SearcherEntry("tpe", "TPESampler", _tpe),
    SearcherEntry("gp", "GPSampler", _gp, needs=("torch", "scipy")),
    SearcherEntry("cmaes", "CmaEsSampler", _cmaes, needs=("cmaes",), numeric_only=True),
    SearcherEntry("qmc", "QMCSampler", _qmc, reseed_on_resume=False),
    SearcherEntry("random", "RandomSampler", _random),
)}


def build_sampler(name: str, *, seed: int, concurrent: bool):
    from optuna.exceptions import ExperimentalWarning

    with warnings.catch_warnings():  # multivariate TPE, constant liar: experimental in Optuna, chosen on purpose
        warnings.simplefilter("ignore", ExperimentalWarning)
        return SEARCHERS[name].build(seed, concurrent)


def check_searcher(name: str) -> SearcherEntry:
    """The entry of `--searcher name`; a one-line error for an unknown name or a sampler that cannot run here."""
    entry = SEARCHERS.get(name)
    if entry is None:
        raise ConfigError(f"--searcher {name!r}: expected one of {', '.join(SEARCHERS)}")
    missing = [module for module in entry.needs if importlib.util.find_spec(module) is None]
    if missing:
        raise ConfigError(f"--searcher {name}: Optuna's {entry.sampler} needs {', '.join(missing)}, which is not "
                          f"installed (pip install {' '.join(missing)}), or choose another --searcher")
    return entry


def searcher_notes(name: str, spaces: dict[str, Any]) -> list[str]:
    """At most one line saying where the sampler cannot handle a model's space and what Optuna does instead."""
    if not SEARCHERS[name].numeric_only:
        return []
    parts = []
    for model, space in spaces.items():
        categorical = [d.name for d in space.dimensions if d.kind == "choice"]
        if categorical:
            parts.append(f"{model} ({', '.join(categorical)})")
    if not parts:
        return []
    return [f"--searcher {name}: {SEARCHERS[name].sampler} does not handle categorical dimensions; Optuna samples "
            f"them at random (its independent sampler) and the rest with CMA-ES: {'; '.join(parts)}"]


# ---- schedulers ------------------------------------------------------------------------------------------------

GRACE_PERIOD, REDUCTION_FACTOR = 1, 3


def _asha(max_t: int):
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr="training_iteration", max_t=max(1, max_t), grace_period=GRACE_PERIOD,
                         reduction_factor=REDUCTION_FACTOR)


def _fifo(max_t: int):
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()  # no early stopping: every trial trains to max_epochs (or its own patience)


SCHEDULERS: dict[str, Callable[[int], Any]] = {"asha": _asha, "none": _fifo}


def check_scheduler(name: str) -> str:
    if name not in SCHEDULERS:
        raise ConfigError(f"--scheduler {name!r}: expected one of {', '.join(SCHEDULERS)}")
    return name


def build_scheduler(name: str, *, max_t: int):
    return SCHEDULERS[name](max_t)


def scheduler_settings(name: str, *, max_t: int) -> dict[str, Any]:
    if name == "asha":
        return {"scheduler": "asha", "scheduler.max_t": max(1, max_t), "scheduler.grace_period": GRACE_PERIOD,
                "scheduler.reduction_factor": REDUCTION_FACTOR}
    return {"scheduler": name}


# ---- the study's storage ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyRef:
    """Where a sweep's Optuna study lives: an RDB URL and the study's name."""

    url: str
    name: str


def study_url(run_folder: Path, url: str | None = None) -> str:
    return url or f"sqlite:///{(Path(run_folder) / STUDY_FILE).resolve()}"


def study_name(key: str, parent_run_id: str) -> str:
    return f"{key}:{parent_run_id}"


def shown_url(url: str) -> str:
    """The URL without its password, for the parent run's params and error messages."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def open_storage(url: str):
    """An Optuna RDBStorage. On SQLite: write-ahead log with synchronous=NORMAL, so the driver's per-result
    writes do not each wait for an fsync (about 3x faster here; a killed driver loses nothing, the database
    stays consistent) and optuna-dashboard reads while the sweep writes; a lock is waited for, not an error."""
    from optuna.storages import RDBStorage

    if not url.startswith("sqlite"):
        return RDBStorage(url)
    from sqlalchemy import event

    storage = RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    event.listen(storage.engine, "connect", _sqlite_pragmas)
    storage.engine.dispose()  # the connections opened while creating the schema predate the pragmas
    return storage


def _sqlite_pragmas(connection, _record) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def check_storage(url: str | None) -> None:
    """A user-given --optuna-storage must be a database Optuna can open now, before the sweep starts."""
    if url is None:
        return
    from sqlalchemy.exc import ArgumentError

    try:
        shown = shown_url(url)
    except ArgumentError:
        raise ConfigError(f"--optuna-storage {url!r}: not a database URL; expected e.g. "
                          "postgresql://USER@HOST/DB or sqlite:///PATH/optuna.db") from None
    try:
        open_storage(url)
    except Exception as exc:  # noqa: BLE001 - driver, network and schema errors alike: the user fixes the URL
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"--optuna-storage {shown}: Optuna cannot open it ({reason})") from None
