"""`omicsweep report`: one self-contained HTML file (no external resources; images base64-embedded)."""

from __future__ import annotations

import base64
import html
import time
from pathlib import Path

import polars as pl

from omicsweep.atomic import atomic_write_text
from omicsweep.reports.figures import ModelFigures, figure_key
from omicsweep.reports.leaderboard import summarize
from omicsweep.reports.leaderboard_view import (
    DISPLAY_COLUMNS, SUMMARY_COLUMNS, display_rows, section_caption, sections, summary_rows,
)

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


def _table_html(columns, cells_rows, classes, text_columns: int) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    rows = []
    for cls, cells in zip(classes, cells_rows):
        tds = "".join(f'<td class="text">{_e(c)}</td>' if i < text_columns else f"<td>{_e(c)}</td>"
                      for i, c in enumerate(cells))
        rows.append(f'<tr class="{_e(cls)}">{tds}</tr>')
    return f'<table class="leaderboard"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def leaderboard_html(part: pl.DataFrame) -> str:
    return _table_html(DISPLAY_COLUMNS, display_rows(part), part["role"].to_list(), 3)


def summary_html(table: pl.DataFrame) -> str:
    """The cross-dataset summary (mean scaled score, mean rank, datasets run and failed)."""
    summary = summarize(table)
    if not len(summary):
        return ""
    return ("<h2>Across datasets</h2><p class=\"meta\">Mean scaled score and mean rank over the sections a model ran "
            "on (a section: one store and selection metric of a dataset); failed on = datasets where no trial "
            "finished.</p>"
            + _table_html(SUMMARY_COLUMNS, summary_rows(summary), summary["role"].to_list(), 2))


def leaderboard_page(table: pl.DataFrame, *, source: str) -> str:
    """The leaderboard alone (every section and the summary) as one page: what MLflow holds beside the runs."""
    body = [f"<h2>{_e(label)}</h2><p class=\"meta\">{_e(section_caption(part))}</p>{leaderboard_html(part)}"
            for label, part in sections(table)]
    return _page("omicsweep leaderboard", source, "\n".join(body) + summary_html(table))


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


def report_html(table: pl.DataFrame, figures: dict[tuple[str, str, str], list[ModelFigures]], *, source: str) -> str:
    parts = []
    for label, part in sections(table):
        failed = [f"{row['model']} {line}" for row in part.iter_rows(named=True) for line in (row["errors"] or "").splitlines()]
        parts.append(
            f"<h2>{_e(label)}</h2>"
            f'<p class="meta">{_e(section_caption(part))}</p>'
            + leaderboard_html(part)
            + (f'<h4>Failed trials ({len(failed)})</h4><pre class="errors">{_e(chr(10).join(failed))}</pre>' if failed else "")
            + "".join(_model_section(row, figures.get(figure_key(row), [ModelFigures(label, row["model"], None)]))
                      for row in part.iter_rows(named=True))
        )
    if not parts:
        parts.append('<p class="note">No sweeps in this tracking store yet: run <code>omicsweep sweep</code>.</p>')
    return _page("omicsweep report", source, "\n".join(parts) + summary_html(table))


def _page(title: str, source: str, body: str) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{STYLE}</style></head><body><h1>{_e(title)}</h1>"
        f'<p class="meta">Tracking store {_e(source)}; generated {stamp}.</p>' + body + "</body></html>\n"
    )


def write_report(text: str, out: Path) -> Path:
    """Write atomically: a hidden sibling renamed into place."""
    return atomic_write_text(out, text)
