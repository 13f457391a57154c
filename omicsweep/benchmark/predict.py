"""Label new samples with a trained trial's model: rebuild it from its checkpoint, align features, apply its transform.

A checkpoint folder (a trial's `checkpoint` artifacts) holds model.pt (torch state_dict) or estimator.skops (the
fitted estimator in skops' format), transform.npz (fitted on the training split), trial.json (config, classes),
genes.txt and classes.json (the training store's genes, classes and value kind). Nothing is unpickled: torch
weights are read with `weights_only=True`, arrays with `allow_pickle=False`, and a skops file trusting only the
types `models.estimator_state` allows.

The model is rebuilt for the Task the trial built: a cell task's genes, or for a gene-pair task the images of the
trial's `bins` (its pixel names, shape (1, bins, bins)); cells are labelled into h5ad or CSV (`predict_cells`),
the pairs of a pair-task store into CSV (`predict_pairs`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from omicsweep.datasets.transform import ExpressionTransform
from omicsweep.errors import InputError
from omicsweep.tasks import CELL_CLASSIFICATION, GENE_PAIR_IMAGE

NORMALIZATIONS = ("auto", "none", "log1p", "cp10k-log1p")
TOP_K = 3
OUTPUT_SUFFIXES = {CELL_CLASSIFICATION: (".h5ad", ".csv"), GENE_PAIR_IMAGE: (".csv",)}


@dataclass
class TrainedModel:
    """A trial's model ready to predict: genes and classes it was trained on, its transform, the fitted model."""

    name: str
    family: str
    genes: list[str]  # feature names in model order: genes, or a pair task's pixel names
    classes: list[str]
    transform: ExpressionTransform
    model: Any
    config: dict[str, Any]
    value_kind: str | None = None  # 'counts', 'log', 'other' or 'image': what the training store held
    task: Any = None  # models.Task the trial built (kind, n_features, input_shape)
    featuriser: Any = None  # the model entry's featuriser (models/featurise.py): rows -> its inputs

    def predict_proba(self, x, *, batch_size: int = 4096) -> np.ndarray:
        """Class probabilities for aligned rows (samples x training features, dense or CSR): a torch model's
        inputs are made by its featuriser (the transform applied there), in the trial's own `batch_size` (its
        activations, e.g. scbert's cells x genes x dim, are what it trained within); an estimator's are the
        transformed rows, `batch_size` at a time."""
        rows = sp.csr_matrix(x, dtype=np.float32)
        if self.family == "torch" and self.config.get("batch_size"):
            batch_size = int(self.config["batch_size"])
        out = [self._predict_rows(rows[start : start + batch_size]) for start in range(0, rows.shape[0], batch_size)]
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)))

    def _predict_rows(self, rows: sp.csr_matrix) -> np.ndarray:
        if self.family == "torch":
            import torch

            from omicsweep.models.featurise import run_model

            with torch.no_grad():
                inputs = self.featuriser(rows, self.genes, self.transform)
                return torch.softmax(run_model(self.model, inputs).float(), dim=1).numpy()
        return self.predict_transformed(self.transform(rows.toarray().astype(np.float32, copy=False)))

    def predict_transformed(self, dense: np.ndarray) -> np.ndarray:
        """Class probabilities for rows already transformed (as the loader's dense batches yield them)."""
        import torch

        if self.family == "torch":
            from omicsweep.models.featurise import run_model

            with torch.no_grad():
                x = torch.from_numpy(np.asarray(dense, dtype=np.float32))
                return torch.softmax(run_model(self.model, x).float(), dim=1).numpy()
        from omicsweep.benchmark.estimator_fit import full_proba

        return full_proba(self.model, dense, len(self.classes))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: unreadable ({exc})") from None


def trained_task(entry, config: dict[str, Any], genes: list[str], n_classes: int, *, value_kind: str | None):
    """The Task the trial built from its store: a pair task's images follow the trial's `bins`, whatever genes.txt
    (written for the store's default bins) lists; a cell task's features are the store's genes."""
    from omicsweep.datasets.pair_images import image_options, image_shape, pixel_names
    from omicsweep.models import Task

    # classes.json's value_kind 'image' is a pair-task store's; a model that takes only pairs says so too
    if value_kind == "image" or tuple(entry.tasks) == (GENE_PAIR_IMAGE,):
        bins = image_options(config)["bins"]
        pixels = tuple(map(str, pixel_names(bins)))
        return Task(n_features=len(pixels), n_classes=n_classes, kind=GENE_PAIR_IMAGE, genes=pixels,
                    input_shape=image_shape(bins))
    return Task(n_features=len(genes), n_classes=n_classes, genes=tuple(genes))


def _load_model(entry, config: dict[str, Any], task, folder: Path) -> Any:
    """The fitted model: torch weights into a freshly built module, or the estimator's skops file."""
    import torch

    from omicsweep.models.estimator_state import ESTIMATOR_FILE, load_estimator, state_file

    if entry.family == "torch":
        from omicsweep.models.ensemble import build_torch_model  # an `ensemble` config holds several members

        built = build_torch_model(entry, config, task)
        if not (folder / "model.pt").exists():
            raise InputError(f"{folder}: checkpoint has no model.pt for torch model {entry.name}")
        built.load_state_dict(torch.load(folder / "model.pt", map_location="cpu", weights_only=True))
        return built.eval()
    if not (folder / ESTIMATOR_FILE).exists() and (folder / "estimator.npz").exists():
        raise InputError(f"{folder}: an estimator checkpoint from before {ESTIMATOR_FILE} (estimator.npz); "
                         "re-run the trial with `omicsweep reproduce RUN_ID` to get one predict can load")
    kind = type(entry.build(config, task))
    return load_estimator(folder / state_file(kind), kind)  # skops, or the class's own format (xgboost's UBJSON)


def load_trained_model(folder: Path, model: str, *, bundle: Path | None = None) -> TrainedModel:
    """Rebuild the registered model `model` from a checkpoint folder, for the Task its trial trained on; `bundle`:
    the files it reads outside the checkpoint, from `bundle_priors` (an exported model's), instead of their paths."""
    from omicsweep.models import get_model

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
    if bundle is not None:
        from omicsweep.models.scbert_serving import bundled_config

        config = bundled_config(config, Path(bundle))
    task = trained_task(entry, config, genes, len(classes), value_kind=dataset.get("value_kind"))
    if len(transform.minimum) != task.n_features:
        raise InputError(f"{folder}: transform.npz scales {len(transform.minimum)} features but the {model} run's "
                         f"{task.kind} task has {task.n_features}; the checkpoint's files do not belong together")
    return TrainedModel(
        name=model, family=entry.family, genes=list(task.genes), classes=classes, transform=transform,
        model=_load_model(entry, config, task, folder), config=config, value_kind=dataset.get("value_kind"),
        task=task, featuriser=entry.featurise,  # featurisers that fit state would save it in the checkpoint
    )


def bundle_priors(trained: TrainedModel, dest: Path) -> Path | None:
    """`export`: copies in `dest` of the files a model reads outside its checkpoint when built (a scbert's pinned
    pretraining checkpoint and vocabulary), for `load_trained_model(bundle=)`; None where it reads none."""
    if trained.name != "scbert":
        return None
    from omicsweep.models.scbert_serving import bundle_backbone

    return bundle_backbone(trained.config, dest)


def vocabulary_coverage(trained: TrainedModel, aligned: "Alignment", where: str) -> str | None:
    """A model over a vocabulary of its own (scbert): how much of it the input's genes cover, through the training
    store's genes (an InputError below its min_vocab_coverage); None for other models."""
    if trained.name != "scbert":
        return None
    from omicsweep.models.scbert_serving import input_coverage

    missing = set(aligned.missing)
    return input_coverage(trained.model, np.array([g not in missing for g in trained.genes]), trained.config, where)


def check_output(trained: TrainedModel, out: Path) -> None:
    """OUT's suffix must be a format this model's predictions are written in (h5ad or csv for cells, csv for pairs)."""
    allowed = OUTPUT_SUFFIXES[trained.task.kind]
    if Path(out).suffix.lower() not in allowed:
        what = "gene pairs" if trained.task.kind == GENE_PAIR_IMAGE else "cells"
        raise InputError(f"--out {out}: {trained.name} labels {what}; write them to a {' or '.join(allowed)} file")


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
    proba = trained.predict_proba(aligned)
    k = min(TOP_K, proba.shape[1])
    order = np.argsort(-proba, axis=1, kind="stable")[:, :k]
    classes = np.asarray(trained.classes, dtype=object)
    top = classes[order]
    return Prediction(
        labels=list(top[:, 0]), probability=proba[np.arange(len(proba)), order[:, 0]],
        top=[list(row) for row in top], top_probability=np.take_along_axis(proba, order, axis=1),
    )


def read_input(path: Path, *, layer: str | None, use_raw: bool):
    """An h5ad (or AnnData zarr) file and its chosen matrix (CSR float32, finite: checked as ingest checks) and gene
    names."""
    import anndata as ad

    from omicsweep.datasets.ingest import select_matrix, validate_matrix

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    try:
        adata = ad.read_zarr(path) if path.is_dir() else ad.read_h5ad(path)
    except Exception as exc:  # h5py/anndata raise many types for a file that is not AnnData
        raise InputError(f"{path}: not a readable h5ad/AnnData zarr ({type(exc).__name__}: {exc})") from None
    matrix, genes, matrix_name = select_matrix(adata, layer=layer, use_raw=use_raw, source=str(path))
    return adata, validate_matrix(matrix, f"{path} ({matrix_name})"), list(map(str, genes)), matrix_name


@dataclass
class Agreement:
    agreement: float  # share of the `known` cells whose (mapped) true label is the predicted class; nan if none
    known: int  # cells whose true label (through the map) is a class the model knows
    others: int
    table: list[tuple[str, int, list[tuple[str, int]]]]  # per true label: its cells, its 3 most predicted classes


def read_label_map(path: Path) -> dict[str, str]:
    """--truth-map: a JSON object {true label: model class}, or lines 'true label<TAB or comma>model class'."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise InputError(f"{path}: unreadable label map ({exc})") from None
    if text.lstrip().startswith("{"):
        try:
            mapping = json.loads(text)
        except ValueError as exc:
            raise InputError(f"{path}: not a JSON object of true label -> model class ({exc})") from None
        return {str(k): str(v) for k, v in mapping.items()}
    mapping = {}
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            parts = line.split("\t") if "\t" in line else line.split(",")
            if len(parts) != 2:
                raise InputError(f"{path}:{number}: expected 'true label,model class' (or tab-separated): {line!r}")
            mapping[parts[0].strip()] = parts[1].strip()
    return mapping


def label_agreement(truth, predicted, classes, *, mapping: dict[str, str] | None = None) -> Agreement:
    """Known labels against the predicted ones. `mapping` sends true labels onto the model's class names (another
    dataset's vocabulary, e.g. Zheng's 'CD19+ B' -> pbmc3k's 'B'); unmapped labels are compared as they are."""
    import pandas as pd

    labels = pd.Series(np.asarray(truth, dtype=str))
    mapped = labels.map(lambda v: (mapping or {}).get(v, v))
    pred = np.asarray(predicted, dtype=str)
    known = mapped.isin(list(map(str, classes))).to_numpy()
    agree = mapped.to_numpy() == pred
    table = []
    for label, members in sorted(labels.groupby(labels).groups.items(), key=lambda g: -len(g[1])):
        names, counts = np.unique(pred[np.asarray(members)], return_counts=True)
        top = sorted(zip(names.tolist(), counts.tolist()), key=lambda c: (-c[1], c[0]))[:3]
        table.append((str(label), len(members), [(str(n), int(c)) for n, c in top]))
    return Agreement(float(agree[known].mean()) if known.any() else float("nan"), int(known.sum()),
                     int((~known).sum()), table)


def prediction_columns(prediction: Prediction) -> dict[str, Any]:
    """The columns `predict` adds: label and probability of each of the TOP_K best classes, and the top-k list."""
    columns: dict[str, Any] = {
        "predicted_label": list(prediction.labels),
        "predicted_probability": prediction.probability.astype(np.float64),
    }
    for rank in range(1, prediction.top_probability.shape[1]):
        columns[f"predicted_label_{rank + 1}"] = [row[rank] for row in prediction.top]
        columns[f"predicted_probability_{rank + 1}"] = prediction.top_probability[:, rank].astype(np.float64)
    columns[f"predicted_top{TOP_K}"] = ["; ".join(row) for row in prediction.top]
    return columns


def write_predictions(adata, prediction: Prediction, out: Path, *, info: dict[str, Any]) -> None:
    """`out` atomically: an h5ad of the input with the prediction columns in obs (and `info` in uns), or for a
    .csv a table of the cell ids and those columns."""
    import pandas as pd

    from omicsweep.atomic import atomic_file

    columns = prediction_columns(prediction)
    if Path(out).suffix.lower() == ".csv":
        with atomic_file(out) as tmp:
            pd.DataFrame({"cell": list(map(str, adata.obs_names)), **columns}).to_csv(tmp, index=False)
        return
    obs = adata.obs
    for name, values in columns.items():
        obs[name] = pd.Categorical(values) if name.startswith("predicted_label") else values
    adata.uns["omicsweep_predict"] = {k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in info.items()}
    with atomic_file(out) as tmp:
        adata.write_h5ad(tmp)


# ---- gene-pair tasks: the pairs of a pair-task store, imaged as the trial imaged its own ------------------------


def read_pair_store(path: Path, trained: TrainedModel):
    """The pair-task store at `path` as the trial's model read it (its featuriser's view: images made with the
    trial's `bins` and `sigma`), with its `fold`'s split."""
    from omicsweep.datasets.open import open_store
    from omicsweep.datasets.pair_store import is_pair_store
    from omicsweep.models import get_model

    if not is_pair_store(path):
        raise InputError(f"{path}: {trained.name} labels gene pairs; pass a gene-pair task store (pairs matched to "
                         "an expression store, made with `omicsweep ingest-pairs`)")
    return get_model(trained.name).featurised_store(open_store(path, fold=trained.config.get("fold")), trained.config)


def predict_pairs(trained: TrainedModel, store) -> Prediction:
    """Every pair of `store` labelled from its image (the pixel names align the image to the model's)."""
    aligned = align_genes(sp.csr_matrix(store.images()), list(map(str, store.genes())), trained.genes)
    if aligned.missing:
        raise InputError(f"{store.path}: its images lack {len(aligned.missing)} of the model's pixels")
    return predict_cells(trained, aligned.matrix)


def write_pair_predictions(store, prediction: Prediction, out: Path) -> None:
    """A CSV (atomic) of every pair: gene_a, gene_b, its split and known label, then the prediction columns."""
    import pandas as pd

    from omicsweep.atomic import atomic_file
    from omicsweep.datasets.pair_store import SPLITS

    gene_a, gene_b = store.pair_genes()
    split = np.full(store.n_samples, "", dtype=object)
    for name in SPLITS:
        split[store.split_indices(name)] = name
    table = pd.DataFrame({
        "gene_a": gene_a, "gene_b": gene_b, "split": split,
        "label": np.asarray(store.classes, dtype=object)[store.labels()], **prediction_columns(prediction),
    })
    with atomic_file(out) as tmp:
        table.to_csv(tmp, index=False)
