"""Resuming a sweep whose driver died (SIGINT, SIGTERM or SIGKILL): `omicsweep sweep --resume RUN_FOLDER`.

The tracking store is the record of what happened, written by the driver as it happened; a killed driver
leaves finished and failed trials closed and the interrupted ones RUNNING. Resuming reads it back (through the
recorder, so this module knows no MLflow) and then:
- finished and failed trials are not re-run; they count towards the requested number of trials and stay the
  sweep's child runs. The searcher's history is the sweep's Optuna study itself (an RDB storage, see
  benchmark/searchers.py), which already holds them, so the sampler proposes from the whole history (Tune's own
  restore can lose the searcher's state: ray #30861); `prepare_study` only fails the trials the dead driver
  left RUNNING there, and fills a study that was lost from the tracking store's record;
- interrupted trials' runs are deleted and their configurations queued to run first, so none is lost and
  none is tracked twice;
- seed re-runs already recorded are kept; the missing ones run.
The run folder holds what the driver needs besides: `sweep.json` (the command's options, to run it again)
and `sweep-state.json` (each model's parent run and whether its sweep finished), both written atomically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omicsweep.atomic import atomic_write_text
from omicsweep.errors import InputError
from omicsweep.schema import RERUN_ROLE, SEARCH_METRIC, TRIAL_ROLE

OPTIONS_FILE = "sweep.json"
STATE_FILE = "sweep-state.json"


@dataclass
class PriorTrial:
    """A trial (or seed re-run) the tracking store holds from before the driver died."""

    trial_id: str
    role: str  # TRIAL_ROLE or RERUN_ROLE
    status: str  # FINISHED, FAILED, or RUNNING (interrupted: its run has been deleted)
    config: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class SweepHistory:
    """What a resumed model sweep starts from."""

    parent_run_id: str
    trials: list[PriorTrial] = field(default_factory=list)

    def done(self) -> list[PriorTrial]:
        return [t for t in self.trials if t.role == TRIAL_ROLE and t.status in ("FINISHED", "FAILED")]

    def interrupted(self) -> list[PriorTrial]:
        return [t for t in self.trials if t.role == TRIAL_ROLE and t.status not in ("FINISHED", "FAILED")]

    def evaluated(self, names: list[str], metric: str) -> list[tuple[dict[str, Any], float | None]]:
        """(searched values, `metric`: best_val) of each done trial, for the resumed study; None for a failed one."""
        return [(searched_params(t.config, names), t.metrics.get(metric) if t.status == "FINISHED" else None)
                for t in self.done()]

    def reruns_done(self) -> set[int]:
        return {int(t.config.get("seed", -1)) for t in self.trials if t.role == RERUN_ROLE and t.status == "FINISHED"}


def prepare_study(storage, name: str, *, distributions: dict[str, Any], history: SweepHistory | None):
    """Create the sweep's study in `storage`, or open it on resume: trials its dead driver left RUNNING become
    FAIL (each is either re-run from the queue or never started), interrupted configurations are enqueued so
    they are proposed first. A study missing from the storage (deleted, or a new storage URL) is filled from
    the tracking store's record: finished trials with their best_val, failed ones as FAIL."""
    import optuna
    from optuna.trial import TrialState, create_trial

    study = optuna.create_study(storage=storage, study_name=name, direction="maximize", load_if_exists=True)
    if history is None:
        return study
    names = list(distributions)
    trials = study.get_trials(deepcopy=False)
    for trial in trials:
        if trial.state == TrialState.RUNNING:
            study.tell(trial.number, state=TrialState.FAIL)
    if not any(t.state.is_finished() for t in trials):
        study.add_trials([
            create_trial(params=params, distributions=distributions, value=value,
                         state=TrialState.FAIL if value is None else TrialState.COMPLETE)
            for params, value in history.evaluated(names, SEARCH_METRIC)
        ])
    for prior in history.interrupted():
        study.enqueue_trial(searched_params(prior.config, names))
    return study


def searched_params(config: dict[str, Any], names: list[str]) -> dict[str, Any]:
    return {name: config[name] for name in names if name in config}


# ---- run-folder files ------------------------------------------------------------------------------------------


def write_json_atomic(path: Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=1, sort_keys=True, default=str))


def read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: no {what} here; is this a run folder written by `omicsweep sweep`?") from None
    except ValueError as exc:
        raise InputError(f"{path}: {what} is not valid JSON ({exc})") from None


def save_options(run_folder: Path, options: dict[str, Any]) -> None:
    write_json_atomic(Path(run_folder) / OPTIONS_FILE, options)


def load_options(run_folder: Path) -> dict[str, Any]:
    options = read_json(Path(run_folder) / OPTIONS_FILE, "sweep options (sweep.json)")
    if not isinstance(options, dict) or "model" not in options:
        raise InputError(f"{Path(run_folder) / OPTIONS_FILE}: not the options of a sweep")
    return options


def sweep_key(dataset: str, model: str, variant: str = "") -> str:
    """A sweep's name in the run folder's state and the grid: DATASET/MODEL, or DATASET/MODEL[KEY=VALUE] (--vary)."""
    return f"{dataset}/{model}[{variant}]" if variant else f"{dataset}/{model}"


def load_state(run_folder: Path) -> dict[str, dict[str, Any]]:
    path = Path(run_folder) / STATE_FILE
    return read_json(path, "sweep state") if path.exists() else {}


def update_state(run_folder: Path, key: str, **fields: Any) -> None:
    """Merge `fields` into the run folder's state of sweep `key` (one driver writes it at a time)."""
    state = load_state(run_folder)
    state[key] = {**state.get(key, {}), **fields}
    write_json_atomic(Path(run_folder) / STATE_FILE, state)
