"""What `omicsweep sweep` and `omicsweep train` asked for, as data: a list of (dataset, model) sweep requests.

The CLI parses its options into a `SweepOptions`; `build_plan` validates them (stores, models for the store's
task, search spaces, --set values, searcher, DeepSpeed settings) before anything is written and returns a
`Plan`; `Plan.run` starts Ray (or joins a cluster), runs each sweep with its seed re-runs and returns the
outcomes. `train` is a plan of one fixed configuration (a space with nothing to search), not a second code path.
The options are persisted to the run folder (`sweep.json`) from the typed object, so `--resume RUN_FOLDER`
builds the same plan again. This module knows no MLflow and prints nothing: the CLI passes a recorder factory,
a progress factory and a function that shows a line.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from omicsweep.benchmark.sweep import SweepOutcome, SweepRequest
from omicsweep.errors import ConfigError, InputError
from omicsweep.schema import COMMAND_TAG, TRAIN_COMMAND, VARIANT_TAG

DEFAULT_RUNS = Path("omicsweep-runs")


@dataclass
class SweepOptions:
    """Every option of `omicsweep sweep` (and of `train`, with `fixed` set): what `sweep.json` holds."""

    dataset: str = "pbmc68k"
    model: str = "mlp"
    trials: int = 16
    concurrency: int = 2
    seed: int = 0
    metric: str | None = None
    space: Path | None = None
    max_epochs: int | None = None
    runs: Path = DEFAULT_RUNS
    tracking_uri: str | None = None
    address: str | None = None
    cpus_per_trial: float = 1.0
    reruns: int = 3  # seed re-runs of each model's best configuration (0: none)
    ensemble: int | None = None
    settings: list[str] = field(default_factory=list)  # --set KEY=VALUE pairs
    vary: str | None = None  # --vary KEY=V1,V2: each model knowing KEY swept once per value (benchmark/variants.py)
    workers_per_trial: int = 1
    gpus_per_trial: float = 0.0
    storage: str | None = None
    deepspeed: Path | None = None
    max_failures: int = 0
    inject_faults: str | None = None
    searcher: str = "tpe"
    scheduler: str = "asha"
    optuna_storage: str | None = None
    fixed: bool = False  # `train`: one run of the defaults plus --set; nothing searched, no re-runs

    _PATHS = ("space", "runs", "deepspeed")

    def to_json(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict[str, Any], *, where: str) -> SweepOptions:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InputError(f"{where}: unknown sweep option(s) {', '.join(unknown)}; was it written by another "
                             "version of omicsweep? Start the sweep again instead of resuming it")
        values = {k: (Path(v) if k in cls._PATHS and v is not None else v) for k, v in data.items()}
        return cls(**values)

    def save(self) -> None:
        from omicsweep.benchmark.resume import save_options

        save_options(self.runs, self.to_json())

    @classmethod
    def load(cls, run_folder: Path, *, address: str | None = None) -> SweepOptions:
        """The options an interrupted sweep in `run_folder` was started with (a new `address` may replace its own)."""
        from omicsweep.benchmark.resume import OPTIONS_FILE, load_options

        options = cls.from_json(load_options(run_folder), where=str(Path(run_folder) / OPTIONS_FILE))
        return dataclasses.replace(options, runs=Path(run_folder), address=address or options.address)


class TaggedRecorder:
    """A recorder that adds tags to the sweep's parent run (`train` marks its runs) and forwards the rest."""

    def __init__(self, inner, tags: dict[str, str]) -> None:
        self.inner, self.tags = inner, tags

    def start_sweep(self, *, tags: dict[str, str], **kwargs) -> str:
        return self.inner.start_sweep(tags={**tags, **self.tags}, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


@dataclass
class Plan:
    """The sweeps to run, in order, and how: built by `build_plan`, run by `run`."""

    options: SweepOptions
    requests: list[SweepRequest]
    notes: list[str] = field(default_factory=list)  # for the user, before anything runs
    kept: list[str] = field(default_factory=list)  # resume: sweeps finished before, not run again
    tags: dict[str, str] = field(default_factory=dict)  # on every parent run
    resuming: bool = False
    overrides: str = ""  # train: the --set/--ensemble values over the defaults, as the user reads them

    def run(self, recorder_factory: Callable[[], Any], progress_factory: Callable[[list[tuple[int, str]]], Any], *,
            say: Callable[[str], None] = lambda line: None) -> list[SweepOutcome]:
        """Run every sweep in one Ray session (a running one as is, a cluster at --address, or a local one), all
        of them in one Tuner (benchmark/grid.py) so their trials share the slots. `progress_factory` gets one
        (trials, label) per sweep and yields one progress display per sweep."""
        from omicsweep.benchmark.grid import run_grid
        from omicsweep.benchmark.sweep import ray_session

        self.options.runs.mkdir(parents=True, exist_ok=True)
        if not (self.resuming or self.options.fixed):
            self.options.save()
        for key in self.kept:
            say(f"{key}: finished before, kept as it is")
        if not self.requests:
            return []
        recorders = []
        for request in self.requests:
            tags = {**self.tags, **({VARIANT_TAG: request.variant} if request.variant else {})}
            recorders.append(TaggedRecorder(recorder_factory(), tags) if tags else recorder_factory())
        suffix = " (train)" if self.options.fixed else ""
        labels = [(r.n_trials, f"{r.key}{suffix}") for r in self.requests]
        with ray_session(address=self.options.address, num_cpus=local_cpus(self.options)):
            with progress_factory(labels) as progresses:
                outcomes = run_grid(self.requests, recorders, progresses)
        if not self.options.fixed:
            for outcome in outcomes:
                say(outcome_line(outcome))
        return outcomes


def outcome_line(outcome: SweepOutcome) -> str:
    overhead = "-"
    if outcome.overheads_s:  # the first trial on a worker starts a process; later ones reuse it
        overhead = f"first {outcome.overheads_s[0]:.1f}s, median {statistics.median(outcome.overheads_s):.1f}s"
    variant = f"[{outcome.variant}]" if outcome.variant else ""
    return (f"{outcome.dataset}/{outcome.model}{variant}: {outcome.trials_finished} finished, {outcome.trials_failed} failed, "
            f"{outcome.wall_time_s:.1f}s wall; trial start-to-first-epoch overhead {overhead}")


def local_cpus(options: SweepOptions) -> int:
    """CPUs of a local Ray session. A distributed trial's Tune actor holds 0.01 CPU beside its Train workers, so
    one spare CPU lets N workers x 1 CPU fill an N-core machine instead of waiting forever for 0.01 CPU."""
    cpus = os.cpu_count() or 1
    distributed = options.workers_per_trial > 1 or options.deepspeed
    need = options.workers_per_trial * options.cpus_per_trial
    if distributed and need > cpus and not options.address:
        raise ConfigError(f"--workers-per-trial {options.workers_per_trial} x --cpus-per-trial "
                          f"{options.cpus_per_trial} needs {need:g} CPUs; this machine has {cpus}")
    return cpus + 1 if distributed else cpus


ALL_REGISTERED = "all-registered"  # --dataset: every store registered with `omicsweep datasets register`


def dataset_names(value: str) -> list[str]:
    """--dataset A,B,C as names in order, each once; `all-registered` stands for the registered stores."""
    from omicsweep.datasets.registered import registered_datasets

    names: list[str] = []
    for item in (part.strip() for part in value.split(",")):
        expanded = list(registered_datasets()) if item == ALL_REGISTERED else [item] if item else []
        if item == ALL_REGISTERED and not expanded:
            raise ConfigError(f"--dataset {ALL_REGISTERED}: no store is registered (omicsweep datasets register)")
        names += [name for name in expanded if name not in names]
    if not names:
        raise ConfigError(f"--dataset {value!r}: expected a dataset name, a store path, or {ALL_REGISTERED}")
    return names


def build_plan(options: SweepOptions, *, resuming: bool = False) -> Plan:
    """Validate `options` (nothing is written) and return the plan: one request per (dataset, model) pair whose
    model fits the dataset's task, datasets in the order given."""
    from omicsweep.benchmark.faults import parse_faults
    from omicsweep.benchmark.resume import load_state, sweep_key
    from omicsweep.benchmark.searchers import check_scheduler, check_searcher, check_storage
    from omicsweep.benchmark.strategies import load_deepspeed_config
    from omicsweep.datasets import resolve_dataset

    from omicsweep.benchmark.sweep import check_address

    check_address(options.address)  # Ray Client: exit 2 before anything is written
    parse_faults(options.inject_faults)
    searcher = check_searcher(options.searcher).name  # a sampler that cannot run here: exit 2 now
    check_scheduler(options.scheduler)
    check_storage(options.optuna_storage)
    deepspeed = load_deepspeed_config(str(options.deepspeed)) if options.deepspeed else None
    names = dataset_names(options.dataset)
    if options.fixed and len(names) > 1:
        raise ConfigError("train runs one --dataset; give one name (sweep runs several)")
    state = load_state(options.runs) if resuming else {}
    plan = Plan(options=options, requests=[], resuming=resuming,
                tags={COMMAND_TAG: TRAIN_COMMAND} if options.fixed else {})
    for name in names:
        dataset_name, store_path = resolve_dataset(name, seed=options.seed)
        store, metric, spaces, notes, plan.overrides = (_fixed_spaces if options.fixed else _sweep_spaces)(
            options, store_path, searcher, several=len(names) > 1)
        plan.notes += [line for line in notes if line not in plan.notes]
        for model, variant, space in spaces:
            key = sweep_key(dataset_name, model, variant)
            if key in {r.key for r in plan.requests}:
                raise ConfigError(f"--dataset {options.dataset}: two datasets are named {dataset_name}; register "
                                  "one under another name (omicsweep datasets register)")
            previous = state.get(key, {})
            if previous.get("status") == "finished":
                plan.kept.append(key)
                continue
            plan.requests.append(_request(options, dataset_name, store_path, store.fingerprint, model, space, metric,
                                          previous.get("parent_run_id"), searcher, deepspeed, variant))
    return plan


def _request(options: SweepOptions, dataset: str, store_path, fingerprint: str, model: str, space, metric: str,
             resume_parent: str | None, searcher: str, deepspeed, variant: str = "") -> SweepRequest:
    fixed = options.fixed
    return SweepRequest(
        dataset=dataset, store_path=store_path, fingerprint=fingerprint, model=model, space=space,
        trials=1 if fixed else options.trials, concurrency=1 if fixed else options.concurrency,
        seed=options.seed, metric=metric, run_folder=options.runs, cpus_per_trial=options.cpus_per_trial,
        max_epochs=options.max_epochs, reruns=0 if fixed else options.reruns,
        workers_per_trial=options.workers_per_trial, gpus_per_trial=options.gpus_per_trial, deepspeed=deepspeed,
        storage=options.storage, max_failures=options.max_failures, faults=options.inject_faults,
        resume_parent=resume_parent, searcher=searcher, scheduler=options.scheduler,
        optuna_storage=options.optuna_storage, variant=variant,
    )


def _checked_metric(metric: str) -> str:
    from omicsweep.benchmark.metrics import METRIC_NAMES

    if metric not in METRIC_NAMES:
        raise ConfigError(f"--metric {metric!r}: expected one of {', '.join(METRIC_NAMES)}")
    return metric


def _sweep_spaces(options: SweepOptions, store_path, searcher: str, *, several: bool = False):
    """The models that fit the store's task, as (model, variant, space) with --ensemble and --set values fixed,
    prepared; a model knowing the --vary key once per value. In a grid of `several` datasets a named model that
    does not fit this store's task is left out of its pairs."""
    from omicsweep.benchmark.searchers import searcher_notes
    from omicsweep.benchmark.space import load_space, with_fixed
    from omicsweep.benchmark.variants import parse_vary, varied_spaces
    from omicsweep.datasets import open_store
    from omicsweep.models import models_for_task

    store = open_store(store_path)
    left_out: list[str] = []
    if several:
        options, left_out = _models_fitting(options, store, store_path)
    entries = models_for_task(options.model, store.task_kind, where=str(store_path))
    if options.space is not None and len(entries) != 1:
        raise ConfigError("--space applies to a single --model")
    spaces = {e.name: load_space(options.space or e.space_file) for e in entries}
    if options.ensemble is not None:  # torch models only; estimators have no members to average
        spaces = {e.name: with_fixed(spaces[e.name], {"ensemble": options.ensemble}) if e.family == "torch"
                  else spaces[e.name] for e in entries}
    metric = _checked_metric(options.metric or store.default_metric)  # before any model's prepare reads files
    vary = parse_vary(options.vary, options.settings)
    pairs, notes = varied_spaces(entries, spaces, options.settings, vary, store)
    searched = {f"{model}[{variant}]" if variant else model: space for model, variant, space in pairs}
    return store, metric, pairs, left_out + notes + searcher_notes(searcher, searched), ""


def _models_fitting(options: SweepOptions, store, store_path) -> tuple[SweepOptions, list[str]]:
    """A grid's --model names cut to those that fit this store's task (each name must exist), and a note naming
    the ones left out."""
    from omicsweep.models import get_model, models_for_task

    if options.model.strip() == "all":
        return options, []
    named = [get_model(m.strip()).name for m in options.model.split(",") if m.strip()]
    fitting = {e.name for e in models_for_task("all", store.task_kind)}
    wanted = [m for m in named if m in fitting]
    if not wanted:
        raise ConfigError(f"--model {options.model}: none fits the task of {store_path} ({store.task_kind})")
    left = [m for m in named if m not in fitting]
    note = [f"{store_path}: {', '.join(left)} left out (no {store.task_kind} task)"] if left else []
    return dataclasses.replace(options, model=",".join(wanted)), note


def _fixed_spaces(options: SweepOptions, store_path, searcher: str, *, several: bool = False):
    """`train`: one model, its defaults plus --set (every key known to it) and --ensemble, nothing to search."""
    from omicsweep.benchmark.space import fixed_space, load_space, parse_overrides, prepared_spaces, store_task
    from omicsweep.benchmark.training import check_config, config_keys
    from omicsweep.datasets import open_store
    from omicsweep.models import get_model, models_for_task

    entry = get_model(options.model)
    base = load_space(options.space or entry.space_file)
    own = [s.removeprefix(f"{entry.name}.") for s in options.settings]  # --set MODEL.KEY as in a sweep
    overrides = parse_overrides(own, base, shared_keys=config_keys(entry.family))
    if options.ensemble is not None:
        if entry.family != "torch":
            raise ConfigError(f"--ensemble applies to torch models, not {entry.name} (family {entry.family})")
        overrides["ensemble"] = options.ensemble
    store = open_store(store_path)
    models_for_task(entry.name, store.task_kind, where=str(store_path))
    store = entry.featurised_store(store, {**base.defaults, **overrides})  # what its trials read (CNNC: images)
    metric = _checked_metric(options.metric or store.default_metric)
    # files the config names (a gene graph) are checked against the store and pinned; models see its genes
    spaces, notes = prepared_spaces([entry], {entry.name: fixed_space(base, overrides)}, store)
    check_config(entry, {**spaces[entry.name].defaults, "seed": options.seed}, store_task(store))
    changed = ", ".join(f"{k}={v}" for k, v in overrides.items()) or "none"
    return store, metric, [(entry.name, "", spaces[entry.name])], notes, changed
