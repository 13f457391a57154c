"""Read side of a gene-pair task store, offering the small interface the trial, fitters and loader use of `Store`.

A pair-task store (written by `omicsweep ingest-pairs`, see `omicsweep.datasets.pairs`) is a small zarr group:
    gene_a, gene_b   int32 per pair: index into the store's gene list (meta `genes`, `columns` = their columns
                     in the expression store)
    label, part      int64 / int32 per pair (part: CNNC data part; -1 when the split was given)
    splits           int8 [assignments, pairs]: 0 train, 1 val, 2 test; row k = test fold k (k-fold) or row 0
    columns          int32 per gene: its column in the expression store
    attrs[META_KEY]  classes, folds, expression store location + fingerprint, counts of dropped pairs,
                     provenance and the store's own fingerprint
The images are not stored and the store takes no image settings: CNNC's featuriser reads the store through
`pair_images.PairImages` at the trial's `bins` and `sigma` (`imaged`). Looked at without a model (describe,
`omicsweep info`, genes.txt, a sweep's pre-trial checks), a store's rows are its default view, CNNC's 32 x 32
images without smoothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from omicsweep.datasets.pair_images import DEFAULT_BINS, PairImages
from omicsweep.datasets.store_base import StoreMetadata
from omicsweep.errors import InputError
from omicsweep.tasks import GENE_PAIR_IMAGE

META_KEY = "omicsweep_pairs"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
ROWS_PER_CHUNK = 1024


def is_pair_store(location: Any) -> bool:
    """True for a local folder whose root zarr.json carries the pair-task metadata."""
    if isinstance(location, str) and "://" in location:
        return False
    root = Path(location) / "zarr.json"
    try:
        return META_KEY in json.loads(root.read_text()).get("attributes", {})
    except (OSError, ValueError):
        return False


class PairTaskStore(StoreMetadata):
    """Gene pairs with labels and splits (samples are pairs); a row's values are its image in the default view.

    `imaged(bins, sigma)`: the pairs as images at other settings (CNNC's featuriser). Samples are pairs, features
    the default view's pixels, `read_rows` the images as CSR (datasets.protocol.SampleStore); the cell-named
    aliases the loader reads (`n_cells`, `n_genes`, `genes()`, `cell_ids()`) are the same. `fold`: in a k-fold
    store, the data-part fold held out as the test split.
    """

    task_kind = GENE_PAIR_IMAGE
    default_metric = "balanced_accuracy"  # study 001's metric: accuracy hides a collapse to the majority class
    rows_per_chunk = ROWS_PER_CHUNK
    NO_FOLDS_HINT = "it keeps the train/val/test split its pair files give"

    def __init__(self, path: Path | str, fold: int | None = None):
        import zarr

        self.path = Path(path)
        if not is_pair_store(self.path):
            raise InputError(f"{self.path}: not a gene-pair task store; create it with `omicsweep ingest-pairs`")
        root = zarr.open_group(str(self.path), mode="r")
        self.meta = dict(root.attrs[META_KEY])
        self._arrays = {key: np.asarray(root[key][:]) for key in ("gene_a", "gene_b", "label", "part", "splits", "columns")}
        self.fold = None if fold is None else self._check_fold(fold)

    def imaged(self, bins: int = DEFAULT_BINS, sigma: float = 0.0) -> PairImages:
        """These pairs as CNNC images at `bins` and `sigma` (a view: samples, labels and splits are this store's)."""
        return PairImages(self, bins=bins, sigma=sigma)

    # ---- metadata ---------------------------------------------------------------------------------------------
    @property
    def source_provenance(self) -> dict[str, Any]:
        """How the pairs were made (ingest-pairs' record), without any view's image settings."""
        return json.loads(self.meta["provenance_json"])

    @property
    def provenance(self) -> dict[str, Any]:
        return self.imaged().provenance

    @property
    def n_samples(self) -> int:
        return len(self._arrays["label"])

    n_cells = n_samples

    @property
    def n_features(self) -> int:
        return self.imaged().n_features

    n_genes = n_features

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.imaged().input_shape

    @property
    def n_folds(self) -> int:
        return int(self.meta.get("n_folds", 0))

    def features(self) -> np.ndarray:
        """Names of a sample's values in the default view: the image's pixel names (`pixel_names`)."""
        return self.imaged().features()

    genes = features

    def pair_genes(self) -> tuple[np.ndarray, np.ndarray]:
        names = np.asarray(self.meta["genes"], dtype=str)
        return names[self._arrays["gene_a"]], names[self._arrays["gene_b"]]

    def pair_gene_indices(self) -> tuple[np.ndarray, np.ndarray]:
        """Each pair's two genes as indices into `gene_columns()`."""
        return self._arrays["gene_a"], self._arrays["gene_b"]

    def gene_columns(self) -> np.ndarray:
        """Each of the store's genes' column in the expression store."""
        return self._arrays["columns"]

    def sample_ids(self) -> np.ndarray:
        """'GENE_A|GENE_B' per pair."""
        a, b = self.pair_genes()
        return np.char.add(np.char.add(a, "|"), b)

    cell_ids = sample_ids

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

    # ---- rows: the default view's images ----------------------------------------------------------------------
    def read_rows(self, start: int, stop: int) -> sp.csr_matrix:
        return self.imaged().read_rows(start, stop)

    def images(self) -> np.ndarray:
        return self.imaged().images()

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

    def expression_matrix(self) -> sp.csr_matrix:
        """The expression store's whole matrix (cells x genes), what the images are histograms of."""
        store = self.expression_store()
        blocks = [store.read_rows(*store.chunk_bounds(c)) for c in range(store.n_chunks)]
        return sp.vstack(blocks, format="csr")

    def describe(self) -> str:
        return (f"{self.n_samples} gene pairs ({self.task_kind}), {len(self.classes)} classes, "
                f"expression {self.meta['expression']['location']}")

    def summary(self) -> dict[str, Any]:
        counts = np.bincount(self.labels(), minlength=len(self.classes))
        folds = range(max(1, self.n_folds))
        return {
            "path": str(self.path),
            "task": self.task_kind,
            "pairs": self.n_samples,
            "classes": dict(zip(self.classes, counts.tolist())),
            "splits": {s: int(len(self.split_indices(s))) for s in SPLITS},
            **({"folds": [{s: int(len(self.split_indices(s, k))) for s in SPLITS} for k in folds]} if self.n_folds else {}),
            "expression": self.meta["expression"],
            "counts": self.meta["counts"],
            "fingerprint": self.fingerprint,
            "provenance": json.loads(self.meta["provenance_json"]),
        }
