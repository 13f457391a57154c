"""The leaderboard: a polars table read back from MLflow, one row per (dataset, model).

Each row is the best finished trial by its validation metric (selection never looks at test), with that
trial's test metrics; the same configuration's test metrics over its seed re-runs as mean and sd; a paired
test (seeds matched) of the row against the dataset's top row; trials finished and failed (with their errors);
and resources: the sweeps' wall time, CPU seconds and peak memory of all its trials.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import polars as pl

from omicsweep.benchmark.reruns import RERUN_OF_TAG, RERUN_ROLE
from omicsweep.reports.tracking import (
    DATASET_TAG, DEGENERATE_METRIC, ERROR_TAG, METRIC_TAG, MODEL_TAG, ROLE_TAG, SEED_TAG, TRIAL_ID_TAG, _client,
)

TEST_COLUMNS = (
    "test_accuracy",
    "test_macro_f1",
    "test_balanced_accuracy",
    "test_macro_auroc",
    "test_macro_auprc",
    "test_rank5_accuracy",
)
SEED_COLUMNS = ("test_accuracy", "test_macro_f1")  # reported as mean and sd over the seed re-runs
SCHEMA = {
    "dataset": pl.String, "model": pl.String, "role": pl.String, "metric": pl.String, "best_val": pl.Float64,
    **{c: pl.Float64 for c in TEST_COLUMNS},
    **{f"{c}_{s}": pl.Float64 for c in SEED_COLUMNS for s in ("mean", "sd")},
    "seeds": pl.Int64, "seed_values": pl.String, "p_vs_top": pl.Float64, "test_vs_top": pl.String,
    "trials_finished": pl.Int64, "trials_failed": pl.Int64, "errors": pl.String,
    "wall_time_s": pl.Float64, "cpu_s": pl.Float64, "peak_rss_mb": pl.Float64,
    "best_run_id": pl.String, "best_params": pl.String,
    # the collapse check (benchmark.metrics.prediction_collapse): the best trial's flag, flagged trials of the row
    "degenerate": pl.Boolean, "test_pred_top_share": pl.Float64, "degenerate_trials": pl.Int64,
}


def _all_runs(client, role: str) -> list:
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return []
    runs, token = [], None
    while True:
        page = client.search_runs(
            experiments, filter_string=f"tags.`{ROLE_TAG}` = '{role}'", max_results=1000, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _role_of(model: str) -> str:
    from omicsweep.errors import UnknownNameError
    from omicsweep.models import get_model

    try:
        return get_model(model).role
    except UnknownNameError:
        return "unknown"


def _key(run) -> tuple[str, str]:
    return run.data.tags.get(DATASET_TAG, "?"), run.data.tags.get(MODEL_TAG, "?")


def _seed_scores(reruns: list, metric: str) -> dict[int, float]:
    """seed -> final test metric of each finished re-run."""
    scores = {}
    for run in reruns:
        if run.info.status == "FINISHED" and metric in run.data.metrics:
            scores[int(run.data.tags.get(SEED_TAG, -1))] = float(run.data.metrics[metric])
    return scores


def _mean_sd(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else None


def paired_p_value(top: dict[int, float], other: dict[int, float]) -> float | None:
    """Two-sided paired t-test over the seeds both rows share (None when fewer than 2 pairs)."""
    from scipy.stats import ttest_rel

    seeds = sorted(set(top) & set(other))
    if len(seeds) < 2:
        return None
    a, b = np.array([top[s] for s in seeds]), np.array([other[s] for s in seeds])
    if np.array_equal(a, b):
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nearly identical seeds: scipy warns of precision loss
        p = float(ttest_rel(a, b).pvalue)
    return p if math.isfinite(p) else 0.0  # constant non-zero difference: t is infinite


def _row(dataset: str, model: str, runs: list, reruns: list, sweeps: list) -> dict:
    finished = [r for r in runs if r.info.status == "FINISHED" and "best_val" in r.data.metrics]
    failed = [r for r in runs if r.info.status == "FAILED"]
    # ties broken by trial id, as the sweep's `best_trial` does when it picks the configuration to re-run
    best = max(finished, key=lambda r: (r.data.metrics["best_val"], r.data.tags.get(TRIAL_ID_TAG, "")), default=None)
    if best is not None:  # only the re-runs of this best configuration
        reruns = [r for r in reruns if r.data.tags.get(RERUN_OF_TAG) == best.data.tags.get(TRIAL_ID_TAG)]
    seed_stats = {}
    for column in SEED_COLUMNS:
        mean, sd = _mean_sd(list(_seed_scores(reruns, column).values()))
        seed_stats[f"{column}_mean"], seed_stats[f"{column}_sd"] = mean, sd
    seeds = sorted(_seed_scores(reruns, "test_accuracy"))
    every = runs + reruns
    cpu = [r.data.metrics["cpu_s"] for r in every if "cpu_s" in r.data.metrics]
    peak = [r.data.metrics["peak_rss_mb"] for r in every if "peak_rss_mb" in r.data.metrics]
    wall = [float(s.data.metrics["wall_time_s"]) + float(s.data.metrics.get("rerun_wall_s", 0.0))
            for s in sweeps if "wall_time_s" in s.data.metrics]
    return {
        "dataset": dataset, "model": model, "role": _role_of(model),
        "metric": runs[0].data.tags.get(METRIC_TAG, ""),
        "best_val": best.data.metrics["best_val"] if best else None,
        **{c: (best.data.metrics.get(c) if best else None) for c in TEST_COLUMNS},
        **seed_stats, "seeds": len(seeds), "seed_values": ",".join(map(str, seeds)),
        "p_vs_top": None, "test_vs_top": None,
        "trials_finished": len(finished), "trials_failed": len(failed),
        "errors": "\n".join(f"{r.info.run_name}: {r.data.tags.get(ERROR_TAG, 'failed')}" for r in failed) or None,
        "wall_time_s": sum(wall) if wall else None, "cpu_s": sum(cpu) if cpu else None,
        "peak_rss_mb": max(peak) if peak else None,
        "best_run_id": best.info.run_id if best else None,
        "best_params": _params_text(best) if best else None,
        **_collapse(best, finished),
    }, _seed_scores(reruns, "test_accuracy")


def _collapse(best, finished: list) -> dict:
    """The degenerate flag of the best trial and the number of finished trials flagged (runs before the check: None)."""
    flags = [r.data.metrics[DEGENERATE_METRIC] for r in finished if DEGENERATE_METRIC in r.data.metrics]
    checked = best is not None and DEGENERATE_METRIC in best.data.metrics
    return {
        "degenerate": bool(best.data.metrics[DEGENERATE_METRIC]) if checked else None,
        "test_pred_top_share": best.data.metrics.get("test_pred_top_share") if best else None,
        "degenerate_trials": int(sum(f > 0 for f in flags)) if flags else None,
    }


def build_leaderboard(tracking_uri: str) -> pl.DataFrame:
    client = _client(tracking_uri)
    groups: dict[tuple[str, str], dict[str, list]] = {}
    for role in ("trial", RERUN_ROLE, "sweep"):
        for run in _all_runs(client, role):
            groups.setdefault(_key(run), {"trial": [], RERUN_ROLE: [], "sweep": []})[role].append(run)
    rows, scores = [], {}
    for (dataset, model), parts in sorted(groups.items()):
        if not parts["trial"]:
            continue
        row, scores[(dataset, model)] = _row(dataset, model, parts["trial"], parts[RERUN_ROLE], parts["sweep"])
        rows.append(row)
    table = pl.DataFrame(rows, schema=SCHEMA) if rows else pl.DataFrame(schema=SCHEMA)
    table = table.sort(["dataset", "best_val"], descending=[False, True], nulls_last=True)
    return _add_paired_tests(table, scores)


def _add_paired_tests(table: pl.DataFrame, scores: dict) -> pl.DataFrame:
    """p-value of each row's seed test accuracies against the dataset's top row (paired by seed)."""
    p_values, against = [], []
    top_of: dict[str, str] = {}
    for row in table.iter_rows(named=True):
        top = top_of.setdefault(row["dataset"], row["model"])
        if top == row["model"]:
            p_values.append(None)
            against.append(None)
            continue
        p_values.append(paired_p_value(scores.get((row["dataset"], top), {}), scores.get((row["dataset"], row["model"]), {})))
        against.append(f"{top} (paired t-test on test accuracy over seeds)")
    return table.with_columns(
        pl.Series("p_vs_top", p_values, dtype=pl.Float64), pl.Series("test_vs_top", against, dtype=pl.String)
    )


def _params_text(run) -> str:
    skip = {"seed", "max_epochs", "patience"}
    return ", ".join(f"{k}={v}" for k, v in sorted(run.data.params.items()) if k not in skip)


def write_leaderboard(table: pl.DataFrame, folder: Path) -> tuple[Path, Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    csv, parquet = folder / "leaderboard.csv", folder / "leaderboard.parquet"
    table.write_csv(csv)
    table.write_parquet(parquet)
    return csv, parquet


DISPLAY_COLUMNS = ("model", "role", "val", "acc", "bal acc", "collapsed", "acc seeds", "F1 seeds", "p vs top", "AUROC",
                   "AUPRC", "rank5",
                   "ok", "failed", "wall s", "CPU s", "peak MB")


def display_rows(part: pl.DataFrame) -> list[list[str]]:
    """The leaderboard's cells as text, as the CLI and the HTML report show them."""
    rows = []
    for row in part.iter_rows(named=True):
        rows.append([
            row["model"], row["role"], _fmt(row["best_val"]), _fmt(row["test_accuracy"]),
            _fmt(row["test_balanced_accuracy"]), _collapsed_text(row), _mean_sd_text(row, "test_accuracy"), _mean_sd_text(row, "test_macro_f1"), _p_text(row["p_vs_top"]),
            _fmt(row["test_macro_auroc"]), _fmt(row["test_macro_auprc"]), _fmt(row["test_rank5_accuracy"]),
            str(row["trials_finished"]), str(row["trials_failed"]), _fmt(row["wall_time_s"], ".0f"),
            _fmt(row["cpu_s"], ".0f"), _fmt(row["peak_rss_mb"], ".0f"),
        ])
    return rows


def render_leaderboard(table: pl.DataFrame, console) -> None:
    """Print one rich table per dataset, then the failed trials with their errors."""
    from rich.table import Table

    for (dataset,), part in table.group_by(["dataset"], maintain_order=True):
        metric = part["metric"][0] if len(part) else ""
        seeds = max(part["seeds"].to_list() or [0])
        shown = Table(title=f"Leaderboard: {dataset} (best trial by {metric}; acc = its test accuracy; "
                            f"seeds = that configuration's test metrics over {seeds} fresh seeds, mean ± sd)")
        for column in DISPLAY_COLUMNS:
            shown.add_column(column, justify="left" if column in ("model", "role") else "right")
        for cells in display_rows(part):
            shown.add_row(*cells)
        console.print(shown)
        for row in part.iter_rows(named=True):
            for line in (row["errors"] or "").splitlines():
                console.print(f"  failed {row['model']} {line}", highlight=False, soft_wrap=True)
            if row["degenerate"]:
                console.print(f"  DEGENERATE {row['model']}: its best trial predicts one class for "
                              f"{row['test_pred_top_share']:.1%} of the test samples", highlight=False, soft_wrap=True)


def _collapsed_text(row: dict) -> str:
    """'YES 3/4': the best trial predicts almost one class only, and 3 of 4 finished trials do; '-': not checked."""
    if row["degenerate"] is None:
        return "-"
    return f"{'YES' if row['degenerate'] else 'no'} {row['degenerate_trials'] or 0}/{row['trials_finished']}"


def _fmt(value, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _mean_sd_text(row: dict, column: str) -> str:
    mean, sd = row[f"{column}_mean"], row[f"{column}_sd"]
    if mean is None:
        return "-"
    return f"{mean:.3f}" if sd is None else f"{mean:.3f} ± {sd:.3f}"


def _p_text(p) -> str:
    if p is None:
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"
