"""A small synthetic store with planted marker genes: the ground truth a gene-importance method must recover.

Every cell draws Poisson background counts over all genes (gene means log-uniform in `background`, by default
0.02 to 0.5: most of a cell's genes are zero, as in droplet data); a cell of class c draws its class's `markers`
genes from a much higher mean (`marker_mean`). Nothing else separates the
classes, so a model that classifies them has to use the planted genes, and an attribution of it (`omicsweep
explain`) that works ranks them on top. The planted genes are in the store's provenance:
`provenance["generator"]["markers"]` = {class: [gene, ...]}.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from omicsweep.datasets.store import SPLITS, StoreWriter
from omicsweep.errors import ConfigError


def planted_markers(n_genes: int, n_classes: int, markers: int, rng: np.random.Generator) -> np.ndarray:
    """(n_classes, markers) distinct gene indices, no gene a marker of two classes."""
    if n_classes * markers > n_genes:
        raise ConfigError(f"{n_classes} classes x {markers} markers need at least {n_classes * markers} genes")
    return rng.permutation(n_genes)[: n_classes * markers].reshape(n_classes, markers)


def write_marker_store(
    out: Path,
    *,
    cells: int = 600,
    genes: int = 200,
    n_classes: int = 4,
    markers: int = 5,
    marker_mean: float = 20.0,
    background: tuple[float, float] = (0.02, 0.5),
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    overwrite: bool = False,
    gene_prefix: str = "gene_",
) -> dict[str, list[str]]:
    """Write the store (classes balanced, splits random) and return {class: its planted genes}."""
    if cells < 10 or n_classes < 2 or markers < 1:
        raise ConfigError("a planted-marker store needs cells >= 10, classes >= 2 and markers >= 1")
    rng = np.random.default_rng(seed)
    planted = planted_markers(genes, n_classes, markers, rng)
    codes = rng.permutation(np.arange(cells) % n_classes)
    split_codes = rng.choice(len(SPLITS), size=cells, p=list(fractions)).astype(np.int8)
    means = np.exp(rng.uniform(np.log(background[0]), np.log(background[1]), size=genes))
    lam = np.broadcast_to(means, (cells, genes)).copy()
    lam[np.arange(cells)[:, None], planted[codes]] = marker_mean
    counts = rng.poisson(lam).astype(np.float32)
    gene_names = np.array([f"{gene_prefix}{i:04d}" for i in range(genes)])
    classes = [f"class_{c}" for c in range(n_classes)]
    truth = {classes[c]: [str(gene_names[g]) for g in planted[c]] for c in range(n_classes)}
    provenance = {
        "source": "synthetic", "synthetic": True, "label_column": "type", "matrix": "X", "value_kind": "counts",
        "preprocessing": [], "split": {"method": "random", "fractions": list(fractions), "seed": seed,
                                       "names": list(SPLITS)},
        "generator": {"kind": "planted_markers", "cells": cells, "genes": genes, "classes": n_classes,
                      "markers_per_class": markers, "marker_mean": marker_mean, "background": list(background),
                      "seed": seed, "markers": truth},
    }
    with StoreWriter(Path(out), genes=gene_names, overwrite=overwrite) as writer:
        writer.append(sp.csr_matrix(counts))
        writer.finish(codes=codes, classes=classes, split_codes=split_codes,
                      cell_ids=np.char.add("cell_", np.arange(cells).astype(str)), provenance=provenance)
    return truth
