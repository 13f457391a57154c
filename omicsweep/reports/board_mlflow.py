"""The leaderboard inside MLflow, for a team that looks at the tracking server rather than the run folder.

Each experiment gets one run named `leaderboard` (role tag `leaderboard`, refreshed in place whenever a sweep
finishes or `leaderboard`/`report` runs) holding its sections as a CSV, the page as HTML (both shown in the UI's
artifact view), and the summary across datasets; each sweep's parent run is tagged with its
row's section, rank and scaled score, so the runs list itself can be sorted by who won.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import polars as pl

from omicsweep.reports.tracking import _client
from omicsweep.schema import BOARD_ROLE, RANK_TAG, ROLE_TAG, SCALED_TAG, SECTION_TAG, TOP_TAG


def _board_run(client, experiment_id: str) -> str:
    found = client.search_runs([experiment_id], filter_string=f"tags.`{ROLE_TAG}` = '{BOARD_ROLE}'", max_results=1)
    if found:
        return found[0].info.run_id
    run = client.create_run(experiment_id, run_name="leaderboard", tags={ROLE_TAG: BOARD_ROLE})
    client.set_terminated(run.info.run_id, status="FINISHED")
    return run.info.run_id


def publish_leaderboard(tracking_uri: str, table: pl.DataFrame) -> dict[str, str]:
    """Log each experiment's part of the leaderboard to its `leaderboard` run; returns experiment id -> run id."""
    from omicsweep.reports.html import leaderboard_page
    from omicsweep.reports.leaderboard import summarize

    client = _client(tracking_uri)
    summary = summarize(table)
    published = {}
    for (experiment_id,), part in table.group_by(["experiment_id"], maintain_order=True):
        run_id = _board_run(client, experiment_id)
        with tempfile.TemporaryDirectory(prefix="omicsweep-board-") as tmp:
            folder = Path(tmp)
            part.write_csv(folder / "leaderboard.csv")
            summary.write_csv(folder / "leaderboard-summary.csv")
            (folder / "leaderboard.html").write_text(leaderboard_page(part, source=tracking_uri), encoding="utf-8")
            client.log_artifacts(run_id, str(folder))
        tops = [f"{label}: {top['model'][0]}" for (label,), top in part.group_by(["section"], maintain_order=True)]
        client.set_tag(run_id, TOP_TAG, "; ".join(tops)[:5000])
        published[experiment_id] = run_id
        for row in part.iter_rows(named=True):
            for sweep_id in (row["sweep_run_ids"] or "").split(","):
                if sweep_id:
                    client.set_tag(sweep_id, SECTION_TAG, row["section"])
                    client.set_tag(sweep_id, RANK_TAG, "-" if row["rank"] is None else str(row["rank"]))
                    client.set_tag(sweep_id, SCALED_TAG,
                                   "-" if row["scaled_score"] is None else f"{row['scaled_score']:.4f}")
    return published


def publish_report(tracking_uri: str, table: pl.DataFrame, report: Path) -> None:
    """The full HTML report (figures embedded) beside each experiment's leaderboard files."""
    client = _client(tracking_uri)
    for experiment_id in table["experiment_id"].unique(maintain_order=True).to_list():
        client.log_artifact(_board_run(client, experiment_id), str(report))


def refresh_leaderboard(tracking_uri: str, folder: Path | None, console=None, *,
                        wide: bool = False) -> tuple[pl.DataFrame, tuple | None]:
    """Build the leaderboard, print it (with a console), write its files into `folder` (when given) and publish
    it to MLflow: what a finished sweep, `train`, `leaderboard` and `report` all do."""
    from omicsweep.reports.leaderboard import build_leaderboard, write_leaderboard
    from omicsweep.reports.leaderboard_view import render_leaderboard

    table = build_leaderboard(tracking_uri)
    if console is not None:
        render_leaderboard(table, console, wide=wide)
    files = write_leaderboard(table, folder) if folder is not None else None
    publish_leaderboard(tracking_uri, table)
    return table, files
