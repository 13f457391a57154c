"""Seeded train/val/test splits."""

from __future__ import annotations

import numpy as np

from omicsweep.errors import ConfigError


def check_fractions(fractions: tuple[float, float, float]) -> tuple[float, float, float]:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6 or fractions[0] <= 0:
        raise ConfigError(f"split fractions {fractions} must be three non-negative numbers summing to 1, train > 0")
    return tuple(float(f) for f in fractions)  # type: ignore[return-value]


def stratified_split(codes: np.ndarray, *, fractions: tuple[float, float, float], seed: int) -> np.ndarray:
    """Per class, shuffle (seeded) and cut by the fractions; returns split codes 0=train, 1=val, 2=test.

    Every class keeps at least one training cell; small classes fill val, then test, only when they have
    cells to spare, so no class is ever absent from training.
    """
    train_f, val_f, _ = check_fractions(fractions)
    rng = np.random.default_rng(seed)
    split = np.zeros(len(codes), dtype=np.int8)
    for cls in np.unique(codes):
        members = rng.permutation(np.flatnonzero(codes == cls))
        n = len(members)
        n_train = max(1, int(round(n * train_f)))
        n_val = min(n - n_train, int(round(n * val_f)))
        split[members[n_train : n_train + n_val]] = 1
        split[members[n_train + n_val :]] = 2
    return split
