"""`omicsweep reproduce`: a recorded trial re-run in-process matches exactly; a changed store is refused."""

from __future__ import annotations

import shutil

import pytest
from mlflow import MlflowClient

from omicsweep.benchmark.reproduce import TrialRecord, compare_metrics, version_changes
from omicsweep.reports.tracking import default_tracking_uri


def test_compare_metrics_is_exact_and_skips_timings():
    recorded = {"test_accuracy": 0.5, "val_loss": 1.0, "epoch": 3.0, "epoch_time_s": 1.0, "cpu_s": 2.0}
    compared, diffs = compare_metrics(recorded, {"test_accuracy": 0.5, "val_loss": 1.0 + 1e-15, "epoch": 3,
                                                 "epoch_time_s": 9.0, "cpu_s": 1.0})
    assert set(compared) == {"test_accuracy", "val_loss", "epoch"}
    assert [d.key for d in diffs] == ["val_loss"]
    _, diffs = compare_metrics(recorded, {"test_accuracy": 0.5, "val_loss": 1.0, "epoch": 3, "train_loss": 0.1})
    assert [d.key for d in diffs] == ["train_loss"]  # present on one side only


def test_version_changes_name_code_and_packages():
    record = TrialRecord(run_id="r", model="mlp", dataset="d", store_path=None, fingerprint="f", seed=0,
                         metric="accuracy", config={}, code_version="abc", packages={"torch": "0.0.1"})
    changes = {what: (before, now) for what, before, now in version_changes(record)}
    assert changes["code"][0] == "abc" and changes["torch"][0] == "0.0.1"


def _trials(out, model):
    client = MlflowClient(default_tracking_uri(out))
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)
    return [r for r in runs if r.data.tags.get("omicsweep.role") == "trial" and r.data.tags["omicsweep.model"] == model]


@pytest.mark.slow
def test_reproduce_matches_exactly_including_an_asha_stopped_trial(swept, cli):
    out, _ = swept
    mlp = sorted(_trials(out, "mlp"), key=lambda r: r.data.metrics["epochs_run"])  # ASHA-stopped first, if any
    for run in (mlp[0], _trials(out, "logreg")[0]):
        code, stdout, stderr = cli("reproduce", run.info.run_id, "--runs", out)
        assert code == 0, stdout + stderr
        assert "match exactly" in stdout and f"{int(run.data.metrics['epochs_run'])} epoch(s)" in stdout


@pytest.mark.slow
def test_reproduce_refuses_a_changed_store(swept, cli):
    from omicsweep.datasets import resolve_dataset

    out, _ = swept
    other = resolve_dataset("pbmc68k", seed=1)[1]  # same cells, another split: another fingerprint
    run = _trials(out, "majority")[0]
    code, stdout, stderr = cli("reproduce", run.info.run_id, "--runs", out, "--store", other)
    assert code == 2
    assert "store changed since run" in stderr and len(stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_reproduce_reports_differences_and_versions(swept, cli, tmp_path):
    out, _ = swept
    shutil.copy(out / "mlflow.db", tmp_path / "mlflow.db")  # tamper with a copy, not the shared store
    uri = default_tracking_uri(tmp_path)
    run = _trials(out, "majority")[0]
    MlflowClient(uri).log_metric(run.info.run_id, "test_accuracy", 0.123, step=99)
    code, stdout, _ = cli("reproduce", run.info.run_id, "--tracking-uri", uri)
    assert code == 1
    assert "NOT reproduced" in stdout and "test_accuracy" in stdout and "0.123" in stdout
    assert "versions are the ones recorded" in stdout or "recorded" in stdout


def test_reproduce_unknown_run_is_a_user_error(cli, tmp_path):
    from omicsweep.reports.tracking import _client

    _client(default_tracking_uri(tmp_path)).search_experiments()  # creates an empty store
    code, _, stderr = cli("reproduce", "0123456789abcdef", "--runs", tmp_path)
    assert code == 2 and "not found" in stderr


@pytest.mark.parametrize("missing", ["omicsweep.config", "omicsweep.training_setup"])
def test_a_trial_run_without_its_record_tags_is_a_user_error(cli, tmp_path, missing):
    """Every trial and re-run omicsweep tracks carries its config and training setup; a run without one was not
    written by this version's sweep, and `reproduce` says which tag is missing instead of guessing from params."""
    from omicsweep.reports.tracking import MlflowRecorder

    recorder = MlflowRecorder(default_tracking_uri(tmp_path))
    recorder.start_sweep(dataset="d", model="majority", params={"workers_per_trial": 1}, tags={})
    tags = {"omicsweep.seed": "0", "omicsweep.config": "{\"seed\": 0}", "omicsweep.training_setup": "single cpu=1"}
    run_id = recorder.start_trial("t1", params={"seed": 0}, tags={k: v for k, v in tags.items() if k != missing})
    recorder.end_trial("t1", status="FINISHED")
    code, stdout, stderr = cli("reproduce", run_id, "--runs", tmp_path)
    assert code == 2, stdout + stderr
    assert missing in stderr and len(stderr.strip().splitlines()) == 1
