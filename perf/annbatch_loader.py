"""annbatch's side of perf/loader_benchmark.py; runs under annbatch's own Python >= 3.12 venv, not the project's.

    python annbatch_loader.py build   --h5ad X.h5ad --labels L.npy --rows START STOP --out C.zarr
    python annbatch_loader.py measure --source collection|store --path P --labels L.npy --rows START STOP \
                                      --batch 256 --limit 20000

`build` writes annbatch's pre-shuffled DatasetCollection (its defaults: 64-row chunks inside ~1 GB shards, lz4)
from rows START:STOP (the training split) of the h5ad, with the rows' label codes as an obs column. `measure`
times annbatch's Loader (RandomSampler, chunk_size 32, preload_nchunks 256, as annbatch's README; zarrs codec
pipeline) on that collection or directly on our store's X (rows START:STOP via the sampler's mask) and prints one
JSON line: cells, seconds, peak RSS, batch label entropy as a share of uniformly random batches'. Needs only
annbatch and its dependencies (no omicsweep import: the project is on Python 3.11).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

CHUNK_SIZE, PRELOAD_NCHUNKS = 32, 256  # annbatch README's Loader example


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def entropy(labels: np.ndarray, n_classes: int) -> float:
    counts = np.bincount(labels, minlength=n_classes)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def mixing(batches: list[np.ndarray], pool: np.ndarray, batch: int) -> float:
    """Mean batch label entropy over that of batches drawn uniformly from `pool` (the same as the project side)."""
    n_classes = int(pool.max()) + 1
    rng = np.random.default_rng(0)
    random = np.mean([entropy(rng.choice(pool, batch, replace=batch > len(pool)), n_classes) for _ in range(200)])
    return float(np.mean([entropy(b, n_classes) for b in batches]) / random) if batches else float("nan")


def _use_zarrs() -> None:
    import zarr

    zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"})  # annbatch: needed on local disks


def build(h5ad: str, labels_path: str, start: int, stop: int, out: str) -> None:
    import anndata as ad
    import pandas as pd
    from annbatch import DatasetCollection

    _use_zarrs()
    codes = np.load(labels_path)

    def load_training_rows(path):
        adata = ad.experimental.read_lazy(path)[start:stop]
        obs = pd.DataFrame({"label": codes[start:stop]}, index=np.asarray(adata.obs_names))
        return ad.AnnData(X=adata.X, obs=obs, var=pd.DataFrame(index=np.asarray(adata.var_names)))

    partial = Path(out).with_suffix(".partial.zarr")
    shutil.rmtree(partial, ignore_errors=True)
    DatasetCollection(partial).add_adatas([h5ad], load_adata=load_training_rows, shuffle=True,
                                          rng=np.random.default_rng(0))
    os.replace(partial, out)


def _loader(source: str, path: str, codes: np.ndarray, start: int, stop: int, batch: int):
    """annbatch's Loader over the collection or our store; returns it and the label code of each of its rows."""
    import anndata as ad
    import zarr
    from annbatch import DatasetCollection, Loader
    from annbatch.samplers import RandomSampler

    mask = None if source == "collection" else slice(start, stop)
    sampler = RandomSampler(CHUNK_SIZE, PRELOAD_NCHUNKS, batch, mask=mask, rng=np.random.default_rng(0))
    loader = Loader(batch_sampler=sampler, return_index=True, preload_to_gpu=False)
    if source == "store":
        return loader.add_dataset(ad.io.sparse_dataset(zarr.open_group(path, mode="r")["X"])), codes
    collection = DatasetCollection(path, mode="r")
    row_labels = np.concatenate([np.asarray(ad.io.read_elem(g["obs"])["label"]) for g in collection])
    return loader.use_collection(collection, load_adata=lambda g: ad.AnnData(X=ad.io.sparse_dataset(g["X"]))), row_labels


def measure(source: str, path: str, labels_path: str, start: int, stop: int, batch: int, limit: int) -> dict:
    _use_zarrs()
    loader, row_labels = _loader(source, path, np.load(labels_path), start, stop, batch)
    started, cells, labels = time.perf_counter(), 0, []
    for out in loader:
        labels.append(row_labels[out["index"]])
        cells += out["X"].shape[0]
        if cells >= limit:
            break
    seconds = time.perf_counter() - started
    pool = np.load(labels_path)[start:stop]
    return {"cells": cells, "seconds": seconds, "rss_mb": peak_rss_mb(), "mixing": mixing(labels, pool, batch)}


# ---- the project side (Python 3.11): find an interpreter, make the venv, run the steps above in it -------------------


def find_python312(explicit: str | None) -> tuple[str | None, str]:
    """A Python >= 3.12 that runs: --annbatch-python, $OMICSWEEP_PY312, python3.12/3.13 on PATH, pyenv versions.
    Returns (path or None, what was tried); a pyenv shim on PATH may exist and fail, so each is run once."""
    import glob
    import subprocess

    candidates = [c for c in (explicit, os.environ.get("OMICSWEEP_PY312")) if c]
    candidates += [found for name in ("python3.12", "python3.13") if (found := shutil.which(name))]
    pyenv_root = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    candidates += sorted(glob.glob(f"{pyenv_root}/versions/3.1[2-9]*/bin/python"))  # 3.12 first: annbatch's CI
    check = "import sys; assert sys.version_info >= (3, 12)"
    for candidate in candidates:
        try:
            if subprocess.run([candidate, "-c", check], capture_output=True).returncode == 0:
                return candidate, ", ".join(candidates)
        except OSError:  # a given path that is not there or not executable: try the next
            continue
    return None, ", ".join(candidates) or "nothing found"


def ensure_venv(python: str, venv: Path, requirements: Path) -> Path:
    """annbatch's venv, made from `requirements` once and remade when that file changes; returns its python."""
    import subprocess

    marker, wanted = venv / "requirements.txt", requirements.read_text()
    if marker.exists() and marker.read_text() == wanted:
        return venv / "bin" / "python"
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-r", str(requirements)],
                         capture_output=True, text=True)
    if pip.returncode != 0:
        raise RuntimeError(f"pip install -r {requirements} failed: {pip.stderr.strip().splitlines()[-1:]}")
    marker.write_text(wanted)  # last: a cut-short install is redone next time
    return venv / "bin" / "python"


def run_step(python: Path, *args: str) -> str:
    """Run this file under annbatch's python (a fresh process); its stdout, or its stderr's tail as the error."""
    import subprocess

    done = subprocess.run([str(python), __file__, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"annbatch_loader.py {args[0]} failed: {done.stderr.strip().splitlines()[-1:]}")
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("build", "measure", "version"))
    parser.add_argument("--h5ad")
    parser.add_argument("--out")
    parser.add_argument("--source", choices=("collection", "store"))
    parser.add_argument("--path")
    parser.add_argument("--labels")
    parser.add_argument("--rows", type=int, nargs=2, metavar=("START", "STOP"))
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--limit", type=int, default=20_000)
    args = parser.parse_args()
    if args.action == "version":
        from importlib.metadata import version

        print(version("annbatch"))
        return
    start, stop = args.rows
    if args.action == "build":
        build(args.h5ad, args.labels, start, stop, args.out)
    else:
        print(json.dumps(measure(args.source, args.path, args.labels, start, stop, args.batch, args.limit)))


if __name__ == "__main__":
    main()
