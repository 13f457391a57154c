"""Class imbalance on the training split: random over/undersampling, SMOTE, and balanced estimator class weights.

Trial config keys (any model; absent or null means the first value):
    resample         none | over | under | smote
    resample_target  cells per class per epoch: `over` raises smaller classes to it (default: the largest
                     class), `under` cuts larger classes down to it (default: the smallest class)
    class_weight     none | balanced  (estimators that accept scikit-learn's `class_weight`; torch models
                     weight their loss with `loss: weighted_ce` instead)

Only the training split is ever resampled; validation and test are scored as they are. `over` and `under` are a
per-epoch, seeded repeat count per training row, applied by the streaming loader (`CellBatches(resample=...)`),
so memory stays that of one shuffle buffer. SMOTE interpolates between a cell and its same-class neighbours,
which needs the whole training split in memory (dense, after the fitted transform). Numpy only here;
imbalanced-learn is imported when SMOTE runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from omicsweep.errors import ConfigError

RESAMPLES = ("none", "over", "under", "smote")
STREAMED_RESAMPLES = ("none", "over", "under")  # what CellBatches does while streaming
CLASS_WEIGHTS = ("none", "balanced")
RESAMPLE_CONFIG_KEYS = ("resample", "resample_target", "class_weight")
SMOTE_NEIGHBOURS = 5  # imbalanced-learn's default k; fewer for classes with fewer cells
# entropy word that keeps the resampling stream apart from the loader's chunk and buffer permutations
RESAMPLE_STREAM = 0x5E1EC7


def _choice(config: dict[str, Any], key: str, allowed: tuple[str, ...]) -> str:
    value = config.get(key)
    value = allowed[0] if value is None else str(value).lower()
    if value not in allowed:
        raise ConfigError(f"config {key}={config.get(key)!r} is not supported; use one of {', '.join(allowed)}")
    return value


def resample_option(config: dict[str, Any]) -> str:
    """config['resample'] checked: none (default), over, under or smote."""
    return _choice(config, "resample", RESAMPLES)


def class_weight_option(config: dict[str, Any]) -> str:
    """config['class_weight'] checked: none (default) or balanced."""
    return _choice(config, "class_weight", CLASS_WEIGHTS)


def resample_target(config: dict[str, Any]) -> int | None:
    """config['resample_target']: a positive number of cells per class, or None (the method's default)."""
    value = config.get("resample_target")
    if value is None or (isinstance(value, str) and value.lower() in ("", "none", "auto")):
        return None
    try:
        target = int(value)
        if isinstance(value, bool) or target != float(value) or target < 1:
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"config resample_target={value!r}: expected a whole number of cells >= 1 (or none)") from None
    return target


def check_resample_config(config: dict[str, Any], *, family: str | None = None) -> None:
    """Raise ConfigError for a bad resample / resample_target / class_weight before any trial starts."""
    resample_option(config)
    resample_target(config)
    if class_weight_option(config) == "balanced" and family == "torch":
        raise ConfigError("config class_weight=balanced applies to estimators; torch models use loss=weighted_ce")


def repeat_counts(labels: np.ndarray, method: str, rng: np.random.Generator, *, target: int | None = None) -> np.ndarray:
    """How many times each row is used in one epoch, so that every class reaches (over) or is cut to (under) the
    target count; none: once each.

    over: a class of n < T rows repeats every row T // n times and T % n rows drawn without replacement once more,
    so it has exactly T rows (T = target, default the largest class); larger classes are left as they are.
    under: a class of n > T rows keeps T rows drawn without replacement (T default: the smallest class).
    """
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.ones(len(labels), dtype=np.int64)
    if method == "none" or len(labels) == 0:
        return counts
    if method not in ("over", "under"):
        raise ValueError(f"repeat counts are for 'over' or 'under', not {method!r}")
    order = np.argsort(labels, kind="stable")  # rows of each class as one run: O(n log n) for any class count
    classes, starts, sizes = np.unique(labels[order], return_index=True, return_counts=True)
    goal = target if target is not None else int(sizes.max() if method == "over" else sizes.min())
    for start, size in zip(starts, sizes):
        rows = order[start : start + size]
        if method == "over" and size < goal:
            base, extra = divmod(goal, size)
            counts[rows] = base
            counts[rng.choice(rows, extra, replace=False)] += 1
        elif method == "under" and size > goal:
            counts[rows] = 0
            counts[rng.choice(rows, goal, replace=False)] = 1
    return counts


def resample_rng(seed: int, epoch: int) -> np.random.Generator:
    """The generator of one epoch's selection (the same on every rank and worker, so shards stay consistent)."""
    return np.random.default_rng([int(seed), int(epoch), 0, RESAMPLE_STREAM])


def smote_resample(x: np.ndarray, y: np.ndarray, *, seed: int, k_neighbors: int = SMOTE_NEIGHBOURS):
    """SMOTE (imbalanced-learn) up to the largest class: (x, y) followed by the synthetic rows, float32.

    Each class is interpolated with k = min(k_neighbors, its size - 1) neighbours (imbalanced-learn needs
    k < class size); a class of a single cell has nothing to interpolate with and is replicated instead.
    """
    try:
        from imblearn.over_sampling import SMOTE
    except ImportError:  # pragma: no cover - a declared dependency
        raise ConfigError("config resample=smote needs imbalanced-learn: pip install imbalanced-learn") from None
    x = sp.csr_matrix(x, dtype=np.float32) if sp.issparse(x) else np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    classes, sizes = np.unique(y, return_counts=True)
    if len(classes) < 2:
        return x, y
    goal = int(sizes.max())
    new_x, new_y = [x], [y]
    by_k: dict[int, dict[int, int]] = {}  # one SMOTE per neighbour count, each only for its classes
    for c, n in zip(classes.tolist(), sizes.tolist()):
        if n == 1:
            new_x.append(x[np.repeat(np.flatnonzero(y == c), goal - 1)])
            new_y.append(np.full(goal - 1, c, dtype=np.int64))
        elif n < goal:
            by_k.setdefault(min(k_neighbors, n - 1), {})[c] = goal
    for k, strategy in sorted(by_k.items()):
        # the fit sees all classes (SMOTE wants the majority present); only `strategy`'s classes grow
        sampler = SMOTE(sampling_strategy=strategy, k_neighbors=k, random_state=int(seed) % 2**32)
        x_res, y_res = sampler.fit_resample(x, y)
        new_x.append(x_res[len(y) :].astype(np.float32))  # imbalanced-learn appends the synthetic rows (CSR in, CSR out)
        new_y.append(np.asarray(y_res[len(y) :], dtype=np.int64))
    stacked = sp.vstack(new_x, format="csr") if sp.issparse(x) else np.concatenate(new_x)
    return stacked, np.concatenate(new_y)


def resample_arrays(x: np.ndarray, y: np.ndarray, config: dict[str, Any], *, seed: int):
    """The in-memory training split resampled as config['resample'] says (estimators; one selection, epoch 0)."""
    method = resample_option(config)
    if method == "smote":
        return smote_resample(x, y, seed=seed)
    if method == "none":
        return x, y
    counts = repeat_counts(y, method, resample_rng(seed, 0), target=resample_target(config))
    take = np.repeat(np.arange(len(y)), counts)
    return x[take], y[take]


def apply_class_weight(estimator, config: dict[str, Any]) -> bool:
    """Set class_weight='balanced' when config['class_weight'] is balanced and the estimator accepts it.

    Returns whether it was set; estimators without the parameter (kNN, the controls) are left as they are.
    """
    if class_weight_option(config) != "balanced":
        return False
    get_params = getattr(estimator, "get_params", None)
    if not callable(get_params) or "class_weight" not in get_params():
        return False
    estimator.set_params(class_weight="balanced")
    return True
