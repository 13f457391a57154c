"""Tracking under load: 8 trials logging at once to a real `mlflow server` lose nothing.

Two load shapes: a real sweep with 8 concurrent trials (every result Ray received must be in MLflow), and 8
threads each driving its own recorder at once (every metric value, step and artifact must arrive). Backends:
SQLite, and PostgreSQL (Debian's, started and stopped here on 127.0.0.1; skipped when not installed).
"""

from __future__ import annotations

import glob
import json
import math
from concurrent.futures import ThreadPoolExecutor
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

pytestmark = pytest.mark.slow

N_TRIALS, N_EPOCHS = 8, 12
METRICS = ("train_loss", "val_loss", "val_accuracy", "val_macro_f1", "best_val", "test_accuracy", "test_macro_f1",
           "epoch_time_s", "cpu_s", "peak_rss_mb")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(url)


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server we started (its own process group: the gunicorn/uvicorn worker goes with it)."""
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


def start_mlflow_server(backend_uri: str, folder: Path) -> tuple[str, subprocess.Popen]:
    port = _free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    log = open(folder / "mlflow-server.log", "w")
    proc = subprocess.Popen(
        [str(mlflow_bin), "server", "--backend-store-uri", backend_uri, "--artifacts-destination",
         str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
    )
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", proc)
    except Exception:
        _stop(proc)
        raise RuntimeError((folder / "mlflow-server.log").read_text()[-2000:]) from None
    return f"http://127.0.0.1:{port}", proc


# ---- PostgreSQL (Debian's), started and stopped by the test -----------------------------------------------------


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _as_postgres(args: list[str]) -> None:
    """initdb refuses root: run as Debian's postgres user when we are root."""
    if os.geteuid() == 0:
        args = ["runuser", "-u", "postgres", "--", *args]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stdout[-1000:]} {done.stderr[-1000:]}")


@pytest.fixture(scope="module")
def postgres():
    import tempfile

    pg = _pg_bin()
    if pg is None:
        pytest.skip("Debian's postgresql is not installed (apt-get install -y postgresql)")
    pytest.importorskip("psycopg2", reason="psycopg2 (pip install psycopg2-binary) is needed for a PostgreSQL store")
    # outside pytest's root-only tmp tree: the postgres user must reach its data folder
    folder = Path(tempfile.mkdtemp(prefix="omicsweep-pg-"))
    folder.chmod(0o755)
    data = folder / "data"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(data, "postgres")
    port = _free_port()
    _as_postgres([str(pg / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"])
    _as_postgres([str(pg / "pg_ctl"), "-D", str(data), "-l", str(data / "server.log"), "-w", "-t", "60", "-o",
                  f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off", "start"])
    try:
        _as_postgres([str(pg / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "mlflow"])
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow"
    finally:
        _as_postgres([str(pg / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"])
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow-sqlite")
    uri, proc = start_mlflow_server(f"sqlite:///{folder / 'mlflow.db'}", folder)
    yield uri
    _stop(proc)


@pytest.fixture(scope="module")
def postgres_server(postgres, tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow-pg")
    uri, proc = start_mlflow_server(postgres, folder)
    yield uri
    _stop(proc)


# ---- load: 8 threads driving the recorder at once, each with its own client --------------------------------------------------------------


def _value(trial: int, epoch: int, k: int) -> float:
    return round(math.sin(trial * 7.1 + epoch * 0.37 + k), 12)


def _log_trial(args) -> str:
    """One trial with its own recorder: start, N_EPOCHS results, a checkpoint artifact folder, end."""
    uri, parent_id, experiment_id, trial, folder = args
    from omicsweep.reports.tracking import MlflowRecorder

    recorder = MlflowRecorder(uri)
    recorder.parent_id, recorder.experiment_id = parent_id, experiment_id
    recorder._common_tags = {"omicsweep.dataset": "load", "omicsweep.model": "load"}
    tid = f"load_{trial}"
    recorder.start_trial(tid, params={"trial": trial, "lr": 10.0 ** -trial}, tags={"omicsweep.seed": "0"})
    for epoch in range(1, N_EPOCHS + 1):
        recorder.log_result(tid, {m: _value(trial, epoch, k) for k, m in enumerate(METRICS)}, step=epoch)
    checkpoint = Path(folder) / tid
    checkpoint.mkdir()
    (checkpoint / "trial.json").write_text(json.dumps({"trial": trial}))
    recorder.log_artifacts(tid, str(checkpoint), artifact_path="checkpoint")
    recorder.end_trial(tid, status="FINISHED")
    return recorder.trial_runs[tid]


def _concurrent_recorders_lose_nothing(uri: str, tmp_path: Path) -> None:
    from omicsweep.reports.tracking import MlflowRecorder

    parent = MlflowRecorder(uri)
    parent.start_sweep(dataset="load", model="load", params={"trials": N_TRIALS}, tags={})
    jobs = [(uri, parent.parent_id, parent.experiment_id, t, str(tmp_path)) for t in range(N_TRIALS)]
    with ThreadPoolExecutor(N_TRIALS) as pool:  # 8 clients at once; the server sees concurrent requests
        run_ids = list(pool.map(_log_trial, jobs))
    parent.end_sweep(status="FINISHED", summary={"trials_finished": N_TRIALS})
    client = MlflowClient(uri)
    children = client.search_runs([parent.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.parent_id}'")
    assert sorted(r.info.run_id for r in children) == sorted(run_ids)
    for trial, run_id in enumerate(run_ids):
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.params["trial"] == str(trial)
        for k, metric in enumerate(METRICS):
            history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, metric))
            assert history == [(e, _value(trial, e, k)) for e in range(1, N_EPOCHS + 1)], (trial, metric)
        assert [a.path for a in client.list_artifacts(run_id, "checkpoint")] == ["checkpoint/trial.json"]


def test_sqlite_server_concurrent_recorders(sqlite_server, tmp_path):
    _concurrent_recorders_lose_nothing(sqlite_server, tmp_path)


def test_postgres_server_concurrent_recorders(postgres_server, tmp_path):
    _concurrent_recorders_lose_nothing(postgres_server, tmp_path)


# ---- load: a real sweep, 8 trials at once ------------------------------------------------------------------------


SMALL_MLP = """
defaults: {n_layers: 1, width: 32, lr: 1.0e-3, weight_decay: 0.0, dropout: 0.1, batch_size: 64, max_epochs: 3, patience: 5}
space: {lr: {loguniform: [1.0e-4, 1.0e-1]}, dropout: {uniform: [0.0, 0.5]}}
"""


def _sweep_loses_nothing(uri: str, ray_folder: Path, cli) -> None:
    ray_folder.mkdir(parents=True)
    space = ray_folder / "small_mlp.yaml"
    space.write_text(SMALL_MLP)
    code, stdout, stderr = cli(
        "sweep", "--model", "mlp", "--space", space, "--trials", str(N_TRIALS), "--concurrency", str(N_TRIALS),
        "--cpus-per-trial", "0.25", "--reruns", "0", "--tracking-uri", uri, "--runs", ray_folder,
    )
    assert code == 0, stdout + stderr
    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, filter_string="tags.`omicsweep.role` = 'trial'", max_results=1000)
    # the server is shared with the recorder load test, so look only at this sweep's trials (by Ray trial id)
    results = sorted(ray_folder.glob("ray/*/*/result.json"))
    ours = {json.loads(p.read_text().splitlines()[0])["trial_id"] for p in results}
    by_trial = {r.data.tags["omicsweep.trial_id"]: r for r in runs if r.data.tags.get("omicsweep.trial_id") in ours}
    copies = [r.data.tags.get("omicsweep.trial_id") for r in runs if r.data.tags.get("omicsweep.trial_id") in ours]
    assert len(results) == N_TRIALS == len(by_trial) == len(copies)  # every trial once, no duplicate runs
    for path in results:  # every result Ray received is in MLflow, value for value
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        run = by_trial[lines[0]["trial_id"]]
        assert run.info.status == "FINISHED"
        for key in ("val_accuracy", "train_loss", "val_loss", "best_val", "cpu_s"):
            history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
            assert history == [(r["training_iteration"], r[key]) for r in lines], (run.info.run_id, key)
        assert any(a.path == "checkpoint/model.pt" for a in client.list_artifacts(run.info.run_id, "checkpoint"))


@pytest.mark.skipif(
    not (os.environ.get("CI") or os.environ.get("OMICSWEEP_LOAD_TESTS")),
    reason="8 Ray workers starting at once take ~2 minutes on 2 cores: runs in CI (CI=true) or with OMICSWEEP_LOAD_TESTS=1",
)
def test_sweep_of_8_concurrent_trials_to_sqlite_server(sqlite_server, ray_session, pbmc_store, cli, tmp_path):
    _sweep_loses_nothing(sqlite_server, tmp_path / "runs", cli)
