"""Read, preprocess, store and stream expression data. Imports neither Ray nor MLflow."""

from omicsweep.datasets.builtin import available_datasets, resolve_dataset
from omicsweep.datasets.ingest import ingest_anndata, ingest_file
from omicsweep.datasets.loader import CellBatches, ExpressionTransform, fit_transform_on_train, load_split
from omicsweep.datasets.store import Store

__all__ = [
    "CellBatches",
    "ExpressionTransform",
    "Store",
    "available_datasets",
    "fit_transform_on_train",
    "ingest_anndata",
    "ingest_file",
    "load_split",
    "resolve_dataset",
]
