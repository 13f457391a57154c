"""Slot utilisation of a sweep: the fraction of trial-slot time that was busy, from the trial runs' start and end
times in the run folder's MLflow store.

    .venv/bin/python perf/sweep_utilisation.py RUN_FOLDER [RUN_FOLDER ...] [--slots N]

Each trial run (role `trial`; seed re-runs are not trials) holds one slot from its start to its end (both written
by the sweep's driver when Tune starts and ends the trial). With S slots (default: the sweeps' --concurrency,
recorded on each parent run) the busy fraction over a window [a, b] is
    integral of min(running(t), S) dt / (S * (b - a)).
Two windows are reported: `all`, from the first trial's start to the last trial's end; and `saturated`, from the
first start until the moment no more trials are left than slots (remaining = trials not yet ended <= S), the
part where a perfect scheduler keeps every slot busy. Several run folders (sweeps run one after another, e.g. one
command per dataset) are read as one timeline, the gaps between them idle. It is a ratio of times on one
machine, so it stays meaningful when other work shares the CPUs (trials get slower, idle gaps do not shrink).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omicsweep.schema import ROLE_TAG, SWEEP_ROLE, TRIAL_ROLE  # noqa: E402


def trial_intervals(folder: Path, *, running: bool = False) -> tuple[list[tuple[float, float]], set[int], int]:
    """(start, end) in seconds of every ended trial run in `folder`'s store (with `running`, a trial still running
    is busy until now), the parents' --concurrency values, and the trials the parents asked for."""
    import time

    from mlflow import MlflowClient

    from omicsweep.reports.tracking import default_tracking_uri

    client = MlflowClient(default_tracking_uri(folder))
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, max_results=50000) if experiments else []
    now = time.time()
    intervals = [(r.info.start_time / 1000, r.info.end_time / 1000 if r.info.end_time else now) for r in runs
                 if r.data.tags.get(ROLE_TAG) == TRIAL_ROLE and (r.info.end_time or running)]
    parents = [r for r in runs if r.data.tags.get(ROLE_TAG) == SWEEP_ROLE]
    slots = {int(float(r.data.params["concurrency"])) for r in parents if "concurrency" in r.data.params}
    planned = sum(int(float(r.data.params.get("trials", 0))) for r in parents)
    return intervals, slots, planned


def busy_fraction(intervals: list[tuple[float, float]], slots: int, *, saturated: bool = False,
                  planned: int = 0) -> tuple[float, float]:
    """(busy fraction, window seconds) of `slots` slots over the trials' timeline (see the module docstring);
    `planned`: the trials asked for, when more than the intervals (a sweep still running)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    start, total = events[0][0], max(len(intervals), planned)
    running = ended = 0
    busy, now = 0.0, start
    for time, step in events:
        busy += min(running, slots) * (time - now)
        now = time
        running += step
        ended += step < 0
        if saturated and total - ended <= slots:
            break
    window = now - start
    return (busy / (slots * window) if window > 0 else 0.0), window


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="run folders (one timeline)")
    parser.add_argument("--slots", type=int, help="trial slots (default: the sweeps' --concurrency)")
    parser.add_argument("--running", action="store_true", help="a sweep in flight: running trials are busy until now")
    args = parser.parse_args(argv)
    intervals, slots, planned = [], set(), 0
    for folder in args.folders:
        if not (folder / "mlflow.db").exists():
            print(f"{folder}: no mlflow.db; is this a run folder of `omicsweep sweep`?", file=sys.stderr)
            return 2
        found, concurrency, asked = trial_intervals(folder, running=args.running)
        intervals += found
        slots |= concurrency
        planned += asked
    if not intervals:
        print(f"{', '.join(map(str, args.folders))}: no ended trial runs", file=sys.stderr)
        return 2
    if args.slots is None and len(slots) != 1:
        print(f"the sweeps ran with --concurrency {sorted(slots)}; say which with --slots", file=sys.stderr)
        return 2
    n_slots = args.slots or slots.pop()
    overall, wall = busy_fraction(intervals, n_slots)
    saturated, window = busy_fraction(intervals, n_slots, saturated=True, planned=planned)
    print(f"trials {len(intervals)} of {planned}, slots {n_slots}: busy {overall:.1%} of {wall:.1f}s (first start to last end); "
          f"busy {saturated:.1%} of {window:.1f}s while more trials were left than slots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
