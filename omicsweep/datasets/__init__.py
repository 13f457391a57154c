"""Read, preprocess, store and stream expression data. Imports neither Ray nor MLflow."""

from omicsweep.datasets.align import AlignedStore, align_to_genes
from omicsweep.datasets.ingest import IngestOptions, ingest_anndata, ingest_file
from omicsweep.datasets.loader import ArrayBatches, CellBatches, load_split, training_batches
from omicsweep.datasets.open import open_store
from omicsweep.datasets.preprocess import RECIPES
from omicsweep.datasets.registered import register_dataset, registered_datasets
from omicsweep.datasets.resample import RESAMPLES
from omicsweep.datasets.resolve import available_datasets, resolve_dataset
from omicsweep.datasets.store import Store
from omicsweep.datasets.transform import SCALINGS, ExpressionTransform, fit_transform_on_train

__all__ = [
    "RECIPES",
    "RESAMPLES",
    "SCALINGS",
    "AlignedStore",
    "ArrayBatches",
    "CellBatches",
    "ExpressionTransform",
    "IngestOptions",
    "Store",
    "align_to_genes",
    "available_datasets",
    "fit_transform_on_train",
    "ingest_anndata",
    "ingest_file",
    "load_split",
    "open_store",
    "register_dataset",
    "registered_datasets",
    "resolve_dataset",
    "training_batches",
]
