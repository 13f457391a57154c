"""`omicsweep report`: one self-contained HTML file (no external resources; images base64-embedded)."""

from __future__ import annotations

import base64
import html
import time
from pathlib import Path

import polars as pl

from omicsweep.atomic import atomic_write_text
from omicsweep.reports.figures import ModelFigures
from omicsweep.reports.leaderboard import DISPLAY_COLUMNS, display_rows

STYLE = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em; color: #222; max-width: 1400px; }
h1 { font-size: 1.6em; } h2 { border-bottom: 2px solid #4c72b0; padding-bottom: .2em; margin-top: 2em; }
table.leaderboard { border-collapse: collapse; font-size: .9em; margin: 1em 0; }
table.leaderboard th, table.leaderboard td { border: 1px solid #ccc; padding: .3em .6em; text-align: right; }
table.leaderboard th { background: #4c72b0; color: white; }
table.leaderboard td.text { text-align: left; }
table.leaderboard tr.control td { color: #777; }
table.leaderboard tr:nth-child(even) { background: #f3f5fa; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; border: 1px solid #ddd; padding: .5em; background: #fff; }
figure img { max-width: 640px; display: block; }
figcaption { font-size: .85em; color: #555; margin-top: .3em; }
.note, .meta { color: #666; font-size: .85em; }
pre.errors { background: #fff4f4; border: 1px solid #e0b4b4; padding: .5em; font-size: .85em; white-space: pre-wrap; }
"""


def _e(text) -> str:
    return html.escape("" if text is None else str(text))


def leaderboard_html(part: pl.DataFrame) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in DISPLAY_COLUMNS)
    rows = []
    for row, cells in zip(part.iter_rows(named=True), display_rows(part)):
        tds = "".join(f'<td class="text">{_e(c)}</td>' if i < 2 else f"<td>{_e(c)}</td>" for i, c in enumerate(cells))
        rows.append(f'<tr class="{_e(row["role"])}">{tds}</tr>')
    return f'<table class="leaderboard"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _figures_html(figures: ModelFigures) -> str:
    parts = []
    for figure in figures.figures:
        data = base64.b64encode(figure.png).decode("ascii")
        parts.append(f'<figure><img alt="{_e(figure.title)}" src="data:image/png;base64,{data}">'
                     f"<figcaption>{_e(figure.title)}</figcaption></figure>")
    notes = "".join(f'<p class="note">{_e(n)}</p>' for n in figures.notes)
    return f'<div class="figures">{"".join(parts)}</div>{notes}'


def _model_section(row: dict, found: list[ModelFigures]) -> str:
    best, sweeps = found[0], found[1:]
    meta = (f'best run <code>{_e(row["best_run_id"])}</code> ({_e(row["metric"])} {row["best_val"] or 0:.3f}); '
            f'params: {_e(row["best_params"])}')
    body = [f'<h3>{_e(row["model"])} <span class="meta">({_e(row["role"])})</span></h3>',
            f'<p class="meta">{meta}</p>', _figures_html(best)]
    for sweep in sweeps:
        if sweep.figures or sweep.notes:
            body.append(f'<p class="meta">sweep run <code>{_e(sweep.run_id)}</code></p>{_figures_html(sweep)}')
    return "\n".join(body)


def report_html(table: pl.DataFrame, figures: dict[tuple[str, str], list[ModelFigures]], *, source: str) -> str:
    sections = []
    for (dataset,), part in table.group_by(["dataset"], maintain_order=True):
        seeds = max(part["seeds"].to_list() or [0])
        failed = [f"{row['model']} {line}" for row in part.iter_rows(named=True) for line in (row["errors"] or "").splitlines()]
        sections.append(
            f"<h2>{_e(dataset)}</h2>"
            f'<p class="meta">Rows: the best trial of each model by {_e(part["metric"][0])} (selection never looks at '
            f"test); acc = its test accuracy; seeds = that configuration re-trained with {seeds} fresh seeds, test "
            f"metrics as mean ± sd; p vs top = paired t-test over the seeds against the first row.</p>"
            + leaderboard_html(part)
            + (f'<h4>Failed trials ({len(failed)})</h4><pre class="errors">{_e(chr(10).join(failed))}</pre>' if failed else "")
            + "".join(_model_section(row, figures.get((dataset, row["model"]), [ModelFigures(dataset, row["model"], None)]))
                      for row in part.iter_rows(named=True))
        )
    if not sections:
        sections.append('<p class="note">No sweeps in this tracking store yet: run <code>omicsweep sweep</code>.</p>')
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>omicsweep report</title>'
        f"<style>{STYLE}</style></head><body><h1>omicsweep report</h1>"
        f'<p class="meta">Tracking store {_e(source)}; generated {stamp}.</p>' + "\n".join(sections) + "</body></html>\n"
    )


def write_report(text: str, out: Path) -> Path:
    """Write atomically: a hidden sibling renamed into place."""
    return atomic_write_text(out, text)
