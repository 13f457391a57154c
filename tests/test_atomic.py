"""Atomic writes: a failure or a crash midway leaves the old file, folder or store, never a part of the new one."""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from omicsweep import atomic
from omicsweep.atomic import atomic_file, atomic_write_text, recover_folder, replace_folder


def _tiny_h5ad(path: Path, seed: int) -> Path:
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    counts = sp.random(60, 30, density=0.3, random_state=seed, data_rvs=lambda n: rng.integers(1, 20, n)).tocsr()
    obs = pd.DataFrame({"cell_type": np.repeat(["a", "b", "c"], 20)}, index=[f"c{i}" for i in range(60)])
    ad.AnnData(X=counts.astype(np.float32), obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(30)])).write_h5ad(path)
    return path


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("swap", ["exchange", "rename"])
def test_ingest_overwrite_that_fails_at_the_swap_keeps_the_old_store(cli, tmp_path, monkeypatch, swap):
    """The new store is complete but moving it into place fails: the old store must still be there, readable."""
    from omicsweep.datasets import Store

    out = tmp_path / "cells.zarr"
    code, _, stderr = cli("ingest", _tiny_h5ad(tmp_path / "old.h5ad", 0), "--label-col", "cell_type", "--out", out)
    assert code == 0, stderr
    old = Store(out).fingerprint
    new_input = _tiny_h5ad(tmp_path / "new.h5ad", 1)

    real_replace = os.replace
    failed = []

    def replace_failing_once(src, dst, **kwargs):  # the rename of the finished new store onto `out`
        if not failed and Path(src).name.startswith(f".{out.name}.partial-") and Path(dst) == out:
            failed.append(src)
            raise OSError(errno.EIO, "injected I/O error", str(src))
        return real_replace(src, dst, **kwargs)

    def exchange_failing(*args):  # renameat2(RENAME_EXCHANGE) of the same two folders
        failed.append(args)
        ctypes.set_errno(errno.EIO)
        return -1

    monkeypatch.setattr(os, "replace", replace_failing_once)
    monkeypatch.setattr(atomic, "_RENAMEAT2", exchange_failing if swap == "exchange" else None)
    code, _, _ = cli("ingest", new_input, "--label-col", "cell_type", "--out", out, "--overwrite")
    monkeypatch.undo()

    assert failed and code != 0
    assert Store(out).fingerprint == old  # the old store, whole
    assert Store(out).n_cells == 60
    assert _hidden(tmp_path) == []  # the new store's folder and any backup are gone
    code, _, stderr = cli("ingest", new_input, "--label-col", "cell_type", "--out", out, "--overwrite")
    assert code == 0, stderr
    assert Store(out).fingerprint != old and _hidden(tmp_path) == []


def _folder(path: Path, text: str) -> Path:
    (path / "sub").mkdir(parents=True)
    (path / "zarr.json").write_text(text)
    (path / "sub" / "chunk").write_text(text * 3)
    return path


def _content(path: Path) -> str:
    assert (path / "sub" / "chunk").read_text() == (path / "zarr.json").read_text() * 3
    return (path / "zarr.json").read_text()


CRASH = """
import os, shutil, sys
from omicsweep import atomic
atomic._RENAMEAT2 = None  # the two-rename fallback, the one with a window
calls = []
real_replace, real_rmtree = os.replace, shutil.rmtree
def replace(src, dst):
    calls.append(src)
    if {point!r} == "between renames" and len(calls) == 2:
        os._exit(9)  # killed: no handler runs
    real_replace(src, dst)
def rmtree(path, **kwargs):
    if {point!r} == "before the backup is deleted":
        os._exit(9)
    real_rmtree(path, **kwargs)
os.replace, shutil.rmtree = replace, rmtree
atomic.replace_folder(sys.argv[1], sys.argv[2])
"""


@pytest.mark.parametrize("point", ["between renames", "before the backup is deleted"])
def test_replace_folder_killed_midway_is_recovered(tmp_path, point):
    out = _folder(tmp_path / "store.zarr", "old")
    new = _folder(tmp_path / ".store.zarr.partial-1", "new")
    script = textwrap.dedent(CRASH).format(point=point)
    done = subprocess.run([sys.executable, "-c", script, str(new), str(out)], capture_output=True, text=True)
    assert done.returncode == 9, done.stderr

    backups = [name for name in _hidden(tmp_path) if ".replaced-" in name]
    assert len(backups) == 1 and _content(tmp_path / backups[0]) == "old"  # the old folder survives whole
    if point == "between renames":
        assert not out.exists() and recover_folder(out) is True
        assert _content(out) == "old" and _hidden(tmp_path) == [new.name]
        replace_folder(new, out)  # the next writer works as usual
        assert _content(out) == "new"
    else:
        assert _content(out) == "new" and recover_folder(out) is False  # finished: only the stale backup to delete
    assert _hidden(tmp_path) == []


@pytest.mark.parametrize("swap", ["exchange", "rename"])
def test_replace_folder_swaps_and_rolls_back_on_an_error(tmp_path, monkeypatch, swap):
    if swap == "exchange" and atomic._RENAMEAT2 is None:
        pytest.skip("no renameat2 here")
    if swap == "rename":
        monkeypatch.setattr(atomic, "_RENAMEAT2", None)
    out = _folder(tmp_path / "store.zarr", "old")
    replace_folder(_folder(tmp_path / ".a", "new"), out)
    assert _content(out) == "new" and _hidden(tmp_path) == []
    assert replace_folder(_folder(tmp_path / ".b", "first"), tmp_path / "fresh.zarr") == tmp_path / "fresh.zarr"

    real_replace = os.replace
    monkeypatch.setattr(atomic, "_RENAMEAT2", None)
    monkeypatch.setattr(os, "replace", lambda src, dst: (_ for _ in ()).throw(OSError(errno.EIO, "injected"))
                        if Path(src).name == ".c" else real_replace(src, dst))
    with pytest.raises(OSError, match="injected"):
        replace_folder(_folder(tmp_path / ".c", "newer"), out)
    assert _content(out) == "new" and _hidden(tmp_path) == [".c"]  # rolled back; the caller removes its folder


def test_atomic_write_text_keeps_the_old_content_when_writing_fails(tmp_path, monkeypatch):
    path = atomic_write_text(tmp_path / "new" / "sweep-state.json", "old\n")
    assert path.read_text() == "old\n"

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        atomic_write_text(path, "new\n" * 1000)
    monkeypatch.undo()
    assert path.read_text() == "old\n" and _hidden(path.parent) == []

    with pytest.raises(UnicodeEncodeError):
        atomic_write_text(path, "half \ud800")
    assert path.read_text() == "old\n" and _hidden(path.parent) == []


def test_atomic_file_moves_a_finished_file_into_place_and_removes_a_failed_one(tmp_path):
    import polars as pl

    table = pl.DataFrame({"model": ["mlp", "knn"], "score": [0.9, 0.8]})
    with atomic_file(tmp_path / "leaderboard.csv") as tmp:
        table.write_csv(tmp)
    with atomic_file(tmp_path / "arrays.npz") as tmp:
        np.savez(str(tmp), x=np.arange(3))  # savez appends .npz to a name without it: the temp name keeps it
    assert pl.read_csv(tmp_path / "leaderboard.csv").equals(table)
    assert np.load(tmp_path / "arrays.npz")["x"].tolist() == [0, 1, 2]

    with pytest.raises(RuntimeError, match="midway"), atomic_file(tmp_path / "leaderboard.csv") as tmp:
        tmp.write_text("model,sc")
        raise RuntimeError("writer died midway")
    with pytest.raises(FileNotFoundError, match="no file"), atomic_file(tmp_path / "arrays.npz"):
        pass  # a writer that wrote nothing (or somewhere else) replaces nothing
    assert pl.read_csv(tmp_path / "leaderboard.csv").equals(table)
    assert np.load(tmp_path / "arrays.npz")["x"].tolist() == [0, 1, 2]
    assert _hidden(tmp_path) == []


def test_open_store_restores_a_store_left_aside_by_a_killed_writer(cli, tmp_path):
    """A writer killed between its two renames leaves no store at `out`, the old one at a hidden backup: the
    next reader puts it back."""
    from omicsweep.datasets import open_store

    out = tmp_path / "cells.zarr"
    code, _, stderr = cli("ingest", _tiny_h5ad(tmp_path / "old.h5ad", 0), "--label-col", "cell_type", "--out", out)
    assert code == 0, stderr
    fingerprint = open_store(out).fingerprint
    os.replace(out, out.parent / f".{out.name}.{atomic.BACKUP_TAG}-deadbeef")  # the state a kill leaves
    assert open_store(out).fingerprint == fingerprint and out.is_dir() and not _hidden(tmp_path)
