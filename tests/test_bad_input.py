"""Bad input: one line naming the problem, exit code 2, no traceback, nothing written."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from conftest import assert_one_line_error as _assert_one_line_error




def _write_h5ad(path, *, labels, x=None):
    import anndata as ad
    import pandas as pd

    n = len(labels)
    x = np.ones((n, 4), dtype=np.float32) if x is None else x
    ad.AnnData(
        X=x, obs=pd.DataFrame({"cell_type": labels}, index=[f"c{i}" for i in range(n)]),
        var=pd.DataFrame(index=[f"g{i}" for i in range(x.shape[1])]),
    ).write_h5ad(path)
    return path


@pytest.fixture
def bad_files(tmp_path):
    garbage = tmp_path / "garbage.h5ad"
    garbage.write_bytes(b"this is not an HDF5 file" * 10)
    nan_x = np.ones((6, 4), dtype=np.float32)
    nan_x[2, 1] = np.inf
    return {
        "garbage": garbage,
        "one_class": _write_h5ad(tmp_path / "one.h5ad", labels=["a"] * 6),
        "nan": _write_h5ad(tmp_path / "nan.h5ad", labels=["a", "b"] * 3, x=nan_x),
        "good": _write_h5ad(tmp_path / "good.h5ad", labels=["a", "b"] * 3),
    }


@pytest.mark.parametrize(
    "case, needles",
    [
        ("missing", ["missing.h5ad", "not found"]),
        ("garbage", ["garbage.h5ad", "cannot read"]),
        ("no_column", ["good.h5ad", "no label column 'celltype'"]),
        ("one_class", ["one.h5ad", "1 class", "at least 2"]),
        ("nan", ["nan.h5ad", "NaN/inf"]),
        ("bad_split", ["--split"]),
    ],
)
def test_ingest_rejects_bad_input(cli, bad_files, tmp_path, case, needles):
    out = tmp_path / "out.zarr"
    label, source, extra = "cell_type", bad_files.get(case), []
    if case == "missing":
        source = tmp_path / "missing.h5ad"
    if case == "no_column":
        source, label = bad_files["good"], "celltype"
    if case == "bad_split":
        source, extra = bad_files["good"], ["--split", "0.5,0.2"]
    code, stdout, stderr = cli("ingest", source, "--label-col", label, "--out", out, *extra)
    _assert_one_line_error(code, stdout, stderr, *needles)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.zarr")]


def test_existing_store_is_not_overwritten_silently(cli, bad_files, tmp_path):
    out = tmp_path / "s.zarr"
    assert cli("ingest", bad_files["good"], "--label-col", "cell_type", "--out", out)[0] == 0
    code, stdout, stderr = cli("ingest", bad_files["good"], "--label-col", "cell_type", "--out", out)
    _assert_one_line_error(code, stdout, stderr, "already exists", "--overwrite")


def test_sweep_rejects_bad_names_and_spaces_before_writing_anything(cli, tmp_path, pbmc_store):
    out = tmp_path / "runs"
    bad_yaml = tmp_path / "broken.yaml"
    bad_yaml.write_text("space:\n  lr: {loguniform: [0.0, 1.0e-1]\n")
    neg_log = tmp_path / "neglog.yaml"
    neg_log.write_text("space:\n  lr: {loguniform: [0.0, 0.1]}\n")
    unknown_kind = tmp_path / "kind.yaml"
    unknown_kind.write_text("space:\n  lr: {gaussian: [0.0, 0.1]}\n")
    cases = [
        (["--model", "nope"], ["unknown model 'nope'", "mlp"]),
        (["--dataset", "nope"], ["unknown dataset 'nope'", "pbmc68k"]),
        (["--dataset", str(tmp_path / "missing.zarr")], ["missing.zarr", "not found"]),
        (["--model", "mlp", "--space", str(bad_yaml)], ["broken.yaml", "malformed YAML", "line"]),
        (["--model", "mlp", "--space", str(neg_log)], ["neglog.yaml", "space.lr.loguniform", "low > 0"]),
        (["--model", "mlp", "--space", str(unknown_kind)], ["kind.yaml", "unknown kind 'gaussian'"]),
        (["--model", "mlp", "--space", str(tmp_path / "none.yaml")], ["none.yaml", "not found"]),
        (["--metric", "speed"], ["--metric 'speed'"]),
    ]
    for args, needles in cases:
        code, stdout, stderr = cli("sweep", "--runs", out, *args)
        _assert_one_line_error(code, stdout, stderr, *needles)
        assert not out.exists(), args


@pytest.mark.slow
def test_real_process_exits_2_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "omicsweep.cli", "ingest", str(tmp_path / "x.h5ad"), "--label-col", "y", "--out", str(tmp_path / "o.zarr")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "x.h5ad" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
