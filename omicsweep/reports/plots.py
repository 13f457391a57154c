"""Figures, one function each, from plain arrays (matplotlib, Agg): nothing here reads MLflow or a store.

Each returns a matplotlib Figure; `figure_png` turns one into PNG bytes (for MLflow and the HTML report).
"""

from __future__ import annotations

import io
from typing import Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from omicsweep.benchmark.metrics import per_class_prf  # noqa: E402

MAX_CLASSES_SHOWN = 40  # beyond this a per-class chart keeps the largest classes


def figure_png(fig, *, dpi: int = 90) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _shown_classes(y_true: np.ndarray, n_classes: int) -> np.ndarray:
    counts = np.bincount(y_true, minlength=n_classes)
    if n_classes <= MAX_CLASSES_SHOWN:
        return np.arange(n_classes)
    return np.sort(np.argsort(-counts, kind="stable")[:MAX_CLASSES_SHOWN])


def confusion_matrix_figure(y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str], *, title: str = ""):
    """Confusion matrix normalized by true class (rows sum to 1)."""
    n = len(classes)
    pred = proba.argmax(axis=1)
    counts = np.zeros((n, n))
    np.add.at(counts, (y_true, pred), 1)
    rows = counts.sum(axis=1, keepdims=True)
    norm = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    shown = _shown_classes(y_true, n)
    norm = norm[np.ix_(shown, shown)]
    size = max(4.0, 0.35 * len(shown) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(shown)), [classes[i] for i in shown], rotation=90, fontsize=7)
    ax.set_yticks(range(len(shown)), [classes[i] for i in shown], fontsize=7)
    if len(shown) <= 15:
        for i in range(len(shown)):
            for j in range(len(shown)):
                if norm[i, j] >= 0.005:
                    ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix (normalized by true class)")
    fig.colorbar(image, ax=ax, fraction=0.046)
    return fig


def per_class_f1_figure(y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str], *, title: str = ""):
    """Per-class F1 bars (sorted) with the quartiles of the per-class F1 distribution as lines."""
    prf = per_class_prf(y_true, proba.argmax(axis=1), len(classes))
    present = np.flatnonzero(prf["support"] > 0)
    f1 = prf["f1"][present]
    order = present[np.argsort(-f1, kind="stable")][:MAX_CLASSES_SHOWN]
    quartiles = np.quantile(f1, [0, 0.25, 0.5, 0.75, 1.0]) if len(f1) else np.zeros(5)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.3 * len(order) + 2), 4))
    ax.bar(range(len(order)), prf["f1"][order], color="#4c72b0")
    for q, name, style in zip(quartiles[1:4], ("Q1", "median", "Q3"), (":", "--", ":")):
        ax.axhline(q, color="#c44e52", linestyle=style, linewidth=1, label=f"{name} {q:.3f}")
    ax.set_xticks(range(len(order)), [classes[i] for i in order], rotation=90, fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("F1 (test)")
    ax.set_title(title or "per-class F1; quartiles " + "/".join(f"{q:.3f}" for q in quartiles))
    ax.legend(fontsize=7, loc="lower left")
    return fig


def loss_curves_figure(history: dict[str, list[tuple[int, float]]], *, title: str = ""):
    """train/val loss (and any other series given) against epoch."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, points in sorted(history.items()):
        if points:
            steps, values = zip(*sorted(points))
            ax.plot(steps, values, marker="o", markersize=3, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title or "loss curves")
    ax.legend(fontsize=8)
    return fig


def _roc_points(is_pos: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-score, kind="mergesort")
    hits = is_pos[order]
    tps, fps = np.cumsum(hits), np.cumsum(~hits)
    return np.r_[0, fps / max(1, fps[-1])], np.r_[0, tps / max(1, tps[-1])]


def _pr_points(is_pos: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-score, kind="mergesort")
    tps = np.cumsum(is_pos[order])
    return tps / max(1, tps[-1]), tps / np.arange(1, len(tps) + 1)


def roc_pr_figure(y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str], *, title: str = ""):
    """One-vs-rest ROC and precision-recall curves, one line per class (the largest classes if many)."""
    fig, (roc, pr) = plt.subplots(1, 2, figsize=(10, 4.2))
    counts = np.bincount(y_true, minlength=len(classes))
    shown = [c for c in np.argsort(-counts, kind="stable")[:12] if 0 < counts[c] < len(y_true)]
    for c in shown:
        is_pos = y_true == c
        fpr, tpr = _roc_points(is_pos, proba[:, c])
        recall, precision = _pr_points(is_pos, proba[:, c])
        roc.plot(fpr, tpr, linewidth=1, label=classes[c])
        pr.plot(recall, precision, linewidth=1)
    roc.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (one vs rest)")
    pr.set(xlabel="recall", ylabel="precision", title="precision-recall (one vs rest)", ylim=(0, 1.05))
    roc.legend(fontsize=6, loc="lower right")
    if title:
        fig.suptitle(title)
    return fig


def accuracy_vs_size_figure(y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str], train_counts: np.ndarray,
                            *, title: str = ""):
    """Per-class test accuracy (recall) against the class's training-set size (log scale)."""
    prf = per_class_prf(y_true, proba.argmax(axis=1), len(classes))
    present = np.flatnonzero(prf["support"] > 0)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    sizes = np.maximum(np.asarray(train_counts)[present], 1)
    ax.scatter(sizes, prf["recall"][present], s=18, color="#55a868")
    for c in present[np.argsort(-sizes)][:15]:
        ax.annotate(classes[c], (max(train_counts[c], 1), prf["recall"][c]), fontsize=6, alpha=0.8)
    ax.set_xscale("log")
    ax.set(xlabel="training cells in class", ylabel="per-class accuracy (test recall)", ylim=(-0.05, 1.05))
    ax.set_title(title or "per-class accuracy vs class size")
    return fig


def hpo_history_figure(values: Sequence[float], elapsed_s: Sequence[float], *, metric: str = "", title: str = ""):
    """Each trial's value and the best so far, against trial number and against wall time since the start."""
    values = np.asarray(values, dtype=float)
    elapsed = np.asarray(elapsed_s, dtype=float)
    fig, (by_trial, by_time) = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    if len(values):
        best = np.maximum.accumulate(values)
        number = np.arange(1, len(values) + 1)
        by_trial.scatter(number, values, s=14, color="#8c8c8c", label="trial")
        by_trial.step(number, best, where="post", color="#c44e52", label="best so far")
        order = np.argsort(elapsed, kind="stable")
        by_time.scatter(elapsed, values, s=14, color="#8c8c8c")
        by_time.step(elapsed[order], np.maximum.accumulate(values[order]), where="post", color="#c44e52")
    by_trial.set(xlabel="trial (in order of completion)", ylabel=metric or "validation value")
    by_time.set(xlabel="wall time since sweep start (s)")
    by_trial.legend(fontsize=7)
    fig.suptitle(title or "HPO history")
    return fig


def importance_figure(importances: dict[str, float], *, title: str = ""):
    """Hyperparameter importances (Optuna's evaluator) as horizontal bars, largest on top."""
    names = sorted(importances, key=importances.get)
    fig, ax = plt.subplots(figsize=(5.5, max(2.0, 0.35 * len(names) + 1)))
    ax.barh(names, [importances[n] for n in names], color="#8172b2")
    ax.set_xlabel("importance (fANOVA)")
    ax.set_title(title or "hyperparameter importance")
    return fig


def top_genes_figure(ranked: dict[str, list[tuple[str, float]]], reference: dict[str, set[str]], *, title: str = "",
                     columns: int = 4):
    """Per class, its top genes by attention as horizontal bars (largest on top); a gene also in the class's
    rank_genes_groups top N is drawn dark, one only attention ranked light. ranked: {class: [(gene, score)]}."""
    names = list(ranked)[:MAX_CLASSES_SHOWN]
    cols = max(1, min(columns, len(names)))
    rows = max(1, -(-len(names) // cols))
    depth = max((len(v) for v in ranked.values()), default=1)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 0.18 * depth * rows + 1.2 * rows), squeeze=False)
    for ax, name in zip(axes.ravel(), names):
        genes = [g for g, _ in ranked[name]][::-1]
        scores = [s for _, s in ranked[name]][::-1]
        both = reference.get(name, set())
        ax.barh(genes, scores, color=["#4c72b0" if g in both else "#a6bddb" for g in genes])
        ax.tick_params(axis="y", labelsize=6)
        ax.tick_params(axis="x", labelsize=6)
        ax.set_xlabel("attention received, summed over the class's cells", fontsize=6)
        ax.set_title(f"{name} ({sum(g in both for g in genes)}/{len(genes)} in rank_genes_groups)", fontsize=7)
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    fig.suptitle(title or "attention received per class (dark: also in rank_genes_groups' top)", fontsize=9)
    fig.tight_layout()
    return fig
