"""A sweep on a two-node Ray cluster: trials must run on both nodes.

Two raylets are started on this machine with `ray start` (a head and a second node carrying a custom
`node_b` resource), each with one CPU, so two concurrent trials can only fit by using both nodes. The sweep
runs as a subprocess (`omicsweep sweep --address HEAD`), exactly as a user would submit it to a cluster.

Both nodes share this machine's IP and hostname (Ray also rewrites 127.0.0.1 to the routable address), so
`node_ip` and `hostname` in a trial's result.json cannot tell them apart. `pid` can: every Ray worker writes
`python-core-worker-<worker id>_<pid>.log`, whose first lines name the `node_id` of the raylet that started it,
and each raylet's command line carries its own `--node_id` (and `node_b` in its resources for the second node).

The test talks to its cluster only through subprocesses and never runs `ray stop`: that command kills every
Ray process on the machine (it matches process names), which would take down the suite's embedded session
(conftest `ray_session`) and other users' Ray. Teardown instead ends exactly the processes whose command line
names this cluster's private --temp-dir, and their descendants.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
from ray_procs import cluster_processes, cmdline, end_cluster, ray_env

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads /proc to find its own Ray processes"),
]

BIN = Path(sys.executable).parent  # the venv's bin: ray and omicsweep console scripts
CORE_WORKER_LOG = re.compile(r"python-core-worker-[0-9a-f]+_(\d+)\.log$")
NODE_ID = re.compile(r"\bnode_id=([0-9a-f]{56})\b")


def _free_ports(n: int) -> list[int]:
    """n distinct free TCP ports (held open together so they differ)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def _raylets(temp_dir: str) -> dict[str, str]:
    """node id -> 'head' or 'node_b', from the command lines of this cluster's raylets."""
    nodes = {}
    for pid in cluster_processes(temp_dir):
        args = cmdline(pid)
        if not args or not args[0].endswith("/raylet"):
            continue
        node_id = next(a.split("=", 1)[1] for a in args if a.startswith("--node_id="))
        resources = next((a for a in args if a.startswith("--static_resource_list=")), "")
        nodes[node_id] = "node_b" if "node_b," in resources else "head" if "--head" in args else "other"
    return nodes


def _worker_nodes(temp_dir: str) -> dict[int, set[str]]:
    """pid -> node ids of the Ray workers that ran with that pid, from their core-worker logs."""
    found: dict[int, set[str]] = {}
    for log in Path(temp_dir).glob("session_*/logs/python-core-worker-*.log"):
        match = CORE_WORKER_LOG.search(log.name)
        if not match:
            continue
        with log.open(errors="replace") as f:
            head = "".join(f.readline() for _ in range(40))
        node = NODE_ID.search(head)
        if node:
            found.setdefault(int(match.group(1)), set()).add(node.group(1))
    return found


def _ray_start(args: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, f"{' '.join(args)}: exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"


@pytest.fixture
def two_node_cluster():
    """A head (1 CPU) and a second node (1 CPU, resource node_b) on loopback, private temp dir and ports."""
    # a short path: Ray's unix sockets live under it and socket paths are limited to ~107 characters
    temp_dir = tempfile.mkdtemp(prefix="osmn", dir="/tmp")
    port, dashboard, agent_head, agent_b = _free_ports(4)
    env = ray_env()
    ray = str(BIN / "ray")
    small_store = str(100 * 1024 * 1024)
    try:
        _ray_start(
            [ray, "start", "--head", "--port", str(port), "--num-cpus", "1", "--node-ip-address", "127.0.0.1",
             "--include-dashboard=false", "--dashboard-port", str(dashboard),
             "--dashboard-agent-listen-port", str(agent_head), "--object-store-memory", small_store,
             "--temp-dir", temp_dir, "--disable-usage-stats"],
            env,
        )
        _ray_start(
            [ray, "start", "--address", f"127.0.0.1:{port}", "--num-cpus", "1", "--resources", '{"node_b": 1}',
             "--node-ip-address", "127.0.0.1", "--dashboard-agent-listen-port", str(agent_b),
             "--object-store-memory", small_store, "--disable-usage-stats"],
            env,
        )
        nodes = _raylets(temp_dir)
        assert sorted(nodes.values()) == ["head", "node_b"], nodes
        yield {"address": f"127.0.0.1:{port}", "temp_dir": temp_dir, "nodes": nodes}
    finally:
        end_cluster(temp_dir)
        leftover = cluster_processes(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not leftover, f"Ray processes of {temp_dir} still running: {leftover}"


@pytest.mark.timeout(300)
def test_sweep_spreads_trials_over_two_nodes(two_node_cluster, tmp_path):
    out = tmp_path / "runs"
    started = time.time()
    result = subprocess.run(
        [str(BIN / "omicsweep"), "sweep", "--address", two_node_cluster["address"], "--dataset", "pbmc68k",
         "--model", "mlp", "--trials", "4", "--concurrency", "2", "--max-epochs", "2",
         "--reruns", "0",  # no seed re-runs: the trials are what this test is about, and it keeps it short
         "--runs", str(out)],
        env=ray_env(OMICSWEEP_CACHE=str(tmp_path / "cache")), capture_output=True, text=True, timeout=240,
    )
    wall = time.time() - started
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert (out / "leaderboard.csv").exists() and (out / "leaderboard.parquet").exists()

    results = sorted(out.glob("ray/*/*/result.json"))
    assert len(results) == 4, [str(r) for r in results]
    trials = []
    for path in results:
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        assert lines, f"{path} is empty"
        trials.append({k: lines[-1][k] for k in ("trial_id", "pid", "node_ip", "hostname")})

    # node_ip and hostname are the same for both nodes here; the pid's core-worker log names its node
    workers = _worker_nodes(two_node_cluster["temp_dir"])
    nodes = two_node_cluster["nodes"]
    placed = {}
    for trial in trials:
        ids = workers.get(int(trial["pid"]), set())
        assert len(ids) == 1, f"trial {trial}: core-worker logs give node ids {ids}"
        (node_id,) = ids
        assert node_id in nodes, f"trial {trial} ran on node {node_id}, not one of this cluster's {nodes}"
        placed[trial["trial_id"]] = nodes[node_id]
    assert set(placed.values()) == {"head", "node_b"}, placed
    print(f"sweep {wall:.1f}s; trials by node: {placed}; pids: {sorted({t['pid'] for t in trials})}; "
          f"node_ip {sorted({t['node_ip'] for t in trials})}, hostname {sorted({t['hostname'] for t in trials})}")


def test_ray_client_address_is_refused_pointing_at_ray_job_submit(cli, tmp_path):
    """Ray Client (ray://) is refused before anything is written: the driver must run on the cluster."""
    from conftest import assert_one_line_error

    out = tmp_path / "run"
    code, stdout, stderr = cli("sweep", "--address", "ray://127.0.0.1:10001", "--trials", "1", "--runs", out)
    assert_one_line_error(code, stdout, stderr, "--address ray://127.0.0.1:10001", "Ray Client", "ray job submit")
    assert not out.exists()
