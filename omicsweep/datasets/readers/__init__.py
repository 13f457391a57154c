"""Readers for every input format: each returns an in-memory AnnData (cells x genes, labels in .obs).

A reader is one function `read_<format>(path, ...) -> AnnData` registered in READERS. Two optional keyword
parameters are recognised by `read_any`: a reader that accepts `orient` lets the user say whether cells are the
rows or the columns of the file ("rows", "columns" or "auto"), and one that accepts `label_col` takes the label
from inside the file (a table column, a table row, an HDF5 vector). Everything else (labels from a separate
file, cell-id joins, checks for empty matrices, NaN/inf, duplicate ids) is done once, in `read_any`.

Every failure is an InputError whose message is one line naming the file and the problem.

Modules: `anndata_files` (h5ad, zarr, loom), `tenx` (10x mtx folders and HDF5), `tables` (csv/tsv),
`l1000` (gct, gctx), `hdf5` (plain HDF5), `labels` (labels files), `_registry` (READERS, detect_format),
`_read_any` (read_any and its checks), `_common` (helpers they share).
"""

from omicsweep.datasets.readers._common import ORIENTS, READ_INFO_KEY
from omicsweep.datasets.readers._read_any import read_any
from omicsweep.datasets.readers._registry import ALIASES, READERS, Reader, detect_format, formats
from omicsweep.datasets.readers.anndata_files import read_h5ad, read_loom, read_zarr
from omicsweep.datasets.readers.hdf5 import read_hdf5
from omicsweep.datasets.readers.l1000 import read_gct, read_gctx
from omicsweep.datasets.readers.tables import read_csv, read_table, read_tsv
from omicsweep.datasets.readers.tenx import read_10x_h5, read_10x_mtx

__all__ = [
    "ALIASES",
    "ORIENTS",
    "READERS",
    "READ_INFO_KEY",
    "Reader",
    "detect_format",
    "formats",
    "read_10x_h5",
    "read_10x_mtx",
    "read_any",
    "read_csv",
    "read_gct",
    "read_gctx",
    "read_h5ad",
    "read_hdf5",
    "read_loom",
    "read_table",
    "read_tsv",
    "read_zarr",
]
