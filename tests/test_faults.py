"""Faults: failing trials are retried then recorded and the sweep goes on; a SIGKILLed driver's sweep resumes.

The sweeps are real (Ray Tune, Optuna, MLflow on SQLite, the pbmc68k store) with a tiny mlp space. Failures are
injected with the sweep's own `--inject-faults` (benchmark/faults.py), which picks trials by a hash of the sweep
seed and configuration, so the test knows exactly which trials had to fail.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from ray_procs import end_cluster, ray_env

from omicsweep.benchmark.faults import is_chosen, parse_faults, trial_key
from omicsweep.benchmark.resume import PriorTrial, SweepHistory, prepare_study

TINY_SPACE = {
    "defaults": {"n_layers": 1, "width": 16, "lr": 1.0e-3, "weight_decay": 0.0, "dropout": 0.0, "batch_size": 64,
                 "max_epochs": 4, "patience": 10},
    "space": {"lr": {"loguniform": [1.0e-4, 1.0e-2]}, "width": {"choice": [8, 16, 32, 64]},
              "dropout": {"uniform": [0.0, 0.5]}},
}
pytestmark = pytest.mark.slow


@pytest.fixture
def tiny_space(tmp_path) -> Path:
    path = tmp_path / "tiny_mlp.yaml"
    path.write_text(yaml.safe_dump(TINY_SPACE))
    return path


def _runs(out: Path) -> list[dict]:
    """Every active run of the run folder's MLflow store: role, status, config, metrics, error."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    rows = []
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id]):
            tags = run.data.tags
            rows.append({"id": run.info.run_id, "name": run.info.run_name, "role": tags.get("omicsweep.role"),
                         "status": run.info.status, "config": json.loads(tags.get("omicsweep.config", "{}")),
                         "metrics": run.data.metrics, "error": tags.get("omicsweep.error"),
                         "parent": tags.get("mlflow.parentRunId")})
    return rows


def test_failed_trials_are_retried_then_recorded_and_the_sweep_goes_on(cli, ray_session, pbmc_store, tiny_space, tmp_path):
    out = tmp_path / "run"
    code, stdout, stderr = cli("sweep", "--model", "mlp", "--space", tiny_space, "--trials", "10", "--reruns", "0",
                               "--concurrency", "2", "--runs", out, "--inject-faults", "raise:0.3", "--max-failures", "1")
    assert code == 0, stdout + stderr
    trials = [r for r in _runs(out) if r["role"] == "trial"]
    assert len(trials) == 10  # a retried trial keeps its one run
    plan = parse_faults("raise:0.3")
    for trial in trials:
        chosen = is_chosen(plan, trial_key(0, trial["config"]))
        assert trial["status"] == ("FAILED" if chosen else "FINISHED"), trial
        if chosen:  # retried once (--max-failures 1), failed again, recorded with its error
            assert trial["metrics"].get("retries") == 1.0
            assert "InjectedFault" in trial["error"] and "injected fault" in trial["error"]
    failed = sum(t["status"] == "FAILED" for t in trials)
    assert 1 <= failed <= 6, failed  # about 30% of 10
    assert f"{10 - failed} finished, {failed} failed" in stderr
    assert stdout.count("failed mlp") == failed  # the leaderboard lists each failure with its error
    import polars as pl

    board = pl.read_csv(out / "leaderboard.csv")
    assert board.filter(pl.col("model") == "mlp")["trials_failed"].item() == failed


def test_a_killed_trial_process_is_retried_and_finishes(cli, ray_session, pbmc_store, tiny_space, tmp_path):
    out = tmp_path / "run"
    code, stdout, stderr = cli("sweep", "--model", "mlp", "--space", tiny_space, "--trials", "4", "--reruns", "0",
                               "--concurrency", "2", "--runs", out, "--inject-faults", "kill:0.5:once",
                               "--max-failures", "2")
    assert code == 0, stdout + stderr
    trials = [r for r in _runs(out) if r["role"] == "trial"]
    plan = parse_faults("kill:0.5:once")
    killed = [t for t in trials if is_chosen(plan, trial_key(0, t["config"]))]
    assert killed, "no trial was chosen to be killed: change the seed of this test"
    assert all(t["status"] == "FINISHED" for t in trials), trials
    assert all(t["metrics"].get("retries") == 1.0 for t in killed)  # SIGKILLed once, then ran to the end
    assert len(list((out / "faults").glob("*.failed"))) == len(killed)


def _finished_trials(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=1) as conn:
            return conn.execute(
                "select count(*) from runs r join tags t on r.run_uuid = t.run_uuid "
                "where t.key = 'omicsweep.role' and t.value = 'trial' and r.status = 'FINISHED'"
            ).fetchone()[0]
    except sqlite3.Error:  # not created yet, or locked for a moment by the writer
        return 0


def test_sweep_resumes_after_the_driver_is_killed(cli, ray_session, pbmc_store, tiny_space, tmp_path):
    """kill -9 the driver mid-sweep; --resume ends with exactly the requested trials, none run or tracked twice,
    and the searcher starts from every trial finished before the kill."""
    out = tmp_path / "run"
    temp_dir = tempfile.mkdtemp(prefix="omr")  # the killed driver's own Ray, found and ended by this folder
    space = yaml.safe_load(tiny_space.read_text())
    space["defaults"]["max_epochs"] = 8  # long enough trials that the kill lands mid-sweep
    tiny_space.write_text(yaml.safe_dump(space))
    args = [str(Path(sys.executable).parent / "omicsweep"), "sweep", "--model", "mlp", "--space", str(tiny_space),
            "--trials", "8", "--reruns", "1", "--concurrency", "2", "--runs", str(out)]
    driver = subprocess.Popen(args, env=ray_env(RAY_TMPDIR=temp_dir), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.time() + 240
        while _finished_trials(out / "mlflow.db") < 2 and time.time() < deadline and driver.poll() is None:
            time.sleep(0.2)
        assert driver.poll() is None, f"the sweep ended before the kill: {driver.stderr.read().decode()[-2000:]}"
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
        end_cluster(temp_dir)  # the dead driver's raylet and workers
    before = {r["id"]: r for r in _runs(out) if r["role"] == "trial"}
    done_before = {i for i, r in before.items() if r["status"] == "FINISHED"}
    assert 2 <= len(done_before) < 8
    state = json.loads((out / "sweep-state.json").read_text())
    assert state["pbmc68k/mlp"]["status"] == "running"

    rungs_before = json.loads((out / "asha-rungs.json").read_text())["pbmc68k/mlp"]  # written as results came
    code, stdout, stderr = cli("sweep", "--resume", out)
    assert code == 0, stdout + stderr
    runs = _runs(out)
    trials = [r for r in runs if r["role"] == "trial"]
    assert len(trials) == 8 and all(r["status"] == "FINISHED" for r in trials), [(r["name"], r["status"]) for r in trials]
    assert len({r["name"] for r in trials}) == 8  # no trial tracked twice
    assert done_before <= {r["id"] for r in trials}  # finished before the kill: kept, not re-run
    parents = [r for r in runs if r["role"] == "sweep"]
    assert len(parents) == 1 and all(r["parent"] == parents[0]["id"] for r in trials)
    assert parents[0]["metrics"]["restored_trials"] == len(done_before)
    assert parents[0]["status"] == "FINISHED"
    reruns = [r for r in runs if r["role"] == "seed-rerun"]
    assert len(reruns) == 1 and reruns[0]["status"] == "FINISHED"
    configs = [json.dumps({k: r["config"][k] for k in TINY_SPACE["space"]}, sort_keys=True) for r in trials]
    assert len(set(configs)) == 8  # the resumed searcher knew the earlier configurations
    assert json.loads((out / "sweep-state.json").read_text())["pbmc68k/mlp"]["status"] == "finished"
    # ASHA's rungs: the ended trials' entries from before the kill kept, the interrupted ones' dropped (re-run)
    rungs = json.loads((out / "asha-rungs.json").read_text())["pbmc68k/mlp"]
    assert set(rungs) == {r["name"] for r in trials}
    assert all(rungs[before[i]["name"]] == rungs_before[before[i]["name"]] for i in done_before)


def test_history_search_starts_from_earlier_trials_and_seeds_repeat():
    """A study filled from the tracking record (a lost one) holds the earlier trials (failed ones as FAIL), the
    searcher on it proposes an interrupted configuration first, and the same sweep seed proposes the same first
    configurations."""
    from optuna.samplers import TPESampler
    from optuna.storages import InMemoryStorage
    from optuna.trial import TrialState
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    space = {"lr": tune.loguniform(1e-4, 1e-1), "width": tune.choice([8, 16, 32])}
    history = SweepHistory("parent", [
        PriorTrial("a", "trial", "FINISHED", {"lr": 1e-3, "width": 16}, {"best_val": 0.7}),
        PriorTrial("b", "trial", "FINISHED", {"lr": 1e-2, "width": 8}, {"best_val": 0.5}),
        PriorTrial("c", "trial", "FAILED", {"lr": 3e-2, "width": 32}),
        PriorTrial("d", "trial", "RUNNING", {"lr": 5e-4, "width": 8}),
    ])
    storage = InMemoryStorage()
    prepare_study(storage, "s", distributions=OptunaSearch.convert_search_space(space), history=history)
    searcher = OptunaSearch(sampler=TPESampler(seed=0), storage=storage, study_name="s")
    searcher.set_search_properties("best_val", "max", space)
    states = [t.state for t in searcher._ot_study.trials]
    assert states == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING]  # + requeued
    assert searcher._ot_study.best_value == 0.7
    assert searcher.suggest("t0") == {"lr": 5e-4, "width": 8}

    def first(seed: int) -> list[dict]:
        fresh = OptunaSearch(sampler=TPESampler(seed=seed))
        fresh.set_search_properties("best_val", "max", space)
        return [fresh.suggest(f"t{i}") for i in range(3)]

    assert first(7) == first(7) and first(7) != first(8)


def _trial_run(out: Path) -> dict:
    (trial,) = [r for r in _runs(out) if r["role"] == "trial"]
    return trial


def _epoch_history(out: Path, run_id: str) -> list[tuple[int, int]]:
    """(training_iteration, epoch) of every result the run logged, in logging order."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    history = sorted(client.get_metric_history(run_id, "epoch"), key=lambda m: (m.timestamp, m.step))
    return [(m.step, int(m.value)) for m in history]


def _best_model(out: Path, run_id: str) -> dict:
    import mlflow
    import torch

    folder = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="checkpoint",
                                                 tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    return torch.load(Path(folder) / "model.pt", weights_only=True)


def test_a_retried_trial_continues_from_its_last_epoch(cli, ray_session, pbmc_store, tiny_space, tmp_path):
    """Fails when epoch 3 of 5 is reported (--max-failures 1): the retry resumes at epoch 3, so every epoch is
    reported once under its own training_iteration, and it ends exactly as the same seed's uninterrupted run
    (final metrics and the logged best model)."""
    space = yaml.safe_load(tiny_space.read_text())
    space["defaults"].update(max_epochs=5, patience=10)
    tiny_space.write_text(yaml.safe_dump(space))
    common = ("sweep", "--model", "mlp", "--space", tiny_space, "--trials", "1", "--reruns", "0", "--concurrency", "1")
    code, stdout, stderr = cli(*common, "--runs", tmp_path / "whole")
    assert code == 0, stdout + stderr
    code, stdout, stderr = cli(*common, "--runs", tmp_path / "retried", "--inject-faults", "raise:1:once:epoch=3",
                               "--max-failures", "1")
    assert code == 0, stdout + stderr
    whole, retried = _trial_run(tmp_path / "whole"), _trial_run(tmp_path / "retried")
    assert retried["config"] == whole["config"] and retried["status"] == "FINISHED"
    assert retried["metrics"].get("retries") == 1.0 and len(list((tmp_path / "retried" / "faults").glob("*"))) == 1
    assert _epoch_history(tmp_path / "retried", retried["id"]) == [(i, i) for i in range(1, 6)]
    learned = [k for k in whole["metrics"] if k.startswith(("val_", "test_", "best_val", "train_loss", "epoch"))
               and k != "epoch_time_s"]
    assert {k: retried["metrics"][k] for k in learned} == {k: whole["metrics"][k] for k in learned}
    best_whole = _best_model(tmp_path / "whole", whole["id"])
    best_retried = _best_model(tmp_path / "retried", retried["id"])
    assert best_whole.keys() == best_retried.keys()
    assert all(best_whole[k].equal(best_retried[k]) for k in best_whole)


class _Stop(Exception):
    pass


@pytest.mark.parametrize("model, options", [
    ("mlp", {"schedule": "cosine", "schedule_unit": "step", "warmup_steps": 3, "dropout": 0.3}),  # StepSchedule
    ("ae_mlp", {"init": "autoencoder", "schedule": "step", "step_size": 2}),  # torch scheduler, pretrain hook
])
def test_resume_state_continues_an_ensemble_exactly(pbmc_store, tmp_path, model, options):
    """Without Ray: a 2-member ensemble stopped after epoch 2 and resumed from that epoch's checkpoint reports
    epochs 3-4 exactly as the uninterrupted run (weights, optimiser, schedule, RNG, best so far, pretraining
    loss), and the checkpoint it carries is the best epoch's."""
    from omicsweep.benchmark.torch_resume import RESUME_FILE, load_resume
    from omicsweep.benchmark.trial import TrialContext, execute_trial
    from omicsweep.datasets import Store
    from omicsweep.models import get_model
    from omicsweep.benchmark.space import load_space

    space = load_space(get_model(model).space_file)
    context = TrialContext(store_path=str(pbmc_store), fingerprint=Store(pbmc_store).fingerprint, model=model,
                           defaults={**space.defaults, **space.tiny, "max_epochs": 4, "patience": 10, "ensemble": 2,
                                     **options}, seed=3, resume_checkpoints=True)

    def run(resume=None, stop_after=None) -> list[dict]:
        results = []

        def report(metrics, files):
            folder = tmp_path / f"epoch{metrics['epoch']}"
            folder.mkdir(exist_ok=True)
            for name, write in files.items():
                write(str(folder / name))
            results.append({k: v for k, v in metrics.items() if not k.endswith("_s")})
            if metrics["epoch"] == stop_after:
                raise _Stop

        try:
            execute_trial(context, {}, report, resume=resume)
        except _Stop:
            pass
        return results

    whole = run()
    assert run(stop_after=2) == whole[:2]
    assert sorted(p.name for p in (tmp_path / "epoch2").iterdir()) == sorted(
        ["model.pt", "resume.pt", "test_predictions.npz", "transform.npz", "trial.json"])
    resumed = run(resume=load_resume(str(tmp_path / "epoch2")))
    assert resumed == whole[2:]
    assert (tmp_path / "epoch4" / RESUME_FILE).exists()
    best = next(r["epoch"] for r in whole if r["val_accuracy"] == whole[-1]["best_val"])
    import torch

    carried = torch.load(tmp_path / "epoch4" / "model.pt", weights_only=True)
    kept = torch.load(tmp_path / f"epoch{best}" / "model.pt", weights_only=True)
    assert all(carried[k].equal(kept[k]) for k in kept)  # epoch 4's checkpoint carries the best epoch's model
