"""Read side of a gene-pair task store, offering the small interface the trial, fitters and loader use of `Store`.

A pair-task store (written by `omicsweep ingest-pairs`, see `omicsweep.datasets.pairs`) is a small zarr group:
    gene_a, gene_b   int32 per pair: index into the store's gene list (meta `genes`, `columns` = their columns
                     in the expression store)
    label, part      int64 / int32 per pair (part: CNNC data part; -1 when the split was given)
    splits           int8 [assignments, pairs]: 0 train, 1 val, 2 test; row k = test fold k (k-fold) or row 0
    columns          int32 per gene: its column in the expression store
    attrs[META_KEY]  classes, folds, expression store location + fingerprint, counts of dropped pairs,
                     provenance and the store's own fingerprint
The images are not stored: they depend on the trial's `bins` and `sigma` and are built from the expression store
when first read (cached in-process, so reused Ray workers and seed re-runs build them once).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from omicsweep.datasets.store import StoreMetadata
from omicsweep.errors import ConfigError, InputError
from omicsweep.tasks import GENE_PAIR_IMAGE

META_KEY = "omicsweep_pairs"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
ROWS_PER_CHUNK = 1024
DEFAULT_BINS = 32  # CNNC's 32 x 32 images
IMAGE_CONFIG_KEYS = ("bins", "sigma")  # trial config keys read by pair-task stores
_CACHE: OrderedDict[tuple, np.ndarray] = OrderedDict()
CACHE_SIZE = 2  # images of two (bins, sigma) settings per process: ~160 MB each for 40k pairs at 32 bins


def is_pair_store(location: Any) -> bool:
    """True for a local folder whose root zarr.json carries the pair-task metadata."""
    if isinstance(location, str) and "://" in location:
        return False
    root = Path(location) / "zarr.json"
    try:
        return META_KEY in json.loads(root.read_text()).get("attributes", {})
    except (OSError, ValueError):
        return False


def image_options(config: dict[str, Any]) -> dict[str, Any]:
    """`bins` (default 32, 4..255) and `sigma` (default 0: no smoothing) from a trial config, checked."""
    from omicsweep.datasets.pair_images import MAX_BINS

    bins, sigma = config.get("bins"), config.get("sigma")
    bins = DEFAULT_BINS if bins is None else bins
    sigma = 0.0 if sigma is None else sigma
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or not 4 <= int(bins) <= MAX_BINS:
        raise ConfigError(f"config bins={bins!r}: expected a whole number of histogram bins, 4..{MAX_BINS}")
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0 <= float(sigma) <= 10:
        raise ConfigError(f"config sigma={sigma!r}: expected a Gaussian smoothing width in bins, 0..10 (0: none)")
    return {"bins": int(bins), "sigma": float(sigma)}


def image_shape(bins: int) -> tuple[int, int, int]:
    """One sample's shape before the loader flattens it: (channels, bins, bins)."""
    return (1, int(bins), int(bins))


def pixel_names(bins: int) -> np.ndarray:
    """Names of a flattened image's values: pixel r{row}c{col} (row: gene b's bin, column: gene a's)."""
    rows, cols = np.divmod(np.arange(int(bins) * int(bins)), int(bins))
    return np.array([f"r{r}c{c}" for r, c in zip(rows, cols)])


class PairTaskStore(StoreMetadata):
    """Gene pairs with labels and splits; rows are pairs and a row's values are its flattened image.

    The loader-facing names are the Store's: `n_cells` = pairs, `n_genes` = pixels (bins * bins), `read_rows` =
    images as CSR. `fold`: in a k-fold store, the data-part fold held out as the test split.
    """

    task_kind = GENE_PAIR_IMAGE
    default_metric = "balanced_accuracy"  # study 001's metric: accuracy hides a collapse to the majority class
    rows_per_chunk = ROWS_PER_CHUNK
    NO_FOLDS_HINT = "it keeps the train/val/test split its pair files give"

    def __init__(self, path: Path | str, fold: int | None = None, *, bins: int = DEFAULT_BINS, sigma: float = 0.0):
        import zarr

        self.path = Path(path)
        if not is_pair_store(self.path):
            raise InputError(f"{self.path}: not a gene-pair task store; create it with `omicsweep ingest-pairs`")
        root = zarr.open_group(str(self.path), mode="r")
        self.meta = dict(root.attrs[META_KEY])
        self._arrays = {key: np.asarray(root[key][:]) for key in ("gene_a", "gene_b", "label", "part", "splits", "columns")}
        options = image_options({"bins": bins, "sigma": sigma})
        self.bins, self.sigma = options["bins"], options["sigma"]
        self.fold = None if fold is None else self._check_fold(fold)

    # ---- metadata ---------------------------------------------------------------------------------------------
    @property
    def provenance(self) -> dict[str, Any]:
        # value_kind 'image': the loader applies no log1p (the images are already CNNC-normalised, 0..1)
        return {**json.loads(self.meta["provenance_json"]), "value_kind": "image", "bins": self.bins, "sigma": self.sigma}

    @property
    def n_cells(self) -> int:
        return len(self._arrays["label"])

    n_pairs = n_cells

    @property
    def n_genes(self) -> int:
        return self.bins * self.bins

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return image_shape(self.bins)

    @property
    def n_folds(self) -> int:
        return int(self.meta.get("n_folds", 0))

    def genes(self) -> np.ndarray:
        """Names of a sample's values: the image's pixel names (`pixel_names`)."""
        return pixel_names(self.bins)

    def pair_genes(self) -> tuple[np.ndarray, np.ndarray]:
        names = np.asarray(self.meta["genes"], dtype=str)
        return names[self._arrays["gene_a"]], names[self._arrays["gene_b"]]

    def cell_ids(self) -> np.ndarray:
        a, b = self.pair_genes()
        return np.char.add(np.char.add(a, "|"), b)

    def labels(self) -> np.ndarray:
        return self._arrays["label"].astype(np.int64)

    def parts(self) -> np.ndarray:
        return self._arrays["part"].astype(np.int64)

    def split_indices(self, split: str, fold: int | None = None) -> np.ndarray:
        """Sorted pair indices of one split; `fold` (or the store's own) picks the data-part fold held out as test."""
        if split not in SPLITS:
            raise InputError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        fold = self.fold if fold is None else self._check_fold(fold)
        return np.flatnonzero(self._arrays["splits"][fold or 0] == SPLITS.index(split))

    # ---- images -----------------------------------------------------------------------------------------------
    def read_rows(self, start: int, stop: int) -> sp.csr_matrix:
        return sp.csr_matrix(self.images()[start:stop])

    def images(self) -> np.ndarray:
        """All pairs' images [pairs, bins * bins] for this store's bins and sigma (built once per process)."""
        key = (self.fingerprint, self.bins, self.sigma)
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
        from omicsweep.datasets.pair_images import expression_gene_bins, pair_images

        binned = expression_gene_bins(self._expression_matrix(), self._arrays["columns"], self.bins)
        images = pair_images(binned, self._arrays["gene_a"], self._arrays["gene_b"], self.bins, sigma=self.sigma)
        _CACHE[key] = images
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
        return images

    def expression_store(self):
        """The expression store the pairs were matched against, refused if it changed since."""
        from omicsweep.datasets.store import Store

        where, expected = self.meta["expression"]["location"], self.meta["expression"]["fingerprint"]
        try:
            store = Store(where)
        except InputError as exc:
            raise InputError(f"{self.path}: its expression store is unreadable ({exc}); run `omicsweep ingest-pairs` again") from None
        if store.fingerprint != expected:
            raise InputError(f"{self.path}: its expression store {where} changed (fingerprint {store.fingerprint}, "
                             f"expected {expected}); run `omicsweep ingest-pairs` again")
        return store

    def _expression_matrix(self) -> sp.csr_matrix:
        store = self.expression_store()
        blocks = [store.read_rows(*store.chunk_bounds(c)) for c in range(store.n_chunks)]
        return sp.vstack(blocks, format="csr")

    def describe(self) -> str:
        return (f"{self.n_cells} gene pairs ({self.task_kind}), {len(self.classes)} classes, "
                f"expression {self.meta['expression']['location']}")

    def summary(self) -> dict[str, Any]:
        counts = np.bincount(self.labels(), minlength=len(self.classes))
        folds = range(max(1, self.n_folds))
        return {
            "path": str(self.path),
            "task": self.task_kind,
            "pairs": self.n_cells,
            "classes": dict(zip(self.classes, counts.tolist())),
            "splits": {s: int(len(self.split_indices(s))) for s in SPLITS},
            **({"folds": [{s: int(len(self.split_indices(s, k))) for s in SPLITS} for k in folds]} if self.n_folds else {}),
            "expression": self.meta["expression"],
            "counts": self.meta["counts"],
            "fingerprint": self.fingerprint,
            "provenance": json.loads(self.meta["provenance_json"]),
        }
