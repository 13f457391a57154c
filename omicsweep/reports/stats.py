"""The leaderboard's statistics: confidence intervals, paired tests on the test cells, Holm's correction, and
scores scaled between the negative controls and a perfect score.

Everything here is computed by scipy/statsmodels; a statistic that cannot be computed (one seed, identical
predictions, different test cells) is returned as None with the reason, never as a p-value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Predictions:
    """One trained model's test-split predictions: the labels and the predicted class of every test cell."""

    y_true: np.ndarray
    y_pred: np.ndarray
    proba: np.ndarray | None = None  # [cells, classes], where saved: metrics other than accuracy need it

    @property
    def correct(self) -> np.ndarray:
        return self.y_true == self.y_pred


def wilson_interval(successes: int, n: int) -> tuple[float, float] | None:
    """The 95% Wilson score interval of a proportion (accuracy over n test cells); None without cells."""
    from statsmodels.stats.proportion import proportion_confint

    if n <= 0:
        return None
    low, high = proportion_confint(int(successes), int(n), alpha=1 - CONFIDENCE, method="wilson")
    return float(low), float(high)


def mean_interval(values: list[float]) -> tuple[float, float] | None:
    """The 95% t interval of a mean over seeds; None for fewer than two values."""
    from scipy import stats

    if len(values) < 2:
        return None
    a = np.asarray(values, dtype=np.float64)
    sem = float(stats.sem(a))
    if sem == 0.0:
        return float(a.mean()), float(a.mean())
    low, high = stats.t.interval(CONFIDENCE, len(a) - 1, loc=float(a.mean()), scale=sem)
    return float(low), float(high)


def metric_interval(predictions: Predictions, metric: str, *, seed: int = 0) -> tuple[float, float, str] | None:
    """The 95% interval of a test metric over the test cells: Wilson's for accuracy, else scipy's percentile
    bootstrap over cells (999 resamples; 199 above 20,000 cells). None when it cannot be computed."""
    from scipy import stats as sps

    from omicsweep.benchmark.metrics import classification_metrics

    n = len(predictions.y_true)
    if metric == "accuracy":
        found = wilson_interval(int(predictions.correct.sum()), n)
        return (*found, "Wilson") if found else None
    if predictions.proba is None or n < 2:
        return None
    y, proba = predictions.y_true, predictions.proba

    def statistic(index):
        return classification_metrics(y[index], proba[index])[metric]

    try:
        result = sps.bootstrap((np.arange(n),), statistic, n_resamples=999 if n <= 20_000 else 199,
                               vectorized=False, method="percentile", confidence_level=CONFIDENCE,
                               random_state=np.random.default_rng(seed))
    except (KeyError, ValueError):
        return None
    low, high = result.confidence_interval
    if not (math.isfinite(low) and math.isfinite(high)):
        return None
    return float(low), float(high), "bootstrap"


@dataclass(frozen=True)
class PairedTest:
    p_value: float | None  # None: not computable, see `note`
    note: str  # what was compared, or why there is no p-value
    discordant: tuple[int, int] = (0, 0)  # (top right & other wrong, top wrong & other right), pooled over pairs
    pairs: int = 0  # matched (top, other) prediction sets pooled: the best trials and the shared re-run seeds


def mcnemar_test(pairs: list[tuple[Predictions, Predictions]]) -> PairedTest:
    """McNemar's exact test of test-cell correctness, discordant cells pooled over matched prediction sets.

    Each pair is (top row, other row) trained with the same seed on the same store; their test cells must be
    the same cells (same labels in the same order). No discordant cell at all is a degenerate statistic: no p.
    """
    from statsmodels.stats.contingency_tables import mcnemar

    if not pairs:
        return PairedTest(None, "no saved test predictions to pair")
    b = c = used = 0
    for top, other in pairs:
        if top.y_true.shape != other.y_true.shape or not np.array_equal(top.y_true, other.y_true):
            continue
        b += int(np.sum(top.correct & ~other.correct))
        c += int(np.sum(~top.correct & other.correct))
        used += 1
    if used == 0:
        return PairedTest(None, "test cells differ: not paired")
    if b + c == 0:
        return PairedTest(None, "identical correctness on every test cell: no test", (0, 0), used)
    p = float(mcnemar(np.array([[0, b], [c, 0]]), exact=True).pvalue)
    return PairedTest(min(1.0, p), f"McNemar exact, {used} seed(s) pooled, discordant {b}/{c}", (b, c), used)


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm-corrected p-values over the computable ones; None stays None."""
    from statsmodels.stats.multitest import multipletests

    index = [i for i, p in enumerate(p_values) if p is not None and math.isfinite(p)]
    out: list[float | None] = [None] * len(p_values)
    if not index:
        return out
    corrected = multipletests([p_values[i] for i in index], alpha=1 - CONFIDENCE, method="holm")[1]
    for i, p in zip(index, corrected):
        out[i] = float(p)
    return out


def scaled_score(value: float | None, control: float | None, perfect: float = 1.0) -> float | None:
    """(value - best negative control) / (perfect - best negative control), as Open Problems scales metrics:
    0 is no better than a control, 1 is perfect. None when a part is missing or the control is perfect."""
    if value is None or control is None or not math.isfinite(value) or perfect - control <= 0:
        return None
    return (value - control) / (perfect - control)
