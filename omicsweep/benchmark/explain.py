"""Gene importance from attention (issue 14): the attention each gene receives, averaged over heads and layers,
summed per class over the cells of a split, as scBERT and study 003 ranked genes; beside it scanpy's
`rank_genes_groups` on the same cells, so a reader sees whether attention found the markers.

scBERT's script built the n x n attention matrix per layer per cell (16,907^2 at fp32: ~1.1 GB a head). Here a
forward pre-hook on every `performer.Attention` of the model captures the module's input, and the module's own
`column_sums` turns it into the attention each position receives: from the FAVOR+ random features in O(n m)
memory (`favor_column_sums`: phi(k_j) . sum_i phi(q_i) / D_i), or by query chunks for `attention: exact`. The
model's forward itself runs unchanged, so any registered model with Performer attention is explained the same way.

Positions map to the trained model's genes by the model's `gene_index` buffer where it has one (scbert: the store
column of each vocabulary gene; a vocabulary gene absent from the store and the appended position map to none),
else position i is gene i.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from omicsweep.errors import InputError
from omicsweep.models.performer import Attention

DEFAULT_TOP = 20
BATCH_SIZE = 64


def attention_modules(model: torch.nn.Module) -> list[Attention]:
    return [m for m in model.modules() if isinstance(m, Attention)]


def check_explainable(model: torch.nn.Module, name: str) -> None:
    """An InputError for a model without Performer attention (an mlp, an estimator)."""
    if not isinstance(model, torch.nn.Module) or not attention_modules(model):
        raise InputError(f"model {name}: has no attention layers to explain; explain needs a model with Performer "
                         "attention (scbert)")


@torch.no_grad()
def attention_received(model: torch.nn.Module, run, *, chunk: int = 1024) -> torch.Tensor:
    """(b, n): the attention each position receives during `run()` (one forward of `model`), summed over queries,
    averaged over heads and over every Attention module the forward went through (layers, ensemble members)."""
    sums: dict[int, list[torch.Tensor]] = {}  # per Attention module: one part per forward call (a model may score
    # a batch in chunks of cells), joined along the batch below

    def hook(module: Attention, args):
        sums.setdefault(id(module), []).append(module.column_sums(args[0], chunk=chunk).float().mean(dim=1))

    handles = [m.register_forward_pre_hook(hook) for m in attention_modules(model)]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    if not sums:
        raise InputError("the model's forward went through none of its attention layers")
    return torch.stack([torch.cat(parts) for parts in sums.values()]).mean(dim=0)


def position_genes(model: torch.nn.Module, n_positions: int, n_genes: int) -> np.ndarray:
    """The model gene (column of the trained genes) of each attention position, -1 for none."""
    index = getattr(model, "gene_index", None)
    if index is None:  # an ensemble: its members share the genes
        index = next((getattr(m, "gene_index") for m in model.modules() if hasattr(m, "gene_index")), None)
    columns = np.arange(n_positions) if index is None else np.asarray(index.cpu(), dtype=np.int64)
    columns = np.concatenate([columns, np.full(max(0, n_positions - len(columns)), -1)])[:n_positions]
    return np.where((columns >= 0) & (columns < n_genes), columns, -1)


@dataclass
class Importance:
    classes: list[str]
    genes: list[str]
    scores: np.ndarray  # (classes, genes): attention received, summed over the class's cells
    cells: np.ndarray  # cells per class


def class_importance(trained, rows: sp.csr_matrix, labels: np.ndarray, classes: list[str], *,
                     batch_size: int = BATCH_SIZE, chunk: int = 1024) -> Importance:
    """Per class, the attention each of the trained model's genes receives, summed over the class's cells.
    `rows`: cells x the trained genes (aligned and normalised as `predict` does); `labels`: codes into `classes`
    (the cells' known labels, e.g. the store's)."""
    from omicsweep.models.featurise import run_model

    model = trained.model.eval()
    check_explainable(model, trained.name)
    n_genes, n_classes = len(trained.genes), len(classes)
    scores = np.zeros((n_classes, n_genes), dtype=np.float64)
    columns = None
    for start in range(0, rows.shape[0], batch_size):
        batch = rows[start : start + batch_size]
        inputs = trained.featuriser(batch, trained.genes, trained.transform)
        received = attention_received(model, lambda: run_model(model, inputs), chunk=chunk).double().numpy()
        if columns is None:
            columns = position_genes(model, received.shape[1], n_genes)
        kept = columns >= 0
        per_class = np.zeros((n_classes, received.shape[1]))
        np.add.at(per_class, labels[start : start + batch_size], received)
        np.add.at(scores.T, columns[kept], per_class[:, kept].T)
    return Importance(classes=list(classes), genes=list(trained.genes), scores=scores,
                      cells=np.bincount(labels, minlength=n_classes))


def ranking_table(importance: Importance, *, genes_present: np.ndarray | None = None):
    """class,gene,score,rank (rank 1 = most attention) for every class with cells, over the genes present."""
    import pandas as pd

    keep = np.ones(len(importance.genes), bool) if genes_present is None else np.asarray(genes_present, bool)
    genes = np.asarray(importance.genes, dtype=object)[keep]
    frames = []
    for c, name in enumerate(importance.classes):
        if importance.cells[c] == 0:
            continue
        score = importance.scores[c, keep]
        order = np.argsort(-score, kind="stable")
        frames.append(pd.DataFrame({"class": name, "gene": genes[order], "score": score[order],
                                    "rank": np.arange(1, len(order) + 1)}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["class", "gene", "score", "rank"])


def reference_ranking(rows: sp.csr_matrix, labels: np.ndarray, classes: list[str], genes: list[str], *,
                      value_kind: str | None) -> dict[str, list[str]]:
    """{class: genes by scanpy's rank_genes_groups (t-test, one class vs the rest)} on the same cells: counts are
    normalised to 1e4 per cell and log1p'd first, as scanpy's tutorials do; classes with < 2 cells are left out."""
    import anndata as ad
    import pandas as pd
    import scanpy as sc

    counts = np.bincount(labels, minlength=len(classes))
    shown = [c for c in range(len(classes)) if counts[c] >= 2]
    if len(shown) < 2:
        return {}
    keep = np.isin(labels, shown)
    adata = ad.AnnData(X=sp.csr_matrix(rows[keep], dtype=np.float32), var=pd.DataFrame(index=pd.Index(genes)))
    adata.var_names_make_unique()
    adata.obs["class"] = pd.Categorical([classes[c] for c in labels[keep]])
    if value_kind == "counts":
        sc.pp.normalize_total(adata, target_sum=1e4)
        sc.pp.log1p(adata)
    sc.tl.rank_genes_groups(adata, "class", method="t-test", n_genes=len(genes))
    names = adata.uns["rank_genes_groups"]["names"]
    position = {name: i for i, name in enumerate(adata.var_names)}
    return {cls: [genes[position[g]] for g in names[cls]] for cls in names.dtype.names}


def overlap_table(table, reference: dict[str, list[str]], top: int):
    """Per class: cells, its top-`top` attention genes, rank_genes_groups' top `top`, and their overlap."""
    import pandas as pd

    rows: list[dict[str, Any]] = []
    for name, group in table.groupby("class", sort=False):
        mine = list(group.sort_values("rank")["gene"][:top])
        theirs = reference.get(name, [])[:top]
        shared = [g for g in mine if g in set(theirs)]
        rows.append({"class": name, "top": top, "overlap": len(shared) if theirs else None,
                     "overlap_fraction": len(shared) / top if theirs else None, "shared": ";".join(shared),
                     "attention_top": ";".join(mine), "rank_genes_groups_top": ";".join(theirs)})
    return pd.DataFrame(rows)


@dataclass
class Explanation:
    importance: Importance
    table: Any  # pandas: class,gene,score,rank
    reference: dict[str, list[str]]  # class -> rank_genes_groups' order
    overlap: Any  # pandas: overlap_table
    notes: list[str]


def explain_store(trained, store_path, *, split: str = "test", top: int = DEFAULT_TOP,
                  batch_size: int = BATCH_SIZE) -> Explanation:
    """Explain `trained` on the cells of `split` of a store: its genes aligned to the model's by name and
    normalised the way `predict` does, its known labels grouping the cells."""
    from omicsweep.benchmark.predict import align_genes, normalize
    from omicsweep.datasets.open import open_store
    from omicsweep.datasets.split_matrix import split_csr
    from omicsweep.datasets.transform import ExpressionTransform

    check_explainable(trained.model, trained.name)
    store = open_store(store_path)
    if split not in ("train", "val", "test"):
        raise InputError(f"--split {split!r}: expected train, val or test")
    genes = list(map(str, store.genes()))
    raw = ExpressionTransform(False, np.zeros(len(genes)), np.ones(len(genes)), scaling="none")
    matrix, labels = split_csr(store, split, raw)
    if matrix.shape[0] == 0:
        raise InputError(f"{store_path}: its {split} split has no cells")
    value_kind = store.provenance.get("value_kind")
    values, how = normalize(matrix, "auto", trained_kind=trained.value_kind)
    aligned = align_genes(values, genes, trained.genes)
    if aligned.present < len(trained.genes) / 2:
        raise InputError(f"{store_path}: has {aligned.present} of the model's {len(trained.genes)} genes; explain "
                         "needs the store the model was trained on, or one with most of its genes")
    classes = list(map(str, store.classes))
    importance = class_importance(trained, aligned.matrix, labels, classes, batch_size=batch_size)
    present = np.isin(np.asarray(trained.genes, dtype=object), np.asarray(genes, dtype=object))
    table = ranking_table(importance, genes_present=present)
    reference_values = aligned.matrix if how == "none" else align_genes(matrix, genes, trained.genes).matrix
    reference = reference_ranking(reference_values[:, present], labels, classes,
                                  list(np.asarray(trained.genes, dtype=object)[present]), value_kind=value_kind)
    notes = [f"{matrix.shape[0]} {split} cells of {store_path}; {aligned.present} of {len(trained.genes)} model "
             f"genes present ({len(aligned.missing)} missing, left out of the ranking); normalization {how}"]
    return Explanation(importance, table, reference, overlap_table(table, reference, top), notes)


def write_csv(frame, path) -> None:
    from omicsweep.atomic import atomic_file

    with atomic_file(path) as tmp:
        frame.to_csv(tmp, index=False)
