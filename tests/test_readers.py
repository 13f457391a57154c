"""Readers for every input format: real datasets in their own formats (shapes and class counts from each
SOURCE.md), format detection, labels from tables / files / HDF5 vectors, and malformed files that must fail with
one line naming the file."""

from __future__ import annotations

import gzip
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from conftest import SHARED_DATA
from omicsweep.datasets import Store, ingest_file
from omicsweep.datasets.readers import READERS, detect_format, read_any
from omicsweep.errors import InputError

from conftest import assert_one_line_error as _one_line_error




@pytest.fixture(scope="module")
def shared() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is not here (real datasets live beside the project)")
    return SHARED_DATA


# ---- every labelled dataset in /work/shared/data, in its own format, through the CLI --------------------------
CELLBENCH = {  # SOURCE.md: genes x cells and cell_line_demuxlet counts per batch
    "sc_celseq2_5cl_p1": (297, 15564, {"A549": 103, "H838": 51, "H1975": 50, "H2228": 50, "HCC827": 43}),
    "sc_celseq2_5cl_p2": (307, 14078, {"A549": 107, "H838": 71, "H2228": 44, "H1975": 44, "HCC827": 41}),
    "sc_celseq2_5cl_p3": (305, 13426, {"A549": 118, "H838": 75, "H2228": 41, "HCC827": 36, "H1975": 35}),
    "sc_celseq2": (274, 28204, {"H1975": 112, "H2228": 81, "HCC827": 81}),
    "sc_dropseq": (225, 15127, {"H1975": 86, "HCC827": 70, "H2228": 69}),
}
SCDC = {  # SOURCE.md: cells x genes and Y counts
    "10X_PBMC_top2000": (4271, 2000, "1:1292 2:702 3:606 4:459 5:450 6:332 7:295 8:135"),
    "human_kidney_counts_top2000": (5685, 2000, "0:1201 1:268 2:731 3:60 4:373 5:259 6:1498 7:118 8:73 9:483 10:621"),
    "worm_neuron_cell": (4186, 13488, "1:842 2:334 3:1015 4:443 5:400 6:314 7:305 8:224 9:239 10:70"),
    "mouse_bladder_cell_top2000": (
        2746, 2003, "1:717 2:357 3:344 4:316 5:236 6:224 7:131 8:80 9:75 10:64 11:44 12:38 13:41 14:36 15:30 16:13",
    ),
    "CITE_CBMC_counts_top2000": (
        8617, 2000, "1:1791 2:2293 3:1248 4:1089 5:608 6:350 7:273 8:230 9:182 10:119 11:114 12:105 13:96 14:70 15:49",
    ),
}
ACTINN = {"B cell": 477, "T cell": 312, "NK cell": 74, "Monocyte": 69, "Granulocyte": 68}
L1000_TYPES = {"trt_cp": 328, "ctl_vehicle": 26, "trt_poscon": 23}

TWINS = {  # the same data in another format: the stores must be identical (values, genes, labels, splits)
    "actinn-csv+labels": ("actinn_mouse_immune/actinn_train_set.h5ad", "cell_type"),
}
REAL = [
    # id, path under shared/data, extra CLI args, cells, genes, class counts (or (n_classes, {some counts}))
    ("actinn-csv+labels", "actinn_mouse_immune/train_set.csv.gz",
     ["--label-col", "cell_type", "--labels", "actinn_mouse_immune/train_label.txt.gz"], 1000, 19371, ACTINN),
    ("actinn-h5ad", "actinn_mouse_immune/actinn_train_set.h5ad", ["--label-col", "cell_type"], 1000, 19371, ACTINN),
    ("all-BT", "all_leukemia_microarray/ALL_exprs.csv.gz",
     ["--label-col", "BT", "--labels", "all_leukemia_microarray/ALL_pheno.csv", "--orient", "columns", "--format", "csv"],
     128, 12625, {"B2": 36, "B3": 23, "B1": 19, "T2": 15, "B4": 12, "T3": 10, "T": 5, "B": 5, "T4": 2, "T1": 1}),
    ("all-mol.biol", "all_leukemia_microarray/ALL_exprs.csv.gz",
     ["--label-col", "mol.biol", "--labels", "all_leukemia_microarray/ALL_pheno.csv"],
     128, 12625, {"NEG": 74, "BCR/ABL": 37, "ALL1/AF4": 10, "E2A/PBX1": 5, "p15/p16": 1, "NUP-98": 1}),
    ("baron-h5ad", "baron_mouse1_pancreas/baron_mouse1.h5ad", ["--label-col", "cell_type"], 822, 14878,
     {"beta": 343, "ductal": 236, "delta": 85, "endothelial": 72, "quiescent_stellate": 29, "macrophage": 17,
      "gamma": 14, "alpha": 9, "activated_stellate": 4, "immune_other": 4, "T_cell": 4, "schwann": 3, "B_cell": 2}),
    *[
        (f"cellbench-{name}", f"cellbench_lung_cell_lines/{name}.count.csv.gz",
         ["--label-col", "cell_line_demuxlet", "--labels", f"cellbench_lung_cell_lines/{name}.metadata.csv.gz",
          *(["--orient", "columns"] if name == "sc_dropseq" else [])],
         cells, genes, counts)
        for name, (cells, genes, counts) in CELLBENCH.items()
    ],
    ("fly-h5ad", "fly_gut_fca_subset/dme_gut_subset.h5ad", ["--label-col", "cell_type"], 180, 13407, (18, {"crop": 10, "enteroblast": 10})),
    ("l1000-gct-pert_iname", "l1000_cmappy_fixtures/test_l1000.gct.gz", ["--label-col", "pert_iname"], 377, 978, (60, {"DMSO": 26})),
    ("l1000-gct-pert_type", "l1000_cmappy_fixtures/test_l1000.gct.gz", ["--label-col", "pert_type"], 377, 978, L1000_TYPES),
    ("l1000-gctx-pert_type", "l1000_cmappy_fixtures/test_l1000_highprecision.gctx", ["--label-col", "pert_type"], 377, 978, L1000_TYPES),
    ("l1000-gctx-pert_iname", "l1000_cmappy_fixtures/test_l1000_highprecision.gctx", ["--label-col", "pert_iname"], 377, 978, (60, {"DMSO": 26})),
    ("xin-h5ad", "pancreas_xin_wang_subsets/xin_subset.h5ad", ["--label-col", "cell_type"], 674, 980,
     {"alpha": 285, "beta": 261, "gamma": 79, "delta": 49}),
    ("wang-h5ad", "pancreas_xin_wang_subsets/wang_subset.h5ad", ["--label-col", "cell_type"], 501, 219,
     {"alpha": 206, "beta": 118, "ductal": 96, "stellate": 45, "gamma": 21, "delta": 10, "acinar": 5}),
    ("pbmc3k-h5ad", "pbmc3k_labelled/pbmc3k_labelled.h5ad", ["--label-col", "cell_type"], 2638, 13714,
     {"Naive CD4 T": 697, "Memory CD4 T": 483, "CD14+ Mono": 480, "B": 344, "CD8 T": 271, "FCGR3A+ Mono": 162,
      "NK": 155, "DC": 32, "Platelet": 14}),
    *[
        (f"scdeepcluster-{name}", f"scdeepcluster_benchmark_h5/{name}.h5", ["--label-col", "Y"], cells, genes,
         dict(pair.split(":") for pair in counts.split()))
        for name, (cells, genes, counts) in SCDC.items()
    ],
    ("zheng-h5ad", "zheng2017_sorted_pbmc_subsample/zheng2017_sorted_pbmc_2140.h5ad", ["--label-col", "cell_type"], 2140, 8863,
     {"CD56+ NK": 769, "CD19+ B": 330, "CD4+/CD45RO+ Memory": 252, "CD4+/CD25 T Reg": 226, "CD4+ T Helper2": 191,
      "CD8+ Cytotoxic T": 148, "CD14+ Monocyte": 129, "CD4+/CD45RA+/CD25- Naive T": 52, "CD8+/CD45RA+ Naive Cytotoxic": 43}),
]


def _assert_classes(summary, expected):
    classes = summary["classes"]
    if isinstance(expected, tuple):
        n_classes, some = expected
        assert len(classes) == n_classes, classes
        assert {k: classes[k] for k in some} == some
    else:
        assert classes == {str(k): int(v) for k, v in expected.items()}


@pytest.mark.parametrize("case", REAL, ids=[c[0] for c in REAL])
def test_real_dataset_ingests_in_its_own_format(cli, shared, tmp_path, case):
    name, rel, args, cells, genes, classes = case
    args = [str(shared / a) if a.endswith((".gz", ".csv", ".txt")) else a for a in args]
    out = tmp_path / "store.zarr"
    code, stdout, stderr = cli("ingest", shared / rel, "--out", out, *args)
    assert code == 0, stderr
    summary = Store(out).summary()
    assert (summary["cells"], summary["genes"]) == (cells, genes)
    _assert_classes(summary, classes)
    assert f"{cells} cells x {genes} genes" in stdout
    assert summary["provenance"]["input"]["format"] == detect_format(shared / rel)
    if rel.endswith(".csv.gz"):  # every shared table is genes x cells: auto-orientation must have found that
        assert summary["provenance"]["input"]["orient"] == "columns"
    if name in TWINS:
        twin, label = TWINS[name]
        assert ingest_file(shared / twin, label_col=label, out=tmp_path / "twin.zarr") == summary["fingerprint"]


def test_gct_and_gctx_agree(shared):
    gct = read_any(shared / "l1000_cmappy_fixtures/mini_gctoo_for_testing.gct")
    gctx = read_any(shared / "l1000_cmappy_fixtures/mini_gctoo_for_testing.gctx")
    assert gct.shape == gctx.shape == (6, 6)
    assert list(gct.obs_names) == list(gctx.obs_names) and list(gct.obs.columns) == list(gctx.obs.columns)
    np.testing.assert_allclose(gct.X, gctx.X, rtol=1e-6)
    big = read_any(shared / "l1000_cmappy_fixtures/test_l1000.gct.gz")
    assert big.var["pr_gene_symbol"].nunique() == 978  # row metadata in var; landmark genes
    assert big.X.min() > 3 and big.X.max() <= 15.0  # level 3, log2 (SOURCE.md: 3.2-15.0)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_formats_not_in_shared_data_from_real_datasets(cli, shared, tmp_path):
    """10x mtx, 10x HDF5, loom and AnnData zarr, written here from real sets: shapes and classes as in SOURCE.md,
    and stores identical (same fingerprint) to ingesting the original h5ad."""
    import anndata as ad

    wang_h5ad = shared / "pancreas_xin_wang_subsets/wang_subset.h5ad"
    xin_h5ad = shared / "pancreas_xin_wang_subsets/xin_subset.h5ad"
    fly_h5ad = shared / "fly_gut_fca_subset/dme_gut_subset.h5ad"
    wang = ad.read_h5ad(wang_h5ad)
    labels = tmp_path / "wang_labels.tsv"
    wang.obs[["cell_type"]].rename_axis("barcode").to_csv(labels, sep="\t")
    _write_10x_mtx(wang, tmp_path / "wang_mtx")
    _write_10x_h5(wang, tmp_path / "wang_10x.h5")
    xin = ad.read_h5ad(xin_h5ad)
    xin.obs = xin.obs[["cell_type"]].astype(str)
    xin.write_loom(tmp_path / "xin.loom")
    ad.read_h5ad(fly_h5ad).write_zarr(tmp_path / "fly.zarr")

    wang_classes = {"alpha": 206, "beta": 118, "ductal": 96, "stellate": 45, "gamma": 21, "delta": 10, "acinar": 5}
    cases = [
        ("wang_mtx", "10x-mtx", ["--labels", labels], wang_h5ad, (501, 219), wang_classes),
        ("wang_10x.h5", "10x-h5", ["--labels", labels], wang_h5ad, (501, 219), wang_classes),
        ("xin.loom", "loom", [], xin_h5ad, (674, 980), {"alpha": 285, "beta": 261, "gamma": 79, "delta": 49}),
        ("fly.zarr", "zarr", [], fly_h5ad, (180, 13407), None),
    ]
    for name, fmt, extra, original, shape, classes in cases:
        assert detect_format(tmp_path / name) == fmt
        out = tmp_path / f"{fmt}.zarr"
        code, _, stderr = cli("ingest", tmp_path / name, "--label-col", "cell_type", "--out", out, *extra)
        assert code == 0, (fmt, stderr)
        summary = Store(out).summary()
        assert (summary["cells"], summary["genes"]) == shape, fmt
        if classes is None:  # fly: 18 cell types x 10 cells
            assert len(summary["classes"]) == 18 and set(summary["classes"].values()) == {10}
        else:
            assert summary["classes"] == classes, fmt
        twin = ingest_file(original, label_col="cell_type", out=tmp_path / f"{fmt}-twin.zarr")
        assert summary["fingerprint"] == twin, fmt


# ---- writers for the formats the shared data lacks -----------------------------------------------------------
def _write_10x_mtx(adata, folder: Path, *, gz: bool = True) -> Path:
    from scipy.io import mmwrite

    folder.mkdir()
    mmwrite(folder / "matrix.mtx", sp.csr_matrix(adata.X).T.tocoo())
    pd.DataFrame({"id": [f"ID{i}" for i in range(adata.n_vars)], "name": adata.var_names, "type": "Gene Expression"}).to_csv(
        folder / "features.tsv", sep="\t", header=False, index=False
    )
    pd.Series(adata.obs_names).to_csv(folder / "barcodes.tsv", header=False, index=False)
    if gz:
        for name in ("matrix.mtx", "features.tsv", "barcodes.tsv"):
            with open(folder / name, "rb") as src, gzip.open(folder / f"{name}.gz", "wb", compresslevel=1) as dst:
                shutil.copyfileobj(src, dst)
            (folder / name).unlink()
    return folder


def _write_10x_h5(adata, path: Path) -> Path:
    """Cell Ranger 3 layout: matrix/{data,indices,indptr,shape,barcodes,features/...}, genes x cells CSC."""
    import h5py

    csr = sp.csr_matrix(adata.X)  # cells x genes CSR == genes x cells CSC
    with h5py.File(path, "w") as f:
        m = f.create_group("matrix")
        m["data"] = csr.data  # Cell Ranger writes int32 counts; float values are read the same way
        m["indices"] = csr.indices.astype(np.int64)
        m["indptr"] = csr.indptr.astype(np.int64)
        m["shape"] = np.array([adata.n_vars, adata.n_obs], dtype=np.int32)
        m["barcodes"] = np.array(adata.obs_names, dtype="S")
        feats = m.create_group("features")
        feats["id"] = np.array([f"ID{i}" for i in range(adata.n_vars)], dtype="S")
        feats["name"] = np.array(adata.var_names, dtype="S")
        feats["feature_type"] = np.array(["Gene Expression"] * adata.n_vars, dtype="S")
        feats["genome"] = np.array(["mm10"] * adata.n_vars, dtype="S")
    return path


# ---- synthetic data: every format round-trips, without the shared folder -------------------------------------
@pytest.fixture(scope="module")
def toy():
    import anndata as ad

    rng = np.random.default_rng(0)
    x = rng.poisson(1.0, size=(30, 12)).astype(np.float32)
    obs = pd.DataFrame({"cell_type": np.repeat(["a", "b", "c"], 10)}, index=[f"cell{i}" for i in range(30)])
    return ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(12)]))


def _table(toy, *, cells_as_rows: bool, label: bool = False) -> pd.DataFrame:
    frame = pd.DataFrame(toy.X, index=toy.obs_names, columns=toy.var_names)
    if label:
        frame.insert(0, "cell_type", toy.obs["cell_type"].to_numpy())
    return frame if cells_as_rows else frame.T


def _write_gct(toy, path: Path, *, version="1.3") -> Path:
    genes, cells = list(toy.var_names), list(toy.obs_names)
    x = toy.X.T
    if version == "1.2":
        lines = ["#1.2", f"{len(genes)}\t{len(cells)}", "\t".join(["Name", "Description", *cells])]
        lines += ["\t".join([g, "desc", *map(str, x[i])]) for i, g in enumerate(genes)]
    else:
        lines = ["#1.3", f"{len(genes)}\t{len(cells)}\t1\t2", "\t".join(["id", "symbol", *cells])]
        lines.append("\t".join(["cell_type", "na", *toy.obs["cell_type"]]))
        lines.append("\t".join(["pert_dose", "na", *["10"] * len(cells)]))
        lines += ["\t".join([g, g.upper(), *map(str, x[i])]) for i, g in enumerate(genes)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _write_gctx(toy, path: Path) -> Path:
    import h5py

    with h5py.File(path, "w") as f:
        f["0/DATA/0/matrix"] = toy.X  # samples x genes, as cmapPy writes it
        f["0/META/COL/id"] = np.array(toy.obs_names, dtype="S")
        f["0/META/COL/cell_type"] = np.array(toy.obs["cell_type"], dtype="S")
        f["0/META/ROW/id"] = np.array(toy.var_names, dtype="S")
    return path


def _write_plain_h5(path: Path, x, y=None, **vectors) -> Path:
    import h5py

    with h5py.File(path, "w") as f:
        f["X"] = x
        if y is not None:
            f["Y"] = y
        for key, value in vectors.items():
            f[key] = value
    return path


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_every_format_round_trips_synthetic_data(toy, tmp_path):
    rows = _table(toy, cells_as_rows=True, label=True)
    rows.to_csv(tmp_path / "rows.csv")
    _table(toy, cells_as_rows=False).to_csv(tmp_path / "cols.tsv.gz", sep="\t")
    labelled_cols = _table(toy, cells_as_rows=False)
    labelled_cols.loc["cell_type"] = toy.obs["cell_type"].to_numpy()
    labelled_cols.to_csv(tmp_path / "cols_label_row.csv")
    # R's write.csv: the header has no corner cell
    body = _table(toy, cells_as_rows=False)
    (tmp_path / "r_style.csv").write_text(
        ",".join(f'"{c}"' for c in body.columns) + "\n"
        + "".join(f'"{g}",' + ",".join(map(str, row)) + "\n" for g, row in zip(body.index, body.to_numpy()))
    )
    labels = tmp_path / "labels.csv"
    toy.obs[["cell_type"]].iloc[::-1].to_csv(labels)  # order differs from the matrix: joined by id
    toy.write_h5ad(tmp_path / "toy.h5ad")
    toy.write_zarr(tmp_path / "toy.zarr")
    toy.write_loom(tmp_path / "toy.loom")
    _write_10x_mtx(toy, tmp_path / "mtx_v3")
    _write_10x_mtx(toy, tmp_path / "mtx_plain", gz=False)  # unzipped Cell Ranger 3 folder
    _write_10x_h5(toy, tmp_path / "toy_10x.h5")
    _write_gct(toy, tmp_path / "toy.gct")
    with gzip.open(tmp_path / "toy12.gct.gz", "wt") as fh:
        fh.write(_write_gct(toy, tmp_path / "v12.gct", version="1.2").read_text())
    _write_gctx(toy, tmp_path / "toy.gctx")
    codes = np.repeat([0, 1, 2], 10)
    _write_plain_h5(tmp_path / "plain.h5", toy.X, codes.astype(np.float64))
    _write_plain_h5(tmp_path / "plain_t.h5", toy.X.T.copy(), codes)  # genes x cells: auto-oriented by Y

    cases = [
        ("rows.csv", "csv", {"label_col": "cell_type"}),
        ("rows.csv", "csv", {"label_col": "cell_type", "orient": "rows"}),
        ("cols.tsv.gz", "tsv", {"labels_file": labels, "label_col": "cell_type"}),
        ("cols.tsv.gz", "tsv", {"labels_file": labels, "label_col": "cell_type", "orient": "columns"}),
        ("cols_label_row.csv", "csv", {"label_col": "cell_type"}),
        ("r_style.csv", "csv", {"labels_file": labels, "label_col": "cell_type"}),
        ("toy.h5ad", "h5ad", {"label_col": "cell_type"}),
        ("toy.zarr", "zarr", {"label_col": "cell_type"}),
        ("toy.loom", "loom", {"label_col": "cell_type"}),
        ("mtx_v3", "10x-mtx", {"labels_file": labels, "label_col": "cell_type"}),
        ("mtx_v3/matrix.mtx.gz", "10x-mtx", {"labels_file": labels, "label_col": "cell_type"}),
        ("mtx_plain", "10x-mtx", {"labels_file": labels, "label_col": "cell_type"}),
        ("toy_10x.h5", "10x-h5", {"labels_file": labels, "label_col": "cell_type"}),
        ("toy.gct", "gct", {"label_col": "cell_type"}),
        ("toy12.gct.gz", "gct", {"labels_file": labels, "label_col": "cell_type"}),
        ("toy.gctx", "gctx", {"label_col": "cell_type"}),
    ]
    for name, fmt, kwargs in cases:
        path = tmp_path / name
        assert detect_format(path) == fmt, name
        adata = read_any(path, **kwargs)
        assert adata.shape == (30, 12), name
        assert list(adata.obs_names) == list(toy.obs_names), name
        assert list(adata.var_names) == list(toy.var_names), name
        x = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
        np.testing.assert_allclose(x, toy.X, err_msg=name)
        assert list(adata.obs["cell_type"].astype(str)) == list(toy.obs["cell_type"]), name
    for name in ("plain.h5", "plain_t.h5"):
        adata = read_any(tmp_path / name, label_col="Y")
        assert adata.shape == (30, 12) and list(adata.var_names[:2]) == ["gene_0", "gene_1"]
        np.testing.assert_allclose(adata.X.toarray(), toy.X)
        assert Counter(map(str, adata.obs["Y"])) == {"0": 10, "1": 10, "2": 10}
    assert read_any(tmp_path / "toy.gct").var["symbol"].iloc[0] == "G0"  # row metadata kept in var
    assert set(READERS) == {"h5ad", "zarr", "10x-mtx", "10x-h5", "loom", "csv", "tsv", "gct", "gctx", "hdf5"}


def test_headerless_and_positional_labels_files(toy, tmp_path):
    _table(toy, cells_as_rows=False).to_csv(tmp_path / "m.csv")
    (tmp_path / "pairs.txt").write_text("".join(f"{c}\t{t}\n" for c, t in zip(toy.obs_names, toy.obs["cell_type"])))
    (tmp_path / "three.txt").write_text("".join(f"{c}\tx\t{t}\n" for c, t in zip(toy.obs_names, toy.obs["cell_type"])))
    (tmp_path / "one.txt").write_text("cell_type\n" + "".join(f"{t}\n" for t in toy.obs["cell_type"]))
    for labels, col in (("pairs.txt", "cell_type"), ("three.txt", "3"), ("one.txt", "cell_type")):
        adata = read_any(tmp_path / "m.csv", labels_file=tmp_path / labels, label_col=col)
        assert list(adata.obs[col].astype(str)) == list(toy.obs["cell_type"]), labels
    # labels for only some cells: the rest are missing, and ingest drops them (recorded in provenance)
    (tmp_path / "some.csv").write_text("id,cell_type\n" + "".join(f"{c},{t}\n" for c, t in list(zip(toy.obs_names, toy.obs["cell_type"]))[:20]))
    ingest_file(tmp_path / "m.csv", label_col="cell_type", labels_file=tmp_path / "some.csv", out=tmp_path / "s.zarr")
    store = Store(tmp_path / "s.zarr")
    assert store.n_cells == 20 and store.provenance["cells_dropped_missing_label"] == 10
    assert store.provenance["input"] == {"format": "csv", "orient": "columns", "labels_file": str(tmp_path / "some.csv")}


# ---- malformed input: InputError naming the file, CLI exit 2 with one line -----------------------------------
def _csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def bad(toy, tmp_path):
    """name -> (input, read_any kwargs, needles in the one-line message)."""
    good = tmp_path / "good.csv"
    _table(toy, cells_as_rows=True, label=True).to_csv(good)
    full = gzip.compress(good.read_bytes())
    (tmp_path / "truncated.csv.gz").write_bytes(full[: len(full) // 2])
    _csv(tmp_path / "nonnumeric.csv", "id,cell_type,g1,g2\nc1,a,1,2\nc2,b,3,abc\n")
    _csv(tmp_path / "nan.csv", "id,cell_type,g1,g2\nc1,a,1,2\nc2,b,NaN,4\n")
    _csv(tmp_path / "inf.tsv", "gene\tc1\tc2\ng1\t1\tinf\ng2\t3\t4\n")
    _csv(tmp_path / "inf_labels.tsv", "c2\tb\nc1\ta\n")
    _csv(tmp_path / "hole.csv", "id,cell_type,g1,g2\nc1,a,1,\nc2,b,3,4\n")
    _csv(tmp_path / "dup.csv", "id,cell_type,g1,g2\nc1,a,1,2\nc1,b,3,4\nc2,b,5,6\n")
    _csv(tmp_path / "empty.csv", "")
    _csv(tmp_path / "header_only.csv", "id,cell_type,g1,g2\n")
    _csv(tmp_path / "ragged.csv", "id,cell_type,g1,g2\nc1,a,1,2,9\nc2,b,3,4\n")
    _csv(tmp_path / "ragged_late.csv", "id,cell_type,g1,g2\nc1,a,1,2\nc2,b,3,4\nc3,b,3,4,5\n")
    _table(toy, cells_as_rows=False).to_csv(tmp_path / "cols.csv")
    _csv(tmp_path / "short_labels.txt", "".join(f"{t}\n" for t in toy.obs["cell_type"][:-1]))
    _csv(tmp_path / "dup_labels.csv", "id,cell_type\ncell0,a\ncell0,b\ncell1,a\n")
    _csv(tmp_path / "stranger_labels.csv", "id,cell_type\nx1,a\nx2,b\n")
    _csv(tmp_path / "labels.csv", "id,cell_type\n" + "".join(f"{c},{t}\n" for c, t in zip(toy.obs_names, toy.obs["cell_type"])))
    gct = _write_gct(toy, tmp_path / "toy.gct").read_text().splitlines()
    _csv(tmp_path / "truncated.gct", "\n".join(gct[:-3]) + "\n")
    _csv(tmp_path / "nonnumeric.gct", "\n".join([*gct[:-1], gct[-1].rsplit("\t", 1)[0] + "\tfoo"]) + "\n")
    _csv(tmp_path / "empty.gct", "#1.3\n0\t30\t0\t0\nid\n")
    _csv(tmp_path / "not.gct", "hello\n")
    _write_plain_h5(tmp_path / "short_y.h5", toy.X, np.zeros(29))
    _write_plain_h5(tmp_path / "empty.h5", np.zeros((0, 5), dtype=np.float32), np.zeros(0))
    nan_x = toy.X.copy()
    nan_x[3, 4] = np.nan
    _write_plain_h5(tmp_path / "nan.h5", nan_x, np.zeros(30))
    _write_plain_h5(tmp_path / "dup_ids.h5", toy.X, np.zeros(30), cell_ids=np.array(["c"] * 30, dtype="S"))
    (tmp_path / "garbage.h5").write_bytes(b"not hdf5" * 20)
    (tmp_path / "garbage.gctx").write_bytes(b"not hdf5" * 20)
    _write_plain_h5(tmp_path / "no_meta.gctx", toy.X)
    (tmp_path / "folder").mkdir()
    (tmp_path / "mtx_no_barcodes").mkdir()
    (tmp_path / "mtx_no_barcodes" / "matrix.mtx").write_text("%%MatrixMarket matrix coordinate real general\n1 1 0\n")
    (tmp_path / "mystery.bin").write_bytes(b"\x00\x01")
    (tmp_path / "garbage.loom").write_bytes(b"not hdf5" * 20)
    t = tmp_path
    return {
        "truncated_gz": (t / "truncated.csv.gz", {"label_col": "cell_type"}, ["truncated.csv.gz", "truncated or corrupt"]),
        "non_numeric": (t / "nonnumeric.csv", {"label_col": "cell_type"}, ["nonnumeric.csv", "non-numeric value 'abc'", "'c2'", "'g2'"]),
        "nan": (t / "nan.csv", {"label_col": "cell_type"}, ["nan.csv", "NaN/inf", "'c2'", "'g1'"]),
        "inf_columns": (t / "inf.tsv", {"labels_file": t / "inf_labels.tsv", "label_col": "cell_type"}, ["inf.tsv", "NaN/inf", "'c2'", "'g1'"]),
        "missing_value": (t / "hole.csv", {"label_col": "cell_type"}, ["hole.csv", "missing", "'c1'", "'g2'"]),
        "dup_cells": (t / "dup.csv", {"label_col": "cell_type"}, ["dup.csv", "duplicate cell ids", "'c1'"]),
        "empty_file": (t / "empty.csv", {"label_col": "cell_type"}, ["empty.csv", "empty"]),
        "header_only": (t / "header_only.csv", {"label_col": "cell_type"}, ["header_only.csv", "empty"]),
        "ragged": (t / "ragged.csv", {"label_col": "cell_type"}, ["ragged.csv", "line 2 has 5 fields but line 3 has 4"]),
        "ragged_late": (t / "ragged_late.csv", {"label_col": "cell_type"}, ["ragged_late.csv", "more fields than the header"]),
        "no_label_column": (t / "good.csv", {"label_col": "kind", "orient": "rows"}, ["good.csv", "no label column 'kind'"]),
        "label_row_missing": (t / "cols.csv", {"label_col": "kind"}, ["cols.csv", "'kind'"]),
        "short_labels_fixed": (t / "cols.csv", {"labels_file": t / "short_labels.txt", "label_col": "cell_type", "orient": "columns"}, ["short_labels.txt", "29 labels for 30 cells"]),
        "short_labels": (t / "cols.csv", {"labels_file": t / "short_labels.txt", "label_col": "cell_type"}, ["short_labels.txt", "29 labels", "12 rows", "30 columns"]),
        "dup_labels": (t / "cols.csv", {"labels_file": t / "dup_labels.csv", "label_col": "cell_type"}, ["dup_labels.csv", "duplicate cell ids", "'cell0'"]),
        "labels_match_nothing": (t / "cols.csv", {"labels_file": t / "stranger_labels.csv", "label_col": "cell_type"}, ["stranger_labels.csv", "none of its 2 ids"]),
        "labels_wrong_orient": (t / "cols.csv", {"labels_file": t / "labels.csv", "label_col": "cell_type", "orient": "rows"}, ["labels.csv", "match the columns", "not its rows", "use --orient columns"]),
        "labels_no_column": (t / "cols.csv", {"labels_file": t / "labels.csv", "label_col": "kind"}, ["labels.csv", "no label column 'kind'", "cell_type"]),
        "labels_missing": (t / "cols.csv", {"labels_file": t / "nope.csv", "label_col": "cell_type"}, ["nope.csv", "not found"]),
        "gct_truncated": (t / "truncated.gct", {"label_col": "cell_type"}, ["truncated.gct", "truncated", "12 data lines", "found 11"]),
        "gct_non_numeric": (t / "nonnumeric.gct", {"label_col": "cell_type"}, ["nonnumeric.gct", "non-numeric value 'foo'", "'g11'", "'cell29'"]),
        "gct_empty": (t / "empty.gct", {"label_col": "cell_type"}, ["empty.gct", "empty"]),
        "gct_not": (t / "not.gct", {"label_col": "cell_type"}, ["not.gct", "not a GCT file"]),
        "gctx_garbage": (t / "garbage.gctx", {"label_col": "cell_type"}, ["garbage.gctx", "cannot read as GCTX"]),
        "gctx_no_meta": (t / "no_meta.gctx", {"label_col": "cell_type"}, ["no_meta.gctx", "not a GCTX file"]),
        "h5_short_y": (t / "short_y.h5", {"label_col": "Y", "orient": "rows"}, ["short_y.h5", "label vector 'Y' has 29 values", "30 cells"]),
        "h5_short_y_auto": (t / "short_y.h5", {"label_col": "Y"}, ["short_y.h5", "label vector 'Y' has 29 values"]),
        "h5_no_y": (t / "short_y.h5", {"label_col": "labels"}, ["short_y.h5", "no label vector 'labels'", "Y"]),
        "h5_empty": (t / "empty.h5", {"label_col": "Y"}, ["empty.h5", "empty"]),
        "h5_nan": (t / "nan.h5", {"label_col": "Y"}, ["nan.h5", "NaN/inf", "'cell_3'", "'gene_4'"]),
        "h5_dup_ids": (t / "dup_ids.h5", {"label_col": "Y"}, ["dup_ids.h5", "duplicate cell ids"]),
        "h5_garbage": (t / "garbage.h5", {"label_col": "Y"}, ["garbage.h5", "cannot read as HDF5"]),
        "loom_garbage": (t / "garbage.loom", {"label_col": "Y"}, ["garbage.loom", "cannot read as loom"]),
        "plain_folder": (t / "folder", {"label_col": "Y"}, ["folder", "neither an AnnData zarr store"]),
        "mtx_incomplete": (t / "mtx_no_barcodes", {"label_col": "Y"}, ["mtx_no_barcodes", "not a 10x mtx folder", "barcodes.tsv"]),
        "unknown_suffix": (t / "mystery.bin", {"label_col": "Y"}, ["mystery.bin", "--format"]),
        "unknown_format": (t / "good.csv", {"label_col": "cell_type", "format": "xlsx"}, ["unknown format 'xlsx'", "gctx"]),
        "orient_fixed": (t / "toy.gct", {"label_col": "cell_type", "orient": "columns"}, ["--orient applies to csv, tsv, hdf5"]),
        "bad_orient": (t / "good.csv", {"label_col": "cell_type", "orient": "diagonal"}, ["--orient 'diagonal'"]),
        "missing_file": (t / "absent.csv", {"label_col": "cell_type"}, ["absent.csv", "not found"]),
    }


BAD_CASES = [
    "truncated_gz", "non_numeric", "nan", "inf_columns", "missing_value", "dup_cells", "empty_file", "header_only",
    "ragged", "ragged_late", "no_label_column", "label_row_missing", "short_labels", "short_labels_fixed", "dup_labels", "labels_match_nothing",
    "labels_wrong_orient", "labels_no_column", "labels_missing", "gct_truncated", "gct_non_numeric", "gct_empty",
    "gct_not", "gctx_garbage", "gctx_no_meta", "h5_short_y", "h5_short_y_auto", "h5_no_y", "h5_empty", "h5_nan",
    "h5_dup_ids", "h5_garbage", "loom_garbage", "plain_folder", "mtx_incomplete", "unknown_suffix",
    "unknown_format", "orient_fixed", "bad_orient", "missing_file",
]


def test_malformed_inputs_raise_one_line_input_errors(bad):
    assert sorted(bad) == sorted(BAD_CASES)
    for name in BAD_CASES:
        path, kwargs, needles = bad[name]
        with pytest.raises(InputError) as info:
            read_any(path, **kwargs)
        message = str(info.value)
        assert "\n" not in message, (name, message)
        for needle in needles:
            assert needle in message, (name, needle, message)


@pytest.mark.parametrize("name", ["truncated_gz", "non_numeric", "nan", "short_labels", "dup_cells", "header_only",
                                  "labels_wrong_orient", "h5_short_y", "gct_truncated", "unknown_format"])
def test_cli_rejects_malformed_input_with_one_line(cli, bad, tmp_path, name):
    path, kwargs, needles = bad[name]
    args = ["ingest", path, "--label-col", kwargs["label_col"], "--out", tmp_path / "out.zarr"]
    for key, flag in (("labels_file", "--labels"), ("orient", "--orient"), ("format", "--format")):
        if key in kwargs:
            args += [flag, kwargs[key]]
    _one_line_error(*cli(*args), *needles)
    assert not (tmp_path / "out.zarr").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.zarr")]
