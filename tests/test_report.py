"""Plots and `omicsweep report`: a self-contained HTML that a real headless browser renders."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from omicsweep.reports import plots
from omicsweep.reports.figures import param_importances

CHROMIUM = Path("/usr/bin/chromium")


def _toy_predictions(n=200, k=5, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    proba = rng.random((n, k)) + 2.0 * np.eye(k)[y] * (rng.random(n) < 0.7)[:, None]
    return y, proba / proba.sum(axis=1, keepdims=True), [f"type {i}" for i in range(k)]


def test_every_plot_renders_a_png():
    y, proba, classes = _toy_predictions()
    figures = [
        plots.confusion_matrix_figure(y, proba, classes),
        plots.per_class_f1_figure(y, proba, classes),
        plots.roc_pr_figure(y, proba, classes),
        plots.accuracy_vs_size_figure(y, proba, classes, np.array([5, 50, 500, 20, 1])),
        plots.loss_curves_figure({"train_loss": [(1, 1.0), (2, 0.5)], "val_loss": [(1, 1.2), (2, 0.9)]}),
        plots.hpo_history_figure([0.5, 0.7, 0.6], [3.0, 5.0, 9.0], metric="val_accuracy"),
        plots.importance_figure({"lr": 0.7, "width": 0.3}),
    ]
    for figure in figures:
        png = plots.figure_png(figure)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_param_importances_from_tracked_trials():
    rng = np.random.default_rng(0)
    trials = []
    for _ in range(12):
        lr, width = float(rng.uniform(0, 1)), int(rng.choice([64, 128]))
        trials.append(SimpleNamespace(data=SimpleNamespace(
            params={"lr": str(lr), "width": str(width), "loss": "ce", "seed": "0"},
            metrics={"best_val": lr + 0.001 * (width == 128)},
        )))
    importances = param_importances(trials)
    assert set(importances) == {"lr", "width"}  # constant params are not importances
    assert importances["lr"] > importances["width"]


def _screenshot(html: Path, png: Path, profile: Path) -> None:
    subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", f"--user-data-dir={profile}", f"--screenshot={png}",
         "--window-size=1280,2000", html.resolve().as_uri()],
        check=True, capture_output=True, timeout=120,
    )


@pytest.mark.slow
def test_report_is_self_contained_attached_and_renders_in_chromium(swept, cli, tmp_path):
    from mlflow import MlflowClient
    from PIL import Image

    from omicsweep.reports.tracking import default_tracking_uri

    out, _ = swept
    report = tmp_path / "report.html"
    code, stdout, stderr = cli("report", "--runs", out, "--out", report)
    assert code == 0, stdout + stderr
    text = report.read_text()
    assert '<table class="leaderboard">' in text and text.count("<tr") >= 4
    images = re.findall(r'<img [^>]*src="([^"]+)"', text)
    assert len(images) >= 10 and all(src.startswith("data:image/png;base64,") for src in images)
    assert not re.search(r'(src|href)="https?:', text)  # nothing fetched from outside
    for model in ("mlp", "logreg", "majority"):
        assert f"<h3>{model} " in text
    # every plot is also an artifact of the run it describes
    client = MlflowClient(default_tracking_uri(out))
    import polars as pl

    best = pl.read_parquet(out / "leaderboard.parquet").filter(pl.col("model") == "mlp")["best_run_id"][0]
    names = {a.path for a in client.list_artifacts(best, "plots")}
    assert {"plots/confusion_matrix.png", "plots/per_class_f1.png", "plots/roc_pr.png", "plots/loss_curves.png"} <= names

    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} absent: install Debian's chromium (apt-get install -y chromium) to check rendering")
    png = tmp_path / "report.png"
    _screenshot(report, png, tmp_path / "chromium-profile")
    image = np.asarray(Image.open(png).convert("RGB"))
    assert image.shape[:2] == (2000, 1280)
    colours = len(np.unique(image.reshape(-1, 3), axis=0))
    not_white = (image < 240).any(axis=2).mean()
    assert colours > 200 and not_white > 0.05, (colours, not_white)  # the table and the plots drew, not a blank page
    blue_header = np.all(np.abs(image.astype(int) - [76, 114, 176]) < 12, axis=2).sum()
    assert blue_header > 500  # the leaderboard's header row (#4c72b0) is on screen
