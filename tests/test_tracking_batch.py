"""The driver's tracking off its event loop: QueuedRecorder (benchmark/recorder_queue.py) over a real MLflow store."""

from __future__ import annotations

import pytest

from omicsweep.benchmark.recorder_queue import QueuedRecorder, _coalesce
from omicsweep.reports.tracking import MlflowRecorder


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the module (creating one costs seconds); each test opens its own sweep in it."""
    return tmp_path_factory.mktemp("tracking-batch")


def _recorder(folder):
    recorder = MlflowRecorder(f"sqlite:///{folder / 'mlflow.db'}", artifact_root=folder / "art")
    recorder.start_sweep(dataset="d", model="mlp", params={"trials": 1}, tags={})
    return recorder


def test_log_results_writes_every_step_of_a_trial_in_one_call(store):
    recorder = _recorder(store)
    recorder.start_trial("t1", params={"lr": 0.1}, tags={})
    recorder.log_results("t1", [({"val_accuracy": 0.5, "epoch": 1}, 1), ({"val_accuracy": 0.7, "epoch": 2}, 2)])
    history = recorder.client.get_metric_history(recorder.trial_runs["t1"], "val_accuracy")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.5), (2, 0.7)]


def test_queued_recorder_writes_in_order_and_reads_see_every_write(store):
    queued = QueuedRecorder(_recorder(store))
    assert queued.start_trial("t1", params={"lr": 0.1}, tags={}) is None  # returns at once
    for step in (1, 2, 3):
        queued.log_result("t1", {"val_accuracy": step / 10}, step=step)
    queued.end_trial("t1", status="FINISHED")
    run_id = queued.trial_runs["t1"]  # an attribute read waits for the queue
    run = queued.client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["lr"] == "0.1"
    history = queued.client.get_metric_history(run_id, "val_accuracy")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.1), (2, 0.2), (3, 0.3)]


def test_a_failed_write_is_raised_by_the_next_call(store):
    queued = QueuedRecorder(_recorder(store))
    queued.log_result("never-started", {"val_accuracy": 0.1}, step=1)
    with pytest.raises(KeyError):
        queued.flush()
    queued.start_trial("t2", params={}, tags={})  # the recorder works on after the error was raised
    queued.flush()
    assert "t2" in queued.trial_runs


def test_consecutive_results_of_one_trial_coalesce_others_keep_their_order():
    batch = [("start_trial", ("a",), {}), ("log_result", ("a", {"x": 1}), {"step": 1}),
             ("log_result", ("a", {"x": 2}), {"step": 2}), ("log_result", ("b", {"x": 3}), {"step": 1}),
             ("end_trial", ("a",), {"status": "FINISHED"})]
    assert [(name, args) for name, args, _ in _coalesce(batch)] == [
        ("start_trial", ("a",)), ("log_results", ("a", [({"x": 1}, 1), ({"x": 2}, 2)])),
        ("log_results", ("b", [({"x": 3}, 1)])), ("end_trial", ("a",))]
