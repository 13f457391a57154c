"""The leaderboard: a polars table read back from MLflow, one section per comparable set of runs.

A section is one (dataset name, store fingerprint, selection metric): runs on another store (another split of a
built-in dataset, or another store under the same folder name) or selected by another metric are never pooled
or compared. Within a section a row is one (model, kind, training setup): a `train` run is a row apart from a
sweep of the same model, and so is a sweep trained another way (DDP, DeepSpeed, GPUs).

Each row is the best finished trial by the best validation value (selection never looks at test) with that
trial's test metrics and a 95% interval of its selection metric over the test cells (Wilson for accuracy,
a percentile bootstrap otherwise); the same configuration's test metrics over
its seed re-runs (mean, sd, 95% t interval), shown only when the re-runs trained as the trial did; McNemar's
exact test of each row against the section's top row on the test cells (the best trials and the shared re-run
seeds pooled), Holm-corrected across the section; the selection metric's test value scaled between the best
negative control and a perfect score; trials finished and failed (with their errors); resources.
"""

from __future__ import annotations

import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import polars as pl

from omicsweep.reports import stats
from omicsweep.reports.tracking import _client
from omicsweep.schema import (
    CHECKPOINT_ARTIFACTS, COMMAND_TAG, DATASET_TAG, DEGENERATE_METRIC, ERROR_TAG, FINGERPRINT_TAG, METRIC_TAG,
    MLM_ACCURACY, MLM_BASELINE_ACCURACY, MLM_LOSS, MODEL_TAG, PARENT_TAG, PREDICTIONS_FILE, PRETRAINED_PARAM, RERUN_OF_TAG, RERUN_PREDICTIONS, RERUN_ROLE, ROLE_TAG, SCHEDULER_TAG,
    SEARCH_METRIC, SEARCHER_TAG, SEED_TAG, SWEEP_ROLE, TEST_PREFIX, TRAIN_COMMAND, TRAINING_SETUP_TAG, TRIAL_ID_TAG,
    TRIAL_ROLE, VAL_PREFIX, VARIANT_TAG,
)

PREDICTION_FILES = tuple(f"{folder}/{PREDICTIONS_FILE}" for folder in (CHECKPOINT_ARTIFACTS, RERUN_PREDICTIONS))
DEFAULT_SEARCH = "tpe/asha"
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
    "section": pl.String, "dataset": pl.String, "fingerprint": pl.String, "metric": pl.String,
    "split_seeds": pl.String, "sweep_run_ids": pl.String, "experiment_id": pl.String,
    "model": pl.String, "kind": pl.String, "search": pl.String, "role": pl.String, "training_setup": pl.String,
    "best_val": pl.Float64,
    **{c: pl.Float64 for c in TEST_COLUMNS},
    # the 95% interval of test_selected over the test cells (Wilson for accuracy, else a percentile bootstrap)
    "test_selected": pl.Float64, "n_test": pl.Int64, "test_ci_low": pl.Float64, "test_ci_high": pl.Float64,
    "test_ci_method": pl.String,
    **{f"{c}_{s}": pl.Float64 for c in SEED_COLUMNS for s in ("mean", "sd")},
    "test_accuracy_seeds_ci_low": pl.Float64, "test_accuracy_seeds_ci_high": pl.Float64,
    "seeds": pl.Int64, "seed_values": pl.String, "seed_note": pl.String,
    "p_vs_top": pl.Float64, "p_vs_top_raw": pl.Float64, "test_vs_top": pl.String,
    "scaled_score": pl.Float64, "rank": pl.Int64,
    "trials_finished": pl.Int64, "trials_failed": pl.Int64, "errors": pl.String,
    "wall_time_s": pl.Float64, "cpu_s": pl.Float64, "peak_rss_mb": pl.Float64,
    "best_run_id": pl.String, "best_params": pl.String,
    # the collapse check (benchmark.metrics.prediction_collapse): the best trial's flag, flagged trials of the row
    "degenerate": pl.Boolean, "test_pred_top_share": pl.Float64, "degenerate_trials": pl.Int64,
    # a pretraining section (metric val_mlm_loss): the best trial's lowest validation MLM loss (-best_val), its
    # last MLM accuracy and the most-common-bin baseline's on the same masked cells
    MLM_LOSS: pl.Float64, MLM_ACCURACY: pl.Float64, MLM_BASELINE_ACCURACY: pl.Float64,
}
SUMMARY_SCHEMA = {
    "model": pl.String, "kind": pl.String, "search": pl.String, "role": pl.String, "mean_scaled_score": pl.Float64,
    "mean_rank": pl.Float64, "datasets": pl.Int64, "sections_run": pl.Int64, "datasets_failed": pl.Int64,
    "sections": pl.String,
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
        return get_model(model.split(" (", 1)[0]).role  # a row's variant label '(pretrained)' is no model name
    except UnknownNameError:
        return "unknown"


def _section_key(run) -> tuple[str, str, str]:
    tags = run.data.tags
    return tags.get(DATASET_TAG, "?"), tags.get(FINGERPRINT_TAG, "?"), tags.get(METRIC_TAG, "?")


def _row_key(owner, run=None) -> tuple[str, str, str, str]:
    """(model, train | sweep, training setup, searcher/scheduler): sweeps that differ in any of them are rows apart.
    A model with a `pretrained` setting is a row per variant: 'scbert (pretrained)', 'scbert (no pretraining)'; a
    sweep of `--vary KEY=VALUE` (another key) is the row 'model (KEY=VALUE)'."""
    tags = owner.data.tags
    kind = "train" if tags.get(COMMAND_TAG) == TRAIN_COMMAND else "sweep"
    search = f"{tags.get(SEARCHER_TAG, 'tpe')}/{tags.get(SCHEDULER_TAG, 'asha')}" if kind == "sweep" else ""
    model = tags.get(MODEL_TAG, "?")
    value = (run or owner).data.params.get(PRETRAINED_PARAM, owner.data.params.get(f"default.{PRETRAINED_PARAM}"))
    if value is not None:  # the run's own value (a searched choice), else its sweep's fixed one
        model = f"{model} ({'no pretraining' if value.strip().lower() in ('none', '') else 'pretrained'})"
    variant = tags.get(VARIANT_TAG)
    if variant and variant.partition("=")[0] != PRETRAINED_PARAM:
        model = f"{model} ({variant})"
    return model, kind, tags.get(TRAINING_SETUP_TAG, ""), search


def _mean_sd(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else None


def load_predictions(client, run) -> stats.Predictions | None:
    """A run's saved test predictions (labels, predicted class per test cell), or None when it logged none."""
    with tempfile.TemporaryDirectory(prefix="omicsweep-board-") as tmp:
        for name in PREDICTION_FILES:
            folder, file = name.split("/")
            try:
                if not any(a.path.endswith(file) for a in client.list_artifacts(run.info.run_id, folder)):
                    continue
                path = client.download_artifacts(run.info.run_id, name, tmp)
                with np.load(path, allow_pickle=False) as arrays:
                    y, proba = np.asarray(arrays["y_true"], dtype=np.int64), np.asarray(arrays["proba"])
            except (OSError, KeyError, ValueError, Exception):  # an unreadable artifact: no predictions
                continue
            if proba.ndim == 2:
                return stats.Predictions(y, np.argmax(proba, axis=1), proba)
            return stats.Predictions(y, proba.astype(np.int64))
    return None


class _Row:
    """The runs of one leaderboard row and what is derived from them."""

    def __init__(self, section: tuple[str, str, str], key: tuple[str, str, str, str]) -> None:
        self.section, (self.model, self.kind, self.setup, self.search) = section, key
        self.trials: list = []
        self.reruns: list = []
        self.sweeps: list = []
        self.best = None
        self.predictions: dict[int, stats.Predictions] = {}  # seed -> test predictions (best trial + re-runs)

    def select(self) -> None:
        finished = [r for r in self.trials if r.info.status == "FINISHED" and SEARCH_METRIC in r.data.metrics]
        # ties broken by trial id, as the sweep's `best_trial` does when it picks the configuration to re-run
        self.best = max(finished, key=lambda r: (r.data.metrics[SEARCH_METRIC], r.data.tags.get(TRIAL_ID_TAG, "")),
                        default=None)
        self.finished = finished
        if self.best is None:
            self.reruns = []
            return
        trial_id = self.best.data.tags.get(TRIAL_ID_TAG)
        parent = self.best.data.tags.get(PARENT_TAG)
        self.reruns = [r for r in self.reruns if r.data.tags.get(RERUN_OF_TAG) == trial_id
                       and r.data.tags.get(PARENT_TAG, parent) == parent]

    def comparable_reruns(self) -> tuple[list, str | None]:
        """The finished re-runs trained as the best trial was; and a note when some were not."""
        setup = self.best.data.tags.get(TRAINING_SETUP_TAG, "") if self.best else ""
        done = [r for r in self.reruns if r.info.status == "FINISHED"]
        same = [r for r in done if r.data.tags.get(TRAINING_SETUP_TAG, setup) == setup]
        if len(same) < len(done):
            other = sorted({r.data.tags.get(TRAINING_SETUP_TAG, "?") for r in done} - {setup})
            return same, f"{len(done) - len(same)} re-run(s) trained as {', '.join(other)}, not as the trial " \
                         f"({setup or '?'}): left out"
        return same, None


def build_leaderboard(tracking_uri: str) -> pl.DataFrame:
    client = _client(tracking_uri)
    sweeps = {run.info.run_id: run for run in _all_runs(client, SWEEP_ROLE)}
    rows: dict[tuple, _Row] = {}

    def row_of(run) -> _Row:  # trials and re-runs belong to their sweep's row (a re-run's own setup may differ)
        owner = sweeps.get(run.data.tags.get(PARENT_TAG, ""), run)
        section, key = _section_key(owner), _row_key(owner, run)
        return rows.setdefault((section, key), _Row(section, key))

    held: dict[str, set] = defaultdict(set)  # sweep run id -> its trials' rows (a searched variant: several)
    for run in _all_runs(client, TRIAL_ROLE):
        row = row_of(run)
        row.trials.append(run)
        held[run.data.tags.get(PARENT_TAG, "")].add(id(row))
    for run in _all_runs(client, RERUN_ROLE):
        row_of(run).reruns.append(run)
    for run in sweeps.values():
        owners = [row for row in rows.values() if id(row) in held.get(run.info.run_id, ())] or [row_of(run)]
        for row in owners:
            row.sweeps.append(run)
    sections: dict[tuple, list[_Row]] = defaultdict(list)
    for (section, _), row in sorted(rows.items()):
        if row.trials:
            row.select()
            sections[section].append(row)
    labels = _section_labels(list(sections))
    records = []
    for section, members in sections.items():
        records.extend(_section_records(client, labels[section], section, members))
    table = pl.DataFrame(records, schema=SCHEMA) if records else pl.DataFrame(schema=SCHEMA)
    return table


def short_fingerprint(fingerprint: str) -> str:
    """The first 12 hex digits of a store fingerprint ('sha256:' dropped), enough to tell stores apart."""
    return fingerprint.split(":", 1)[-1][:12]


def _section_labels(sections: list[tuple[str, str, str]]) -> dict[tuple, str]:
    """'pbmc68k' alone; with the store and metric named when a dataset name has more than one section."""
    by_name: dict[str, list] = defaultdict(list)
    for section in sections:
        by_name[section[0]].append(section)
    labels = {}
    for name, group in by_name.items():
        fingerprints = {s[1] for s in group}
        for dataset, fingerprint, metric in group:
            parts = [f"store {short_fingerprint(fingerprint)}"] if len(fingerprints) > 1 else []
            if len({s[2] for s in group if s[1] == fingerprint}) > 1:
                parts.append(f"selected by {metric}")
            labels[(dataset, fingerprint, metric)] = f"{dataset} ({', '.join(parts)})" if parts else dataset
    return labels


def _section_records(client, label: str, section: tuple[str, str, str], members: list[_Row]) -> list[dict]:
    dataset, fingerprint, metric = section
    test_metric = TEST_PREFIX + metric.removeprefix(VAL_PREFIX)
    for row in members:
        if row.best is not None:
            found = load_predictions(client, row.best)
            if found is not None:
                row.predictions[int(row.best.data.tags.get(SEED_TAG, -1))] = found
            for rerun in row.comparable_reruns()[0]:
                found = load_predictions(client, rerun)
                if found is not None:
                    row.predictions[int(rerun.data.tags.get(SEED_TAG, -1))] = found
    members.sort(key=lambda r: (r.best is None, -(r.best.data.metrics[SEARCH_METRIC] if r.best else 0), r.model, r.kind))
    top = members[0]
    tests = [None if row is top or row.best is None else _paired(top, row) for row in members]
    corrected = stats.holm([t.p_value if t else None for t in tests])
    controls = [row.best.data.metrics.get(test_metric) for row in members
                if row.best is not None and _role_of(row.model) == "control"]
    controls = [c for c in controls if c is not None]
    best_control = max(controls) if controls else None
    values = [row.best.data.metrics.get(test_metric) if row.best else None for row in members]
    ranks = _ranks(values)
    split_seeds = sorted({s.data.tags.get(SEED_TAG, "?") for row in members for s in row.sweeps})
    records = []
    for row, test, p, value, rank in zip(members, tests, corrected, values, ranks):
        record = _record(row, test_metric)
        record.update({
            "section": label, "dataset": dataset, "fingerprint": fingerprint, "metric": metric,
            "split_seeds": ",".join(split_seeds),
            "experiment_id": (row.best or row.trials[0]).info.experiment_id,
            "p_vs_top": p, "p_vs_top_raw": test.p_value if test else None,
            "test_vs_top": f"vs {top.model}: {test.note}" if test else None,
            "scaled_score": stats.scaled_score(value, best_control), "rank": rank,
        })
        records.append(record)
    return records


def _paired(top: _Row, row: _Row) -> stats.PairedTest:
    seeds = sorted(set(top.predictions) & set(row.predictions))
    return stats.mcnemar_test([(top.predictions[s], row.predictions[s]) for s in seeds])


def _ranks(values: list[float | None]) -> list[int | None]:
    """1 = the highest test value of the selection metric in the section; ties share the better rank."""
    present = sorted({v for v in values if v is not None}, reverse=True)
    return [None if v is None else 1 + sum(1 for u in values if u is not None and u > v) for v in values]


def _record(row: _Row, test_metric: str) -> dict:
    best = row.best
    reruns, seed_note = row.comparable_reruns() if best else ([], None)
    seed_stats = {}
    for column in SEED_COLUMNS:
        scores = [float(r.data.metrics[column]) for r in reruns if column in r.data.metrics]
        seed_stats[f"{column}_mean"], seed_stats[f"{column}_sd"] = _mean_sd(scores)
    seed_acc = {int(r.data.tags.get(SEED_TAG, -1)): float(r.data.metrics["test_accuracy"])
                for r in reruns if "test_accuracy" in r.data.metrics}
    seeds_ci = stats.mean_interval(list(seed_acc.values()))
    own = row.predictions.get(int(best.data.tags.get(SEED_TAG, -1))) if best else None
    ci = stats.metric_interval(own, test_metric.removeprefix("test_")) if own is not None else None
    failed = [r for r in row.trials if r.info.status == "FAILED"]
    every = row.trials + row.reruns
    cpu = [r.data.metrics["cpu_s"] for r in every if "cpu_s" in r.data.metrics]
    peak = [r.data.metrics["peak_rss_mb"] for r in every if "peak_rss_mb" in r.data.metrics]
    wall = [float(s.data.metrics["wall_time_s"]) + float(s.data.metrics.get("rerun_wall_s", 0.0))
            for s in row.sweeps if "wall_time_s" in s.data.metrics]
    return {
        "sweep_run_ids": ",".join(sorted(s.info.run_id for s in row.sweeps)),
        "model": row.model, "kind": row.kind, "search": row.search or None, "role": _role_of(row.model),
        "training_setup": row.setup or None,
        "best_val": best.data.metrics[SEARCH_METRIC] if best else None,
        **{c: (best.data.metrics.get(c) if best else None) for c in TEST_COLUMNS},
        "test_selected": best.data.metrics.get(test_metric) if best else None,
        "n_test": len(own.y_true) if own is not None else None,
        "test_ci_low": ci[0] if ci else None, "test_ci_high": ci[1] if ci else None,
        "test_ci_method": ci[2] if ci else None,
        **seed_stats,
        "test_accuracy_seeds_ci_low": seeds_ci[0] if seeds_ci else None,
        "test_accuracy_seeds_ci_high": seeds_ci[1] if seeds_ci else None,
        "seeds": len(seed_acc), "seed_values": ",".join(map(str, sorted(seed_acc))), "seed_note": seed_note,
        "trials_finished": len(row.finished), "trials_failed": len(failed),
        "errors": "\n".join(f"{r.info.run_name}: {r.data.tags.get(ERROR_TAG, 'failed')}" for r in failed) or None,
        "wall_time_s": sum(wall) if wall else None, "cpu_s": sum(cpu) if cpu else None,
        "peak_rss_mb": max(peak) if peak else None,
        "best_run_id": best.info.run_id if best else None,
        "best_params": _params_text(best) if best else None,
        **_collapse(best, row.finished),
        MLM_LOSS: -best.data.metrics[SEARCH_METRIC] if best and MLM_LOSS in best.data.metrics else None,
        **{key: best.data.metrics.get(key) if best else None for key in (MLM_ACCURACY, MLM_BASELINE_ACCURACY)},
    }


def _collapse(best, finished: list) -> dict:
    """The degenerate flag of the best trial and the number of finished trials flagged (runs before the check: None)."""
    flags = [r.data.metrics[DEGENERATE_METRIC] for r in finished if DEGENERATE_METRIC in r.data.metrics]
    checked = best is not None and DEGENERATE_METRIC in best.data.metrics
    return {
        "degenerate": bool(best.data.metrics[DEGENERATE_METRIC]) if checked else None,
        "test_pred_top_share": best.data.metrics.get("test_pred_top_share") if best else None,
        "degenerate_trials": int(sum(f > 0 for f in flags)) if flags else None,
    }


def summarize(table: pl.DataFrame) -> pl.DataFrame:
    """Across sections: each (model, kind, searcher)'s mean scaled score and mean rank, sections run and sections failed."""
    groups: dict[tuple[str, str, str | None], list[dict]] = defaultdict(list)
    for row in table.iter_rows(named=True):
        groups[(row["model"], row["kind"], row["search"])].append(row)
    records = []
    for (model, kind, search), rows in groups.items():
        ran = [r for r in rows if r["trials_finished"]]
        scaled = [r["scaled_score"] for r in ran if r["scaled_score"] is not None]
        ranks = [r["rank"] for r in ran if r["rank"] is not None]
        records.append({
            "model": model, "kind": kind, "search": search, "role": rows[0]["role"],
            "mean_scaled_score": float(np.mean(scaled)) if scaled else None,
            "mean_rank": float(np.mean(ranks)) if ranks else None,
            "datasets": len({r["dataset"] for r in ran}), "sections_run": len(ran),
            "datasets_failed": len({r["dataset"] for r in rows} - {r["dataset"] for r in ran}),
            "sections": "; ".join(sorted({r["section"] for r in rows})),
        })
    summary = pl.DataFrame(records, schema=SUMMARY_SCHEMA) if records else pl.DataFrame(schema=SUMMARY_SCHEMA)
    return summary.sort(["mean_scaled_score", "mean_rank"], descending=[True, False], nulls_last=True)


def _params_text(run) -> str:
    skip = {"seed", "max_epochs", "patience"}
    return ", ".join(f"{k}={v}" for k, v in sorted(run.data.params.items()) if k not in skip)


def write_leaderboard(table: pl.DataFrame, folder: Path) -> tuple[Path, Path]:
    """leaderboard.csv and .parquet (and summary.csv across sections), each written atomically."""
    from omicsweep.reports.board_files import atomic_table

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    csv, parquet = folder / "leaderboard.csv", folder / "leaderboard.parquet"
    atomic_table(table, csv, "csv")
    atomic_table(table, parquet, "parquet")
    atomic_table(summarize(table), folder / "leaderboard-summary.csv", "csv")
    return csv, parquet

