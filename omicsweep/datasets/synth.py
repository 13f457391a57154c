"""Synthetic count corpora with cell-type structure, written straight to a store block by block.

Each cell draws reads from a mixture of a shared, skewed gene distribution and its type's marker genes;
a gene's count is how many reads it got. Memory is bounded by one block, whatever the corpus size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from omicsweep.datasets.store import SPLITS, StoreWriter
from omicsweep.datasets.store_layout import DEFAULT_LAYOUT, StoreLayout
from omicsweep.errors import ConfigError

BLOCK_ROWS = 8192
MARKERS_PER_TYPE = 200
MARKER_SHARE = 0.25
LOOKUP_SIZE = 1 << 22


def _type_labels(n_cells: int, n_types: int, rng: np.random.Generator) -> np.ndarray:
    """Moderately imbalanced type proportions (largest about 10x the smallest)."""
    weights = np.geomspace(1.0, 0.1, n_types)
    return rng.choice(n_types, size=n_cells, p=weights / weights.sum())


def _inverse_cdf_table(popularity: np.ndarray) -> np.ndarray:
    """Gene index for each of LOOKUP_SIZE equal-probability slots: sampling becomes one integer gather."""
    cdf = np.cumsum(popularity / popularity.sum())
    grid = (np.arange(LOOKUP_SIZE) + 0.5) / LOOKUP_SIZE
    return np.searchsorted(cdf, grid, side="right").clip(0, len(popularity) - 1).astype(np.int64)


def _block(
    types: np.ndarray, n_genes: int, reads: int, lookup: np.ndarray, markers: np.ndarray, rng: np.random.Generator
) -> sp.csr_matrix:
    n = len(types)
    per_cell = rng.poisson(reads, size=n)
    rows = np.repeat(np.arange(n, dtype=np.int64), per_cell)
    from_markers = rng.random(len(rows)) < MARKER_SHARE
    genes = lookup[rng.integers(0, len(lookup), size=len(rows))]
    picks = rng.integers(0, markers.shape[1], size=int(from_markers.sum()))
    genes[from_markers] = markers[types[rows[from_markers]], picks]
    keys, counts = np.unique(rows * n_genes + genes, return_counts=True)
    return sp.csr_matrix(
        (counts.astype(np.float32), ((keys // n_genes), (keys % n_genes))), shape=(n, n_genes)
    )


def _labels_and_splits(cells: int, n_types: int, fractions, label_sorted: bool, rng) -> tuple[np.ndarray, np.ndarray]:
    codes = _type_labels(cells, n_types, rng)
    # rows are iid, so contiguous row ranges are stratified in expectation; grouping splits keeps reads sequential
    bounds = np.round(np.cumsum([0, *fractions]) * cells).astype(int)
    split_codes = np.repeat(np.arange(3, dtype=np.int8), np.diff(bounds))
    if label_sorted:  # like a real atlas grouped by sample or type: each split's rows sorted by label
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            codes[lo:hi] = np.sort(codes[lo:hi])
    return codes, split_codes


def _provenance(cells, genes, nnz_per_cell, n_types, seed, fractions, label_sorted, vocab) -> dict:
    return {
        "source": "synthetic",
        "synthetic": True,
        "generator": {"cells": cells, "genes": genes, "nnz_per_cell": nnz_per_cell, "types": n_types,
                      "seed": seed, "markers_per_type": MARKERS_PER_TYPE, "marker_share": MARKER_SHARE,
                      **({"label_sorted": True} if label_sorted else {})},
        "label_column": "type",
        "matrix": "X",
        "value_kind": "counts",
        "preprocessing": [],
        "split": {"method": "contiguous blocks of iid cells", "fractions": list(fractions), "seed": seed,
                  "names": list(SPLITS)},
        **({"vocabulary": str(vocab)} if vocab is not None else {}),
    }


def write_synthetic(
    out: Path,
    *,
    cells: int,
    genes: int,
    nnz_per_cell: int = 1000,
    n_types: int = 20,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    overwrite: bool = False,
    progress=None,
    vocab: Path | None = None,
    label_sorted: bool = False,
    layout: StoreLayout = DEFAULT_LAYOUT,
) -> str:
    """Write a synthetic corpus; rows are grouped by split (train, val, test), types drawn independently.

    vocab: a gene vocabulary file (one symbol a line, as `corpus build --vocab`); its genes name the columns and
    set their number (overriding `genes`). label_sorted: rows sorted by type within each split (the layout of
    many real stores, where block shuffling has to work to mix labels). layout: X's on-disk layout (its row order
    does not apply: synthetic rows are iid already).
    """
    gene_names = None
    if vocab is not None:
        from omicsweep.datasets.corpus import read_vocabulary

        gene_names = np.asarray(read_vocabulary(vocab))
        genes = len(gene_names)
    if cells < 10 or genes < MARKERS_PER_TYPE or n_types < 2:
        raise ConfigError(f"synthetic corpus needs cells >= 10, genes >= {MARKERS_PER_TYPE}, types >= 2")
    if not 0 < nnz_per_cell < genes:
        raise ConfigError(f"--nnz {nnz_per_cell}: must be between 1 and the number of genes ({genes})")
    rng = np.random.default_rng(seed)
    codes, split_codes = _labels_and_splits(cells, n_types, fractions, label_sorted, rng)
    popularity = 1.0 / np.arange(1, genes + 1) ** 0.6
    popularity = popularity[rng.permutation(genes)]
    lookup = _inverse_cdf_table(popularity)
    markers = np.stack([rng.choice(genes, MARKERS_PER_TYPE, replace=False) for _ in range(n_types)])
    reads = int(nnz_per_cell * 1.15)  # a few genes are drawn twice; ~nnz_per_cell distinct genes per cell
    if gene_names is None:
        gene_names = np.array([f"gene_{i:05d}" for i in range(genes)])
    with StoreWriter(out, genes=gene_names, nnz_per_row_hint=nnz_per_cell, overwrite=overwrite,
                     layout=layout) as writer:
        for start in range(0, cells, BLOCK_ROWS):
            writer.append(_block(codes[start : start + BLOCK_ROWS], genes, reads, lookup, markers, rng))
            if progress is not None:
                progress(min(cells, start + BLOCK_ROWS))
        return writer.finish(
            codes=codes, classes=[f"type_{t:02d}" for t in range(n_types)], split_codes=split_codes,
            cell_ids=np.char.add("cell_", np.arange(cells).astype(str)),
            provenance=_provenance(cells, genes, nnz_per_cell, n_types, seed, fractions, label_sorted, vocab),
        )
