"""Baseline timings (issue 16, item 4): per-trial wall time, test accuracy and peak RSS of the estimator baselines,
each fit in a fresh process. `logreg-before` is the fit before CSR (dense split from load_split, saga, tol 1e-4,
max_iter 1000); the others run the trial's own fitter (benchmark/estimator_fit.py: CSR split) with the model's
search-space defaults plus --set overrides (`logreg-l1`: one-vs-rest liblinear, `logreg-l1-saga`: the multinomial
saga fit it replaced).

    .venv/bin/python perf/baseline_timings.py --store /tmp/zheng.zarr --runs logreg-before,logreg-l1,xgboost
    .venv/bin/python perf/baseline_timings.py --store S.zarr --runs logreg-l1 --set C=0.5 --repeats 3

Medians of --repeats; this machine is shared by many jobs, so the wall times are noisy (CPU seconds beside them).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
import warnings


def _before(store, config: dict) -> float:
    from sklearn.linear_model import LogisticRegression

    from omicsweep.datasets.loader import load_split
    from omicsweep.datasets.transform import fit_transform_on_train

    transform = fit_transform_on_train(store)
    x, y = load_split(store, "train", transform)
    model = LogisticRegression(C=float(config.get("C", 1.0)), l1_ratio=1.0, solver="saga", max_iter=1000,
                               random_state=0).fit(x, y)
    x, y = load_split(store, "test", transform)
    return float((model.predict(x) == y).mean())


def _trial(store, model: str, overrides: dict) -> float:
    from omicsweep.benchmark.space import load_space
    from omicsweep.benchmark.training import FITTERS, FitInputs
    from omicsweep.datasets.transform import fit_transform_on_train
    from omicsweep.models import Task, get_model

    entry = get_model(model)
    config = {**load_space(entry.space_file).defaults, **overrides, "seed": 0}
    inputs = FitInputs(store=store, transform=fit_transform_on_train(store), config=config, seed=0,
                       task=Task(n_features=store.n_genes, n_classes=len(store.classes)), metric="accuracy")
    got = {}
    FITTERS[entry.family](entry, inputs, lambda metrics, files: got.update(metrics))
    return float(got["test_accuracy"])


RUNS = {"logreg-before": ("logreg", {"penalty": "l1"}), "logreg-l1": ("logreg", {"penalty": "l1"}),
        "logreg-l1-saga": ("logreg", {"penalty": "l1", "solver": "saga"}),
        "logreg-l2": ("logreg", {"penalty": "l2"}), "xgboost": ("xgboost", {}), "majority": ("majority", {}),
        "knn": ("knn", {}), "random_forest": ("random_forest", {})}


def child(store_path: str, run: str, overrides: dict) -> None:
    from omicsweep.datasets.store import Store

    warnings.simplefilter("ignore")
    store = Store(store_path)
    model, fixed = RUNS[run]
    started, cpu = time.perf_counter(), time.process_time()
    accuracy = _before(store, {**fixed, **overrides}) if run == "logreg-before" else _trial(
        store, model, {**fixed, **overrides})
    print(json.dumps({"wall_s": time.perf_counter() - started, "cpu_s": time.process_time() - cpu,
                      "accuracy": accuracy, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def _value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--runs", default="logreg-before,logreg-l1,xgboost,majority")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE config override for every run")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    overrides = {k: _value(v) for k, v in (item.split("=", 1) for item in args.set)}
    if args.child:
        child(args.store, args.child, overrides)
        return
    print(f"store {args.store}; overrides {overrides or 'none'}; medians of {args.repeats} fresh processes")
    print("| run | wall s | CPU s | test accuracy | peak RSS MB |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for run in args.runs.split(","):
        results = []
        for _ in range(args.repeats):
            command = [sys.executable, __file__, "--store", args.store, "--child", run,
                       *(f"--set={item}" for item in args.set)]
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            results.append(json.loads(out.strip().splitlines()[-1]))
        med = {key: statistics.median(r[key] for r in results) for key in results[0]}
        print(f"| {run} | {med['wall_s']:.1f} | {med['cpu_s']:.1f} | {med['accuracy']:.4f} | "
              f"{med['peak_rss_mb']:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
