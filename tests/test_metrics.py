"""Every metric against scikit-learn, on random data with ties, absent classes and many classes."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from omicsweep.benchmark.metrics import classification_metrics


def _case(seed: int, n: int, n_classes: int, *, drop_class: bool, ties: bool):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, size=n)
    if drop_class:
        y[y == n_classes - 1] = 0  # a class absent from y_true but present in the scores
    logits = rng.normal(size=(n, n_classes)) + 2.0 * np.eye(n_classes)[y] * rng.random((n, 1))
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    if ties:
        proba = np.round(proba, 1)
    return y, proba


CASES = [
    dict(seed=0, n=300, n_classes=4, drop_class=False, ties=False),
    dict(seed=1, n=200, n_classes=7, drop_class=True, ties=False),
    dict(seed=2, n=250, n_classes=5, drop_class=False, ties=True),
    dict(seed=3, n=400, n_classes=40, drop_class=True, ties=True),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"seed{c['seed']}-k{c['n_classes']}")
def test_metrics_match_sklearn(case):
    y, proba = _case(**case)
    ours = classification_metrics(y, proba)
    pred = proba.argmax(axis=1)
    labels = np.arange(proba.shape[1])
    present = np.unique(y)
    expected = {
        "accuracy": skm.accuracy_score(y, pred),
        "balanced_accuracy": skm.balanced_accuracy_score(y, pred),
        "macro_precision": skm.precision_score(y, pred, average="macro", zero_division=0),
        "macro_recall": skm.recall_score(y, pred, average="macro", zero_division=0),
        "macro_f1": skm.f1_score(y, pred, average="macro", zero_division=0),
        "macro_auroc": np.mean([skm.roc_auc_score(y == c, proba[:, c]) for c in present]),
        "macro_auprc": np.mean([skm.average_precision_score(y == c, proba[:, c]) for c in present]),
        "rank1_accuracy": skm.top_k_accuracy_score(y, proba, k=1, labels=labels),
        # with five classes or fewer every class is in the top 5
        "rank5_accuracy": 1.0 if len(labels) <= 5 else skm.top_k_accuracy_score(y, proba, k=5, labels=labels),
    }
    for name, value in expected.items():
        assert ours[name] == pytest.approx(value, abs=1e-10), name


def test_auroc_matches_sklearn_ovr_when_all_classes_present():
    y, proba = _case(seed=5, n=500, n_classes=6, drop_class=False, ties=False)
    proba = proba / proba.sum(axis=1, keepdims=True)
    ours = classification_metrics(y, proba)["macro_auroc"]
    assert ours == pytest.approx(skm.roc_auc_score(y, proba, multi_class="ovr", average="macro"), abs=1e-10)


def test_perfect_and_constant_predictions():
    y = np.array([0, 1, 2, 2, 1, 0])
    perfect = np.eye(3)[y]
    m = classification_metrics(y, perfect)
    assert m["accuracy"] == m["macro_f1"] == m["macro_auroc"] == m["macro_auprc"] == 1.0
    constant = np.tile([1.0, 0.0, 0.0], (len(y), 1))
    m = classification_metrics(y, constant)
    assert m["accuracy"] == pytest.approx(1 / 3)
    assert m["macro_auroc"] == pytest.approx(0.5)


# ---- study 004's breakdowns ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"seed{c['seed']}-k{c['n_classes']}")
def test_per_class_accuracy_matches_sklearn_recall_and_top_k(case):
    from omicsweep.benchmark.metrics import per_class_accuracy

    y, proba = _case(**case)
    n_classes = proba.shape[1]
    train = np.random.default_rng(case["seed"]).integers(0, n_classes, size=3 * len(y))
    table = per_class_accuracy(y, proba, train, ks=(1, 5))
    assert set(table) == {"class", "n_train", "n_test", "rank1_accuracy", "rank5_accuracy"}
    assert all(len(v) == n_classes for v in table.values())
    assert table["n_train"].tolist() == np.bincount(train, minlength=n_classes).tolist()
    assert table["n_test"].sum() == len(y)
    labels = np.arange(n_classes)
    recall = skm.recall_score(y, proba.argmax(axis=1), labels=labels, average=None, zero_division=0)
    for c in labels:
        if table["n_test"][c] == 0:
            assert np.isnan(table["rank1_accuracy"][c]) and np.isnan(table["rank5_accuracy"][c])
            continue
        rows = y == c
        top1 = skm.top_k_accuracy_score(y[rows], proba[rows], k=1, labels=labels)
        assert table["rank1_accuracy"][c] == pytest.approx(top1, abs=1e-12)
        if not case["ties"]:  # with tied scores argmax and the top-1 rank break ties differently
            assert table["rank1_accuracy"][c] == pytest.approx(recall[c], abs=1e-12)
        top5 = 1.0 if n_classes <= 5 else skm.top_k_accuracy_score(y[rows], proba[rows], k=5, labels=labels)
        assert table["rank5_accuracy"][c] == pytest.approx(top5, abs=1e-12)
    # support-weighted means of the per-class values are the overall rank-1 / rank-5 accuracies
    seen = table["n_test"] > 0
    overall = classification_metrics(y, proba)
    for k in (1, 5):
        weighted = np.average(table[f"rank{k}_accuracy"][seen], weights=table["n_test"][seen])
        assert weighted == pytest.approx(overall[f"rank{k}_accuracy"], abs=1e-12)


def test_correct_overlap_matches_sklearn_jaccard_and_counts():
    from omicsweep.benchmark.metrics import correct_overlap

    y, proba_a = _case(seed=7, n=300, n_classes=6, drop_class=False, ties=False)
    _, proba_b = _case(seed=8, n=300, n_classes=6, drop_class=False, ties=False)
    proba_b = 0.5 * proba_b + 0.5 * np.eye(6)[y] * np.random.default_rng(9).random((300, 1))
    hit_a, hit_b = proba_a.argmax(axis=1) == y, proba_b.argmax(axis=1) == y
    out = correct_overlap(y, proba_a, proba_b)
    assert out["correct_a"] == hit_a.sum() and out["correct_b"] == hit_b.sum()
    assert out["both"] + out["only_a"] == out["correct_a"] and out["both"] + out["only_b"] == out["correct_b"]
    assert out["either"] == out["both"] + out["only_a"] + out["only_b"]
    assert out["jaccard"] == pytest.approx(skm.jaccard_score(hit_a, hit_b), abs=1e-12)
    assert out["per_class_both"].sum() == out["both"] and len(out["per_class_only_b"]) == 6
    # labels instead of probabilities give the same answer; a run compared with itself overlaps fully
    assert correct_overlap(y, proba_a.argmax(axis=1), proba_b)["jaccard"] == out["jaccard"]
    assert correct_overlap(y, proba_a, proba_a)["jaccard"] == 1.0
    with pytest.raises(ValueError, match="different samples"):
        correct_overlap(y, proba_a[:-1], proba_b)
