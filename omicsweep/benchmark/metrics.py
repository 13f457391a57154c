"""Every metric we report, in one place, vectorised over classes (L1000 has thousands).

Each is checked against scikit-learn in tests/test_metrics.py. Conventions follow scikit-learn:
- macro precision/recall/F1 average over classes present in y_true or y_pred (0 where undefined);
- balanced accuracy = mean recall over classes present in y_true;
- macro AUROC / AUPRC average one-vs-rest scores over classes with at least one positive (and, for AUROC, one
  negative) in y_true, since the others are undefined;
- rank-k accuracy ranks scores like `top_k_accuracy_score` (stable sort, ties broken toward lower class index).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

METRIC_NAMES = (
    "accuracy",
    "balanced_accuracy",
    "macro_precision",
    "macro_recall",
    "macro_f1",
    "macro_auroc",
    "macro_auprc",
    "rank1_accuracy",
    "rank5_accuracy",
)


def _confusion_counts(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int):
    tp = np.bincount(y_true[y_true == y_pred], minlength=n_classes).astype(float)
    true_count = np.bincount(y_true, minlength=n_classes).astype(float)
    pred_count = np.bincount(y_pred, minlength=n_classes).astype(float)
    return tp, true_count, pred_count


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros_like(num, dtype=float)
    np.divide(num, den, out=out, where=den > 0)
    return out


def per_class_prf(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict[str, np.ndarray]:
    """Per-class precision, recall, F1 and support (zero where undefined)."""
    tp, true_count, pred_count = _confusion_counts(y_true, y_pred, n_classes)
    precision = _safe_divide(tp, pred_count)
    recall = _safe_divide(tp, true_count)
    f1 = _safe_divide(2 * tp, true_count + pred_count)
    return {"precision": precision, "recall": recall, "f1": f1, "support": true_count}


def macro_auroc(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Mean one-vs-rest AUROC via the rank-sum (Mann-Whitney) statistic, tie-corrected."""
    n_classes = proba.shape[1]
    positives = y_true[:, None] == np.arange(n_classes)[None, :]
    n_pos = positives.sum(axis=0)
    n_neg = len(y_true) - n_pos
    valid = (n_pos > 0) & (n_neg > 0)
    if not valid.any():
        return float("nan")
    ranks = rankdata(proba[:, valid], axis=0)
    pos_rank_sum = (ranks * positives[:, valid]).sum(axis=0)
    auc = (pos_rank_sum - n_pos[valid] * (n_pos[valid] + 1) / 2) / (n_pos[valid] * n_neg[valid])
    return float(auc.mean())


def average_precision(is_positive: np.ndarray, score: np.ndarray) -> float:
    """Area under the precision-recall step curve, thresholds at distinct scores (scikit-learn's definition)."""
    order = np.argsort(-score, kind="mergesort")
    sorted_score, hits = score[order], is_positive[order]
    last_of_group = np.r_[np.flatnonzero(np.diff(sorted_score)), len(sorted_score) - 1]
    tps = np.cumsum(hits)[last_of_group]
    precision = tps / (last_of_group + 1)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def macro_auprc(y_true: np.ndarray, proba: np.ndarray) -> float:
    present = np.unique(y_true)
    if len(present) == 0:
        return float("nan")
    return float(np.mean([average_precision(y_true == c, proba[:, c]) for c in present]))


def rank_k_accuracy(y_true: np.ndarray, proba: np.ndarray, k: int) -> float:
    k = min(k, proba.shape[1])
    top = np.argsort(proba, axis=1, kind="mergesort")[:, ::-1][:, :k]
    return float((top == y_true[:, None]).any(axis=1).mean())


# ---- degenerate models: predictions collapsed onto one class (study 001's models did so unnoticed) -----------------

COLLAPSE_KEYS = ("pred_top_share", "pred_top_class", "degenerate")  # reported beside the metrics, never maximised
COLLAPSE_SHARE = 0.95  # "almost all one class"


def prediction_collapse(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict[str, float]:
    """Share and index of the most predicted class; degenerate = 1.0 when at least COLLAPSE_SHARE of the predictions
    are that class and the other classes are predicted at most half as often as they occur.

    The second condition keeps a correct model of very imbalanced data (98/2 truth, 98/2 predictions) unflagged
    while a majority-class collapse (98/2 truth, 100/0 predictions) is flagged.
    """
    counts = np.bincount(y_pred, minlength=n_classes)
    top = int(np.argmax(counts))
    share = counts[top] / max(1, len(y_pred))
    true_share = float(np.mean(y_true == top)) if len(y_true) else 0.0
    degenerate = share >= COLLAPSE_SHARE and (1.0 - share) <= 0.5 * (1.0 - true_share)
    return {"pred_top_share": float(share), "pred_top_class": float(top), "degenerate": float(degenerate)}


def classification_metrics(y_true: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """All reported metrics from true labels (n,) and class probabilities (n, classes), plus the collapse check
    (`prediction_collapse`: pred_top_share, pred_top_class, degenerate)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    if len(y_true) == 0:
        return {name: float("nan") for name in (*METRIC_NAMES, *COLLAPSE_KEYS)}
    n_classes = proba.shape[1]
    y_pred = proba.argmax(axis=1)
    prf = per_class_prf(y_true, y_pred, n_classes)
    seen = (prf["support"] > 0) | (np.bincount(y_pred, minlength=n_classes) > 0)
    in_truth = prf["support"] > 0
    return {
        "accuracy": float((y_pred == y_true).mean()),
        "balanced_accuracy": float(prf["recall"][in_truth].mean()),
        "macro_precision": float(prf["precision"][seen].mean()),
        "macro_recall": float(prf["recall"][seen].mean()),
        "macro_f1": float(prf["f1"][seen].mean()),
        "macro_auroc": macro_auroc(y_true, proba),
        "macro_auprc": macro_auprc(y_true, proba),
        "rank1_accuracy": rank_k_accuracy(y_true, proba, 1),
        "rank5_accuracy": rank_k_accuracy(y_true, proba, 5),
        **prediction_collapse(y_true, y_pred, n_classes),
    }


# ---- study 004's breakdowns: per-class accuracy against training-set size, overlap of two runs' hits --------------


def _as_predictions(scores: np.ndarray) -> np.ndarray:
    """Predicted classes from labels (n,) or class scores (n, classes); scores go through argmax."""
    scores = np.asarray(scores)
    return scores.argmax(axis=1) if scores.ndim == 2 else scores.astype(np.int64)


def per_class_accuracy(
    y_true: np.ndarray, proba: np.ndarray, train_labels: np.ndarray, *, ks: tuple[int, ...] = (1, 5)
) -> dict[str, np.ndarray]:
    """Rank-k accuracy of each class beside its training-set size (004, Fig. 2A), one row per class.

    Returns equal-length arrays: `class`, `n_train` (training examples), `n_test` (evaluated samples) and
    `rank{k}_accuracy` for each k (NaN for a class with no evaluated sample). Ranking is `rank_k_accuracy`'s, so
    the support-weighted mean of a column is the overall rank-k accuracy; without tied scores rank-1 is recall.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    n_classes = proba.shape[1]
    n_test = np.bincount(y_true, minlength=n_classes)
    table: dict[str, np.ndarray] = {
        "class": np.arange(n_classes),
        "n_train": np.bincount(np.asarray(train_labels, dtype=np.int64), minlength=n_classes),
        "n_test": n_test,
    }
    order = np.argsort(proba, axis=1, kind="mergesort")[:, ::-1]
    for k in ks:
        hit = (order[:, : min(k, n_classes)] == y_true[:, None]).any(axis=1)
        table[f"rank{k}_accuracy"] = _safe_divide(np.bincount(y_true[hit], minlength=n_classes), n_test)
        table[f"rank{k}_accuracy"][n_test == 0] = np.nan
    return table


def correct_overlap(y_true: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray) -> dict[str, float | np.ndarray]:
    """Overlap of the samples two runs predict correctly (rank 1), same samples in the same order (004, Fig. 4).

    `scores_a` / `scores_b` are class probabilities (n, classes) or predicted labels (n,). Returns the counts
    `correct_a`, `correct_b`, `both`, `only_a`, `only_b`, `either`, the `jaccard` index of the two correct sets
    (both / either; NaN when neither run is ever right), and per-class counts `per_class_both`, `per_class_only_a`,
    `per_class_only_b` (arrays over classes, 004's gene-level breakdown).
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    pred_a, pred_b = _as_predictions(scores_a), _as_predictions(scores_b)
    if not (len(pred_a) == len(pred_b) == len(y_true)):
        raise ValueError(
            f"runs cover different samples: {len(y_true)} labels, {len(pred_a)} and {len(pred_b)} predictions"
        )
    hit_a, hit_b = pred_a == y_true, pred_b == y_true
    widths = [np.asarray(s).shape[1] for s in (scores_a, scores_b) if np.asarray(s).ndim == 2]
    n_classes = max(int(max(y_true.max(initial=-1), pred_a.max(initial=-1), pred_b.max(initial=-1))) + 1, *widths, 0)
    both, either = int((hit_a & hit_b).sum()), int((hit_a | hit_b).sum())
    count = lambda mask: np.bincount(y_true[mask], minlength=n_classes)  # noqa: E731
    return {
        "correct_a": int(hit_a.sum()),
        "correct_b": int(hit_b.sum()),
        "both": both,
        "only_a": int((hit_a & ~hit_b).sum()),
        "only_b": int((~hit_a & hit_b).sum()),
        "either": either,
        "jaccard": both / either if either else float("nan"),
        "per_class_both": count(hit_a & hit_b),
        "per_class_only_a": count(hit_a & ~hit_b),
        "per_class_only_b": count(~hit_a & hit_b),
    }
