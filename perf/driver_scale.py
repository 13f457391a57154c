"""The sweep driver at cluster scale, simulated on one machine (issue 15, item 7): many ~1-s trials on a cluster
that declares more CPUs than exist, tracked by our own driver-side callback into SQLite or an MLflow server.

    .venv/bin/python perf/driver_scale.py                 # 1,000 trials on 16 declared CPUs, each mode
    .venv/bin/python perf/driver_scale.py --trials 96 --modes sqlite-old,sqlite-new   # ~2-4 min a mode here
    .venv/bin/python perf/driver_scale.py --quick         # 64 trials: a smoke run

The trial is a Ray Tune function trainable that "trains" --epochs epochs of --trial-s/--epochs seconds each
(time.sleep: the declared CPUs do not exist, the work must not need them) and reports every epoch the keys our
torch trials report (epoch, best_val, epoch_time_s, train_s, val_accuracy, ...). Around it everything is the
grid's own (benchmark/grid.py, one pair): `PairSearcher` over `OptunaSearch` with our seeded sampler (--searcher,
default tpe; its study in an SQLite Optuna storage opened by `open_storage`) behind a ConcurrencyLimiter at the
slot count, `PairScheduler` over FIFO, `PairCallback` over our `TrackingCallback` with `MlflowRecorder` (a parent
run, one child run per trial with its config as params and tags, per-epoch metrics, epochs_run, end status), and
reuse_actors. Each tracking mode runs in two variants, in the same run:
- old: the driver as it was before issue 15's driver work: synchronous MLflow writes from Tune's callbacks, and
  Tune's default CSV and TensorBoard loggers beside the JSON one;
- new: what `omicsweep sweep` does now: `QueuedRecorder` on one `TrackingWriter` thread (the driver only queues;
  a trial's queued-up results go as one log_batch) and `tune_loggers()` (JSON only).
Tracking modes: none (no tracking callback), sqlite (`sqlite:///.../mlflow.db`, as `omicsweep sweep` writes by
default), server (a local `mlflow server` child process on 127.0.0.1 with its own SQLite backend, as
--tracking-uri). Modes are named TRACKING-VARIANT (none-old, sqlite-new, ...).
Measured: wall from Tuner.fit's start to the last write in the store; sustained trials/s from the end of the
slots-th trial (the first wave's worker start-up done) to the last; ideal = trials x trial-s / slots; overhead =
wall / ideal - 1 (Ray's published figure: 10,000 one-second trials on 16 CPUs in 715 s against 625 s, 14%);
trials/s and results/s; the mean number of slots busy (sum of trial start-to-end times / wall); the worker
processes that ran trials (fewer = more actor reuse); CPU seconds of the driver process (all its threads) and of
its Ray processes (gcs, raylet, workers; with the mlflow server in server modes); and the driver's time inside
the recorder and the searcher (timing counters around the real objects), which says where the driver saturates.
The table replaces the "Driver at scale" section.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from omicsweep.schema import SEARCH_METRIC  # noqa: E402

SECTION = "## Driver at scale: ~1-s trials on a fake 16-CPU cluster (issue 15, item 7)"
RAY_PUBLISHED = (715.0, 625.0)  # Ray docs: 10,000 one-second trials on 16 CPUs, wall vs ideal


def sleepy_trial(config: dict, *, trial_s: float, epochs: int, warm_until: float = 0.0) -> None:
    """A trial that trains in `trial_s` seconds over `epochs` epochs and reports each; a trial that starts before
    `warm_until` (time.time()) first waits until then, so the first wave's actors all get started (--warmup-s)."""
    from ray import tune

    time.sleep(max(0.0, warm_until - time.time()))
    started, best = time.perf_counter(), 0.0
    for epoch in range(1, epochs + 1):
        time.sleep(trial_s / epochs)
        value = min(1.0, config["lr"] * 100 * epoch / epochs + config["dropout"] / 10)
        best = max(best, value)
        elapsed = time.perf_counter() - started
        tune.report({"epoch": epoch, SEARCH_METRIC: best, "val_accuracy": value, "val_loss": 1 - value,
                     "train_loss": 1 - value, "epoch_time_s": trial_s / epochs, "train_s": elapsed,
                     "trial_wall_s": elapsed, "cpu_s": 0.0, "peak_rss_mb": 0.0})


class Timed:
    """Seconds and calls spent in an object's methods, by name; every call goes to the real object."""

    def __init__(self, inner, seconds: dict[str, float], calls: dict[str, int]) -> None:
        self._inner, self._seconds, self._calls = inner, seconds, calls

    def __getattr__(self, name):
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                self._seconds[name] = self._seconds.get(name, 0.0) + time.perf_counter() - started
                self._calls[name] = self._calls.get(name, 0) + 1

        return timed


class Ends:
    """A Tune callback keeping every trial's end time (for the sustained rate, after the first wave)."""

    def __new__(cls):
        from ray.tune import Callback

        class _Ends(Callback):
            def __init__(self) -> None:
                self.times: list[float] = []
                self.pids: set[int] = set()  # the worker processes that ran trials: how often actors were reused

                self.started: dict[str, float] = {}
                self.busy = 0.0  # trial seconds from start to end, summed: the mean slots in use is busy / wall

            def on_trial_start(self, iteration, trials, trial, **info):
                self.started[trial.trial_id] = time.perf_counter()

            def on_trial_result(self, iteration, trials, trial, result, **info):
                self.pids.add(int(result.get("pid", 0)))

            def on_trial_complete(self, iteration, trials, trial, **info):
                self.times.append(time.perf_counter())
                self.busy += self.times[-1] - self.started.get(trial.trial_id, self.times[-1])

        return _Ends()


def cluster_cpu_s() -> float:
    """CPU seconds used so far by this driver's Ray processes (gcs, raylet, the trial workers: all descendants of
    this process that `ray.init(address="local")` started, with their reaped children), not the driver itself."""
    import psutil

    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            t = child.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:  # ended meanwhile
            pass
    return total


def start_server(folder: Path, port: int) -> subprocess.Popen:
    """`mlflow server` on 127.0.0.1:port with its own SQLite backend in `folder`; returns once it answers."""
    folder.mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{folder / 'server.db'}", "--default-artifact-root",
         str(folder / "artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=open(folder / "server.log", "w"))
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return server
        except OSError:
            if server.poll() is not None:
                raise RuntimeError(f"mlflow server exited; see {folder / 'server.log'}")
            time.sleep(1)
    server.terminate()
    raise RuntimeError("mlflow server did not answer in 180 s")


KEY = "fake/mlp"  # the one pair of the fake grid


def timed_searcher(args, folder: Path, seconds: dict[str, float], calls: dict[str, int]):
    """The grid's searcher for one pair (PairSearcher over OptunaSearch + our seeded sampler + SQLite study behind a
    ConcurrencyLimiter), the OptunaSearch's suggest and result hooks timed."""
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from omicsweep.benchmark.grid import PairSearcher
    from omicsweep.benchmark.searchers import build_sampler, open_storage, study_url

    class TimedOptunaSearch(OptunaSearch):
        pass

    for name in ("suggest", "on_trial_result", "on_trial_complete"):
        def hook(self, *a, _name=name, **k):
            started = time.perf_counter()
            try:
                return getattr(OptunaSearch, _name)(self, *a, **k)
            finally:
                seconds[_name] = seconds.get(_name, 0.0) + time.perf_counter() - started
                calls[_name] = calls.get(_name, 0) + 1
        setattr(TimedOptunaSearch, name, hook)
    searcher = TimedOptunaSearch(sampler=build_sampler(args.searcher, seed=0, concurrent=True), metric=SEARCH_METRIC,
                                 mode="max", storage=open_storage(study_url(folder)), study_name=KEY)
    limited = ConcurrencyLimiter(searcher, args.slots)
    limited.set_search_properties(SEARCH_METRIC, "max", SPACE())
    return PairSearcher({KEY: limited}, {KEY: args.trials}, concurrency=args.slots, metric=SEARCH_METRIC, mode="max")


def SPACE() -> dict:
    from ray import tune

    return {"lr": tune.loguniform(1e-4, 1e-2), "dropout": tune.uniform(0.0, 0.6),
            "width": tune.choice([64, 128, 256, 512])}


def tracking(mode: str, args, folder: Path, tracking_uri: str | None, timers: dict) -> tuple[list, object, object]:
    """The tracking callback of `mode` (none: nothing) with its recorder timed; (callbacks, recorder, writer)."""
    from omicsweep.benchmark.recorder_queue import QueuedRecorder, TrackingWriter
    from omicsweep.benchmark.sweep_tracking import NullProgress, TrackingCallback
    from omicsweep.benchmark.trial import TrialContext
    from omicsweep.reports.tracking import MlflowRecorder

    if not tracking_uri:
        return [], None, None
    recorder = MlflowRecorder(tracking_uri, artifact_root=folder / "mlartifacts")
    recorder.start_sweep(dataset=f"fake-{mode}", model="mlp", params={"trials": args.trials}, tags={})
    writer = None
    if mode.endswith("-new"):  # the driver only queues; the writer thread's time is counted apart
        writer = TrackingWriter()
        recorder = QueuedRecorder(Timed(recorder, timers["writer_s"], {}), writer)
    recorder = Timed(recorder, timers["rec_s"], timers["rec_n"])
    context = TrialContext(store_path="fake", fingerprint="fake", model="mlp", defaults={"max_epochs": args.epochs})
    return [TrackingCallback(recorder, context, NullProgress())], recorder, writer


def run_mode(mode: str, args, folder: Path, tracking_uri: str | None) -> dict:
    """One Tuner.fit of --trials sleepy trials with tracking `mode`; wall, counts and the driver's timers."""
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    from omicsweep.benchmark.grid import PairCallback, PairScheduler
    from omicsweep.benchmark.sweep_tracking import tune_loggers

    new = mode.endswith("-new")
    timers = {"rec_s": {}, "rec_n": {}, "writer_s": {}}
    search_s: dict[str, float] = {}
    search_n: dict[str, int] = {}
    ends = Ends()
    trackers, recorder, writer = tracking(mode, args, folder, tracking_uri, timers)
    callbacks: list = [ends, *([PairCallback({KEY: trackers[0]})] if trackers else []), *(tune_loggers() if new else [])]
    trainable = tune.with_parameters(sleepy_trial, trial_s=args.trial_s, epochs=args.epochs,
                                     warm_until=time.time() + args.warmup_s)
    tuner = tune.Tuner(
        tune.with_resources(trainable, lambda config: tune.PlacementGroupFactory([{"CPU": 1}])),  # as a pair's
        tune_config=tune.TuneConfig(metric=SEARCH_METRIC, mode="max", num_samples=args.trials, reuse_actors=True,
                                    search_alg=timed_searcher(args, folder, search_s, search_n),
                                    scheduler=PairScheduler({KEY: FIFOScheduler()})),
        run_config=tune.RunConfig(name=f"driver-{mode}", storage_path=str(folder / "ray"), callbacks=callbacks,
                                  verbose=0, checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
    )
    started, cpu, busy = time.perf_counter(), time.process_time(), cluster_cpu_s()
    results = tuner.fit()
    warm = ends.times[args.slots - 1] - started if args.warmup_s else 0.0  # the first wave's end
    if recorder is not None:
        recorder.end_sweep(status="FINISHED", summary={})  # a queued recorder's writes are all in the store now
        if writer is not None:
            writer.close()
    wall = time.perf_counter() - started
    cpu, busy = time.process_time() - cpu, cluster_cpu_s() - busy
    ended = sum(1 for r in results if r.error is None)
    first, times = ends.times[args.slots - 1], ends.times[args.slots - 1:]  # after the first wave's start-up
    rec_s = {k: v for k, v in timers["rec_s"].items() if k != "end_sweep"}
    running, all_trials = ends.busy / wall, ended
    if warm:  # the rest of the run, after the warm first wave: its trials and results only
        wall, ended = wall - warm, ended - args.slots
    return {"mode": mode, "wall": wall, "trials": ended, "results": ended * args.epochs,
            "sustained": (len(times) - 1) / (times[-1] - first) if times[-1] > first else float("nan"),
            "writer_s": sum(timers["writer_s"].values()), "driver_cpu_s": cpu, "cluster_cpu_s": busy,
            "worker_pids": len(ends.pids), "mean_running": running, "all_trials": all_trials,
            "recorder_s": sum(rec_s.values()), "recorder": rec_s, "recorder_calls": timers["rec_n"],
            "searcher_s": sum(search_s.values()), "searcher": search_s}


def table(args, rows: list[dict], command: str, loads: list[float]) -> list[str]:
    ideal = (args.trials - (args.slots if args.warmup_s else 0)) * args.trial_s / args.slots
    ray_overhead = RAY_PUBLISHED[0] / RAY_PUBLISHED[1] - 1
    lines = [
        SECTION, "",
        f"Command: `{command}`; {os.cpu_count()} real cores shared with other engineers' jobs (load average "
        f"{min(loads):.1f}-{max(loads):.1f} over the runs), {args.slots} CPUs declared to Ray "
        f"(`ray.init(num_cpus={args.slots})`), {args.trials} trials of {args.trial_s:g} s each "
        f"({args.epochs} epochs of {args.trial_s / args.epochs:g} s, time.sleep, one result per epoch), searcher "
        f"{args.searcher} (OptunaSearch, SQLite study) in the grid's PairSearcher, FIFO in PairScheduler, "
        f"reuse_actors. old = the driver before this change (synchronous MLflow writes, Tune's CSV and TensorBoard "
        f"loggers), new = now (QueuedRecorder on one writer thread, JSON logger only). Ideal wall = trials x trial s / CPUs = {ideal:.1f} s. Ray's published "
        f"figure: 10,000 one-second trials on 16 CPUs, 715 s against 625 s ideal ({ray_overhead:.0%} overhead); "
        f"goal: within 2x of that ({2 * ray_overhead:.0%}) with tracking on.",
        "",
        "| mode | trials | wall (s) | overhead vs ideal | trials/s | results/s | sustained trials/s (after the first "
        "wave) | mean slots busy | worker processes | driver CPU s, whole run (ms a trial) | Ray processes' CPU s | driver s in "
        "recorder (ms a trial) | writer thread s | driver s in searcher | goal |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        over, sustained_over = r["wall"] / ideal - 1, args.slots / args.trial_s / r["sustained"] - 1
        n = max(r["trials"], 1)
        lines.append(
            f"| {r['mode']} | {r['trials']} | {r['wall']:.1f} | {over:.0%} | {r['trials'] / r['wall']:.2f} | "
            f"{r['results'] / r['wall']:.2f} | {r['sustained']:.2f} | {r.get('mean_running', float('nan')):.1f} | "
            f"{r.get('worker_pids', '-')} | {r.get('driver_cpu_s', float('nan')):.1f} "
            f"({1000 * r.get('driver_cpu_s', float('nan')) / r.get('all_trials', n):.0f}) | {r.get('cluster_cpu_s', float('nan')):.1f} | "
            f"{r['recorder_s']:.1f} ({1000 * r['recorder_s'] / n:.0f}) | {r['writer_s']:.1f} | {r['searcher_s']:.1f} "
            f"| {'met' if over <= 2 * ray_overhead else 'not met'} (<= {2 * ray_overhead:.0%}) |")
    for r in rows:
        if r["recorder"]:
            lines.append("")
            lines.append(f"Recorder time by call, {r['mode']}: " + ", ".join(
                f"{k} {v:.1f} s / {r['recorder_calls'].get(k, 0)} calls" for k, v in sorted(r["recorder"].items()))
                + "; searcher: " + ", ".join(f"{k} {v:.1f} s" for k, v in sorted(r["searcher"].items())) + ".")
    return lines + (["", args.note] if args.note else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--slots", type=int, default=16, help="CPUs declared to Ray (more than exist)")
    parser.add_argument("--trial-s", type=float, default=1.0)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--warmup-s", type=float, default=0.0,
                        help="trials starting in the first S seconds wait until then (every slot's actor started); "
                             "wall, ideal and overhead then count from the first wave's end")
    parser.add_argument("--searcher", default="tpe")
    parser.add_argument("--modes", default="none-old,none-new,sqlite-old,sqlite-new,server-old,server-new")
    parser.add_argument("--port", type=int, default=5871)
    parser.add_argument("--quick", action="store_true", help="64 trials")
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--note", help="a paragraph appended to the section (the reading of the numbers)")
    parser.add_argument("--report-from", type=Path,
                        help="write the table from the per-mode result lines a run printed (a run stopped early)")
    args = parser.parse_args()
    shown = [a for i, a in enumerate(sys.argv[1:]) if a != "--note" and sys.argv[i:i + 1] != ["--note"]]
    command = " ".join(["python perf/driver_scale.py", *shown])
    if args.quick:
        args.trials = 64
    if args.report_from:
        import ast

        rows = [ast.literal_eval(line) for line in args.report_from.read_text().splitlines()
                if line.startswith("{'mode'")]
        from results_section import replace_section

        replace_section(args.results, SECTION, table(args, rows, command, [os.getloadavg()[0]]))
        return
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # no "View run at" line per trial
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

    from omicsweep.benchmark.sweep import quiet_logs

    quiet_logs()
    rows, loads = [], []
    # address="local": a fresh cluster of our own with the declared CPUs, never another process's running one
    ray.init(address="local", num_cpus=args.slots, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    with tempfile.TemporaryDirectory(prefix="driver-scale-") as tmp:
        for mode in args.modes.split(","):
            folder = Path(tmp) / mode
            folder.mkdir()
            server = start_server(folder / "server", args.port) if mode.startswith("server") else None
            uri = {"none": None, "sqlite": f"sqlite:///{folder / 'mlflow.db'}",
                   "server": f"http://127.0.0.1:{args.port}"}[mode.split("-")[0]]
            try:
                rows.append(run_mode(mode, args, folder, uri))
            finally:
                if server is not None:
                    server.terminate()
                    server.wait(30)
            loads.append(os.getloadavg()[0])
            print(rows[-1], flush=True)
    ray.shutdown()
    lines = table(args, rows, command, loads)
    from results_section import replace_section

    replace_section(args.results, SECTION, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
