"""The per-gene transform every dense model input goes through: log1p for counts, then min-max or z-score
scaling, its statistics fitted on the training split only, streamed chunk by chunk."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omicsweep.atomic import atomic_file
from omicsweep.datasets.store import Store
from omicsweep.errors import ConfigError

SCALINGS = ("minmax", "zscore", "none")  # trial config key `scaling`; minmax is study 000's


@dataclass
class ExpressionTransform:
    """log1p when the store holds counts, then a per-gene scaling fitted on the training split.

    scaling: 'minmax' (study 000: (x - min) / (max - min)), 'zscore' ((x - mean) / std) or 'none'.
    Genes that are constant on the training split are only shifted (their range or std counts as 1).
    """

    log1p: bool
    minimum: np.ndarray
    maximum: np.ndarray
    scaling: str = "minmax"
    mean: np.ndarray | None = None
    std: np.ndarray | None = None

    def __call__(self, dense: np.ndarray) -> np.ndarray:
        if self.log1p:
            np.log1p(dense, out=dense)
        if self.scaling == "minmax":
            shift, scale = self.minimum, self.maximum - self.minimum
        elif self.scaling == "zscore":
            shift, scale = self.mean, self.std.copy()
        else:
            return dense
        scale[scale == 0] = 1.0
        dense -= shift
        dense /= scale
        return dense

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {"log1p": np.array(self.log1p), "minimum": self.minimum, "maximum": self.maximum,
                  "scaling": np.array(self.scaling)}
        if self.mean is not None:
            arrays.update(mean=self.mean, std=self.std)
        return arrays

    @classmethod
    def from_arrays(cls, arrays) -> "ExpressionTransform":
        keys = set(arrays.keys())
        return cls(
            bool(arrays["log1p"]), np.asarray(arrays["minimum"]), np.asarray(arrays["maximum"]),
            scaling=str(arrays["scaling"]) if "scaling" in keys else "minmax",  # checkpoints before `scaling`
            mean=np.asarray(arrays["mean"]) if "mean" in keys else None,
            std=np.asarray(arrays["std"]) if "std" in keys else None,
        )


def split_rows_by_chunk(store: Store, split: str) -> list[np.ndarray]:
    """For each row chunk, the local row offsets that belong to `split`."""
    rows = store.split_indices(split)
    chunk_of_row = rows // store.rows_per_chunk
    bounds = np.searchsorted(chunk_of_row, np.arange(store.n_chunks + 1))
    return [rows[bounds[c] : bounds[c + 1]] - c * store.rows_per_chunk for c in range(store.n_chunks)]


def check_scaling(scaling: str | None) -> str:
    """The trial config's `scaling` (absent or null: minmax), or a ConfigError naming the allowed values."""
    value = "minmax" if scaling is None else str(scaling).lower()
    if value not in SCALINGS:
        raise ConfigError(f"config scaling={scaling!r} is not supported; use one of {', '.join(SCALINGS)}")
    return value


def fit_transform_on_train(store: Store, scaling: str | None = "minmax") -> ExpressionTransform:
    """Per-gene statistics over the training split only (of the store's fold, if any), streamed chunk by chunk.

    Always min and max; with scaling='zscore' also mean and (population) std, accumulated in float64.
    """
    scaling = check_scaling(scaling)
    log1p = store.provenance.get("value_kind") == "counts"
    lo = np.full(store.n_genes, np.inf, dtype=np.float32)
    hi = np.full(store.n_genes, -np.inf, dtype=np.float32)
    total = np.zeros(store.n_genes, dtype=np.float64)
    squares = np.zeros(store.n_genes, dtype=np.float64)
    n_rows = 0
    for chunk, local in enumerate(split_rows_by_chunk(store, "train")):
        if len(local) == 0:
            continue
        start, stop = store.chunk_bounds(chunk)
        values = store.read_rows(start, stop)[local]  # fancy row indexing copies: safe to modify in place
        if log1p:
            np.log1p(values.data, out=values.data)
        # a column with fewer stored values than rows has implicit zeros
        lo = np.minimum(lo, np.asarray(values.min(axis=0).todense()).ravel())
        hi = np.maximum(hi, np.asarray(values.max(axis=0).todense()).ravel())
        if scaling == "zscore":
            data = values.data.astype(np.float64)
            total += np.bincount(values.indices, weights=data, minlength=store.n_genes)
            squares += np.bincount(values.indices, weights=data * data, minlength=store.n_genes)
        n_rows += len(local)
    mean = std = None
    if scaling == "zscore":
        mean64 = total / max(n_rows, 1)
        mean = mean64.astype(np.float32)
        std = np.sqrt(np.maximum(squares / max(n_rows, 1) - mean64 * mean64, 0.0)).astype(np.float32)
    return ExpressionTransform(log1p=log1p, minimum=lo, maximum=hi, scaling=scaling, mean=mean, std=std)


# ---- fitted once per (store fingerprint, fold, scaling), shared by every trial, seed re-run and reproduce ---------


def transform_cache_file(folder: str | Path, store: Store, scaling: str | None) -> Path:
    """Where the fitted transform of (store fingerprint, fold, scaling) lives in a cache `folder` (a run folder's
    transforms/): a small .npz of arrays, never a pickle."""
    fold = "all" if getattr(store, "fold", None) is None else f"fold{int(store.fold)}"
    name = str(store.fingerprint).replace(":", "-")  # "sha256:..." -> a file name every filesystem takes
    return Path(folder) / f"{name}-{fold}-{check_scaling(scaling)}.npz"


def load_or_fit_transform(store: Store, scaling: str | None, folder: str | Path | None) -> ExpressionTransform:
    """The fitted transform from the cache `folder` when there, else `fit_transform_on_train` written there.

    Trials starting together on one machine wait on a lock file, so the first fits and the others read its file
    (written atomically: a reader never sees half of it). A cached file that does not match the store (another
    gene count) is refitted. Without a folder (None), or where it cannot be written, it just fits.
    """
    if folder is None:
        return fit_transform_on_train(store, scaling)
    path = transform_cache_file(folder, store, scaling)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path.with_suffix(".lock"), "a")
    except OSError:  # a read-only or missing shared folder: fit here, as without a cache
        return fit_transform_on_train(store, scaling)
    with lock:
        _lock(lock)
        cached = _read_cached(path, store)
        if cached is not None:
            return cached
        transform = fit_transform_on_train(store, scaling)
        with atomic_file(path) as tmp:
            np.savez(tmp, **transform.to_arrays())
        return transform


def _read_cached(path: Path, store: Store) -> ExpressionTransform | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as arrays:
            transform = ExpressionTransform.from_arrays(arrays)
    except (OSError, ValueError, KeyError):  # unreadable: fit again and replace it
        return None
    return transform if len(transform.minimum) == store.n_genes else None


def _lock(handle) -> None:
    try:
        import fcntl
    except ImportError:  # Windows: no lock; concurrent first trials may each fit (same result, atomic writes)
        return
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # released when the handle closes
