"""HPO efficiency (issue 15, item 6): best validation value so far against epochs and trial time consumed, for
random search (study 000's method), TPE, TPE+ASHA, GP and QMC on mlp's space, through our real sweep engine.

    .venv/bin/python perf/hpo_efficiency.py --pbmc3k /tmp/pbmc3k.zarr            # 32 trials, 3 seeds, 8 epochs
    .venv/bin/python perf/hpo_efficiency.py --pbmc3k /tmp/pbmc3k.zarr --quick    # 4 trials, 1 seed, 2 epochs

pbmc3k.zarr: `omicsweep ingest ../shared/data/pbmc3k_labelled/pbmc3k_labelled.h5ad --label-col cell_type
--preprocess normalize_log1p,hvg:1000 --out pbmc3k.zarr`. Each (method, seed) is one `omicsweep sweep` over both
datasets at once (one Tuner, a searcher and a scheduler per dataset, see docs/sweep.md), so Ray starts once per
(method, seed). Read back from each run folder's MLflow store, per dataset and in trial end order:
- epochs consumed: the sum of the ended trials' epochs (ASHA's stopped trials count the epochs they ran);
- trial seconds consumed: the sum of the ended trials' (run end - run start), slot-seconds, so the grid's
  interleaving of the two datasets does not enter and the axis is what a one-slot-per-trial cluster pays;
- best so far: the highest best_val (validation accuracy of the trial's best epoch) of the trials ended so far.
The goal: TPE+ASHA reaches random's final best (median of the seeds' finals) within one third of random's epochs
(medians of the seeds). Run folders stay in --workdir: a rerun skips the (method, seed) already finished, and the
table is written from whatever is there. The table replaces the "HPO efficiency" section of perf/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from omicsweep.schema import DATASET_TAG, EPOCHS_RUN, ROLE_TAG, SEARCH_METRIC, TRIAL_ROLE  # noqa: E402

SECTION = "## HPO efficiency: searchers on mlp's space (issue 15, item 6)"
OMICSWEEP = [sys.executable, "-m", "omicsweep.cli"]
METHODS = {"random": ("random", "none"), "tpe": ("tpe", "none"), "tpe+asha": ("tpe", "asha"),
           "gp": ("gp", "none"), "qmc": ("qmc", "none")}
WIDTHS = [64, 128, 256, 512, 1024]


def small_space(out: Path) -> Path:
    """mlp's own space with `width` capped at 1,024 (8,192 x 2 layers costs ~30-135 s an epoch on pbmc3k here)."""
    import yaml

    from omicsweep.models import get_model

    space = yaml.safe_load(Path(get_model("mlp").space_file).read_text())
    space["space"]["width"] = {"choice": WIDTHS}
    space["defaults"]["width"] = 1024
    space.pop("tiny", None)
    out.write_text(yaml.safe_dump(space, sort_keys=False))
    return out


def run_method(datasets: list[str], folder: Path, method: str, seed: int, args) -> float | None:
    """One `omicsweep sweep` of (method, seed) over all datasets; its wall seconds (None: already there)."""
    if (folder / "done").exists():
        return None
    searcher, scheduler = METHODS[method]
    started = time.perf_counter()
    subprocess.run([*OMICSWEEP, "sweep", "--dataset", ",".join(datasets), "--model", "mlp", "--trials",
                    str(args.trials), "--concurrency", str(args.concurrency), "--max-epochs", str(args.epochs),
                    "--reruns", "0", "--searcher", searcher, "--scheduler", scheduler, "--seed", str(seed),
                    "--space", str(args.space), "--runs", str(folder),
                    *(["--address", args.address] if args.address else [])], check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    (folder / "done").write_text(f"{wall:.1f}\n")
    return wall


def curves(folder: Path) -> dict[str, list[tuple[int, float, float]]]:
    """Per dataset tag: [(epochs consumed, trial seconds consumed, best so far)] after each ended trial."""
    from mlflow import MlflowClient

    from omicsweep.reports.tracking import default_tracking_uri

    client = MlflowClient(default_tracking_uri(folder))
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=50000)
    trials = sorted((r for r in runs if r.data.tags.get(ROLE_TAG) == TRIAL_ROLE and r.info.end_time
                     and SEARCH_METRIC in r.data.metrics), key=lambda r: r.info.end_time)
    out: dict[str, list[tuple[int, float, float]]] = {}
    for run in trials:
        points = out.setdefault(run.data.tags.get(DATASET_TAG, "?"), [])
        epochs, seconds, best = points[-1] if points else (0, 0.0, float("-inf"))
        metrics = run.data.metrics
        points.append((epochs + int(metrics.get(EPOCHS_RUN, metrics.get("epoch", 0))),
                       seconds + (run.info.end_time - run.info.start_time) / 1000,
                       max(best, float(metrics[SEARCH_METRIC]))))
    return out


def reach(points: list[tuple[int, float, float]], target: float) -> tuple[int, float] | None:
    """(epochs, trial seconds) at which the best so far first reaches `target`; None if it never does."""
    return next(((e, s) for e, s, b in points if b >= target - 1e-12), None)


def summarise(data: dict[str, dict[str, list[list]]]) -> list[dict]:
    """One row per (dataset, method): final best, epochs, seconds (medians over seeds), and the goal check."""
    rows = []
    for dataset, methods in data.items():
        randoms = methods.get("random", [])
        target = statistics.median(c[-1][2] for c in randoms) if randoms else None
        random_epochs = statistics.median(c[-1][0] for c in randoms) if randoms else None
        for method, runs in methods.items():
            hits = [reach(c, target) for c in runs] if target is not None else []
            epochs_to = sorted(h[0] if h else float("inf") for h in hits)
            row = {"dataset": dataset, "method": method, "seeds": len(runs),
                   "trials": statistics.median(len(c) for c in runs),
                   "best": statistics.median(c[-1][2] for c in runs),
                   "bests": [c[-1][2] for c in runs],
                   "epochs": statistics.median(c[-1][0] for c in runs),
                   "seconds": statistics.median(c[-1][1] for c in runs),
                   "reached": sum(h is not None for h in hits),
                   "epochs_to": statistics.median(epochs_to) if epochs_to else float("nan"),
                   "seconds_to": statistics.median(sorted(h[1] if h else float("inf") for h in hits))
                   if hits else float("nan")}
            row["fraction"] = row["epochs_to"] / random_epochs if random_epochs else float("nan")
            rows.append(row)
    return rows


def plot(data: dict[str, dict[str, list[list]]], out: Path) -> None:
    """Best so far against epochs (top) and trial seconds (bottom), one column per dataset, a line per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(data), figsize=(5 * len(data), 7), squeeze=False)
    colours = dict(zip(METHODS, ("black", "tab:blue", "tab:red", "tab:green", "tab:purple")))
    for col, (dataset, methods) in enumerate(sorted(data.items())):
        for method, runs in methods.items():
            for i, points in enumerate(runs):
                for row, axis in ((0, 0), (1, 1)):
                    axes[row][col].step([p[axis] for p in points], [p[2] for p in points], where="post",
                                        color=colours[method], alpha=0.7, label=method if i == 0 else None)
        axes[0][col].set_title(Path(dataset).name)
        axes[0][col].set_xlabel("epochs consumed")
        axes[1][col].set_xlabel("trial seconds consumed")
        for row in (0, 1):
            axes[row][col].set_ylabel("best validation accuracy so far")
            axes[row][col].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=70)
    plt.close(fig)


def table(args, rows: list[dict], walls: dict[str, float], command: str) -> list[str]:
    load = os.getloadavg()
    lines = [
        SECTION, "",
        f"Command: `{command}` on {os.cpu_count()} cores shared with other engineers' jobs (load average "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} over 1 / 5 / 15 min at the end).",
        f"Each (method, seed): `omicsweep sweep --dataset pbmc68k,PBMC3K --model mlp --trials {args.trials} "
        f"--concurrency {args.concurrency} --max-epochs {args.epochs} --reruns 0 --searcher S --scheduler X --seed N "
        f"--space SPACE` (pbmc3k in the first {args.pbmc3k_seeds} seed(s) only; the seeds column says which ran); SPACE is mlp's own space with "
        f"width's choices cut to {WIDTHS} (8,192 x 2 layers costs 30-135 s an epoch on pbmc3k here). Seeds asked: "
        f"{', '.join(map(str, range(args.seeds)))}. Reduced from the issue's 64 trials x 3 seeds x 2 datasets to fit "
        "~40 min of 2 shared cores.",
        "random, tpe, gp, qmc train every trial to --max-epochs or early stopping (patience 5); tpe+asha stops poor "
        "trials at ASHA's rungs. Axes: epochs and trial seconds (sum of trial run durations) consumed by the ended "
        "trials, in end order; best = highest best_val (validation accuracy) so far. Target = random's final best "
        "(median of seeds). Columns are medians over seeds.",
        "",
        "| dataset | method | seeds | trials | final best val (per seed) | epochs | trial s | reached target "
        "| epochs to target | fraction of random's epochs | trial s to target |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {Path(r['dataset']).name} | {r['method']} | {r['seeds']} | {r['trials']:.0f} | "
                     f"{r['best']:.3f} ({', '.join(f'{b:.3f}' for b in r['bests'])}) | {r['epochs']:.0f} | "
                     f"{r['seconds']:.0f} | {r['reached']}/{r['seeds']} | {r['epochs_to']:.0f} | "
                     f"{r['fraction']:.2f} | {r['seconds_to']:.0f} |")
    lines += ["", "Wall seconds per command (method/seed): "
              + ", ".join(f"{k} {v:.0f}" if v == v else f"{k} stopped early (its ended trials only)"
                          for k, v in walls.items()) + ".",
              "Plot: perf/hpo_efficiency.png (best so far against epochs, top, and trial seconds, bottom)."]
    return lines + (["", args.note] if args.note else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pbmc3k", required=True, help="the ingested pbmc3k store (see above)")
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--pbmc3k-seeds", type=int, default=3, help="seeds that also run pbmc3k")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--address", help="a running Ray cluster (`ray start --head`): Ray starts once, not per sweep")
    parser.add_argument("--quick", action="store_true", help="4 trials, 1 seed, 2 epochs")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/hpo-efficiency"))
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--plot", type=Path, default=HERE / "hpo_efficiency.png")
    parser.add_argument("--note", help="a paragraph appended to the section (e.g. how the runs were split)")
    parser.add_argument("--report-only", action="store_true", help="write the table from --workdir's folders")
    args = parser.parse_args()
    shown = [a for i, a in enumerate(sys.argv[1:]) if a != "--note" and sys.argv[i:i + 1] != ["--note"]]
    command = " ".join(["python perf/hpo_efficiency.py", *shown])
    if args.quick:
        args.trials, args.seeds, args.pbmc3k_seeds, args.epochs = 4, 1, 1, 2
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.space = small_space(args.workdir / "mlp-small.yaml")
    methods = args.methods.split(",")
    walls: dict[str, float] = {}
    for seed in range(args.seeds):
        datasets = ["pbmc68k", *([args.pbmc3k] if seed < args.pbmc3k_seeds else [])]
        for method in methods:
            folder = args.workdir / f"{method}-{seed}"
            wall = None if args.report_only else run_method(datasets, folder, method, seed, args)
            if (folder / "done").exists():
                walls[f"{method}/{seed}"] = wall or float((folder / "done").read_text())
                print(f"{method} seed {seed}: {walls[f'{method}/{seed}']:.0f} s", flush=True)
            elif args.report_only and (folder / "mlflow.db").exists():  # stopped early: its ended trials count
                walls[f"{method}/{seed}"] = float("nan")
    data: dict[str, dict[str, list[list]]] = {}
    for key in walls:
        method, seed = key.split("/")
        for dataset, points in curves(args.workdir / f"{method}-{seed}").items():
            data.setdefault(dataset, {}).setdefault(method, []).append(points)
    rows = summarise(data)
    plot(data, args.plot)
    from results_section import replace_section

    lines = table(args, rows, walls, command)
    replace_section(args.results, SECTION, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
