"""ASHA's rung records after `sweep --resume` (benchmark/scheduler_state.py, issue 15 item 4): a resumed sweep's
ASHA starts from the rungs of the trials that ended before the interruption, so it stops the same trials an
uninterrupted run would have; the rungs are written to the run folder as results arrive, by a real Tune run."""

from __future__ import annotations

import json
from pathlib import Path

from mlflow import MlflowClient
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from omicsweep.benchmark.grid import PAIR_KEY, PairScheduler, PairSweep, _rung_log
from omicsweep.benchmark.resume import PriorTrial, SweepHistory
from omicsweep.benchmark.scheduler_state import RUNGS_FILE, RungLog, rungs_of
from omicsweep.benchmark.searchers import build_scheduler
from omicsweep.benchmark.space import SearchSpace
from omicsweep.benchmark.sweep import SEARCH_METRIC, SweepRequest
from omicsweep.reports.tracking import default_tracking_uri

KEY = "toy/mlp"
# per trial, its best_val at epochs 1, 2, ...: ASHA (max_t 9, rf 3) keeps rungs at epochs 1, 3 and 9
BEFORE = {"t0": [0.5, 0.6, 0.7], "t1": [0.8, 0.85, 0.9], "t2": [0.3]}  # ended before the interruption
INTERRUPTED = ("t3", [0.9])  # running when the driver died: re-run after the resume as t3b
AFTER = {"t4": [0.55], "t3b": [0.9, 0.92, 0.95], "t5": [0.65, 0.7, 0.72], "t6": [0.4]}


def _trial(trial_id: str) -> Trial:
    return Trial("__fake", config={PAIR_KEY: KEY}, trial_id=trial_id, stub=True)


def _scheduler(rung_log=None) -> PairScheduler:
    scheduler = PairScheduler({KEY: build_scheduler("asha", max_t=9)}, rung_log=rung_log)
    scheduler.set_search_properties(SEARCH_METRIC, "max")
    return scheduler


def _run(scheduler: PairScheduler, trials: dict[str, list[float]], *, complete: bool = True) -> dict[str, str]:
    """Each trial in turn reports its epochs until ASHA stops it; its decision at its last reported epoch."""
    decisions = {}
    for trial_id, values in trials.items():
        trial = _trial(trial_id)
        scheduler.on_trial_add(None, trial)
        for epoch, value in enumerate(values, start=1):
            result = {"training_iteration": epoch, SEARCH_METRIC: value}
            decisions[trial_id] = scheduler.on_trial_result(None, trial, result)
            if decisions[trial_id] == TrialScheduler.STOP:
                break
        if complete:
            scheduler.on_trial_complete(None, trial, result)
    return decisions


def _pair(run_folder: Path, done: list[str], interrupted: list[str]) -> PairSweep:
    request = SweepRequest(dataset="toy", store_path=run_folder / "toy.zarr", fingerprint="sha256:toy", model="mlp",
                           space=SearchSpace(path=Path("toy.yaml"), defaults={"max_epochs": 9}, dimensions=()),
                           trials=8, concurrency=1, seed=0, metric="accuracy", run_folder=run_folder)
    trials = [PriorTrial(t, "trial", "FINISHED", {}) for t in done] + [
        PriorTrial(t, "trial", "RUNNING", {}) for t in interrupted]
    return PairSweep(request, None, None, None, None, SweepHistory("parent", trials), parent_run_id="parent")


def test_a_resumed_asha_has_the_rungs_from_before_and_stops_what_an_uninterrupted_run_stops(tmp_path):
    # the killed driver's scheduler: nothing is flushed at its end, the run folder has what it wrote per result
    killed = _scheduler(RungLog(tmp_path))
    assert _run(killed, BEFORE)["t2"] == TrialScheduler.STOP  # below the first rung's cut-off
    _run(killed, dict([INTERRUPTED]), complete=False)
    saved = json.loads((tmp_path / RUNGS_FILE).read_text())[KEY]
    assert set(saved) == {*BEFORE, INTERRUPTED[0]}

    # what an uninterrupted sweep's ASHA holds after the same ended trials (the interrupted one re-runs)
    reference = _scheduler()
    _run(reference, BEFORE)
    resumed = _scheduler(_rung_log([_pair(tmp_path, list(BEFORE), [INTERRUPTED[0]])]))
    assert rungs_of(resumed.schedulers[KEY]) == rungs_of(reference.schedulers[KEY])
    assert any(rung for rung in rungs_of(resumed.schedulers[KEY])[0])

    expected = _run(reference, AFTER)
    assert _run(resumed, AFTER) == expected
    assert expected["t4"] == expected["t6"] == TrialScheduler.STOP  # cut at epoch 1 by the restored rung
    fresh = _run(_scheduler(), AFTER)  # what a resume with empty rungs (before this fix) decided
    assert fresh["t4"] == TrialScheduler.CONTINUE

    # a second interruption keeps both parts' ended trials (the first part's interrupted t3 is gone)
    again = json.loads((tmp_path / RUNGS_FILE).read_text())[KEY]
    assert set(again) == {*BEFORE, *AFTER}


def test_a_real_sweep_writes_each_trials_rung_values_to_the_run_folder(swept):
    """The shared real sweep (3 epochs: ASHA rungs at epochs 1 and 3): every mlp trial's rung-1 entry is its
    tracked best_val at epoch 1."""
    out, _ = swept
    saved = json.loads((out / RUNGS_FILE).read_text())
    client = MlflowClient(default_tracking_uri(out))
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
            if r.data.tags.get("omicsweep.role") == "trial" and r.data.tags.get("omicsweep.model") == "mlp"]
    assert len(runs) == 4 and len(saved["pbmc68k/mlp"]) == 4
    for run in runs:
        trial_id = run.data.tags["omicsweep.trial_id"]
        at_epoch_1 = {m.step: m.value for m in client.get_metric_history(run.info.run_id, SEARCH_METRIC)}[1]
        entries = {milestone: value for _, milestone, value in saved["pbmc68k/mlp"][trial_id]}
        assert entries[1.0] == at_epoch_1
