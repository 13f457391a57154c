"""The driver's tracking off its event loop: QueuedRecorder (benchmark/recorder_queue.py) over a real MLflow store."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from mlflow import MlflowClient

from omicsweep.benchmark.recorder_queue import QueuedRecorder, TrackingWriter, _coalesce
from omicsweep.reports.tracking import MlflowRecorder, default_tracking_uri
from omicsweep.schema import (
    CHECKPOINT_ARTIFACTS, CLASSES_FILE, CONFIG_TAG, GENES_FILE, PREDICTIONS_FILE, RERUN_PREDICTIONS, ROLE_TAG,
)


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
    a, b = object(), object()  # two recorders sharing one writer: runs never merge across them
    batch = [(a, "start_trial", ("t",), {}), (a, "log_result", ("t", {"x": 1}), {"step": 1}),
             (a, "log_result", ("t", {"x": 2}), {"step": 2}), (b, "log_result", ("t", {"x": 3}), {"step": 1}),
             (a, "log_result", ("u", {"x": 4}), {"step": 1}), (a, "end_trial", ("t",), {"status": "FINISHED"})]
    assert [(inner, name, args) for inner, name, args, _ in _coalesce(batch)] == [
        (a, "start_trial", ("t",)), (a, "log_results", ("t", [({"x": 1}, 1), ({"x": 2}, 2)])),
        (b, "log_results", ("t", [({"x": 3}, 1)])), (a, "log_results", ("u", [({"x": 4}, 1)])),
        (a, "end_trial", ("t",))]


def test_artifacts_of_a_folder_deleted_right_after_the_call_are_logged(store, tmp_path):
    # a seed re-run's predictions live in a TemporaryDirectory that is gone as soon as log_artifacts returns
    writer = TrackingWriter()
    first, second = QueuedRecorder(_recorder(store), writer), QueuedRecorder(_recorder(store), writer)
    first.start_trial("t1", params={}, tags={})
    second.start_trial("t1", params={}, tags={})  # the same trial id in another sweep: its own run
    with tempfile.TemporaryDirectory(dir=tmp_path) as folder:
        (Path(folder) / "predictions.npz").write_bytes(b"cells")
        first.log_artifacts("t1", folder, artifact_path="rerun")
    second.log_result("t1", {"val_accuracy": 0.5}, step=1)
    writer.close()  # flushes, then ends the thread
    artifacts = first._inner.client.list_artifacts(first._inner.trial_runs["t1"], "rerun")
    assert [a.path for a in artifacts] == ["rerun/predictions.npz"]
    assert second._inner.client.get_run(second._inner.trial_runs["t1"]).data.metrics == {"val_accuracy": 0.5}
    assert not writer._thread.is_alive()
    assert not list(Path(tempfile.gettempdir()).glob("omicsweep-artifacts-*"))  # the staged copy is removed


def _record(uri: str) -> list[tuple]:
    """Every run of a store as what the recorder wrote: role, status, configuration, params, the metric histories
    of everything but timings, and the artifact files (not Ray's trial ids, paths or times, which differ)."""
    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    rows = []
    for run in client.search_runs(experiments, max_results=1000):
        run_id, tags = run.info.run_id, run.data.tags
        histories = {key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
                     for key in run.data.metrics if not key.endswith(TIMINGS) and key not in VARYING_METRICS}
        files = sorted(a.path for folder in ("", CHECKPOINT_ARTIFACTS, RERUN_PREDICTIONS)
                       for a in client.list_artifacts(run_id, folder or None) if not a.is_dir)
        rows.append((tags.get(ROLE_TAG), run.info.status, tags.get(CONFIG_TAG),
                     {k: v for k, v in run.data.params.items() if k not in VARYING_PARAMS},
                     histories, files))
    return sorted(rows, key=repr)


TIMINGS = ("_s", "_time", "_mb")  # seconds, peak memory: differ from run to run
VARYING_METRICS = ("time_total_s",)
VARYING_PARAMS = ("ray_experiment", "space_file", "searcher.storage")


class FanOut:
    """Every call of the sweep's driver to two recorders, in the same order: the first answers."""

    def __init__(self, *recorders) -> None:
        self.recorders = recorders

    def __getattr__(self, name: str):
        def both(*args, **kwargs):
            answers = [getattr(r, name)(*args, **kwargs) for r in self.recorders]
            return answers[0]

        return both if callable(getattr(self.recorders[0], name)) else getattr(self.recorders[0], name)


def test_a_queued_recorder_records_exactly_what_a_synchronous_one_does_in_a_real_sweep(ray_session, pbmc_store,
                                                                                      tmp_path):
    # one real sweep (its trial's checkpoint, the seed re-run's predictions in a temporary folder) drives a
    # synchronous recorder and a queued one with the same calls; the queued store must end up the same
    from omicsweep.benchmark.grid import run_grid
    from omicsweep.benchmark.plan import SweepOptions, build_plan
    from omicsweep.benchmark.sweep_tracking import NullProgress

    runs = tmp_path / "run"
    plan = build_plan(SweepOptions(dataset=str(pbmc_store), model="majority", reruns=1, runs=runs))
    runs.mkdir(parents=True)
    sync_uri, queued_uri = default_tracking_uri(runs), default_tracking_uri(tmp_path)
    writer = TrackingWriter()
    queued = QueuedRecorder(MlflowRecorder(queued_uri, artifact_root=tmp_path / "queued-art"), writer)
    recorder = FanOut(MlflowRecorder(sync_uri, artifact_root=runs / "mlartifacts"), queued)
    run_grid(plan.requests, [recorder], [NullProgress()], queued=False)
    writer.close()
    records = _record(queued_uri)
    assert sorted(r[0] for r in records) == ["seed-rerun", "sweep", "trial"]  # majority: one trial, one re-run
    files = {r[0]: r[-1] for r in records}
    assert files["seed-rerun"] == [f"{RERUN_PREDICTIONS}/{PREDICTIONS_FILE}"]
    assert {f"{CHECKPOINT_ARTIFACTS}/{GENES_FILE}", f"{CHECKPOINT_ARTIFACTS}/{CLASSES_FILE}"} < set(files["trial"])
    assert records == _record(sync_uri)
    trial_folders = [p for p in (runs / "ray").glob("*/*") if p.is_dir()]  # Tune's loggers: JSON only
    assert trial_folders and all((p / "result.json").exists() for p in trial_folders)
    assert not list((runs / "ray").glob("*/*/progress.csv")) + list((runs / "ray").glob("*/*/events.out.*"))
