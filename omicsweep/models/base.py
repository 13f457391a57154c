"""The model contract: a registry of named entries, each building a model from a config dict and a task.

A new model is one module in this package that calls `register(...)`, plus `search_spaces/<name>.yaml`.
The CLI, the sweep, the tests and the leaderboard find it through the registry; nothing else changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

from omicsweep.errors import ConfigError, UnknownNameError
from omicsweep.tasks import CELL_CLASSIFICATION, PRETRAINING_TASKS

Family = Literal["torch", "estimator"]


@dataclass(frozen=True)
class Task:
    """What a sample is and what is predicted; models declare which task kinds they accept."""

    n_features: int
    n_classes: int
    kind: str = CELL_CLASSIFICATION
    # the store's gene names in feature order (empty when unknown), so a model can align prior knowledge to them
    genes: tuple[str, ...] = field(default=(), repr=False)
    # one sample's shape before the loader flattens it to n_features, e.g. (1, bins, bins) for a gene-pair image
    input_shape: tuple[int, ...] = ()
    # what the entry's `load_priors` read for a configuration (e.g. {"graph": GeneGraph}): a build reads its
    # priors from here and opens no file
    priors: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class ModelEntry:
    """A registered model.

    family 'torch': build returns an nn.Module whose forward takes the featuriser's dict of tensors as keyword
    arguments (the default featuriser: `x`, [batch, features] float32) and returns class logits; the shared
    training loop owns optimisation. A module may offer `param_groups(config)` (torch optimiser parameter groups,
    e.g. a backbone and a head at different learning rates). family 'estimator': build returns a
    scikit-learn-style object with fit(X, y) and predict_proba(X) on the default featuriser's dense rows.

    `build` does no file I/O: priors (a gene graph, a pretrained checkpoint) are checked and pinned by `prepare`
    and read by `load_priors` into `task.priors` before `build` sees the task (`entry.build` does that for every
    caller: the trial, predict, the plan's checks, the tests).
    """

    name: str
    family: Family
    build: Callable[[dict[str, Any], Task], Any]
    description: str
    role: Literal["model", "baseline", "control"] = "model"
    tasks: tuple[str, ...] = field(default=(CELL_CLASSIFICATION,))
    # optional: prepare(config, task) -> (config additions, notes), run once before a sweep or train: checks
    # files the config names against the dataset (e.g. a gene graph) and pins them (path, content hash) into
    # the configuration, so the run record holds them; notes are lines for the user (e.g. graph coverage)
    prepare: Callable[[dict[str, Any], Task], tuple[dict[str, Any], list[str]]] | None = None
    # what the model eats (models/featurise.py): a Featuriser or a function (batch_csr, genes, transform) -> dict
    # of tensors; None is the dense scaled vector under key "x"
    featuriser: Any = None
    # optional: load_priors(config, task) -> dict of the priors a build needs (a gene graph aligned to the task's
    # genes), called when the task has none; a model caches them per process, so `prepare`'s read is the only one
    # on the driver and ensemble members share one read
    load_priors: Callable[[dict[str, Any], Task], dict[str, Any]] | None = None
    # optional: resolve(config, open_store) -> config, a trial's configuration with a choice that depends on the
    # data made concrete (logreg's `solver: auto` by the training split's size); `open_store()` gives the store
    # the trial reads. benchmark.trial.trial_config runs it, so the run's params name what the trial fitted with
    resolve: Callable[[dict[str, Any], Callable[[], Any]], dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        if self.load_priors is not None:
            object.__setattr__(self, "build", _with_priors(self.build, self.load_priors))

    @property
    def featurise(self):
        """This entry's featuriser as a `Featuriser` (view, fit, __call__)."""
        from omicsweep.models.featurise import as_featuriser

        return as_featuriser(self.featuriser)

    def featurised_store(self, store, config: dict[str, Any]):
        """The rows this model's trials read from `store` (its featuriser's view for `config`), e.g. CNNC's
        images at the trial's bins; the store itself for the default featuriser."""
        return self.featurise.view(store, config)

    def prepared(self, config: dict[str, Any], task: Task) -> tuple[dict[str, Any], list[str]]:
        """(config additions, notes) from `prepare`, or nothing to add for a model without one."""
        return self.prepare(config, task) if self.prepare is not None else ({}, [])

    def resolved(self, config: dict[str, Any], open_store: Callable[[], Any]) -> dict[str, Any]:
        """`resolve`'s configuration, or `config` itself for a model without one."""
        return self.resolve(config, open_store) if self.resolve is not None else config

    @property
    def space_file(self) -> Path:
        return Path(str(resources.files("omicsweep.search_spaces") / f"{self.name}.yaml"))


def _with_priors(build: Callable[[dict[str, Any], Task], Any], load_priors: Callable) -> Callable:
    """`build` handed a task holding its priors: the loader runs first when the task comes without them."""

    def build_with_priors(config: dict[str, Any], task: Task) -> Any:
        if not task.priors:
            task = replace(task, priors=load_priors(config, task))
        return build(config, task)

    build_with_priors.builder = build  # the model's own builder, which opens no file
    return build_with_priors


_REGISTRY: dict[str, ModelEntry] = {}


class PriorCache:
    """Priors a model reads from files, kept per process: `prepare` reads one, `load_priors` in the same process
    (or a worker's first trial) reuses it. Holds the last `kept` (oldest dropped first)."""

    def __init__(self, kept: int = 2):
        self.kept, self._items = int(kept), {}

    def get(self, key):
        return self._items.get(key)

    def put(self, key, value):
        while len(self._items) >= self.kept:
            self._items.pop(next(iter(self._items)))
        self._items[key] = value
        return value


def register(entry: ModelEntry) -> ModelEntry:
    if entry.name in _REGISTRY and _REGISTRY[entry.name] is not entry:
        raise ValueError(f"model {entry.name!r} is registered twice")
    _REGISTRY[entry.name] = entry
    return entry


def get_model(name: str) -> ModelEntry:
    from omicsweep.models import load_all

    load_all()
    if name not in _REGISTRY:
        raise UnknownNameError("model", name, list(_REGISTRY))
    return _REGISTRY[name]


def available_models() -> list[str]:
    from omicsweep.models import load_all

    load_all()
    return sorted(_REGISTRY)


def models_for_task(requested: str, kind: str, *, where: str = "the dataset") -> list[ModelEntry]:
    """The models a sweep runs on a store of task `kind`: 'all' = every model accepting it; otherwise the
    comma-separated names, each of which must accept it (a ConfigError names the ones that do)."""
    from omicsweep.models import load_all

    load_all()
    accepting = [name for name in sorted(_REGISTRY) if kind in _REGISTRY[name].tasks]
    if requested.strip() == "all":
        return [_REGISTRY[name] for name in accepting]
    entries = [get_model(name.strip()) for name in requested.split(",") if name.strip()]
    for entry in entries:
        if kind not in entry.tasks and set(entry.tasks) & set(PRETRAINING_TASKS):
            raise ConfigError(f"model {entry.name} is pretrained on a corpus store, not swept over a dataset: "
                              "run `omicsweep pretrain --corpus CORPUS.zarr --runs RUNS` (docs/pretrain.md)")
        if kind not in entry.tasks:
            raise ConfigError(f"model {entry.name} does not accept {kind} tasks ({where}); models that do: "
                              f"{', '.join(accepting) or '(none)'}")
    return entries
