"""The one written interface of a store: what the trial, the fitters, the loader and the featurisers read.

A sample is a row (a cell, a gene pair); a feature is one of its values (a gene, an image pixel). `Store` (cells x
genes), `PairTaskStore` (gene pairs) and a featuriser's view of one (`pair_images.PairImages`: pairs x pixels at a
trial's bins) all satisfy it; `isinstance(store, SampleStore)` checks the names (runtime_checkable).

A store knows nothing about models or trial hyperparameters. The cell-named aliases the loader reads today
(`n_cells`, `n_genes`, `genes()`, `cell_ids()`) are kept by every store beside these neutral names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import scipy.sparse as sp


@runtime_checkable
class SampleStore(Protocol):
    path: Path | str
    fold: int | None
    rows_per_chunk: int  # rows are read in chunks of this many (the loader's unit of shuffling)
    task_kind: str  # omicsweep.tasks: what a sample is and what is predicted
    default_metric: str  # the sweep's metric unless --metric says otherwise

    @property
    def n_samples(self) -> int: ...

    @property
    def n_features(self) -> int: ...

    def features(self) -> np.ndarray:
        """Names of a sample's values, in row order."""
        ...

    def sample_ids(self) -> np.ndarray: ...

    @property
    def classes(self) -> list[str]: ...

    def labels(self) -> np.ndarray:
        """Class index per sample (int64)."""
        ...

    def split_indices(self, split: str, fold: int | None = None) -> np.ndarray:
        """Sorted sample indices of 'train', 'val' or 'test' (of `fold`, or the store's own, in a k-fold store)."""
        ...

    @property
    def n_folds(self) -> int: ...

    @property
    def fingerprint(self) -> str:
        """sha256 over everything a trial's result depends on."""
        ...

    @property
    def provenance(self) -> dict[str, Any]:
        """Where the data came from and how it was made; `value_kind` ('counts', 'log', 'image', ...)."""
        ...

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One sample's shape before it is flattened into n_features values."""
        ...

    @property
    def n_chunks(self) -> int: ...

    def chunk_bounds(self, chunk: int) -> tuple[int, int]: ...

    def read_rows(self, start: int, stop: int) -> sp.csr_matrix:
        """Samples [start, stop) as CSR, n_features columns."""
        ...

    def describe(self) -> str: ...

    def summary(self) -> dict[str, Any]: ...
