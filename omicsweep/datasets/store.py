"""The zarr store: AnnData's on-disk zarr layout (format 3) with row-chunked CSR X.

`anndata.read_zarr(path)` and scanpy open every store; the loader reads the CSR arrays directly with zarr.
Layout (keys are constants below):
    X/{data,indices,indptr}   CSR, zstd-compressed, data/indices chunked to about ROWS_PER_CHUNK rows
    obs/label                 categorical: integer codes + class names
    obs/split                 categorical: train / val / test
    var/_index                gene names
    uns/omicsweep             fingerprint, provenance, chunking
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from omicsweep.errors import InputError

LABEL_KEY = "label"
SPLIT_KEY = "split"
META_KEY = "omicsweep"
SPLITS = ("train", "val", "test")
ROWS_PER_CHUNK = 1024
STORE_FORMAT_VERSION = 1


def fingerprint_arrays(
    matrix: sp.csr_matrix, genes: np.ndarray, codes: np.ndarray, classes: list[str], split_codes: np.ndarray
) -> str:
    """sha256 over everything a trial's result depends on: values, genes, labels and splits."""
    digest = hashlib.sha256()
    for array in (matrix.data.astype(np.float32), matrix.indices.astype(np.int64), matrix.indptr.astype(np.int64)):
        digest.update(np.ascontiguousarray(array).tobytes())
    digest.update(np.asarray(matrix.shape, dtype=np.int64).tobytes())
    digest.update("\x1f".join(map(str, genes)).encode())
    digest.update(np.ascontiguousarray(codes.astype(np.int64)).tobytes())
    digest.update("\x1f".join(classes).encode())
    digest.update(np.ascontiguousarray(split_codes.astype(np.int8)).tobytes())
    return "sha256:" + digest.hexdigest()


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
) -> str:
    """Write a store atomically: build it in a hidden sibling folder, then rename. Returns the fingerprint."""
    import anndata as ad
    import pandas as pd
    import zarr
    from anndata.io import write_elem
    from zarr.codecs import ZstdCodec

    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(f"{out}: already exists; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    matrix = sp.csr_matrix(matrix, dtype=np.float32)
    matrix.sort_indices()
    fingerprint = fingerprint_arrays(matrix, genes, codes, classes, split_codes)
    n_rows = matrix.shape[0]
    mean_nnz = max(1, matrix.nnz // max(1, n_rows))
    meta = {
        "format_version": STORE_FORMAT_VERSION,
        "fingerprint": fingerprint,
        "classes": list(classes),
        "rows_per_chunk": ROWS_PER_CHUNK,
        "provenance_json": json.dumps(provenance, sort_keys=True, default=str),
    }
    obs = pd.DataFrame(
        {
            LABEL_KEY: pd.Categorical.from_codes(codes.astype(np.int64), categories=list(classes)),
            SPLIT_KEY: pd.Categorical.from_codes(split_codes.astype(np.int64), categories=list(SPLITS)),
        },
        index=pd.Index(np.asarray(cell_ids, dtype=str), name=None),
    )
    var = pd.DataFrame(index=pd.Index(np.asarray(genes, dtype=str)))
    shell = ad.AnnData(obs=obs, var=var, uns={META_KEY: meta})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # zarr's notice about future autosharding defaults
            root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
            write_elem(root, "/", shell)
            write_elem(
                root,
                "X",
                matrix,
                dataset_kwargs={"chunks": (mean_nnz * ROWS_PER_CHUNK,), "compressors": [ZstdCodec(level=3)]},
            )
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return fingerprint


@dataclass
class Store:
    """Read side of a store: shape, genes, classes, splits, provenance, and row-chunk reads of X."""

    path: Path

    def __post_init__(self) -> None:
        import zarr

        self.path = Path(self.path)
        if not self.path.exists():
            raise InputError(f"{self.path}: store not found")
        try:
            self._root = zarr.open_group(str(self.path), mode="r")
            meta = self._read_meta()
            x = self._root["X"]
        except InputError:
            raise
        except Exception as exc:  # zarr raises many types for a folder that is not a store
            raise InputError(f"{self.path}: not an omicsweep store ({type(exc).__name__}: {exc})") from None
        self.meta = meta
        self.shape = tuple(int(v) for v in x.attrs["shape"])
        self._data = x["data"]
        self._indices = x["indices"]
        self.indptr = np.asarray(x["indptr"][:], dtype=np.int64)
        self.rows_per_chunk = int(meta.get("rows_per_chunk", ROWS_PER_CHUNK))

    def _read_meta(self) -> dict[str, Any]:
        from anndata.io import read_elem

        if "uns" not in self._root or META_KEY not in self._root["uns"]:
            raise InputError(f"{self.path}: not an omicsweep store (uns/{META_KEY} missing); create it with `omicsweep ingest`")
        return read_elem(self._root["uns"][META_KEY])

    # ---- metadata ---------------------------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        return str(self.meta["fingerprint"])

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.meta["classes"]]

    @property
    def provenance(self) -> dict[str, Any]:
        return json.loads(self.meta["provenance_json"])

    @property
    def n_cells(self) -> int:
        return self.shape[0]

    @property
    def n_genes(self) -> int:
        return self.shape[1]

    def genes(self) -> np.ndarray:
        from anndata.io import read_elem

        return np.asarray(read_elem(self._root["var"]).index, dtype=str)

    def _categorical_codes(self, key: str) -> np.ndarray:
        return np.asarray(self._root["obs"][key]["codes"][:], dtype=np.int64)

    def labels(self) -> np.ndarray:
        return self._categorical_codes(LABEL_KEY)

    def split_indices(self, split: str) -> np.ndarray:
        """Sorted row indices of one split ('train', 'val' or 'test')."""
        if split not in SPLITS:
            raise InputError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        return np.flatnonzero(self._categorical_codes(SPLIT_KEY) == SPLITS.index(split))

    # ---- data -------------------------------------------------------------------------------------------------
    @property
    def n_chunks(self) -> int:
        return -(-self.n_cells // self.rows_per_chunk)

    def chunk_bounds(self, chunk: int) -> tuple[int, int]:
        start = chunk * self.rows_per_chunk
        return start, min(self.n_cells, start + self.rows_per_chunk)

    def read_rows(self, start: int, stop: int) -> sp.csr_matrix:
        """Rows [start, stop) as CSR, reading only the nnz range they cover."""
        lo, hi = int(self.indptr[start]), int(self.indptr[stop])
        data = np.asarray(self._data[lo:hi], dtype=np.float32)
        indices = np.asarray(self._indices[lo:hi])
        indptr = self.indptr[start : stop + 1] - lo
        return sp.csr_matrix((data, indices, indptr), shape=(stop - start, self.n_genes))

    def summary(self) -> dict[str, Any]:
        counts = np.bincount(self.labels(), minlength=len(self.classes))
        return {
            "path": str(self.path),
            "cells": self.n_cells,
            "genes": self.n_genes,
            "classes": dict(zip(self.classes, counts.tolist())),
            "splits": {s: int(len(self.split_indices(s))) for s in SPLITS},
            "fingerprint": self.fingerprint,
            "provenance": self.provenance,
        }
