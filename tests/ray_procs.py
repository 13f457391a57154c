"""Find and end the processes of a private Ray cluster (or of a killed driver's embedded Ray) by temp dir.

Never `ray stop`: it kills every Ray process on the machine (it matches process names), which would take down
the suite's embedded session (conftest `ray_session`) and other users' Ray.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def ray_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # never point at another session
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", MLFLOW_DISABLE_TELEMETRY="true",
               TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S="0", **extra)
    return env


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def cluster_processes(temp_dir: str) -> list[int]:
    """Processes whose command line names temp_dir (gcs, raylets, agents, monitors), plus their descendants."""
    me = os.getpid()
    roots = {p for p in pids() if p != me and any(temp_dir in arg for arg in cmdline(p))}
    parents = {p: ppid(p) for p in pids()}
    found = set(roots)
    grew = True
    while grew:
        children = {p for p, parent in parents.items() if parent in found} - found
        found |= children
        grew = bool(children)
    return sorted(found)


def end_cluster(temp_dir: str) -> None:
    """SIGTERM this cluster's processes, then SIGKILL whatever is left after a few seconds."""
    for sig, wait in ((signal.SIGTERM, 8.0), (signal.SIGKILL, 3.0)):
        pids = cluster_processes(temp_dir)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + wait
        while time.time() < deadline and cluster_processes(temp_dir):
            time.sleep(0.2)
        if not cluster_processes(temp_dir):
            return
