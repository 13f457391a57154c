"""A trial's peak RSS is its own (benchmark/trial.py `with_resources`): a reused Ray worker's earlier, larger trial
does not show as the next trial's peak, and memory the trial itself touched and freed still does."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from omicsweep.benchmark.trial import with_resources

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak reset via /proc is Linux only")
BLOCK_MB = 300


def _touch_and_free(mb: int) -> None:
    block = np.ones(mb * 2**20 // 8)  # above glibc's mmap threshold: given back to the system when freed
    del block


def test_a_reused_workers_earlier_peak_is_not_the_next_trials():
    _touch_and_free(BLOCK_MB)  # "the previous trial" in this process
    got = []
    with_resources(lambda metrics, files=None: got.append(metrics))({"epoch": 1})
    current_mb = int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
    assert got[0]["peak_rss_mb"] < current_mb + BLOCK_MB / 2


def test_the_trials_own_freed_peak_counts():
    got = []
    report = with_resources(lambda metrics, files=None: got.append(metrics))
    report({"epoch": 1})
    _touch_and_free(BLOCK_MB)
    report({"epoch": 2})
    assert got[1]["peak_rss_mb"] >= got[0]["peak_rss_mb"] + BLOCK_MB * 0.9
