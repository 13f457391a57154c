"""Seeded train/val/test splits: stratified, group-held-out, k-fold, and test-only.

Every function returns integer codes per cell; split codes index `store.SPLITS` (0=train, 1=val, 2=test),
fold codes are 0..K-1. A k-fold store also records one train/val/test assignment (`fold_to_split(folds, 0)`),
so code that knows nothing of folds still sees a valid split.
"""

from __future__ import annotations

import numpy as np

from omicsweep.errors import ConfigError

TRAIN, VAL, TEST = 0, 1, 2


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


def _assign_groups(sizes: np.ndarray, targets: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Bins for groups of the given sizes so each bin's total approaches its target, every target > 0 bin used.

    Groups are visited in a seeded random order and each goes to the bin furthest below its target; a bin
    left empty then takes the smallest group of the bin holding the most groups.
    """
    bins = np.full(len(sizes), -1, dtype=np.int64)
    totals = np.zeros(len(targets))
    for g in rng.permutation(len(sizes)):
        b = int(np.argmax(targets - totals))
        bins[g] = b
        totals[b] += sizes[g]
    for b in np.flatnonzero(targets > 0):
        if (bins == b).any():
            continue
        counts = np.bincount(bins, minlength=len(targets))
        donor = int(np.argmax(counts))
        members = np.flatnonzero(bins == donor)
        bins[members[np.argmin(sizes[members])]] = b
    return bins


def _group_codes(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    names, inverse = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    return names, inverse.ravel()


def group_split(groups: np.ndarray, *, fractions: tuple[float, float, float], seed: int, option: str = "--group-col") -> np.ndarray:
    """Whole groups (donors, batches) go to one split each, approximating the fractions by cell count (seeded)."""
    fractions = check_fractions(fractions)
    names, inverse = _group_codes(groups)
    needed = sum(f > 0 for f in fractions)
    if len(names) < needed:
        raise ConfigError(
            f"{option}: {len(names)} group(s) ({', '.join(names)}) cannot fill {needed} splits; each group stays "
            f"whole in one split (give --split fractions with zeros, e.g. 0.8,0.2,0, or use more groups)"
        )
    sizes = np.bincount(inverse).astype(np.float64)
    targets = np.asarray(fractions) * sizes.sum()
    bins = _assign_groups(sizes, targets, np.random.default_rng(seed))
    return bins[inverse].astype(np.int8)


def check_fold_count(folds: int) -> None:
    """K-fold needs a test, a validation and at least one training fold."""
    if folds < 3:
        raise ConfigError(
            f"--folds {folds}: k-fold needs at least 3 folds (fold i is the test set, fold i+1 the validation set, "
            f"the rest train)"
        )


def check_folds(folds: int, *, codes: np.ndarray, classes: list[str], groups: np.ndarray | None) -> None:
    """At least 3 folds, and enough groups (with groups) or cells of the smallest class to fill every fold."""
    check_fold_count(folds)
    if groups is not None:
        n_groups = len(np.unique(np.asarray(groups).astype(str)))
        if folds > n_groups:
            raise ConfigError(f"--folds {folds}: more folds than groups in --group-col ({n_groups}); use at most {n_groups}")
        return
    counts = np.bincount(codes, minlength=len(classes))
    smallest = int(np.argmin(counts))
    if folds > counts[smallest]:
        raise ConfigError(
            f"--folds {folds}: the smallest class {classes[smallest]!r} has {counts[smallest]} cells, fewer than the "
            f"folds; use at most {counts[smallest]} folds or drop small classes with --min-class-size"
        )


def stratified_folds(codes: np.ndarray, *, folds: int, seed: int) -> np.ndarray:
    """Per class, deal the shuffled cells round-robin into K folds; the start fold rotates to balance sizes."""
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(codes), dtype=np.int16)
    start = 0
    for cls in np.unique(codes):
        members = rng.permutation(np.flatnonzero(codes == cls))
        fold[members] = (start + np.arange(len(members))) % folds
        start = (start + len(members)) % folds
    return fold


def group_folds(groups: np.ndarray, *, folds: int, seed: int) -> np.ndarray:
    """Whole groups dealt into K folds of about equal cell counts (seeded)."""
    _, inverse = _group_codes(groups)
    sizes = np.bincount(inverse).astype(np.float64)
    bins = _assign_groups(sizes, np.full(folds, sizes.sum() / folds), np.random.default_rng(seed))
    return bins[inverse].astype(np.int16)


def fold_to_split(folds: np.ndarray, fold: int, n_folds: int) -> np.ndarray:
    """Split codes when fold `fold` is the test set: test = fold, val = the next fold, train = the rest."""
    split = np.full(len(folds), TRAIN, dtype=np.int8)
    split[folds == (fold + 1) % n_folds] = VAL
    split[folds == fold] = TEST
    return split


def test_only_split(n_cells: int) -> np.ndarray:
    """Every cell in the test split: an external test set for models trained on another store."""
    return np.full(n_cells, TEST, dtype=np.int8)


test_only_split.__test__ = False  # type: ignore[attr-defined]  # not a pytest test when imported into a test module
