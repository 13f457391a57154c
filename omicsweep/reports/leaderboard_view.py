"""The leaderboard as a person reads it: one table per section, the cross-dataset summary, the same cells for
the CLI (rich) and the HTML report."""

from __future__ import annotations

import polars as pl

from omicsweep.reports.leaderboard import summarize
from omicsweep.schema import MLM_ACCURACY, MLM_BASELINE_ACCURACY, MLM_LOSS

DISPLAY_COLUMNS = ("model", "role", "setup", "val", "test [95% CI]", "scaled", "rank", "bal acc", "collapsed",
                   "acc seeds", "F1 seeds", "p vs top (Holm)", "AUROC", "ok", "failed", "wall s", "CPU s", "peak MB")
# what a person decides by, fitting a 100-column terminal; the rest with --wide (and always in CSV/Parquet/HTML)
NARROW_COLUMNS = ("model", "role", "test [95% CI]", "scaled", "acc seeds", "p vs top (Holm)", "ok", "failed")
SUMMARY_COLUMNS = ("model", "role", "mean scaled score", "mean rank", "datasets (sections)", "failed on")
# a pretraining section (masked expression, selected by val_mlm_loss: lower is better; no test split)
MLM_COLUMNS = ("model", "role", "setup", "val MLM loss", "MLM acc", "baseline acc", "ok", "failed", "wall s")


def is_pretraining(part: pl.DataFrame) -> bool:
    return part["metric"][0] == MLM_LOSS


def mlm_rows(part: pl.DataFrame) -> list[list[str]]:
    return [[_name(r), r["role"], r["training_setup"] or "-", _fmt(r[MLM_LOSS]), _fmt(r[MLM_ACCURACY]),
             _fmt(r[MLM_BASELINE_ACCURACY]), str(r["trials_finished"]), str(r["trials_failed"]),
             _fmt(r["wall_time_s"], ".0f")] for r in part.iter_rows(named=True)]


def _name(row: dict) -> str:
    """mlp; 'mlp (train)' for a train run; 'mlp [random/none]' for a sweep with another searcher or scheduler."""
    if row["kind"] != "sweep":
        return f"{row['model']} ({row['kind']})"
    search = row.get("search")
    return row["model"] if search in (None, "tpe/asha", "none/asha") else f"{row['model']} [{search}]"


def display_rows(part: pl.DataFrame, columns: tuple[str, ...] = DISPLAY_COLUMNS) -> list[list[str]]:
    """The leaderboard's cells as text, as the CLI and the HTML report show them (`columns`: which of them)."""
    index = [DISPLAY_COLUMNS.index(c) for c in columns]
    return [[cells[i] for i in index] for cells in _all_cells(part)]


def _all_cells(part: pl.DataFrame) -> list[list[str]]:
    rows = []
    for row in part.iter_rows(named=True):
        rows.append([
            _name(row), row["role"], row["training_setup"] or "-", _fmt(row["best_val"]), _test_text(row),
            _fmt(row["scaled_score"]), _fmt(row["rank"], "d"), _fmt(row["test_balanced_accuracy"]),
            _collapsed_text(row), _seeds_text(row, "test_accuracy"), _seeds_text(row, "test_macro_f1"),
            _p_text(row), _fmt(row["test_macro_auroc"]), str(row["trials_finished"]), str(row["trials_failed"]),
            _fmt(row["wall_time_s"], ".0f"), _fmt(row["cpu_s"], ".0f"), _fmt(row["peak_rss_mb"], ".0f"),
        ])
    return rows


def summary_rows(summary: pl.DataFrame) -> list[list[str]]:
    return [[_name(r), r["role"], _fmt(r["mean_scaled_score"]), _fmt(r["mean_rank"], ".1f"),
             f"{r['datasets']} ({r['sections_run']})",
             str(r["datasets_failed"])] for r in summary.iter_rows(named=True)]


def section_caption(part: pl.DataFrame) -> str:
    """What every number of the section came from: store, split, metric, setups, and how to read the columns."""
    first = part.row(0, named=True)
    if is_pretraining(part):
        return (f"corpus {first['fingerprint'].split(':', 1)[-1][:12]}; masked expression modelling, best trial by "
                "its lowest validation MLM loss (lower is better); MLM acc = its last accuracy on the masked "
                "validation positions; baseline acc = each cell's most common visible non-zero bin on the same "
                "positions")
    metric = first["metric"].removeprefix("val_")
    n_test = max([n for n in part["n_test"].to_list() if n is not None] or [0])
    seeds = max(part["seeds"].to_list() or [0])
    from omicsweep.reports.leaderboard import short_fingerprint

    return (f"store {short_fingerprint(first['fingerprint'])}; split seed {first['split_seeds'] or '?'}; test split"
            f"{f' ({n_test} samples)' if n_test else ''}; best trial by validation {metric} (selection never looks at "
            f"test); test = its test {metric} with its 95% interval over the test samples ({_ci_methods(part)}); scaled = (test - best "
            f"control) / (1 - best control); seeds = the configuration re-trained with {seeds} fresh seeds as the "
            f"trial trained (mean ± sd); p vs top = McNemar's exact test on the test samples against the first row, "
            f"Holm-corrected; '-' = not computable")


def _ci_methods(part: pl.DataFrame) -> str:
    methods = sorted({m for m in part["test_ci_method"].to_list() if m})
    return " / ".join({"Wilson": "Wilson score", "bootstrap": "percentile bootstrap"}.get(m, m) for m in methods) or "none saved"


def section_title(part: pl.DataFrame) -> str:
    return f"Leaderboard: {part['section'][0]}"


def sections(table: pl.DataFrame):
    """(section label, its rows) in table order."""
    return [(label, part) for (label,), part in table.group_by(["section"], maintain_order=True)]


def render_leaderboard(table: pl.DataFrame, console, *, wide: bool = False) -> None:
    """Print one rich table per section, its failures and notes, then the summary across datasets."""
    from rich.table import Table

    for _, part in sections(table):
        shown = Table(title=section_title(part), caption=section_caption(part))
        columns = MLM_COLUMNS if is_pretraining(part) else DISPLAY_COLUMNS if wide else NARROW_COLUMNS
        for column in columns:
            shown.add_column(column, justify="left" if column in ("model", "role", "setup") else "right")
        for cells in mlm_rows(part) if is_pretraining(part) else display_rows(part, columns):
            shown.add_row(*cells)
        console.print(shown)
        for row in part.iter_rows(named=True):
            for line in (row["errors"] or "").splitlines():
                console.print(f"  failed {row['model']} {line}", highlight=False, soft_wrap=True)
            if row["degenerate"]:
                console.print(f"  DEGENERATE {row['model']}: its best trial predicts one class for "
                              f"{row['test_pred_top_share']:.1%} of the test samples", highlight=False, soft_wrap=True)
            if row["seed_note"]:
                console.print(f"  seeds {row['model']}: {row['seed_note']}", highlight=False, soft_wrap=True)
            if row["test_vs_top"] and row["p_vs_top"] is None:
                console.print(f"  no p-value {row['model']} {row['test_vs_top']}", highlight=False, soft_wrap=True)
    summary = summarize(table)
    if len(summary):
        shown = Table(title="Across datasets", caption="mean scaled score and mean rank (by the test value of each "
                      "section's selection metric) over the sections a model ran on (a section: one store and selection "
                      "metric of a dataset); failed on = datasets where no trial finished")
        for column in SUMMARY_COLUMNS:
            shown.add_column(column, justify="left" if column in ("model", "role") else "right")
        for cells in summary_rows(summary):
            shown.add_row(*cells)
        console.print(shown)


def _collapsed_text(row: dict) -> str:
    """'YES 3/4': the best trial predicts almost one class only, and 3 of 4 finished trials do; '-': not checked."""
    if row["degenerate"] is None:
        return "-"
    return f"{'YES' if row['degenerate'] else 'no'} {row['degenerate_trials'] or 0}/{row['trials_finished']}"


def _fmt(value, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _test_text(row: dict) -> str:
    value = _fmt(row["test_selected"])
    if row["test_ci_low"] is None:
        return value
    return f"{value} [{row['test_ci_low']:.3f}, {row['test_ci_high']:.3f}]"


def _seeds_text(row: dict, column: str) -> str:
    mean, sd = row[f"{column}_mean"], row[f"{column}_sd"]
    if mean is None:
        return "-"
    return f"{mean:.3f}" if sd is None else f"{mean:.3f} ± {sd:.3f}"


def _p_text(row: dict) -> str:
    p = row["p_vs_top"]
    if p is None:
        return "-"
    if p == 0.0:  # below the smallest double: the exact binomial tail underflowed
        return "<1e-300"
    return f"{p:.1e}" if p < 0.001 else f"{p:.3f}"
