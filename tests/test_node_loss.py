"""Losing a worker node mid-sweep (issue 15 item 4), as a spot reclaim would: the second loopback Ray node's raylet
and everything it started are SIGKILLed while it runs a trial; with --max-failures the sweep reschedules that
trial on the remaining node and finishes with the requested trials, each tracked in exactly one MLflow run.

The two-node cluster is test_multinode's (`ray start` of a head and a `node_b` node, 1 CPU each, private temp
dir, ended by that folder; never `ray stop`), so two concurrent trials run one on each node. The cluster's GCS
is told to health-check its nodes every 0.5 s so the dead node is noticed in about a second, not 15.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from ray_procs import cluster_processes, cmdline, ppid, ray_env
from test_multinode import two_node_cluster  # noqa: F401 - the fixture, used through `lost_node_cluster`

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads /proc to find its own Ray processes"),
]

BIN = Path(sys.executable).parent
FAST_HEALTH_CHECKS = {"RAY_health_check_initial_delay_ms": "0", "RAY_health_check_period_ms": "500",
                      "RAY_health_check_timeout_ms": "500", "RAY_health_check_failure_threshold": "2"}


@pytest.fixture
def lost_node_cluster(monkeypatch, request):
    for name, value in FAST_HEALTH_CHECKS.items():
        monkeypatch.setenv(name, value)  # read by the cluster's `ray start` (ray_env copies the environment)
    return request.getfixturevalue("two_node_cluster")


def _node_b_processes(temp_dir: str) -> list[int]:
    """node_b's raylet and its descendants (its workers and agents)."""
    procs = cluster_processes(temp_dir)
    raylets = [p for p in procs if (args := cmdline(p)) and args[0].endswith("/raylet")
               and any(a.startswith("--static_resource_list=") and "node_b," in a for a in args)]
    assert len(raylets) == 1, f"node_b's raylet among {procs}: {raylets}"
    found = set(raylets)
    grew = True
    while grew:
        children = {p for p in procs if ppid(p) in found} - found
        found |= children
        grew = bool(children)
    return sorted(found)


def _trial_runs(db: Path) -> list[tuple[str, str]]:
    """(trial id, status) of every trial run in the run folder's MLflow store (none while it is being created)."""
    if not db.exists():
        return []
    try:
        with sqlite3.connect(db, timeout=1) as conn:
            return conn.execute(
                "select t.value, r.status from runs r join tags t on r.run_uuid = t.run_uuid "
                "join tags role on r.run_uuid = role.run_uuid where t.key = 'omicsweep.trial_id' "
                "and role.key = 'omicsweep.role' and role.value = 'trial' and r.lifecycle_stage = 'active'"
            ).fetchall()
    except sqlite3.Error:
        return []


def _retries(db: Path) -> dict[str, float]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "select t.value, max(m.value) from metrics m join tags t on m.run_uuid = t.run_uuid "
            "where m.key = 'retries' and t.key = 'omicsweep.trial_id' group by t.value").fetchall()
    return dict(rows)


@pytest.mark.timeout(300)
def test_losing_a_worker_node_mid_sweep_reschedules_its_trial(lost_node_cluster, tmp_path):
    cluster, out = lost_node_cluster, tmp_path / "runs"
    started = time.time()
    # the driver finds the cluster as under `ray job submit` (RAY_ADDRESS, no --address: docs/sweep.md's way)
    driver = subprocess.Popen(
        [str(BIN / "omicsweep"), "sweep", "--dataset", "pbmc68k", "--model", "mlp",
         "--trials", "4", "--concurrency", "2", "--max-epochs", "3", "--scheduler", "none", "--reruns", "0",
         "--max-failures", "2", "--runs", str(out)],
        env=ray_env(OMICSWEEP_CACHE=str(tmp_path / "cache"), RAY_ADDRESS=cluster["address"]), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )
    try:
        db = out / "mlflow.db"
        deadline = time.time() + 120
        while time.time() < deadline and driver.poll() is None and \
                sum(status == "RUNNING" for _, status in _trial_runs(db)) < 2:
            time.sleep(0.1)
        assert driver.poll() is None, f"the sweep ended before the node was lost: {driver.communicate()}"
        assert sum(status == "RUNNING" for _, status in _trial_runs(db)) == 2, "two trials never ran at once"
        killed_at = time.time()
        for pid in _node_b_processes(cluster["temp_dir"]):  # one trial runs there: 1 CPU per node, 2 running
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        stdout, stderr = driver.communicate(timeout=180)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    wall = time.time() - started
    assert driver.returncode == 0, f"exit {driver.returncode}\n{stdout[-3000:]}\n{stderr[-3000:]}"
    runs = _trial_runs(db)
    per_trial = Counter(trial_id for trial_id, _ in runs)
    assert len(per_trial) == 4 and set(per_trial.values()) == {1}, per_trial  # 4 trials, no duplicate runs
    assert all(status == "FINISHED" for _, status in runs), runs
    retried = _retries(db)
    assert retried and all(n >= 1 for n in retried.values()), retried  # the lost node's trial, run again
    print(f"sweep {wall:.1f}s (node lost at {killed_at - started:.1f}s); retried: {retried}")
