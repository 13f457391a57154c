"""Read one store through another store's genes (and classes): evaluate a model trained on A on an external set B.

    test = align_to_genes(Store("external.zarr"), Store("train.zarr").genes(), classes=Store("train.zarr").classes)
    test.alignment  # {'genes': 765, 'genes_found': 750, 'genes_missing': 15, ...}
    x, y = load_split(test, "test", transform_fitted_on_A)

Genes are matched by name: A's genes missing from B read as zero, B's genes that A lacks are ignored. With
`classes`, B's labels are recoded to A's class indices and B's cells of classes A never saw are left out of
every split (counted in `alignment`). Nothing is copied: rows are remapped as they are read.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from omicsweep.datasets.store import SPLITS, Store
from omicsweep.errors import InputError

LISTED = 50  # missing names kept in `alignment` (counts are exact)


class AlignedStore:
    """A Store seen with another feature order (and class list); everything else is the underlying store's.

    Its features (`n_features`, `features()`, and the gene-named aliases `n_genes`, `genes()`) are the ones it
    was aligned to, so it is a `datasets.protocol.SampleStore` of its own shape."""

    def __init__(self, store: Store, genes, *, classes: list[str] | None = None) -> None:
        self.store = store
        self._features = np.asarray(genes, dtype=str)
        position = {g: i for i, g in enumerate(self._features)}
        own = store.features()
        self._column = np.asarray([position.get(g, -1) for g in own], dtype=np.int64)  # B column -> A column
        found = self._column[self._column >= 0]
        if len(found) == 0:
            raise InputError(
                f"{store.path}: none of its {len(own)} genes is among the {len(self._features)} genes to align to "
                f"(e.g. {', '.join(self._features[:3])}); are they named the same way (symbols vs ids)?"
            )
        present = np.zeros(len(self._features), dtype=bool)
        present[found] = True
        missing = self._features[~present]
        self.alignment: dict[str, Any] = {
            "genes": int(len(self._features)),
            "genes_found": int(present.sum()),
            "genes_missing": int(len(missing)),
            "missing_genes": missing[:LISTED].tolist(),
            "genes_ignored": int((self._column < 0).sum()),
        }
        self._classes = store.classes if classes is None else [str(c) for c in classes]
        self._labels = store.labels()
        if classes is not None:
            index = {c: i for i, c in enumerate(self._classes)}
            recode = np.asarray([index.get(c, -1) for c in store.classes], dtype=np.int64)
            self._labels = recode[self._labels]
            unknown = [c for c, r in zip(store.classes, recode) if r < 0]
            self.alignment["classes_unknown"] = unknown
            self.alignment["cells_unknown_class"] = int((self._labels < 0).sum())

    def __getattr__(self, name: str):  # path, fingerprint, provenance, chunking, sample ids, folds, ...
        return getattr(self.store, name)

    @property
    def shape(self) -> tuple[int, int]:
        return self.store.n_samples, self.n_features

    @property
    def n_features(self) -> int:
        return len(self._features)

    n_genes = n_features

    def features(self) -> np.ndarray:
        return self._features.copy()

    genes = features

    @property
    def classes(self) -> list[str]:
        return list(self._classes)

    def labels(self) -> np.ndarray:
        return self._labels

    def split_indices(self, split: str, fold: int | None = None) -> np.ndarray:
        rows = self.store.split_indices(split, fold)
        return rows[self._labels[rows] >= 0]

    def read_rows(self, start: int, stop: int) -> sp.csr_matrix:
        block = self.store.read_rows(start, stop)
        columns = self._column[block.indices]
        kept = columns >= 0
        rows = np.repeat(np.arange(stop - start), np.diff(block.indptr))[kept]
        return sp.csr_matrix((block.data[kept], (rows, columns[kept])), shape=(stop - start, self.n_features))

    def summary(self) -> dict[str, Any]:
        return {
            **self.store.summary(),
            "genes": self.n_features,
            "splits": {s: int(len(self.split_indices(s))) for s in SPLITS},
            "alignment": self.alignment,
        }


def align_to_genes(store: Store, genes, *, classes: list[str] | None = None) -> AlignedStore:
    """`store` read in the order of `genes` (missing ones zero), optionally recoded to `classes`."""
    return AlignedStore(store, genes, classes=classes)
