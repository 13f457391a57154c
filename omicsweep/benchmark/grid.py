"""A grid of (dataset, model) sweeps in ONE Ray Tune experiment: the searcher, the scheduler, the callback and the
trainable route every trial by its pair.

Ray Tune runs one Tuner per driver and cluster (several Tuners at once fight over the same resources and are not
supported), and running the pairs' Tuners one after another leaves slots idle while a pair's last trial or a
one-trial control runs. So the grid is one Tuner whose parts keep each pair's sweep what it was alone:
- `PairSearcher` holds one searcher per pair (its own OptunaSearch, seeded, with its own study and history, or
  the one configuration of a space with nothing to search) and its trial budget; `suggest` feeds the pair with
  the fewest trials started that still has budget and whose own searcher has a proposal, and tags the config
  with the pair (`PAIR_KEY`); results and completions go back to that pair's searcher only.
- `PairScheduler` holds one scheduler per pair (ASHA with the pair's max_t, or FIFO), so ASHA's rungs only ever
  hold trials of one pair: a fast control never raises a slow model's cut-off. Their rung records are kept in
  the run folder (benchmark/scheduler_state.py), so a resumed grid's ASHA starts where the interrupted one was.
- `PairCallback` hands each trial event to the pair's tracking callback, which sees the trial without the tag.
- `run_pair_trial` runs the trial with the pair's `TrialContext`; resources are asked per trial from its pair.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from omicsweep.benchmark.scheduler_state import RungLog
from omicsweep.errors import SweepInterrupted

PAIR_KEY = "__omicsweep_pair__"  # in a grid trial's Tune config: which (dataset, model) sweep it belongs to


def pair_of(config: dict[str, Any]) -> str:
    return config[PAIR_KEY]


def without_pair(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k != PAIR_KEY}


class FixedSearcher(Searcher):
    """The searcher of a space with nothing to search: its one configuration (the defaults), `budget` times."""

    def __init__(self, metric: str, mode: str) -> None:
        super().__init__(metric=metric, mode=mode)

    def suggest(self, trial_id: str) -> dict[str, Any]:
        return {}

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        pass


class PairSearcher(Searcher):
    """One searcher and one trial budget per pair behind one Tune search algorithm (see the module docstring).

    `searchers` maps a pair's key to its searcher (already told its metric, mode and space); `budgets` to the
    number of trials it may still start; at most `concurrency` trials of all pairs run at once."""

    def __init__(self, searchers: dict[str, Searcher], budgets: dict[str, int], *, concurrency: int,
                 metric: str, mode: str) -> None:
        super().__init__(metric=metric, mode=mode)
        self.searchers, self.budgets, self.concurrency = searchers, dict(budgets), concurrency
        self.started = {key: 0 for key in searchers}
        self.live: dict[str, str] = {}  # running trial id -> its pair

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # each pair's searcher was given its own space; the grid's param_space is empty

    def _candidates(self) -> list[str]:
        """Pairs with budget left, fewest started first (ties in the grid's order): every pair gets going early and
        a long model does not wait behind the others' whole budgets."""
        left = [key for key in self.searchers if self.started[key] < self.budgets[key]]
        return sorted(left, key=lambda key: self.started[key])

    def suggest(self, trial_id: str):
        candidates = self._candidates()
        if not candidates:
            return Searcher.FINISHED
        if len(self.live) >= self.concurrency:
            return None
        for key in candidates:
            config = self.searchers[key].suggest(trial_id)
            if config is None or config == Searcher.FINISHED:  # that pair's own limit; another may propose
                continue
            self.started[key] += 1
            self.live[trial_id] = key
            return {**config, PAIR_KEY: key}
        return None

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.live:
            self.searchers[self.live[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        key = self.live.pop(trial_id, None)
        if key is not None:
            self.searchers[key].on_trial_complete(trial_id, result=result, error=error)

    def save(self, checkpoint_path: str) -> None:
        # the experiment checkpoint is not how a grid resumes (`sweep --resume` rebuilds it from the tracking store
        # and each pair's Optuna study); what is saved says how far each pair got
        with open(checkpoint_path, "w") as handle:
            json.dump({"started": self.started, "budgets": self.budgets}, handle)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path) as handle:
            state = json.load(handle)
        self.started.update(state["started"])


class PairScheduler(FIFOScheduler):
    """One trial scheduler per pair: each trial's events go to its pair's scheduler only, so ASHA compares a trial
    with trials of the same (dataset, model) sweep and nothing else. Pending trials start in order (FIFO).

    With a `rung_log` (benchmark/scheduler_state.py), each pair's ASHA starts from the rung entries the log holds
    (a resumed sweep's trials that ended before the interruption), and every trial entering a rung is written
    to it, so the next resume finds it."""

    def __init__(self, schedulers: dict[str, TrialScheduler], rung_log: RungLog | None = None) -> None:
        super().__init__()
        self.schedulers, self.rung_log = schedulers, rung_log
        if rung_log is not None:
            for key, scheduler in schedulers.items():
                rung_log.seed(key, scheduler)

    def _note(self, trial) -> None:
        if self.rung_log is not None:
            key = pair_of(trial.config)
            self.rung_log.note(key, self.schedulers[key], trial.trial_id)

    def _of(self, trial) -> TrialScheduler:
        return self.schedulers[pair_of(trial.config)]

    def set_search_properties(self, metric, mode, **spec) -> bool:
        self._metric, self._mode = metric, mode
        return all([s.set_search_properties(metric, mode, **spec) for s in self.schedulers.values()])

    def on_trial_add(self, tune_controller, trial) -> None:
        self._of(trial).on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial) -> None:
        self._of(trial).on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result) -> str:
        decision = self._of(trial).on_trial_result(tune_controller, trial, result)
        self._note(trial)
        return decision

    def on_trial_complete(self, tune_controller, trial, result) -> None:
        self._of(trial).on_trial_complete(tune_controller, trial, result)
        self._note(trial)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._of(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "; ".join(f"{key}: {s.debug_string()}" for key, s in self.schedulers.items())


class _PairTrial:
    """A Tune trial as its pair's tracking callback sees it: the same trial, its config without the pair tag."""

    def __init__(self, trial) -> None:
        self._trial = trial
        self.config = without_pair(trial.config)

    def __getattr__(self, name: str):
        return getattr(self._trial, name)


class PairCallback(Callback):
    """Each trial event to the tracking callback of the trial's pair (its own recorder, parent run, progress)."""

    def __init__(self, trackers: dict[str, Callback]) -> None:
        self.trackers = trackers

    def _route(self, event: str, trial, **kwargs) -> None:
        getattr(self.trackers[pair_of(trial.config)], event)(trial=_PairTrial(trial), **kwargs)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._route("on_trial_start", trial, iteration=iteration, trials=trials, **info)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._route("on_trial_result", trial, iteration=iteration, trials=trials, result=result, **info)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._route("on_trial_complete", trial, iteration=iteration, trials=trials, **info)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._route("on_trial_recover", trial, iteration=iteration, trials=trials, **info)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._route("on_trial_error", trial, iteration=iteration, trials=trials, **info)


def run_pair_trial(config: dict[str, Any], contexts: dict[str, Any]) -> None:
    """Ray Tune function trainable of a grid (bind `contexts`, pair key -> TrialContext, with tune.with_parameters):
    the pair's own trial, exactly as a one-pair sweep runs it."""
    from omicsweep.benchmark.tune_trial import run_trial

    run_trial(without_pair(config), contexts[pair_of(config)])


def pair_trainable(contexts: dict[str, Any], resources: dict[str, dict[str, float]]):
    """run_pair_trial with each trial's resources those of its pair (a distributed pair's Tune actor asks for
    almost nothing, its Train workers ask)."""
    from ray import tune
    from ray.tune import PlacementGroupFactory

    def resources_of(config: dict[str, Any]) -> PlacementGroupFactory:
        return PlacementGroupFactory([resources[pair_of(config)]])

    return tune.with_resources(tune.with_parameters(run_pair_trial, contexts=contexts), resources_of)


# ---- running a grid --------------------------------------------------------------------------------------------


@dataclass
class PairSweep:
    """One (dataset, model) sweep of a grid: its request, recorder, trial context, tracking and resumed history."""

    request: Any  # SweepRequest
    recorder: Any
    context: Any  # TrialContext
    tracker: Any  # TrackingCallback
    files: tempfile.TemporaryDirectory  # genes.txt and classes.json, logged beside each checkpoint
    history: Any  # SweepHistory of a resumed sweep, else None
    parent_run_id: str
    status: str = "FAILED"
    rerun_wall: float | None = None
    closed: bool = False

    @property
    def key(self) -> str:
        return self.request.key  # DATASET/MODEL, with the --vary value: each variant is a pair of its own

    @property
    def remaining(self) -> int:
        return self.request.n_trials - (len(self.history.done()) if self.history else 0)

    @property
    def incomplete(self) -> bool:
        return self.tracker.finished + self.tracker.failed < self.request.n_trials


def _open_pair(request, recorder, progress, experiment: str) -> PairSweep:
    """Open the pair's parent run (or reopen an interrupted one) with its context and tracking callback."""
    from omicsweep.benchmark.sweep import _open_sweep, _trial_context, write_dataset_files
    from omicsweep.benchmark.sweep_tracking import TrackingCallback

    defaults = dict(request.space.defaults)
    if request.max_epochs is not None:
        defaults["max_epochs"] = request.max_epochs
    context = _trial_context(request, defaults)
    files = tempfile.TemporaryDirectory(prefix="omicsweep-dataset-")
    write_dataset_files(request.store_path, Path(files.name))
    tracker = TrackingCallback(recorder, context, progress, dataset_files=files.name)
    try:
        history, parent = _open_sweep(request, recorder, context, experiment)  # the study is KEY:PARENT_RUN_ID
    except BaseException:
        files.cleanup()
        raise
    if history is not None:
        tracker.restore(history.done())
    return PairSweep(request, recorder, context, tracker, files, history, parent)


def _pair_searcher(pair: PairSweep) -> Searcher:
    """The pair's own searcher as a one-pair sweep builds it (seeded sampler, its study, its history)."""
    from omicsweep.benchmark.searchers import StudyRef, study_name, study_url
    from omicsweep.benchmark.sweep import SEARCH_METRIC, _search_alg

    dims = pair.request.space.to_tune()
    if not dims:
        return FixedSearcher(SEARCH_METRIC, "max")
    study = StudyRef(study_url(pair.request.run_folder, pair.request.optuna_storage),
                     study_name(pair.key, pair.parent_run_id))
    searcher = _search_alg(pair.request, dims, pair.history, study=study)
    searcher.set_search_properties(SEARCH_METRIC, "max", dims)
    return searcher


def _pair_scheduler(pair: PairSweep) -> TrialScheduler:
    from omicsweep.benchmark.searchers import build_scheduler

    return build_scheduler(pair.request.scheduler, max_t=int(pair.context.defaults.get("max_epochs", 1)))


def _rung_log(pairs: list[PairSweep]) -> RungLog:
    """The run folder's ASHA rung records: a resumed pair keeps those of its trials that ended before the
    interruption (an interrupted trial runs again and enters the rungs again), a fresh pair starts empty."""
    keep = {p.key: {t.trial_id for t in p.history.done()} if p.history else set() for p in pairs}
    return RungLog.resumed(pairs[0].request.run_folder, keep)


def _fit(pairs: list[PairSweep], experiment: str, *, concurrency: int) -> None:
    """One Tuner over the pairs with trials left: their trials share the `concurrency` slots."""
    from ray import tune

    from omicsweep.benchmark.sweep import SEARCH_METRIC, sweep_storage, trial_resources
    from omicsweep.benchmark.sweep_tracking import tune_loggers

    first = pairs[0].request
    searcher = PairSearcher({p.key: _pair_searcher(p) for p in pairs}, {p.key: p.remaining for p in pairs},
                            concurrency=concurrency, metric=SEARCH_METRIC, mode="max")
    tune.Tuner(
        pair_trainable({p.key: p.context for p in pairs},
                       {p.key: trial_resources(p.request, p.context) for p in pairs}),
        tune_config=tune.TuneConfig(
            metric=SEARCH_METRIC, mode="max", search_alg=searcher,
            scheduler=PairScheduler({p.key: _pair_scheduler(p) for p in pairs}, rung_log=_rung_log(pairs)),
            num_samples=sum(p.remaining for p in pairs),
            # a finished trial's worker takes the next one (no per-trial process start); a distributed
            # trial's Tune actor only waits on its Train run, so a fresh one is as cheap and cleaner
            reuse_actors=not any(p.context.distributed for p in pairs),
        ),
        run_config=tune.RunConfig(
            name=experiment, storage_path=sweep_storage(first),
            callbacks=[PairCallback({p.key: p.tracker for p in pairs}), *tune_loggers()],
            verbose=0, checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=first.max_failures),
        ),
    ).fit()


def _experiment_name(requests: list) -> str:
    """Tune's experiment folder: DATASET-MODEL-TIME for one pair (as before the grid), grid-N-TIME for several."""
    when = time.strftime("%Y%m%d-%H%M%S")
    name = f"{requests[0].dataset}-{requests[0].model}" if len(requests) == 1 else f"grid-{len(requests)}"
    return f"{name}-{when}" + ("-resumed" if any(r.resume_parent for r in requests) else "")


def _close(pair: PairSweep, started: float) -> None:
    """End the pair's parent run with its status and summary; its wall time runs from the grid's start to its last
    trial's end."""
    from omicsweep.benchmark.resume import update_state
    from omicsweep.benchmark.sweep import sweep_summary

    pair.closed = True
    pair.files.cleanup()
    wall = (pair.tracker.ended or time.time()) - started
    pair.recorder.end_sweep(status=pair.status, summary=sweep_summary(pair.tracker, wall, pair.rerun_wall,
                                                                      pair.history, pair.recorder))
    update_state(pair.request.run_folder, pair.key, status=pair.status.lower())


def run_grid(requests: list, recorders: list, progresses: list, *, queued: bool = True) -> list:
    """Run every (dataset, model) sweep of `requests` in one Tuner in the current Ray session, then each one's seed
    re-runs; returns one SweepOutcome per request. Each pair keeps its own parent run, searcher, scheduler,
    budget and resume record, as if it had run alone."""
    from omicsweep.benchmark.recorder_queue import QueuedRecorder, TrackingWriter
    from omicsweep.benchmark.sweep import SweepOutcome, quiet_logs
    from omicsweep.benchmark.sweep_reruns import record_seed_reruns

    quiet_logs()
    writer = TrackingWriter() if queued else None  # trial writes off Tune's loop, all in the store on return
    recorders = [QueuedRecorder(r, writer) for r in recorders] if writer else recorders
    experiment = _experiment_name(requests)
    pairs: list[PairSweep] = []
    started = time.time()
    try:
        for request, recorder, progress in zip(requests, recorders, progresses):
            pairs.append(_open_pair(request, recorder, progress, experiment))
        started = time.time()
        if any(p.remaining > 0 for p in pairs):
            _fit([p for p in pairs if p.remaining > 0], experiment, concurrency=max(r.concurrency for r in requests))
        if any(p.incomplete for p in pairs):  # Tune returns early after a SIGINT
            for pair in pairs:
                pair.status = "KILLED"
            raise SweepInterrupted(_interrupted(pairs))
        for pair in pairs:
            history = pair.history
            pair.rerun_wall = record_seed_reruns(pair.recorder, pair.tracker, sweep_seed=pair.request.seed,
                                                 n=pair.request.reruns, done=history.reruns_done() if history else set())
            pair.status = "FINISHED"
            _close(pair, started)
    finally:
        try:
            for pair in pairs:
                if not pair.closed:
                    _close(pair, started)
        finally:
            if writer is not None:
                writer.close()
    return [SweepOutcome(model=p.request.model, dataset=p.request.dataset, trials_finished=p.tracker.finished,
                         trials_failed=p.tracker.failed, wall_time_s=(p.tracker.ended or time.time()) - started,
                         overheads_s=p.tracker.overheads, variant=p.request.variant) for p in pairs]


def _interrupted(pairs: list[PairSweep]) -> str:
    left = [f"{p.key} after {p.tracker.finished + p.tracker.failed} of {p.request.n_trials} trials"
            for p in pairs if p.incomplete]
    return (f"interrupted: {'; '.join(left)}; finish it with: "
            f"omicsweep sweep --resume {pairs[0].request.run_folder}")
