"""Readers for 10x Genomics Cell Ranger output: mtx folders and HDF5 files."""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd

from omicsweep.datasets.readers._common import _anndata, _find, _require_dir, _require_file, _why
from omicsweep.errors import InputError


def read_10x_mtx(path: Path):
    """A 10x mtx folder: matrix.mtx[.gz] + features.tsv[.gz] (or genes.tsv) + barcodes.tsv[.gz]; gene symbols."""
    import scanpy as sc

    path = Path(path)
    if path.is_file() and path.name.lower() in ("matrix.mtx", "matrix.mtx.gz"):
        path = path.parent
    _require_dir(path, "a 10x folder with matrix.mtx[.gz], features.tsv[.gz] or genes.tsv, barcodes.tsv[.gz]")
    matrix = _find(path, "matrix.mtx.gz", "matrix.mtx")
    genes = _find(path, "features.tsv.gz", "features.tsv", "genes.tsv", "genes.tsv.gz")
    barcodes = _find(path, "barcodes.tsv.gz", "barcodes.tsv")
    missing = [n for n, p in (("matrix.mtx[.gz]", matrix), ("features.tsv[.gz]/genes.tsv", genes), ("barcodes.tsv[.gz]", barcodes)) if p is None]
    if missing:
        raise InputError(f"{path}: not a 10x mtx folder (missing {', '.join(missing)})")
    legacy = [matrix.name, genes.name, barcodes.name] == ["matrix.mtx", "genes.tsv", "barcodes.tsv"]
    v3 = [matrix.name, genes.name, barcodes.name] == ["matrix.mtx.gz", "features.tsv.gz", "barcodes.tsv.gz"]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if legacy or v3:  # the two Cell Ranger layouts scanpy reads itself
                return sc.read_10x_mtx(path, var_names="gene_symbols", make_unique=True, cache=False)
            return _read_10x_mtx_mixed(matrix, genes, barcodes)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: cannot read as a 10x mtx folder ({_why(exc)})") from None


def _read_10x_mtx_mixed(matrix: Path, genes: Path, barcodes: Path):
    """Unzipped Cell Ranger 3 files, or other mixes of .gz and plain files that scanpy's reader does not take."""
    import anndata as ad
    import scanpy as sc

    x = sc.read_mtx(matrix).X.T.tocsr()
    features = pd.read_csv(genes, sep="\t", header=None, dtype=str)
    cells = pd.read_csv(barcodes, sep="\t", header=None, dtype=str)
    if len(features) != x.shape[1] or len(cells) != x.shape[0]:
        raise InputError(
            f"{matrix}: matrix is {x.shape[1]} genes x {x.shape[0]} cells but {genes.name} has {len(features)} rows "
            f"and {barcodes.name} {len(cells)}"
        )
    names = features[1] if features.shape[1] > 1 else features[0]
    var = pd.DataFrame({"gene_ids": features[0].to_numpy()}, index=ad.utils.make_index_unique(pd.Index(names.astype(str))))
    if features.shape[1] > 2:
        var["feature_types"] = features[2].to_numpy()
    adata = _anndata(x, obs=pd.DataFrame(index=pd.Index(cells[0].astype(str))), var=var)
    if "feature_types" in adata.var and (adata.var["feature_types"] == "Gene Expression").any():
        adata = adata[:, (adata.var["feature_types"] == "Gene Expression").to_numpy()].copy()
    return adata


def read_10x_h5(path: Path):
    """A Cell Ranger HDF5 file (v2 or v3); gene expression features only, names made unique."""
    import scanpy as sc

    path = Path(path)
    _require_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            adata = sc.read_10x_h5(path)
            adata.var_names_make_unique()
    except Exception as exc:
        raise InputError(f"{path}: cannot read as 10x HDF5 ({_why(exc)})") from None
    return adata
