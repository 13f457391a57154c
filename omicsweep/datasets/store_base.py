"""What every kind of store does the same way (the base class of `Store` and `PairTaskStore`); the interface
itself is written down in `omicsweep.datasets.protocol`."""

from __future__ import annotations

import numpy as np

from omicsweep.errors import ConfigError


class StoreMetadata:
    """What every kind of store does the same way: fingerprint and classes from its `meta` dict, row chunks,
    fold checks.

    A subclass sets `meta`, `path`, `n_cells`, `rows_per_chunk`, `n_folds` and `NO_FOLDS_HINT` (what to tell a
    user who asks a store without folds for one).
    """

    NO_FOLDS_HINT = "ingest it with --folds K"

    @property
    def fingerprint(self) -> str:
        return str(self.meta["fingerprint"])

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.meta["classes"]]

    @property
    def n_chunks(self) -> int:  # rows are read in chunks of `rows_per_chunk` (the loader's unit of shuffling)
        return -(-self.n_cells // self.rows_per_chunk)

    def chunk_bounds(self, chunk: int) -> tuple[int, int]:
        start = chunk * self.rows_per_chunk
        return start, min(self.n_cells, start + self.rows_per_chunk)

    def _check_fold(self, fold) -> int:
        if not self.n_folds:
            raise ConfigError(f"config fold={fold!r}: {self.path} has no folds; {self.NO_FOLDS_HINT}")
        if isinstance(fold, bool) or not isinstance(fold, (int, np.integer)) or not 0 <= fold < self.n_folds:
            raise ConfigError(f"config fold={fold!r}: expected an integer 0..{self.n_folds - 1} for {self.path}")
        return int(fold)

    # ---- neutral names (datasets.protocol.SampleStore): a sample is a cell or a gene pair, a feature a gene or
    # a pixel; the loader still reads the cell/gene names, which every store keeps
    @property
    def n_samples(self) -> int:
        return self.n_cells

    @property
    def n_features(self) -> int:
        return self.n_genes

    def features(self) -> np.ndarray:
        """Names of a sample's values, in row order."""
        return self.genes()

    def sample_ids(self) -> np.ndarray:
        return self.cell_ids()
