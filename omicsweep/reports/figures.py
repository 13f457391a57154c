"""The report's figures, gathered from MLflow runs and attached back to the run each describes.

Per (dataset, model), on its best trial's run: normalized confusion matrix, per-class F1 with quartiles, train/val
loss curves, one-vs-rest ROC and PR curves, per-class accuracy against class size. Per sweep (its parent run):
HPO history and hyperparameter importance (Optuna's fANOVA over the finished trials).
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from omicsweep.reports import plots
from omicsweep.reports.tracking import _client
from omicsweep.schema import (
    DATASET_TAG, FINGERPRINT_TAG, METRIC_TAG, MODEL_TAG, PARENT_TAG, PLOTS_ARTIFACTS, PREDICTIONS_FILE, ROLE_TAG,
    SEARCH_METRIC, STORE_TAG, TRIAL_ROLE,
)


@dataclass
class Figure:
    title: str
    png: bytes
    file: str  # name under the run's plots/ artifacts


@dataclass
class ModelFigures:
    dataset: str
    model: str
    run_id: str | None
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # figures that could not be made, and why


@dataclass
class Predictions:
    y_true: np.ndarray
    proba: np.ndarray
    classes: list[str]
    train_counts: np.ndarray | None


def test_predictions(tracking_uri: str, run, folder: Path) -> Predictions:
    """The best checkpoint's test-split predictions: test_predictions.npz when logged, else recomputed."""
    from omicsweep.benchmark.predict import load_trained_model
    from omicsweep.reports.tracking import download_checkpoint

    checkpoint = download_checkpoint(tracking_uri, run.info.run_id, folder)
    trained = load_trained_model(checkpoint, run.data.tags.get(MODEL_TAG, ""))
    store = _store(run)
    train_counts = None
    if store is not None:
        labels = store.labels()
        train_counts = np.bincount(labels[store.split_indices("train")], minlength=len(trained.classes))
    saved = checkpoint / PREDICTIONS_FILE
    if saved.exists():
        with np.load(saved, allow_pickle=False) as arrays:
            return Predictions(np.asarray(arrays["y_true"], dtype=np.int64), np.asarray(arrays["proba"]),
                               trained.classes, train_counts)
    if store is None:
        raise FileNotFoundError("no test_predictions.npz and the dataset store is not here to recompute them")
    from omicsweep.datasets.loader import load_split

    x, y = load_split(store, "test", trained.transform)
    return Predictions(y, trained.predict_transformed(x), trained.classes, train_counts)


def _store(run):
    from omicsweep.datasets.open import open_store

    path = run.data.tags.get(STORE_TAG)
    if not path or not Path(path).exists():
        return None
    store = open_store(path)
    return store if store.fingerprint == run.data.tags.get(FINGERPRINT_TAG) else None


def _loss_history(client, run_id: str) -> dict[str, list[tuple[int, float]]]:
    return {name: [(m.step, m.value) for m in client.get_metric_history(run_id, name)] for name in ("train_loss", "val_loss")}


def model_figures(client, tracking_uri: str, dataset: str, model: str, run) -> ModelFigures:
    """The per-model figures of the best trial's run."""
    result = ModelFigures(dataset, model, run.info.run_id if run else None)
    if run is None:
        result.notes.append("no finished trial")
        return result
    label = f"{dataset} / {model}"
    history = _loss_history(client, run.info.run_id)
    if any(len(points) > 1 for points in history.values()):
        result.figures.append(Figure("train/val loss", plots.figure_png(plots.loss_curves_figure(history, title=f"{label}: loss")), "loss_curves.png"))
    try:
        with tempfile.TemporaryDirectory(prefix="omicsweep-figures-") as tmp:
            pred = test_predictions(tracking_uri, run, Path(tmp))
    except Exception as exc:  # a model that cannot be restored still gets its other figures
        result.notes.append(f"test-split figures unavailable: {exc}")
        return result
    y, p, classes = pred.y_true, pred.proba, pred.classes
    result.figures += [
        Figure("confusion matrix (normalized)", plots.figure_png(plots.confusion_matrix_figure(y, p, classes, title=f"{label}: confusion (test, row-normalized)")), "confusion_matrix.png"),
        Figure("per-class F1", plots.figure_png(plots.per_class_f1_figure(y, p, classes)), "per_class_f1.png"),
        Figure("ROC and PR (one vs rest)", plots.figure_png(plots.roc_pr_figure(y, p, classes, title=label)), "roc_pr.png"),
    ]
    if pred.train_counts is not None:
        result.figures.append(Figure("per-class accuracy vs class size", plots.figure_png(
            plots.accuracy_vs_size_figure(y, p, classes, pred.train_counts, title=f"{label}: accuracy vs class size")),
            "accuracy_vs_class_size.png"))
    return result


def sweep_figures(client, sweep, trials: list) -> ModelFigures:
    """HPO history and hyperparameter importance of one sweep, from its finished trials."""
    dataset, model = sweep.data.tags.get(DATASET_TAG, "?"), sweep.data.tags.get(MODEL_TAG, "?")
    result = ModelFigures(dataset, model, sweep.info.run_id)
    done = sorted((t for t in trials if t.info.status == "FINISHED" and SEARCH_METRIC in t.data.metrics),
                  key=lambda t: t.info.end_time or 0)
    if len(done) < 2:
        result.notes.append(f"{len(done)} finished trial(s): no HPO history or importance")
        return result
    metric = sweep.data.tags.get(METRIC_TAG, "")
    values = [t.data.metrics[SEARCH_METRIC] for t in done]
    elapsed = [((t.info.end_time or sweep.info.start_time) - sweep.info.start_time) / 1000 for t in done]
    result.figures.append(Figure("HPO history", plots.figure_png(plots.hpo_history_figure(
        values, elapsed, metric=metric, title=f"{dataset} / {model}: HPO history ({len(done)} trials)")), "hpo_history.png"))
    importances = param_importances(done)
    if importances:
        result.figures.append(Figure("hyperparameter importance", plots.figure_png(plots.importance_figure(
            importances, title=f"{dataset} / {model}: hyperparameter importance")), "param_importance.png"))
    else:
        result.notes.append("no hyperparameter varied, or every finished trial scored the same: no importance")
    return result


def _value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def param_importances(trials: list) -> dict[str, float]:
    """Optuna's fANOVA importances over the trials' varied params, from an in-memory study built from MLflow."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    params = [{k: _value(v) for k, v in t.data.params.items()} for t in trials]
    names = sorted({k for p in params for k in p})
    distributions = {}
    for name in names:
        values = [p.get(name) for p in params]
        if len({json.dumps(v, sort_keys=True) for v in values}) < 2 or any(v is None for v in values):
            continue
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
        if numeric:
            distributions[name] = FloatDistribution(float(min(values)), float(max(values)))
        else:
            distributions[name] = CategoricalDistribution(sorted({json.dumps(v, sort_keys=True) for v in values}))
    if not distributions or len({float(t.data.metrics[SEARCH_METRIC]) for t in trials}) < 2:
        return {}  # fANOVA raises on trials that all scored the same (zero variance in all trees)
    study = optuna.create_study(direction="maximize")
    for trial, p in zip(trials, params):
        chosen = {n: (float(p[n]) if isinstance(d, FloatDistribution) else json.dumps(p[n], sort_keys=True))
                  for n, d in distributions.items()}
        study.add_trial(optuna.trial.create_trial(params=chosen, distributions=distributions,
                                                  value=float(trial.data.metrics[SEARCH_METRIC])))
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))


def attach(client, figures: ModelFigures) -> None:
    """Log each figure as a PNG artifact of the run it describes (plots/<file>)."""
    if figures.run_id is None or not figures.figures:
        return
    with tempfile.TemporaryDirectory(prefix="omicsweep-plots-") as tmp:
        for figure in figures.figures:
            (Path(tmp) / figure.file).write_bytes(figure.png)
        client.log_artifacts(figures.run_id, tmp, artifact_path=PLOTS_ARTIFACTS)


def figure_key(row: dict) -> tuple[str, str, str]:
    """A leaderboard row's key in `collect_figures`: (section, model, kind)."""
    return row["section"], row["model"], row["kind"]


def collect_figures(tracking_uri: str, table, *, attach_to_runs: bool = True) -> dict[tuple[str, str, str], list[ModelFigures]]:
    """(section, model, kind) -> [best-trial figures, figures of each of the row's sweeps...] for every row."""
    client = _client(tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, max_results=5000) if experiments else []
    by_id = {r.info.run_id: r for r in runs}
    out: dict[tuple[str, str, str], list[ModelFigures]] = {}
    for row in table.iter_rows(named=True):
        best = by_id.get(row["best_run_id"]) if row["best_run_id"] else None
        found = [model_figures(client, tracking_uri, row["section"], row["model"], best)]
        for sweep_id in (row["sweep_run_ids"] or "").split(","):
            if sweep_id in by_id:
                trials = [r for r in runs if r.data.tags.get(PARENT_TAG) == sweep_id
                          and r.data.tags.get(ROLE_TAG) == TRIAL_ROLE]
                found.append(sweep_figures(client, by_id[sweep_id], trials))
        if attach_to_runs:
            for figures in found:
                attach(client, figures)
        out[figure_key(row)] = found
    return out
