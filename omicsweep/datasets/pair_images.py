"""CNNC's gene-pair images (NEPDF): a 2-D histogram of two genes' log expression across cells.

For genes a, b over N cells (the public CNNC code, `get_xy_label_data_cnn_combine_from_database.py`):
    x = log10(expression + 1e-2);  H = histogram2d(x_a, x_b, bins).T;  image = (log10(H / N + 1e-4) + 4) / 4
Each axis's bin edges span that gene's own min..max (numpy's histogram2d rule, a constant gene sits in the middle
bin), so a gene's bin per cell is computed once and shared by all its pairs. `sigma` > 0 smooths H / N with a
Gaussian (in bins) before the log, study 001's planned smoothing. Empty bins are 0, so images are mostly zeros.

A trial's images are a featurisation step (CNNC's featuriser, models/cnnc.py): `PairImages` is the view of a
gene-pair task store whose rows are the pairs' images at the trial's `bins` and `sigma`; the store itself takes
no image settings.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
import scipy.sparse as sp

from omicsweep.errors import ConfigError

PSEUDO_EXPRESSION = 1e-2  # CNNC: log10(rpkm + 10**-2)
PSEUDO_DENSITY = 1e-4  # CNNC: log10(H / N + 10**-4), so an empty bin maps to 0 after (+4)/4
MAX_BINS = 255  # bin indices are stored as uint8
GENE_BLOCK = 512  # genes densified at a time
PAIR_BLOCK_ELEMENTS = 1 << 22  # pairs x cells per bincount, ~32 MB of int64 codes
DEFAULT_BINS = 32  # CNNC's 32 x 32 images
IMAGE_CONFIG_KEYS = ("bins", "sigma")  # trial config keys of CNNC's featuriser
_CACHE: OrderedDict[tuple, np.ndarray] = OrderedDict()
CACHE_SIZE = 2  # images of two (bins, sigma) settings per process: ~160 MB each for 40k pairs at 32 bins


def image_options(config: dict[str, Any]) -> dict[str, Any]:
    """`bins` (default 32, 4..255) and `sigma` (default 0: no smoothing) from a trial config, checked."""
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


def gene_bins(values: np.ndarray, bins: int) -> np.ndarray:
    """Bin index (uint8) of each cell for each gene; values [genes, cells], bins as numpy's histogramdd draws them.

    Edges: linspace(min, max, bins + 1) per gene (min - 0.5 .. max + 0.5 for a constant gene); a value on the
    last edge belongs to the last bin. Searchsorted on the same edges keeps the result identical to histogram2d.
    """
    x = np.log10(np.asarray(values, dtype=np.float64) + PSEUDO_EXPRESSION)
    lo, hi = x.min(axis=1), x.max(axis=1)
    constant = lo == hi
    lo, hi = np.where(constant, lo - 0.5, lo), np.where(constant, hi + 0.5, hi)
    out = np.empty(x.shape, dtype=np.uint8)
    for g in range(x.shape[0]):
        edges = np.linspace(lo[g], hi[g], bins + 1)
        index = np.searchsorted(edges, x[g], side="right")
        index[x[g] == edges[-1]] -= 1
        out[g] = index - 1
    return out


def expression_gene_bins(matrix: sp.csr_matrix, columns: np.ndarray, bins: int) -> np.ndarray:
    """gene_bins of the `columns` of a cells x genes matrix, densified GENE_BLOCK genes at a time."""
    by_gene = sp.csc_matrix(matrix[:, columns])
    out = np.empty((len(columns), matrix.shape[0]), dtype=np.uint8)
    for start in range(0, len(columns), GENE_BLOCK):
        block = by_gene[:, start : start + GENE_BLOCK].toarray().T
        out[start : start + GENE_BLOCK] = gene_bins(block, bins)
    return out


def pair_images(binned: np.ndarray, gene_a: np.ndarray, gene_b: np.ndarray, bins: int, *, sigma: float = 0.0) -> np.ndarray:
    """CNNC images [pairs, bins * bins] (float32, row = gene b's bin, column = gene a's bin, as H.T)."""
    from scipy.ndimage import gaussian_filter

    n_cells = binned.shape[1]
    pixels = bins * bins
    out = np.empty((len(gene_a), pixels), dtype=np.float32)
    step = max(1, PAIR_BLOCK_ELEMENTS // max(1, n_cells))
    for start in range(0, len(gene_a), step):
        a, b = gene_a[start : start + step], gene_b[start : start + step]
        codes = binned[b].astype(np.int64) * bins + binned[a]
        codes += (np.arange(len(a), dtype=np.int64) * pixels)[:, None]
        density = np.bincount(codes.ravel(), minlength=len(a) * pixels).reshape(len(a), bins, bins) / n_cells
        if sigma > 0:
            density = gaussian_filter(density, sigma=(0.0, sigma, sigma))
        out[start : start + len(a)] = ((np.log10(density + PSEUDO_DENSITY) + 4.0) / 4.0).reshape(len(a), pixels)
    return out


def reference_image(x_a: np.ndarray, x_b: np.ndarray, bins: int) -> np.ndarray:
    """One image exactly as CNNC's script computes it (numpy's histogram2d), for checks."""
    la = np.log10(np.asarray(x_a, dtype=np.float64) + PSEUDO_EXPRESSION)
    lb = np.log10(np.asarray(x_b, dtype=np.float64) + PSEUDO_EXPRESSION)
    counts = np.histogram2d(la, lb, bins=bins)[0].T
    return (np.log10(counts / len(la) + PSEUDO_DENSITY) + 4.0) / 4.0


class PairImages:
    """A gene-pair task store seen as images (datasets.protocol.SampleStore): samples are its pairs, features the
    bins x bins pixels (`pixel_names`), `read_rows` the images as CSR. Labels, splits, fingerprint and the rest
    are the store's. The images are built from the expression store when first read and cached in-process by
    (fingerprint, bins, sigma), so reused Ray workers and seed re-runs build them once."""

    def __init__(self, pairs, *, bins: int = DEFAULT_BINS, sigma: float = 0.0) -> None:
        options = image_options({"bins": bins, "sigma": sigma})
        self.pairs = pairs
        self.bins, self.sigma = options["bins"], options["sigma"]

    def __getattr__(self, name: str):  # path, fold, fingerprint, classes, labels, splits, chunking, pair_genes, ...
        if name == "pairs":
            raise AttributeError(name)
        return getattr(self.pairs, name)

    @property
    def provenance(self) -> dict[str, Any]:
        # value_kind 'image': the loader applies no log1p (the images are already CNNC-normalised, 0..1)
        return {**self.pairs.source_provenance, "value_kind": "image", "bins": self.bins, "sigma": self.sigma}

    @property
    def n_features(self) -> int:
        return self.bins * self.bins

    n_genes = n_features  # the cell-named alias the loader reads

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return image_shape(self.bins)

    def features(self) -> np.ndarray:
        """Names of a sample's values: the image's pixel names."""
        return pixel_names(self.bins)

    genes = features

    def read_rows(self, start: int, stop: int) -> sp.csr_matrix:
        return sp.csr_matrix(self.images()[start:stop])

    def images(self) -> np.ndarray:
        """All pairs' images [pairs, bins * bins] at this view's bins and sigma (built once per process)."""
        key = (self.pairs.fingerprint, self.bins, self.sigma)
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
        binned = expression_gene_bins(self.pairs.expression_matrix(), self.pairs.gene_columns(), self.bins)
        gene_a, gene_b = self.pairs.pair_gene_indices()
        images = pair_images(binned, gene_a, gene_b, self.bins, sigma=self.sigma)
        _CACHE[key] = images
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
        return images
