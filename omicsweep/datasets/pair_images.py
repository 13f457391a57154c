"""CNNC's gene-pair images (NEPDF): a 2-D histogram of two genes' log expression across cells.

For genes a, b over N cells (the public CNNC code, `get_xy_label_data_cnn_combine_from_database.py`):
    x = log10(expression + 1e-2);  H = histogram2d(x_a, x_b, bins).T;  image = (log10(H / N + 1e-4) + 4) / 4
Each axis's bin edges span that gene's own min..max (numpy's histogram2d rule, a constant gene sits in the middle
bin), so a gene's bin per cell is computed once and shared by all its pairs. `sigma` > 0 smooths H / N with a
Gaussian (in bins) before the log, study 001's planned smoothing. Empty bins are 0, so images are mostly zeros.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

PSEUDO_EXPRESSION = 1e-2  # CNNC: log10(rpkm + 10**-2)
PSEUDO_DENSITY = 1e-4  # CNNC: log10(H / N + 10**-4), so an empty bin maps to 0 after (+4)/4
MAX_BINS = 255  # bin indices are stored as uint8
GENE_BLOCK = 512  # genes densified at a time
PAIR_BLOCK_ELEMENTS = 1 << 22  # pairs x cells per bincount, ~32 MB of int64 codes


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
