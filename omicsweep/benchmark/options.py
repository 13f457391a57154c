"""The shared training options: the configuration keys every trial reads, beside a model's own search-space keys.

One typed declaration (pydantic) validated once, before any trial starts. `TrialOptions` holds the keys any
model's trial reads (the loader's scaling, a k-fold store's fold, class imbalance); `TrainingOptions` adds those
of the shared torch loop (loss, optimiser, schedule, early stopping, ensembles, precision). Absent or null means
the default; names are case-insensitive. A bad configuration is one ConfigError with one message per bad key,
each naming where the value came from (the search-space file or --set), the key, the value and what is allowed.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, Literal, Mapping, Optional

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from omicsweep.datasets.transform import SCALINGS
from omicsweep.datasets.pair_images import IMAGE_CONFIG_KEYS
from omicsweep.datasets.resample import CLASS_WEIGHTS, RESAMPLES
from omicsweep.errors import ConfigError

LOSSES = ("ce", "weighted_ce", "focal")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("none", "cosine", "step")
SCHEDULE_UNITS = ("epoch", "step")
PRECISIONS = ("fp32", "bf16")

# what a numeric key must be, in the words of the error message
_EXPECTED = {
    "lr": "a number > 0", "weight_decay": "a number >= 0", "batch_size": "a whole number >= 1",
    "max_epochs": "a whole number >= 1", "patience": "a whole number >= 0", "grad_clip": "a number >= 0 (0: off)",
    "focal_gamma": "a number >= 0", "step_size": "a whole number of epochs >= 1",
    "ensemble": "a whole number of members >= 1", "warmup_steps": "a whole number of steps >= 0",
    "fold": "a whole number >= 0 (or none)", "resample_target": "a whole number of cells >= 1 (or none)",
}


def _no_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    return value


def _normalised(field, key: str, value: Any) -> Any:
    """Null -> the default; names lower-cased; 'none'/'auto' resample_target -> None; no booleans as numbers."""
    if value is None:
        return field.default
    if isinstance(value, str) and getattr(field.annotation, "__origin__", None) is Literal:
        return value.lower()
    if key == "resample_target" and isinstance(value, str) and value.lower() in ("", "none", "auto"):
        return None
    return _no_bool(value)


class TrialOptions(BaseModel):
    """Keys the trial reads for any model (estimators and torch models alike)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    scaling: Literal[SCALINGS] = "minmax"
    fold: Optional[int] = Field(None, ge=0)
    resample: Literal[RESAMPLES] = "none"
    resample_target: Optional[int] = Field(None, ge=1)
    class_weight: Literal[CLASS_WEIGHTS] = "none"

    @field_validator("*", mode="before")
    @classmethod
    def _normalise(cls, value: Any, info) -> Any:
        return _normalised(cls.model_fields[info.field_name], info.field_name, value)


class TrainingOptions(TrialOptions):
    """Keys of the shared torch training loop (benchmark/training.py), besides the trial's."""

    lr: float = Field(gt=0)
    batch_size: int = Field(ge=1)
    max_epochs: int = Field(ge=1)
    patience: int = Field(ge=0)
    weight_decay: float = Field(0.0, ge=0)
    loss: Literal[LOSSES] = "ce"
    optimizer: Literal[OPTIMIZERS] = "adam"
    schedule: Literal[SCHEDULES] = "none"
    schedule_unit: Literal[SCHEDULE_UNITS] = "epoch"
    warmup_steps: int = Field(0, ge=0)
    precision: Literal[PRECISIONS] = "fp32"
    grad_clip: float = Field(0.0, ge=0)
    focal_gamma: float = Field(2.0, ge=0)
    step_size: int = Field(5, ge=1)
    ensemble: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _class_weight_is_for_estimators(self) -> "TrainingOptions":
        if self.class_weight == "balanced":
            raise ValueError("config class_weight=balanced applies to estimators; torch models use loss=weighted_ce")
        return self


TRIAL_CONFIG_KEYS = (*TrialOptions.model_fields, *IMAGE_CONFIG_KEYS)  # image keys: a gene-pair task's (bins, sigma)
TORCH_CONFIG_KEYS = tuple(k for k in TrainingOptions.model_fields if k not in TrialOptions.model_fields)


def options_class(family: str) -> type[TrialOptions]:
    return TrainingOptions if family == "torch" else TrialOptions


def _message(key: str, value: Any, error: dict, cls: type[TrialOptions]) -> str:
    annotation = cls.model_fields[key].annotation
    if error["type"] == "missing":
        return f"config {key} is missing; expected {_EXPECTED.get(key, 'a value')}"
    if getattr(annotation, "__origin__", None) is Literal:
        return f"config {key}={value!r} is not supported; use one of {', '.join(annotation.__args__)}"
    return f"config {key}={value!r}: expected {_EXPECTED.get(key, error['msg'])}"


def validate_options(
    config: Mapping[str, Any], *, family: str = "torch", where: str = "config",
    sources: Mapping[str, str] | None = None,
) -> TrialOptions:
    """The typed options of `config`, or one ConfigError naming every bad key (joined by '; ', one line).

    `where` names the configuration's origin (a search-space file); `sources` maps a key to its own origin
    where it differs (e.g. '--set')."""
    cls = options_class(family)
    try:
        return cls.model_validate(dict(config))
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            key = str(error["loc"][0]) if error["loc"] else None
            origin = (sources or {}).get(key, where) if key else where
            if key is None:  # a model-level rule: its message is complete
                problems.append(f"{origin}: {str(error['msg']).removeprefix('Value error, ')}")
            else:
                problems.append(f"{origin}: {_message(key, config.get(key), error, cls)}")
        raise ConfigError("; ".join(problems)) from None


def option(config: Mapping[str, Any], key: str) -> Any:
    """One shared option of `config`, checked and normalised as the declaration says (absent or null: default)."""
    cls = TrainingOptions if key in TORCH_CONFIG_KEYS else TrialOptions
    if key not in cls.model_fields:  # a gene-pair task's image keys (bins, sigma): checked by the pair task
        return config.get(key)
    field, value = cls.model_fields[key], config.get(key)
    try:
        return _adapter(cls, key).validate_python(_normalised(field, key, value))
    except (ValidationError, ValueError) as exc:
        error = exc.errors()[0] if isinstance(exc, ValidationError) else {"type": "value_error", "msg": str(exc)}
        raise ConfigError(_message(key, value, error, cls)) from None


@functools.cache
def _adapter(cls: type[TrialOptions], key: str) -> TypeAdapter:
    field = cls.model_fields[key]
    return TypeAdapter(Annotated[field.annotation, *field.metadata] if field.metadata else field.annotation)


def check_space_options(space, *, family: str) -> None:
    """Every shared option a search-space file sets (a default, a choice, a range's bounds) checked before any
    trial: one ConfigError naming the file and each bad key."""
    keys = set(TRIAL_CONFIG_KEYS if family != "torch" else (*TRIAL_CONFIG_KEYS, *TORCH_CONFIG_KEYS)) - set(IMAGE_CONFIG_KEYS)
    problems = []
    for key, value in {**space.defaults, **space.tiny}.items():
        problems += _problem(key, value, keys, f"{space.path}")
    for dim in space.dimensions:
        values = dim.args if dim.kind == "choice" else dim.args[:2]
        for value in dict.fromkeys(values):
            problems += _problem(dim.name, value, keys, f"{space.path}: space.{dim.name}")
    if problems:
        raise ConfigError("; ".join(problems))


def _problem(key: str, value: Any, keys: set[str], where: str) -> list[str]:
    if key not in keys:
        return []
    try:
        option({key: value}, key)
    except ConfigError as exc:
        return [f"{where}: {exc}"]
    return []
