"""Search-space YAML files: model defaults plus the dimensions a sweep samples.

    defaults:            # the study's best setting; `omicsweep train` uses it as is
      lr: 1.0e-6
    space:               # one kind per dimension
      lr: {loguniform: [1.0e-6, 1.0e-1]}
      n_layers: {int: [1, 3]}            # inclusive
      width: {choice: [256, 1024, 8192]}
      dropout: {uniform: [0.0, 0.6]}
    max_trials: 1        # optional cap, e.g. for a model with nothing to search
    tiny:                # optional overrides that make the model small and quick (conformance tests)
      width: 32
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from omicsweep.errors import ConfigError, InputError

KINDS = ("uniform", "loguniform", "int", "logint", "choice")


@dataclass(frozen=True)
class Dimension:
    name: str
    kind: str
    args: tuple

    def to_tune(self):
        from ray import tune

        if self.kind == "uniform":
            return tune.uniform(*self.args)
        if self.kind == "loguniform":
            return tune.loguniform(*self.args)
        if self.kind == "int":
            return tune.randint(self.args[0], self.args[1] + 1)
        if self.kind == "logint":
            return tune.lograndint(self.args[0], self.args[1] + 1)
        return tune.choice(list(self.args))


@dataclass(frozen=True)
class SearchSpace:
    path: Path
    defaults: dict[str, Any]
    dimensions: tuple[Dimension, ...] = field(default=())
    max_trials: int | None = None
    tiny: dict[str, Any] = field(default_factory=dict)

    def to_tune(self) -> dict[str, Any]:
        return {d.name: d.to_tune() for d in self.dimensions}

    def n_trials(self, requested: int) -> int:
        if not self.dimensions:
            return 1
        return min(requested, self.max_trials) if self.max_trials else requested


def _parse_dimension(name: str, spec: Any, where: str) -> Dimension:
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(f"{where}: space.{name} must be a mapping with one of {', '.join(KINDS)}")
    kind, args = next(iter(spec.items()))
    if kind not in KINDS:
        raise ConfigError(f"{where}: space.{name} has unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    if not isinstance(args, list) or not args:
        raise ConfigError(f"{where}: space.{name}.{kind} must be a non-empty list")
    if kind == "choice":
        return Dimension(name, kind, tuple(args))
    if len(args) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        raise ConfigError(f"{where}: space.{name}.{kind} must be [low, high] numbers, got {args!r}")
    low, high = args
    if low >= high and not (kind in ("int", "logint") and low == high):
        raise ConfigError(f"{where}: space.{name}.{kind} needs low < high, got [{low}, {high}]")
    if kind in ("loguniform", "logint") and low <= 0:
        raise ConfigError(f"{where}: space.{name}.{kind} needs low > 0 on a log scale, got {low}")
    if kind in ("int", "logint") and not (float(low).is_integer() and float(high).is_integer()):
        raise ConfigError(f"{where}: space.{name}.{kind} needs integer bounds, got [{low}, {high}]")
    if kind in ("int", "logint"):
        return Dimension(name, kind, (int(low), int(high)))
    return Dimension(name, kind, (float(low), float(high)))


def load_space(path: Path) -> SearchSpace:
    """Parse and validate a search-space file; every problem is a one-line ConfigError naming the file."""
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise ConfigError(f"{where}: search-space file not found")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{where}: malformed YAML{at}: {getattr(exc, 'problem', exc)}") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: top level must be a mapping with 'defaults' and 'space'")
    unknown = set(doc) - {"defaults", "space", "max_trials", "tiny"}
    if unknown:
        raise ConfigError(f"{where}: unknown top-level key(s) {', '.join(sorted(unknown))}")
    defaults = doc.get("defaults") or {}
    space = doc.get("space") or {}
    tiny = doc.get("tiny") or {}
    if not isinstance(defaults, dict) or not isinstance(space, dict) or not isinstance(tiny, dict):
        raise ConfigError(f"{where}: 'defaults', 'space' and 'tiny' must be mappings")
    max_trials = doc.get("max_trials")
    if max_trials is not None and (not isinstance(max_trials, int) or max_trials < 1):
        raise ConfigError(f"{where}: max_trials must be a positive integer")
    dims = tuple(_parse_dimension(str(name), spec, where) for name, spec in space.items())
    return SearchSpace(path=path, defaults=dict(defaults), dimensions=dims, max_trials=max_trials, tiny=dict(tiny))


# ---- fixed configurations: `omicsweep train` (no search) and CLI overrides ---------------------------------------


def fixed_space(space: SearchSpace, overrides: dict[str, Any]) -> SearchSpace:
    """The defaults plus `overrides` and nothing to search: a sweep of it is one run of that configuration."""
    return replace(space, defaults={**space.defaults, **overrides}, dimensions=(), max_trials=1)


def with_fixed(space: SearchSpace, overrides: dict[str, Any]) -> SearchSpace:
    """`overrides` become defaults and leave the search (e.g. `sweep --ensemble N`)."""
    dims = tuple(d for d in space.dimensions if d.name not in overrides)
    return replace(space, defaults={**space.defaults, **overrides}, dimensions=dims)


def parse_value(text: str) -> Any:
    """A --set value as YAML reads it (true, null, 3, [64, 32]), with 1e-3-style floats that YAML 1.1 keeps as text."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _checked_value(key: str, value: Any, space: SearchSpace, where: str) -> Any:
    """`value` in the type of the key's default and, for a choice dimension, one of its choices."""
    dims = {d.name: d for d in space.dimensions}
    default = space.defaults.get(key)
    want_int = isinstance(default, int) and not isinstance(default, bool)
    want_int = want_int or (key in dims and dims[key].kind in ("int", "logint"))
    if want_int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if key in dims and dims[key].kind == "choice":
        choices = dims[key].args
        named = [c for c in choices if c is not None and not _is_number(c)]
        if named and value not in choices:  # options such as loss or init: only the listed ones exist
            listed = ", ".join(str(c) for c in choices)
            raise ConfigError(f"{where}: --set {key}={value!r} is not one of its choices ({listed})")
        if not named and not (_is_number(value) or (value is None and None in choices)):
            raise ConfigError(f"{where}: --set {key}={value!r} must be a number")  # widths may leave the grid
    bad = (
        (want_int and not (isinstance(value, int) and not isinstance(value, bool)))
        or (isinstance(default, bool) and not isinstance(value, bool))
        or ((isinstance(default, float) or (key in dims and dims[key].kind in ("uniform", "loguniform")))
            and not _is_number(value))
    )
    if bad:
        kind = "a whole number" if want_int else "true or false" if isinstance(default, bool) else "a number"
        raise ConfigError(f"{where}: --set {key}={value!r} must be {kind}")
    return float(value) if isinstance(default, float) else value


def parse_overrides(pairs: list[str], space: SearchSpace, *, shared_keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """KEY=VALUE pairs checked against the space: a known key (a default, a dimension, a `tiny` key or one of
    `shared_keys`, options every model of the family understands) and a value of the right type or choice."""
    where = str(space.path)
    known = {*space.defaults, *(d.name for d in space.dimensions), *space.tiny, *shared_keys}
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE, e.g. --set lr=1e-3")
        if key == "seed":
            raise ConfigError("--set seed: the seed comes from --seed")
        if key not in known:
            raise ConfigError(f"{where}: --set {key}: unknown key; known: {', '.join(sorted(known))}")
        overrides[key] = _checked_value(key, parse_value(text.strip()), space, where)
        if key in shared_keys:  # a shared training option: checked as benchmark/options.py declares it
            _check_shared_option(key, overrides[key])
    return overrides


def _check_shared_option(key: str, value: Any) -> None:
    from omicsweep.benchmark.options import option

    try:
        option({key: value}, key)
    except ConfigError as exc:
        raise ConfigError(f"--set {key}: {exc}") from None


# ---- fixed settings of a sweep or train run: --set values and the files a configuration names ----------------


def store_task(store):
    """The task a trial will build its model for on `store` (trial.py builds the same)."""
    from omicsweep.models import Task

    return Task(n_features=store.n_genes, n_classes=len(store.classes), genes=tuple(map(str, store.genes())),
                kind=store.task_kind, input_shape=store.input_shape)


def sweep_settings(entries, spaces: dict[str, SearchSpace], pairs: list[str], store) -> tuple[dict[str, SearchSpace], list[str]]:
    """`sweep --set KEY=VALUE` and each model's `prepare`, before any trial; returns (spaces, notes for the user).

    A --set key applies to the models of the sweep that know it (and must be known to one); its value leaves
    the search. Then each model's `prepare` checks the files its configuration names against the store and
    pins them into the defaults (e.g. a gene graph's absolute path and content hash).
    """
    return prepared_spaces(entries, set_values(entries, spaces, pairs), store)


def set_values(entries, spaces: dict[str, SearchSpace], pairs: list[str]) -> dict[str, SearchSpace]:
    """The --set KEY=VALUE pairs fixed in the spaces of the models that know each key (one must)."""
    from omicsweep.benchmark.training import config_keys

    spaces = dict(spaces)
    for pair in pairs:
        key = pair.partition("=")[0].strip()
        if "." in key:  # MODEL.KEY=VALUE: that model only
            entry, pair = _scoped(entries, spaces, pair)
            spaces[entry.name] = with_fixed(spaces[entry.name], parse_overrides(
                [pair], spaces[entry.name], shared_keys=config_keys(entry.family)))
            continue
        knowing = [e for e in entries if knows(e, spaces[e.name], key)]
        if not knowing and "=" in pair and key:
            known = set().union(*(_known_keys(spaces[e.name], config_keys(e.family)) for e in entries))
            raise ConfigError(f"--set {key}: no model of this sweep ({', '.join(e.name for e in entries)}) has that "
                              f"key; known: {', '.join(sorted(known))}")
        for entry in knowing or entries[:1]:  # no '=': parse_overrides names the problem
            overrides = parse_overrides([pair], spaces[entry.name], shared_keys=config_keys(entry.family))
            spaces[entry.name] = with_fixed(spaces[entry.name], overrides)
    return spaces


def _scoped(entries, spaces: dict[str, SearchSpace], pair: str) -> tuple[Any, str]:
    """--set MODEL.KEY=VALUE: (the sweep's model MODEL, 'KEY=VALUE'), or a one-line ConfigError."""
    key, _, value = pair.partition("=")
    model, _, inner = key.strip().partition(".")
    entry = next((e for e in entries if e.name == model), None)
    if entry is None:
        raise ConfigError(f"--set {key.strip()}: {model} is not a model of this sweep "
                          f"({', '.join(e.name for e in entries)})")
    if not knows(entry, spaces[entry.name], inner):
        raise ConfigError(f"--set {key.strip()}: {model} has no key {inner}")
    return entry, f"{inner}={value}"


def knows(entry, space: SearchSpace, key: str) -> bool:
    """Whether --set KEY applies to this model: a default, a dimension, a `tiny` key or a shared option of its family."""
    from omicsweep.benchmark.training import config_keys

    return key in _known_keys(space, config_keys(entry.family))


def prepared_spaces(entries, spaces: dict[str, SearchSpace], store) -> tuple[dict[str, SearchSpace], list[str]]:
    """Each model's `prepare` on its defaults (see ModelEntry.prepare); its additions become fixed defaults."""
    from omicsweep.benchmark.options import check_space_options

    task, notes = store_task(store), []
    spaces = dict(spaces)
    for entry in entries:
        check_space_options(spaces[entry.name], family=entry.family)  # the shared options, once, before any trial
        additions, lines = entry.prepared(dict(spaces[entry.name].defaults), task)
        spaces[entry.name] = with_fixed(spaces[entry.name], additions)
        _check_searched_pretraining(entry, spaces[entry.name], additions, task)
        notes += lines
    return spaces, notes


def _check_searched_pretraining(entry, space: SearchSpace, pinned: dict[str, Any], task) -> None:
    """A searched `pretrained` choice must build the network the prepared defaults build: its trials get the pins
    (checkpoint, sizes) of the defaults, so a choice needing others would fail inside its worker. Each choice is
    prepared here, on the defaults with that value, and must pin nothing new (a ConfigError now, exit 2)."""
    from omicsweep.schema import BACKBONE_FROM_PARAM, PRETRAINED_PARAM

    dims = [d for d in space.dimensions if d.name == PRETRAINED_PARAM and d.kind == "choice"]
    if not dims or entry.prepare is None:
        return
    for value in dims[0].args:
        try:
            additions, _ = entry.prepared({**space.defaults, PRETRAINED_PARAM: value}, task)
        except (ConfigError, InputError) as exc:  # e.g. the checkpoint's sizes against the defaults' pinned ones
            reason = str(exc) if len(str(exc)) <= 100 else f"{str(exc)[:97]}..."
        else:
            changed = [k for k, v in additions.items() if str(pinned.get(k, space.defaults.get(k))) != str(v)]
            if not changed:
                continue
            reason = f"it would pin other {', '.join(changed)} than the defaults"
        raise ConfigError(f"{space.path}: {entry.name} searches {PRETRAINED_PARAM} over {list(dims[0].args)}, but "
                          f"{PRETRAINED_PARAM}={value} needs another checkpoint or sizes than the defaults pin ({reason}); set "
                          f"{BACKBONE_FROM_PARAM}=CHECKPOINT (--set) so every choice builds on one checkpoint")


def _known_keys(space: SearchSpace, shared_keys: tuple[str, ...]) -> set[str]:
    return {*space.defaults, *(d.name for d in space.dimensions), *space.tiny, *shared_keys}
