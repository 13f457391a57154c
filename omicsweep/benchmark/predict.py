"""Label new cells with a trained trial's model: rebuild it from its checkpoint, align genes, apply its transform.

A checkpoint folder (a trial's `checkpoint` artifacts) holds model.pt (torch state_dict) or estimator.npz
(fitted numpy attributes), transform.npz (fitted on the training split), trial.json (config, classes),
genes.txt and classes.json (the training store's genes and classes). Nothing is unpickled: torch weights are
read with `weights_only=True` and arrays with `allow_pickle=False`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from omicsweep.datasets.loader import ExpressionTransform
from omicsweep.errors import InputError

NORMALIZATIONS = ("auto", "none", "log1p", "cp10k-log1p")
TOP_K = 3


@dataclass
class TrainedModel:
    """A trial's model ready to predict: genes and classes it was trained on, its transform, the fitted model."""

    name: str
    family: str
    genes: list[str]
    classes: list[str]
    transform: ExpressionTransform
    model: Any
    config: dict[str, Any]
    value_kind: str | None = None  # 'counts', 'log' or 'other': what the training store held

    def predict_proba(self, x: np.ndarray, *, batch_size: int = 4096) -> np.ndarray:
        """Class probabilities for aligned rows (cells x training genes), transform applied here."""
        out = [
            self.predict_transformed(self.transform(np.array(x[start : start + batch_size], dtype=np.float32)))
            for start in range(0, len(x), batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)))

    def predict_transformed(self, dense: np.ndarray) -> np.ndarray:
        """Class probabilities for rows already transformed (as the loader yields them)."""
        import torch

        if self.family == "torch":
            with torch.no_grad():
                return torch.softmax(self.model(torch.from_numpy(np.asarray(dense, dtype=np.float32))), dim=1).numpy()
        from omicsweep.benchmark.training import full_proba

        return full_proba(self.model, dense, len(self.classes))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: unreadable ({exc})") from None


def _restore_estimator(estimator, arrays) -> Any:
    from omicsweep.models.estimator_state import load_estimator_state

    load_estimator_state(estimator, {key: arrays[key] for key in arrays.files})
    if hasattr(estimator, "strategy") and not hasattr(estimator, "_strategy"):
        estimator._strategy = estimator.strategy  # DummyClassifier keeps its resolved strategy privately
    return estimator


def load_trained_model(folder: Path, model: str) -> TrainedModel:
    """Rebuild the registered model `model` from a checkpoint folder."""
    import torch

    from omicsweep.models import Task, get_model

    folder = Path(folder)
    for name in ("trial.json", "transform.npz", "genes.txt"):
        if not (folder / name).exists():
            raise InputError(f"{folder}: checkpoint has no {name}; was the run tracked with checkpoint artifacts?")
    trial = _read_json(folder / "trial.json")
    dataset = _read_json(folder / "classes.json") if (folder / "classes.json").exists() else {}
    genes = [g for g in (folder / "genes.txt").read_text().split("\n") if g]
    classes = [str(c) for c in dataset.get("classes", trial.get("classes", []))]
    with np.load(folder / "transform.npz", allow_pickle=False) as arrays:
        transform = ExpressionTransform.from_arrays(arrays)
    entry = get_model(model)
    config = dict(trial.get("config", {}))
    task = Task(n_features=len(genes), n_classes=len(classes), genes=tuple(genes))  # as the trial built it
    if entry.family == "torch":
        from omicsweep.models.ensemble import build_torch_model  # an `ensemble` config holds several members

        built = build_torch_model(entry, config, task)
    else:
        built = entry.build(config, task)
    if entry.family == "torch":
        state = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
        built.load_state_dict(state)
        built.eval()
    else:
        with np.load(folder / "estimator.npz", allow_pickle=False) as arrays:
            built = _restore_estimator(built, arrays)
        try:
            built.predict_proba(np.zeros((1, len(genes)), dtype=np.float32))
        except Exception as exc:  # state kept outside plain arrays (trees, neighbour indexes)
            raise InputError(f"model {model}: its checkpoint cannot be restored without pickling ({exc})") from None
    return TrainedModel(
        name=model, family=entry.family, genes=genes, classes=classes, transform=transform, model=built,
        config=config, value_kind=dataset.get("value_kind"),
    )


@dataclass
class Alignment:
    matrix: sp.csr_matrix  # cells x training genes
    present: int
    missing: list[str]
    unused: int


def align_genes(matrix, genes: list[str], trained_genes: list[str]) -> Alignment:
    """Columns of `matrix` reordered to `trained_genes` by name; genes the input lacks are zero."""
    position: dict[str, int] = {}
    for i, gene in enumerate(map(str, genes)):
        position.setdefault(gene, i)  # a duplicated name: its first column
    src = np.array([position.get(g, -1) for g in trained_genes])
    found = src >= 0
    selector = sp.csr_matrix(
        (np.ones(int(found.sum()), dtype=np.float32), (src[found], np.flatnonzero(found))),
        shape=(len(genes), len(trained_genes)),
    )
    csr = sp.csr_matrix(matrix, dtype=np.float32)
    return Alignment(
        matrix=(csr @ selector).tocsr(), present=int(found.sum()),
        missing=[g for g, ok in zip(trained_genes, found) if not ok], unused=len(position) - int(found.sum()),
    )


def normalize(matrix: sp.csr_matrix, how: str, *, trained_kind: str | None) -> tuple[sp.csr_matrix, str]:
    """Bring the input to the training store's scale. auto: counts into a log-scale model get cp10k-log1p."""
    from omicsweep.datasets.ingest import value_kind

    if how not in NORMALIZATIONS:
        raise InputError(f"--normalize {how!r}: expected one of {', '.join(NORMALIZATIONS)}")
    if how == "auto":
        how = "cp10k-log1p" if trained_kind == "log" and value_kind(matrix) == "counts" else "none"
    out = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
    if how == "cp10k-log1p":
        totals = np.asarray(out.sum(axis=1)).ravel()
        scale = np.divide(1e4, totals, out=np.zeros_like(totals, dtype=np.float64), where=totals > 0)
        out = sp.diags(scale.astype(np.float32)) @ out
        out = sp.csr_matrix(out)
    if how in ("cp10k-log1p", "log1p"):
        np.log1p(out.data, out=out.data)
    return out, how


@dataclass
class Prediction:
    labels: list[str]
    probability: np.ndarray
    top: list[list[str]]  # TOP_K labels per cell, most probable first
    top_probability: np.ndarray  # cells x TOP_K


def predict_cells(trained: TrainedModel, aligned: sp.csr_matrix) -> Prediction:
    proba = trained.predict_proba(aligned.toarray())
    k = min(TOP_K, proba.shape[1])
    order = np.argsort(-proba, axis=1, kind="stable")[:, :k]
    classes = np.asarray(trained.classes, dtype=object)
    top = classes[order]
    return Prediction(
        labels=list(top[:, 0]), probability=proba[np.arange(len(proba)), order[:, 0]],
        top=[list(row) for row in top], top_probability=np.take_along_axis(proba, order, axis=1),
    )


def read_input(path: Path, *, layer: str | None, use_raw: bool):
    """An h5ad (or AnnData zarr) file and its chosen matrix and gene names."""
    import anndata as ad

    from omicsweep.datasets.ingest import select_matrix

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    try:
        adata = ad.read_zarr(path) if path.is_dir() else ad.read_h5ad(path)
    except Exception as exc:  # h5py/anndata raise many types for a file that is not AnnData
        raise InputError(f"{path}: not a readable h5ad/AnnData zarr ({type(exc).__name__}: {exc})") from None
    matrix, genes, matrix_name = select_matrix(adata, layer=layer, use_raw=use_raw, source=str(path))
    return adata, matrix, list(map(str, genes)), matrix_name


def write_predictions(adata, prediction: Prediction, out: Path, *, info: dict[str, Any]) -> None:
    """Add the prediction columns to obs and write `out` atomically (hidden sibling, then rename)."""
    import os
    import uuid

    import pandas as pd

    obs = adata.obs
    obs["predicted_label"] = pd.Categorical(prediction.labels)
    obs["predicted_probability"] = prediction.probability.astype(np.float64)
    for rank in range(1, prediction.top_probability.shape[1]):
        obs[f"predicted_label_{rank + 1}"] = pd.Categorical([row[rank] for row in prediction.top])
        obs[f"predicted_probability_{rank + 1}"] = prediction.top_probability[:, rank].astype(np.float64)
    obs[f"predicted_top{TOP_K}"] = ["; ".join(row) for row in prediction.top]
    adata.uns["omicsweep_predict"] = {k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in info.items()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}.h5ad"
    try:
        adata.write_h5ad(tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
