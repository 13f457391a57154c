"""A finished sweep's seed re-runs: its best trial's configuration trained again with fresh seeds, each
recorded as a child run of role 'seed-rerun' (the training itself is benchmark/reruns.py)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from omicsweep.benchmark.reruns import rerun_seeds, run_seed_reruns
from omicsweep.benchmark.sweep_tracking import Recorder, TrackingCallback, config_json, logged_metrics
from omicsweep.schema import (
    CONFIG_TAG, EPOCHS_RUN, PREDICTIONS_FILE, RERUN_OF_TAG, RERUN_PREDICTIONS, RERUN_ROLE, SEARCH_METRIC, SEED_TAG,
    TRAINING_SETUP_TAG,
)


def best_trial(tracker: TrackingCallback) -> str | None:
    """The completed trial with the highest best validation value (selection never looks at test)."""
    scored = [(float(tracker.last[t][SEARCH_METRIC]), t) for t in tracker.completed
              if SEARCH_METRIC in tracker.last.get(t, {})]
    return max(scored)[1] if scored else None


def record_seed_reruns(
    recorder: Recorder, tracker: TrackingCallback, *, sweep_seed: int, n: int, done: set[int] = frozenset()
) -> float | None:
    """Re-run the best configuration with `n` fresh seeds of the sweep seed, each a child run of role 'seed-rerun'
    trained the way its trial was and tagged with the setup it actually had (seeds in `done` were recorded
    before a resumed sweep's driver died)."""
    best = best_trial(tracker)
    if n <= 0 or best is None:
        return None
    started = time.time()
    config = tracker.configs[best]
    seeds = [seed for seed in rerun_seeds(sweep_seed, n) if seed not in done]
    if not seeds:
        return None
    for outcome in run_seed_reruns(tracker.context, config, seeds):
        seed, results = outcome.seed, outcome.results
        run_key = f"{best}-seed{seed}"
        full = {**config, "seed": seed}
        recorder.start_trial(
            run_key, params=full, role=RERUN_ROLE,
            tags={SEED_TAG: str(seed), CONFIG_TAG: config_json(full), RERUN_OF_TAG: best,
                  TRAINING_SETUP_TAG: outcome.setup},
        )
        for result in results or []:
            recorder.log_result(run_key, logged_metrics(result), step=int(result.get("epoch", 0)))
        if results:
            epochs = int(results[-1].get("epoch", len(results)))
            recorder.log_result(run_key, {EPOCHS_RUN: epochs}, step=epochs)
        if outcome.predictions is not None:  # the leaderboard pairs the re-runs' test cells across models
            with tempfile.TemporaryDirectory(prefix="omicsweep-rerun-") as folder:
                (Path(folder) / PREDICTIONS_FILE).write_bytes(outcome.predictions)
                recorder.log_artifacts(run_key, folder, artifact_path=RERUN_PREDICTIONS)
        recorder.end_trial(run_key, status="FAILED" if outcome.error else "FINISHED", error=outcome.error)
    return time.time() - started
