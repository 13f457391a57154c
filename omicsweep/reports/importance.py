"""`omicsweep explain`'s figure and tables as artifacts of the explained run (its plots/ folder): the per-class
top-genes plot, the ranking CSV and the overlap CSV beside it."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from omicsweep.reports import plots
from omicsweep.reports.figures import Figure, ModelFigures, attach
from omicsweep.reports.tracking import _client
from omicsweep.schema import PLOTS_ARTIFACTS

FIGURE_FILE = "attention_top_genes.png"


def top_genes_png(table, reference: dict[str, list[str]], top: int, *, title: str = "") -> bytes:
    """The plot of each class's `top` genes by attention, those also in rank_genes_groups' top `top` dark."""
    ranked = {str(name): [(str(g), float(s)) for g, s in zip(group["gene"][:top], group["score"][:top])]
              for name, group in table.sort_values(["class", "rank"]).groupby("class", sort=False)}
    shared = {name: set(genes[:top]) for name, genes in reference.items()}
    return plots.figure_png(plots.top_genes_figure(ranked, shared, title=title))


def publish_explanation(tracking_uri: str, run_id: str, png: bytes, files: list[Path]) -> str:
    """Log the figure and `files` (the CSVs) under the run's plots/; returns where they went."""
    client = _client(tracking_uri)
    attach(client, ModelFigures(dataset="", model="", run_id=run_id,
                                figures=[Figure(title="attention per class", png=png, file=FIGURE_FILE)]))
    with tempfile.TemporaryDirectory(prefix="omicsweep-explain-") as tmp:
        for path in files:
            shutil.copy(path, Path(tmp) / Path(path).name)
        client.log_artifacts(run_id, tmp, artifact_path=PLOTS_ARTIFACTS)
    return f"run {run_id} artifacts {PLOTS_ARTIFACTS}/{FIGURE_FILE}"
