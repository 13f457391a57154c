"""The leaderboard: a polars table read back from MLflow, one row per (dataset, model).

Each row is the best finished trial by its validation metric (selection never looks at test), with that
trial's test metrics, how many trials finished and failed, and the sweeps' wall time.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from omicsweep.reports.tracking import DATASET_TAG, METRIC_TAG, MODEL_TAG, ROLE_TAG, _client

TEST_COLUMNS = (
    "test_accuracy",
    "test_macro_f1",
    "test_balanced_accuracy",
    "test_macro_auroc",
    "test_macro_auprc",
    "test_rank5_accuracy",
)
SCHEMA = {
    "dataset": pl.String, "model": pl.String, "role": pl.String, "metric": pl.String, "best_val": pl.Float64,
    **{c: pl.Float64 for c in TEST_COLUMNS},
    "trials_finished": pl.Int64, "trials_failed": pl.Int64, "wall_time_s": pl.Float64,
    "best_run_id": pl.String, "best_params": pl.String,
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


def build_leaderboard(tracking_uri: str) -> pl.DataFrame:
    client = _client(tracking_uri)
    trials = _all_runs(client, "trial")
    sweeps = _all_runs(client, "sweep")
    groups: dict[tuple[str, str], list] = {}
    for run in trials:
        key = (run.data.tags.get(DATASET_TAG, "?"), run.data.tags.get(MODEL_TAG, "?"))
        groups.setdefault(key, []).append(run)
    wall: dict[tuple[str, str], float] = {}
    for run in sweeps:
        key = (run.data.tags.get(DATASET_TAG, "?"), run.data.tags.get(MODEL_TAG, "?"))
        wall[key] = wall.get(key, 0.0) + float(run.data.metrics.get("wall_time_s", 0.0))
    rows = []
    for (dataset, model), runs in sorted(groups.items()):
        finished = [r for r in runs if r.info.status == "FINISHED" and "best_val" in r.data.metrics]
        failed = [r for r in runs if r.info.status == "FAILED"]
        best = max(finished, key=lambda r: r.data.metrics["best_val"], default=None)
        row = {
            "dataset": dataset, "model": model, "role": _role_of(model),
            "metric": runs[0].data.tags.get(METRIC_TAG, ""),
            "best_val": best.data.metrics["best_val"] if best else None,
            **{c: (best.data.metrics.get(c) if best else None) for c in TEST_COLUMNS},
            "trials_finished": len(finished), "trials_failed": len(failed),
            "wall_time_s": wall.get((dataset, model)),
            "best_run_id": best.info.run_id if best else None,
            "best_params": _params_text(best) if best else None,
        }
        rows.append(row)
    table = pl.DataFrame(rows, schema=SCHEMA) if rows else pl.DataFrame(schema=SCHEMA)
    return table.sort(["dataset", "best_val"], descending=[False, True], nulls_last=True)


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


def render_leaderboard(table: pl.DataFrame, console) -> None:
    """Print one rich table per dataset."""
    from rich.table import Table

    for (dataset,), part in table.group_by(["dataset"], maintain_order=True):
        metric = part["metric"][0] if len(part) else ""
        shown = Table(title=f"Leaderboard: {dataset} (best trial by {metric}; test metrics of that trial)")
        for column in ("model", "role", "val", "acc", "macro F1", "bal acc", "AUROC", "AUPRC", "rank5", "ok", "failed", "wall s"):
            shown.add_column(column, justify="left" if column in ("model", "role") else "right")
        for row in part.iter_rows(named=True):
            shown.add_row(
                row["model"], row["role"], _fmt(row["best_val"]),
                *(_fmt(row[c]) for c in TEST_COLUMNS),
                str(row["trials_finished"]), str(row["trials_failed"]),
                f"{row['wall_time_s']:.0f}" if row["wall_time_s"] is not None else "-",
            )
        console.print(shown)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"
