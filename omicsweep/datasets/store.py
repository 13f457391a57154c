"""The zarr store: AnnData's on-disk zarr layout (format 3) with row-chunked CSR X.

`anndata.read_zarr(path)` and scanpy open every store; the loader reads the CSR arrays directly with zarr.
Layout (keys are constants below):
    X/{data,indices,indptr}   CSR; data/indices in small chunks of whole rows' worth of values inside shards of
                              about ROWS_PER_CHUNK rows, uint16 gene indices where they fit (store_layout.py;
                              stores of format 1 keep one zstd chunk of ~ROWS_PER_CHUNK rows per file)
    obs/label                 categorical: integer codes + class names
    obs/split                 categorical: train / val / test (for a k-fold store: fold 0's assignment)
    obs/fold                  k-fold stores only: fold id per cell (int16)
    var/_index                gene names
    uns/omicsweep             fingerprint, provenance, chunking, layout (format 2)
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from omicsweep.atomic import replace_folder
from omicsweep.datasets.splits import fold_to_split
from omicsweep.datasets.store_base import StoreMetadata
from omicsweep.datasets.store_layout import DEFAULT_LAYOUT, StoreLayout, configure_codec_pipeline, read_ranges, row_order
from omicsweep.errors import ConfigError, InputError
from omicsweep.tasks import CELL_CLASSIFICATION

LABEL_KEY = "label"
SPLIT_KEY = "split"
FOLD_KEY = "fold"
META_KEY = "omicsweep"
SPLITS = ("train", "val", "test")
ROWS_PER_CHUNK = 1024
STORE_FORMAT_VERSION = 2  # 2: the X layout is recorded (store_layout.StoreLayout); 1: the first writer's


class Fingerprinter:
    """sha256 over everything a trial's result depends on: values, genes, labels and splits.

    Fed row block by row block, so a store written chunk by chunk gets the same fingerprint as one written
    from memory, whatever the block sizes.
    """

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self._rows = 0

    def update(self, block: sp.csr_matrix) -> None:
        for start in range(0, block.shape[0], ROWS_PER_CHUNK):  # canonical blocking, independent of the caller's
            part = block[start : start + ROWS_PER_CHUNK]
            self._digest.update(np.ascontiguousarray(part.data, dtype=np.float32).tobytes())
            self._digest.update(np.ascontiguousarray(part.indices, dtype=np.int64).tobytes())
            self._digest.update(np.ascontiguousarray(np.diff(part.indptr), dtype=np.int64).tobytes())
        self._rows += block.shape[0]

    def finish(
        self, genes: np.ndarray, codes: np.ndarray, classes: list[str], split_codes: np.ndarray,
        folds: np.ndarray | None = None,
    ) -> str:
        self._digest.update(np.asarray([self._rows, len(genes)], dtype=np.int64).tobytes())
        self._digest.update("\x1f".join(map(str, genes)).encode())
        self._digest.update(np.ascontiguousarray(codes, dtype=np.int64).tobytes())
        self._digest.update("\x1f".join(classes).encode())
        self._digest.update(np.ascontiguousarray(split_codes, dtype=np.int8).tobytes())
        if folds is not None:  # only k-fold stores: other stores keep the fingerprints they always had
            self._digest.update(b"folds")
            self._digest.update(np.ascontiguousarray(folds, dtype=np.int16).tobytes())
        return "sha256:" + self._digest.hexdigest()


class StoreWriter:
    """Write a store row block by row block with bounded memory, atomically.

    Everything goes to a hidden sibling folder that is renamed into place by `finish`; on any error (or if
    `finish` is never called) the folder is removed, so a failure leaves nothing. Use: `with StoreWriter(out,
    genes=genes) as writer:`, `writer.append(block)` per row block, then `writer.finish(codes=..., ...)`.
    """

    def __init__(self, out: Path, *, genes: np.ndarray, nnz_per_row_hint: int | None = None, overwrite: bool = False,
                 layout: StoreLayout = DEFAULT_LAYOUT):
        import zarr

        self.out = Path(out)
        if self.out.exists() and not overwrite:
            raise InputError(f"{self.out}: already exists; pass --overwrite to replace it")
        configure_codec_pipeline()
        self.genes = np.asarray(genes, dtype=str)
        self.layout = layout.check()
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.out.parent / f".{self.out.name}.partial-{uuid.uuid4().hex[:8]}"
        self._root = zarr.open_group(str(self.tmp), mode="w", zarr_format=3)
        self._x = self._root.create_group("X")
        self._hint = nnz_per_row_hint
        self._data = self._indices = None  # created at the first block, sized by its non-zeros per row
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._row_nnz: list[np.ndarray] = []
        self._fingerprint = Fingerprinter()
        self.n_rows = 0
        self._done = False

    def _create_arrays(self, block: sp.csr_matrix) -> None:
        """data/indices sized by the first block's mean non-zeros per row (legacy layout: the caller's hint)."""
        measured = -(-block.nnz // max(1, block.shape[0]))
        self.nnz_per_row = int(self._hint or 1000) if not self.layout.recorded else max(1, measured)
        chunk, shard = self.layout.value_counts(self.nnz_per_row)
        self._step = shard or chunk  # written in whole shards (or chunks): no read-modify-write of a partial one
        kinds = (("data", "float32"), ("indices", self.layout.index_dtype(len(self.genes))))
        self._data, self._indices = (
            self._x.create_array(name, shape=(0,), chunks=(chunk,), shards=None if shard is None else (shard,),
                                 dtype=dtype, compressors=self.layout.codecs(dtype))
            for name, dtype in kinds
        )
        self._written = 0

    def _flush(self, final: bool = False) -> None:
        pending = sum(len(d) for d, _ in self._pending)
        count = pending if final else pending // self._step * self._step
        if not count:
            return
        data = np.concatenate([d for d, _ in self._pending])
        indices = np.concatenate([i for _, i in self._pending])
        end = self._written + count
        for array, values in ((self._data, data), (self._indices, indices)):
            array.resize((end,))
            array[self._written : end] = values[:count]
        self._pending = [(data[count:], indices[count:])] if count < pending else []
        self._written = end

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, *exc) -> None:
        if not self._done:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def append(self, block: sp.csr_matrix) -> None:
        block = sp.csr_matrix(block, dtype=np.float32)
        if block.shape[1] != len(self.genes):
            raise InputError(f"{self.out}: a block has {block.shape[1]} genes, expected {len(self.genes)}")
        block.sort_indices()
        if self._data is None:
            self._create_arrays(block)
        self._pending.append((block.data, block.indices.astype(self._indices.dtype, copy=False)))
        self._flush()
        self._row_nnz.append(np.diff(block.indptr).astype(np.int64))
        self._fingerprint.update(block)
        self.n_rows += block.shape[0]

    def finish(
        self, *, codes: np.ndarray, classes: list[str], split_codes: np.ndarray, cell_ids: np.ndarray,
        provenance: dict[str, Any], folds: np.ndarray | None = None,
    ) -> str:
        import anndata as ad
        import pandas as pd
        from anndata.io import write_elem

        if not (len(codes) == len(split_codes) == len(cell_ids) == self.n_rows):
            raise InputError(f"{self.out}: {self.n_rows} rows but {len(codes)} labels / {len(cell_ids)} cell ids")
        if self._data is None:
            self._create_arrays(sp.csr_matrix((0, len(self.genes)), dtype=np.float32))
        self._flush(final=True)
        indptr = np.concatenate([[0], np.cumsum(np.concatenate(self._row_nnz) if self._row_nnz else [])]).astype(np.int64)
        if indptr[-1] < np.iinfo(np.int32).max:
            indptr = indptr.astype(np.int32)  # same dtype as indices, as scipy and scikit-learn expect
        self._x.create_array("indptr", data=indptr, chunks=(min(len(indptr), 1 << 20),))
        self._x.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": [self.n_rows, len(self.genes)]})
        if folds is not None and len(folds) != self.n_rows:
            raise InputError(f"{self.out}: {self.n_rows} rows but {len(folds)} fold ids")
        fingerprint = self._fingerprint.finish(self.genes, codes, list(classes), split_codes, folds)
        obs = pd.DataFrame(
            {
                LABEL_KEY: pd.Categorical.from_codes(np.asarray(codes, dtype=np.int64), categories=list(classes)),
                SPLIT_KEY: pd.Categorical.from_codes(np.asarray(split_codes, dtype=np.int64), categories=list(SPLITS)),
            },
            index=pd.Index(np.asarray(cell_ids, dtype=str)),
        )
        if folds is not None:
            obs[FOLD_KEY] = np.asarray(folds, dtype=np.int16)
        meta = {
            "format_version": STORE_FORMAT_VERSION if self.layout.recorded else 1,
            "fingerprint": fingerprint,
            "classes": list(classes),
            "rows_per_chunk": ROWS_PER_CHUNK,
            "provenance_json": json.dumps(provenance, sort_keys=True, default=str),
        }
        if self.layout.recorded:  # the first writer's stores (format 1) had no layout entry
            meta["layout"] = self.layout.meta(self.nnz_per_row, len(self.genes))
        if folds is not None:
            meta["n_folds"] = int(np.max(folds)) + 1 if len(folds) else 0
        shell = ad.AnnData(obs=obs, var=pd.DataFrame(index=pd.Index(self.genes)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # zarr's notice about future autosharding defaults
            write_elem(self._root, "obs", shell.obs)
            write_elem(self._root, "var", shell.var)
            write_elem(self._root, "uns", {META_KEY: meta})
            for key in ("obsm", "varm", "layers", "obsp", "varp"):
                write_elem(self._root, key, {})
        self._root.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
        replace_folder(self.tmp, self.out)  # the old store stays whole until the new one is in place
        self._done = True
        return fingerprint


def write_store(
    out: Path,
    *,
    matrix: sp.csr_matrix,
    genes: np.ndarray,
    codes: np.ndarray,
    classes: list[str],
    split_codes: np.ndarray,
    cell_ids: np.ndarray,
    provenance: dict[str, Any],
    overwrite: bool = False,
    folds: np.ndarray | None = None,
    layout: StoreLayout = DEFAULT_LAYOUT,
) -> str:
    """Write an in-memory matrix as a store (atomically). Returns the fingerprint.

    Rows are grouped by split (train, then val, then test; input order kept within each, or permuted once with
    the layout's seed for a shuffled layout), so streaming one split reads only its own chunks; a k-fold store
    (`folds`: fold id per cell) groups them by fold instead, so every fold's train/val/test sets are runs of whole
    folds. Cells keep their ids in `obs_names` and their labels, splits and folds, whatever the order.
    """
    order = row_order(split_codes if folds is None else folds, layout)
    matrix = sp.csr_matrix(matrix, dtype=np.float32)[order]
    codes, split_codes, cell_ids = np.asarray(codes)[order], np.asarray(split_codes)[order], np.asarray(cell_ids)[order]
    if folds is not None:
        folds = np.asarray(folds)[order]
    hint = max(1, matrix.nnz // max(1, matrix.shape[0]))
    with StoreWriter(out, genes=genes, nnz_per_row_hint=hint, overwrite=overwrite, layout=layout) as writer:
        for start in range(0, matrix.shape[0], ROWS_PER_CHUNK):
            writer.append(matrix[start : start + ROWS_PER_CHUNK])
        return writer.finish(
            codes=codes, classes=classes, split_codes=split_codes, cell_ids=cell_ids, provenance=provenance,
            folds=folds,
        )


@dataclass
class Store(StoreMetadata):
    """Read side of a store: shape, genes, classes, splits, provenance, and row-chunk reads of X.

    path: a local folder, or an fsspec URL (s3://bucket/x.zarr, gs://..., file://...; `path` stays that string)
    read through zarr's FsspecStore with `storage_options` (default: $OMICSWEEP_STORAGE_OPTIONS, see
    `omicsweep.datasets.remote`).
    fold: for a k-fold store, the fold whose cells form the test split (the next fold is the validation
    split); None keeps the store's recorded split (fold 0's for a k-fold store).
    """

    path: Path | str
    fold: int | None = None
    storage_options: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        import zarr

        from omicsweep.datasets.remote import as_location, is_url, open_remote_group

        configure_codec_pipeline()
        self.path = as_location(self.path)
        remote = is_url(self.path)
        if not remote and not self.path.exists():
            raise InputError(f"{self.path}: store not found")
        try:
            if remote:
                self._root = open_remote_group(self.path, self.storage_options)
            else:
                self._root = zarr.open_group(str(self.path), mode="r")
            meta = self._read_meta()
            x = self._root["X"]
        except (InputError, ConfigError):
            raise
        except Exception as exc:  # zarr raises many types for a folder that is not a store
            if remote and type(exc).__name__ == "GroupNotFoundError":
                raise InputError(f"{self.path}: store not found (no {self.path}/zarr.json)") from None
            what = "cannot open the store" if remote else "not an omicsweep store"  # remote: credentials, network
            raise InputError(f"{self.path}: {what} ({type(exc).__name__}: {exc})") from None
        self.meta = meta
        self.shape = tuple(int(v) for v in x.attrs["shape"])
        self._data = x["data"]
        self._indices = x["indices"]
        self.indptr = np.asarray(x["indptr"][:], dtype=np.int64)
        self.rows_per_chunk = int(meta.get("rows_per_chunk", ROWS_PER_CHUNK))
        self.layout = dict(meta.get("layout") or {})  # empty: the first writer's layout (store_layout.LEGACY_LAYOUT)
        self.x_chunk_rows = int(self.layout.get("chunk_rows", self.rows_per_chunk))
        if self.fold is not None:
            self.fold = self._check_fold(self.fold)

    def _read_meta(self) -> dict[str, Any]:
        from anndata.io import read_elem

        if "uns" not in self._root or META_KEY not in self._root["uns"]:
            raise InputError(f"{self.path}: not an omicsweep store (uns/{META_KEY} missing); create it with `omicsweep ingest`")
        return read_elem(self._root["uns"][META_KEY])

    # ---- metadata ---------------------------------------------------------------------------------------------
    @property
    def provenance(self) -> dict[str, Any]:
        return json.loads(self.meta["provenance_json"])

    @property
    def n_cells(self) -> int:
        return self.shape[0]

    @property
    def n_genes(self) -> int:
        return self.shape[1]

    # what a row is and what is predicted (omicsweep.tasks); the sweep's metric unless --metric says otherwise
    task_kind = CELL_CLASSIFICATION
    default_metric = "accuracy"

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.n_genes,)

    def describe(self) -> str:
        return f"{self.n_cells} cells x {self.n_genes} genes, {len(self.classes)} classes"

    def genes(self) -> np.ndarray:
        from anndata.io import read_elem

        return np.asarray(read_elem(self._root["var"]).index, dtype=str)

    def cell_ids(self) -> np.ndarray:
        from anndata.io import read_elem

        obs = self._root["obs"]
        return np.asarray(read_elem(obs[obs.attrs["_index"]])).astype(object).astype(str)

    def _categorical_codes(self, key: str) -> np.ndarray:
        return np.asarray(self._root["obs"][key]["codes"][:], dtype=np.int64)

    def labels(self) -> np.ndarray:
        return self._categorical_codes(LABEL_KEY)

    @property
    def n_folds(self) -> int:
        """Number of folds of a store ingested with --folds; 0 otherwise."""
        return int(self.meta.get("n_folds", 0))

    def folds(self) -> np.ndarray:
        """Fold id per row (k-fold stores only)."""
        if not self.n_folds:
            raise ConfigError(f"{self.path}: has no folds; ingest it with --folds K")
        return np.asarray(self._root["obs"][FOLD_KEY][:], dtype=np.int64)

    def split_indices(self, split: str, fold: int | None = None) -> np.ndarray:
        """Sorted row indices of one split ('train', 'val' or 'test').

        fold (or the store's own `fold`): in a k-fold store, that fold is the test split, the next fold
        (cyclically) the validation split, the other folds the training split.
        """
        if split not in SPLITS:
            raise InputError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        fold = self.fold if fold is None else self._check_fold(fold)
        if fold is None:
            codes = self._categorical_codes(SPLIT_KEY)
        else:
            codes = fold_to_split(self.folds(), fold, self.n_folds)
        return np.flatnonzero(codes == SPLITS.index(split))

    # ---- data -------------------------------------------------------------------------------------------------
    def read_rows(self, start: int, stop: int) -> sp.csr_matrix:
        """Rows [start, stop) as CSR, reading only the nnz range they cover."""
        lo, hi = int(self.indptr[start]), int(self.indptr[stop])
        data = np.asarray(self._data[lo:hi], dtype=np.float32)
        indices = np.asarray(self._indices[lo:hi])
        indptr = self.indptr[start : stop + 1] - lo
        return sp.csr_matrix((data, indices, indptr), shape=(stop - start, self.n_genes))

    def read_row_blocks(self, bounds: list[tuple[int, int]]) -> list[sp.csr_matrix]:
        """Rows [start, stop) of every (start, stop) of `bounds` as CSR, their values read concurrently."""
        spans = [(int(self.indptr[start]), int(self.indptr[stop])) for start, stop in bounds]
        data, indices = read_ranges(self._data, spans), read_ranges(self._indices, spans)
        return [sp.csr_matrix((d, i, (self.indptr[a : b + 1] - lo).astype(i.dtype)), shape=(b - a, self.n_genes))
                for (a, b), (lo, _), d, i in zip(bounds, spans, data, indices)]

    def summary(self) -> dict[str, Any]:
        counts = np.bincount(self.labels(), minlength=len(self.classes))
        return {
            "path": str(self.path),
            "cells": self.n_cells,
            "genes": self.n_genes,
            "classes": dict(zip(self.classes, counts.tolist())),
            "splits": {s: int(len(self.split_indices(s))) for s in SPLITS},
            **({"folds": np.bincount(self.folds(), minlength=self.n_folds).tolist()} if self.n_folds else {}),
            "fingerprint": self.fingerprint,
            "provenance": self.provenance,
        }

