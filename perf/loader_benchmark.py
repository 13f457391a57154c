"""Streaming-loader benchmark, side by side: our stream (store layouts old and new) vs raw decode, anndata backed,
scDataset and annbatch, on the store and on a label-sorted copy.

    .venv/bin/python perf/loader_benchmark.py                      # 1,000,000 x 20,000, ~1,000 nnz per cell
    .venv/bin/python perf/loader_benchmark.py --cells 100000       # quick mode

Builds (once, cached in --workdir) synthetic count corpora with `omicsweep datasets synth`'s generator: the same
matrix in the current layout (store_layout.DEFAULT_LAYOUT) and the first writer's (LEGACY_LAYOUT), each with rows
in generator order (types drawn per row: every loader looks mixed) and label-sorted within each split (as real
stores grouped by sample or type), plus uncompressed h5ad copies of the current-layout stores. Then measures, each
in a fresh process, interleaved, medians of --repeats:
  raw decode      sequential read of the training rows, chunk by chunk (no shuffle): the ceiling
  stream csr      CellBatches over the training split, block-shuffled, CSR batches
  stream dense    the same, densified and min-max transformed on the host (what a CPU torch model eats)
  stream device   the same, CSR sent to a torch device and densified there (device cpu here; cuda on a GPU)
  anndata backed  random batches of training cells from read_h5ad(backed='r')
  scDataset       scDataset's BlockShuffling over the backed h5ad (bench extra: pip install omicsweep[bench])
  annbatch        annbatch's Loader on its own pre-shuffled DatasetCollection built from the same training rows, and
                  on our store (perf/annbatch_loader.py, run under annbatch's own venv: Python >= 3.12 from
                  --annbatch-python, $OMICSWEEP_PY312, python3.12/3.13 on PATH or pyenv's versions; the venv is made
                  once in --workdir from perf/requirements-annbatch.txt); skipped with one line where none runs
Batches of 256 (our CSR stream and annbatch's collection also 4,096). Each reports cells/s, peak RSS and mean batch
label entropy as a share of fully random batches' of the same size. The table goes to the loader section of
perf/RESULTS.md (other sections are kept).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from annbatch_loader import entropy, peak_rss_mb, ensure_venv, find_python312, run_step

HERE = Path(__file__).resolve().parent
BATCH, BIG_BATCH = 256, 4096
SECTION = "## Loader benchmark"
LAYOUTS = ("new", "legacy")


def _store_path(workdir: Path, cells: int, genes: int, nnz: int, layout: str, label_sorted: bool) -> Path:
    return workdir / f"synth-{cells}x{genes}-{nnz}-{layout}{'-sorted' if label_sorted else ''}.zarr"


def build_corpus(workdir: Path, cells: int, genes: int, nnz: int, layouts=LAYOUTS) -> dict[str, Path]:
    from omicsweep.datasets.store_layout import DEFAULT_LAYOUT, LEGACY_LAYOUT
    from omicsweep.datasets.synth import write_synthetic

    paths = {}
    for layout in layouts:
        for label_sorted in (False, True):
            store = _store_path(workdir, cells, genes, nnz, layout, label_sorted)
            if not store.exists():
                started = time.time()
                write_synthetic(store, cells=cells, genes=genes, nnz_per_cell=nnz, seed=0, label_sorted=label_sorted,
                                layout=DEFAULT_LAYOUT if layout == "new" else LEGACY_LAYOUT)
                print(f"wrote {store} in {time.time() - started:.0f}s", flush=True)
            paths[f"{layout}{'-sorted' if label_sorted else ''}"] = store
    for label_sorted in (False, True):
        key = "new-sorted" if label_sorted else "new"
        h5ad = paths[key].with_suffix(".h5ad")
        if not h5ad.exists():
            write_h5ad_copy(paths[key], h5ad)
        paths[f"h5ad{'-sorted' if label_sorted else ''}"] = h5ad
    return paths


def write_h5ad_copy(store_path: Path, out: Path) -> None:
    """Stream the store into anndata's h5ad layout (CSR, uncompressed) without loading the matrix."""
    import h5py
    import pandas as pd
    from anndata.io import write_elem

    from omicsweep.datasets import Store

    store = Store(store_path)
    tmp = out.with_suffix(".partial")
    with h5py.File(tmp, "w") as f:
        f.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
        x = f.create_group("X")
        x.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": list(store.shape)})
        nnz = int(store.indptr[-1])
        data = x.create_dataset("data", shape=(nnz,), dtype="float32", chunks=(1 << 18,))
        indices = x.create_dataset("indices", shape=(nnz,), dtype="int32", chunks=(1 << 18,))
        x.create_dataset("indptr", data=store.indptr.astype(np.int64))
        for chunk in range(store.n_chunks):
            start, stop = store.chunk_bounds(chunk)
            block = store.read_rows(start, stop)
            lo, hi = int(store.indptr[start]), int(store.indptr[stop])
            data[lo:hi] = block.data
            indices[lo:hi] = block.indices
        write_elem(f, "obs", pd.DataFrame(index=store.cell_ids()))
        write_elem(f, "var", pd.DataFrame(index=store.genes()))
        for key in ("obsm", "varm", "layers", "obsp", "varp", "uns"):
            write_elem(f, key, {})
    os.replace(tmp, out)


# ---- measurements (each runs in a fresh process) ------------------------------------------------------------------


def _mixing(batches: list[np.ndarray], store_path: str, batch: int = BATCH) -> float:
    """Mean batch label entropy as a share of that of batches drawn uniformly from the training split."""
    from omicsweep.datasets import Store

    store = Store(store_path)
    n_classes, train = len(store.classes), store.labels()[store.split_indices("train")]
    rng = np.random.default_rng(0)
    random = np.mean([entropy(rng.choice(train, batch, replace=batch > len(train)), n_classes) for _ in range(200)])
    return float(np.mean([entropy(b, n_classes) for b in batches]) / random) if batches else float("nan")


def _result(cells: int, started: float, labels: list[np.ndarray] | None, store_path: str, batch: int = BATCH) -> dict:
    seconds = time.perf_counter() - started
    return {"cells": cells, "seconds": seconds, "rss_mb": peak_rss_mb(),
            "mixing": _mixing(labels, store_path, batch) if labels is not None else float("nan")}


def measure_raw_decode(store_path: str, limit: int) -> dict:
    from omicsweep.datasets import Store

    store = Store(store_path)
    train = store.split_indices("train")
    started, cells = time.perf_counter(), 0
    for start in range(int(train[0]), int(train[-1]) + 1, store.rows_per_chunk):
        cells += store.read_rows(start, min(start + store.rows_per_chunk, int(train[-1]) + 1)).shape[0]
        if cells >= limit:
            break
    return _result(cells, started, None, store_path)


def measure_stream(store_path: str, limit: int, output: str, batch: int = BATCH) -> dict:
    from omicsweep.datasets import CellBatches, Store
    from omicsweep.datasets.transform import ExpressionTransform

    store = Store(store_path)
    transform = None
    if output != "csr":  # a fitted transform's cost, without the fitting pass
        transform = ExpressionTransform(True, np.zeros(store.n_genes, np.float32), np.full(store.n_genes, 5.0, np.float32))
    batches = CellBatches(store, "train", batch_size=batch, transform=transform, shuffle=True, seed=0,
                          output="csr" if output == "csr" else "dense", device="cpu" if output == "device" else None)
    started, cells, labels = time.perf_counter(), 0, []
    for _, y in batches:
        labels.append(np.asarray(y))
        cells += len(y)
        if cells >= limit:
            break
    return _result(cells, started, labels, store_path, batch)


def measure_anndata_backed(h5ad_path: str, store_path: str, limit: int) -> dict:
    import anndata as ad

    from omicsweep.datasets import Store

    store = Store(store_path)
    train, codes = store.split_indices("train"), store.labels()
    adata = ad.read_h5ad(h5ad_path, backed="r")
    rng = np.random.default_rng(0)
    started, cells, labels = time.perf_counter(), 0, []
    while cells < limit:
        rows = np.sort(rng.choice(train, BATCH, replace=False))
        cells += adata.X[rows].shape[0]
        labels.append(codes[rows])
    return _result(cells, started, labels, store_path)


def measure_scdataset(h5ad_path: str, store_path: str, limit: int) -> dict:
    """scDataset's BlockShuffling (blocks of 16 cells, fetch factor 16: its documented setting for speed) over
    the backed h5ad; the fetch reads sorted rows, as scDataset's own AnnData callback does."""
    import anndata as ad
    from scdataset import BlockShuffling, scDataset

    from omicsweep.datasets import Store

    store = Store(store_path)
    codes = store.labels()
    adata = ad.read_h5ad(h5ad_path, backed="r")

    def fetch(collection, indices):
        rows = np.sort(indices)
        return collection.X[rows], codes[rows]

    def batch(data, indices):
        return data[0][indices], data[1][indices]

    dataset = scDataset(adata, BlockShuffling(block_size=16, indices=store.split_indices("train")), batch_size=BATCH,
                        fetch_factor=16, fetch_callback=fetch, batch_callback=batch, seed=0)
    started, cells, labels = time.perf_counter(), 0, []
    for _, y in dataset:
        labels.append(np.asarray(y))
        cells += len(y)
        if cells >= limit:
            break
    return _result(cells, started, labels, store_path)


def in_fresh_process(func, *args) -> dict:
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(func, args)


def measure_annbatch(python: str, source: str, path: str, labels: str, start: int, stop: int, batch: int,
                     limit: int) -> dict:
    """annbatch's Loader in a fresh process of annbatch's own venv (perf/annbatch_loader.py measure)."""
    return json.loads(run_step(Path(python), "measure", "--source", source, "--path", path, "--labels", labels,
                               "--rows", str(start), str(stop), "--batch", str(batch), "--limit", str(limit)))


measure_annbatch.own_process = True  # already a fresh process: not wrapped in another


def _save_labels(store, out: Path) -> None:
    partial = out.with_suffix(".partial")
    with open(partial, "wb") as f:
        np.save(f, store.labels().astype(np.int64))
    os.replace(partial, out)


def prepare_annbatch(paths: dict[str, Path], args) -> tuple[dict | None, str]:
    """annbatch's venv, label codes and pre-shuffled collections (built once, cached in --workdir) for the stores
    `new` and `new-sorted`, and the line the report prints about it; None where annbatch cannot run."""
    if args.no_annbatch:
        return None, "annbatch: left out (--no-annbatch)."
    python, tried = find_python312(args.annbatch_python)
    if python is None:
        return None, (f"annbatch: skipped, no working Python >= 3.12 (tried: {tried}); annbatch needs one: pass "
                      "--annbatch-python or set OMICSWEEP_PY312 to add the comparator.")
    try:
        return _build_annbatch_inputs(paths, args, python)
    except (OSError, RuntimeError, subprocess.CalledProcessError) as error:  # no network, a failed build: one line
        return None, f"annbatch: skipped, {python} runs but setting annbatch up failed: {str(error).splitlines()[0]}"


def _build_annbatch_inputs(paths: dict[str, Path], args, python: str) -> tuple[dict, str]:
    from omicsweep.datasets import Store

    venv_python = ensure_venv(python, args.workdir / "annbatch-venv", HERE / "requirements-annbatch.txt")
    setup: dict = {"python": str(venv_python)}
    for key in ("new", "new-sorted"):
        store = Store(paths[key])
        train = store.split_indices("train")
        start, stop = int(train[0]), int(train[-1]) + 1
        if len(train) != stop - start:  # annbatch's sampler masks one slice of rows
            raise SystemExit(f"error: {paths[key]}: the training split is not one run of rows")
        labels = paths[key].with_name(f"{paths[key].stem}-labels.npy")
        if not labels.exists():
            _save_labels(store, labels)
        collection = args.workdir / f"annbatch-{paths[key].stem}.zarr"
        if not collection.exists():
            started = time.time()
            h5ad = paths["h5ad-sorted" if key.endswith("sorted") else "h5ad"]
            run_step(venv_python, "build", "--h5ad", str(h5ad), "--labels", str(labels), "--rows", str(start),
                     str(stop), "--out", str(collection))
            print(f"wrote annbatch's collection {collection} in {time.time() - started:.0f}s", flush=True)
        setup[key] = (str(labels), start, stop, str(collection))
    version = run_step(venv_python, "version").strip()
    return setup, (f"annbatch {version} in its own venv (Python >= 3.12 from {python}, perf/requirements-annbatch.txt; "
                   "zarrs codec pipeline): Loader with RandomSampler(chunk_size 32, preload_nchunks 256, its README's "
                   "setting), on its DatasetCollection (add_adatas defaults: shuffled at write, 64-row chunks in ~1 GB "
                   "shards, lz4) built from the same training rows, and on our store's X (no pre-shuffling).")


# ---- the run ------------------------------------------------------------------------------------------------------


def plan(paths: dict[str, Path], args, annbatch: dict | None) -> dict[str, tuple]:
    """name -> (function, arguments) of every measurement, interleaved by the caller."""
    n = args.measure_cells
    runs = {}
    for key in ("new", "new-sorted") if annbatch else ():
        labels, start, stop, collection = annbatch[key]
        rows = (labels, start, stop)
        runs[f"abcoll {key}"] = (measure_annbatch, annbatch["python"], "collection", collection, *rows, BATCH, n)
        runs[f"abcoll{BIG_BATCH} {key}"] = (measure_annbatch, annbatch["python"], "collection", collection, *rows,
                                            BIG_BATCH, n)
        runs[f"abstore {key}"] = (measure_annbatch, annbatch["python"], "store", str(paths[key]), *rows, BATCH, n)
    for key in ("new", "new-sorted", "legacy", "legacy-sorted"):
        if key not in paths:
            continue
        store = str(paths[key])
        runs[f"raw {key}"] = (measure_raw_decode, store, n)
        runs[f"csr {key}"] = (measure_stream, store, n, "csr")
        if key.startswith("new"):
            runs[f"csr{BIG_BATCH} {key}"] = (measure_stream, store, n, "csr", BIG_BATCH)
        if key.startswith("new"):
            runs[f"dense {key}"] = (measure_stream, store, n // 2, "dense")
            if args.device:
                runs[f"device {key}"] = (measure_stream, store, n // 2, "device")
    for key in ("", "-sorted"):
        runs[f"backed new{key}"] = (measure_anndata_backed, str(paths[f"h5ad{key}"]), str(paths[f"new{key}"]),
                                    args.anndata_cells)
        if not args.no_scdataset:
            runs[f"scdataset new{key}"] = (measure_scdataset, str(paths[f"h5ad{key}"]), str(paths[f"new{key}"]),
                                           args.anndata_cells)
    return runs


def table(runs: dict[str, list[dict]], args) -> list[str]:
    rate = {k: float(np.median([m["cells"] / m["seconds"] for m in ms])) for k, ms in runs.items()}
    rss = {k: max(m["rss_mb"] for m in ms) for k, ms in runs.items()}
    mixing = {k: float(np.median([m["mixing"] for m in ms])) for k, ms in runs.items()}
    names = {"raw": "raw decode, sequential", "csr": "our stream, CSR batches", "csr4096": "our stream, CSR batches of 4,096",
             "abcoll": "annbatch Loader, its pre-shuffled collection", "abcoll4096": "annbatch Loader, its collection, batches of 4,096",
             "abstore": "annbatch Loader on our store", "dense": "our stream, dense transformed (host)",
             "device": "our stream, CSR -> device (cpu) dense transformed", "backed": "anndata backed, random batches",
             "scdataset": "scDataset BlockShuffling(16), fetch 16"}
    runs = {k: ms for k, ms in runs.items() if ms}
    lines = ["| loader | store layout | cells/s (iid rows) | of raw | cells/s (label-sorted) | of raw | "
             "label entropy vs random, label-sorted | peak RSS MB |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for kind in names:
        for layout in LAYOUTS:
            key, sorted_key = f"{kind} {layout}", f"{kind} {layout}-sorted"
            if key not in rate or sorted_key not in rate:
                continue
            raw, raw_sorted = rate[f"raw {layout}"], rate[f"raw {layout}-sorted"]
            lines.append(
                f"| {names[kind]} | {'annbatch collection of ' if kind.startswith('abcoll') else ''}{layout} | {rate[key]:,.0f} | {rate[key] / raw:.2f} | {rate[sorted_key]:,.0f} | "
                f"{rate[sorted_key] / raw_sorted:.2f} | {mixing[sorted_key]:.1%} | {max(rss[key], rss[sorted_key]):,.0f} |"
            )
    return lines


def write_section(results: Path, lines: list[str]) -> None:
    """Replace the loader section of RESULTS.md (from its heading to the next `## `), keeping the others."""
    from results_section import replace_section

    replace_section(results, SECTION, lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=1_000_000)
    parser.add_argument("--genes", type=int, default=20_000)
    parser.add_argument("--nnz", type=int, default=1000)
    parser.add_argument("--measure-cells", type=int, default=100_000, help="cells read per zarr measurement")
    parser.add_argument("--anndata-cells", type=int, default=20_000, help="cells read by the h5ad-based loaders")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats; medians are reported")
    parser.add_argument("--workdir", type=Path, default=HERE / ".data")
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--no-scdataset", action="store_true", help="leave scDataset out (without the bench extra)")
    parser.add_argument("--build-only", action="store_true")
    parser.add_argument("--device", action="store_true", help="also the CSR -> torch device path (cuda if present)")
    parser.add_argument("--annbatch-python", help="a Python >= 3.12 for annbatch's venv (else $OMICSWEEP_PY312, PATH, pyenv)")
    parser.add_argument("--no-annbatch", action="store_true", help="leave annbatch out")
    parser.add_argument("--no-legacy", action="store_true", help="leave the first writer's layout out (its stores "
                        "take as long to write as the new ones)")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    paths = build_corpus(args.workdir, args.cells, args.genes, args.nnz, ("new",) if args.no_legacy else LAYOUTS)
    annbatch, skipped = prepare_annbatch(paths, args)
    print(skipped, flush=True)
    if args.build_only:
        return
    measurements = plan(paths, args, annbatch)
    runs: dict[str, list[dict]] = {name: [] for name in measurements}
    for repeat in range(args.repeats):  # interleaved: load from other processes hits every measurement alike
        for name, (func, *fargs) in measurements.items():
            runs[name].append(func(*fargs) if getattr(func, "own_process", False) else in_fresh_process(func, *fargs))
            print(f"[{repeat + 1}/{args.repeats}] {name}: {runs[name][-1]['cells'] / runs[name][-1]['seconds']:,.0f} cells/s",
                  flush=True)
        write_section(args.results, report(runs, args, skipped, repeat + 1))  # a cut-short run keeps what it has
    print("\n".join(report(runs, args, skipped, args.repeats)))


def report(runs: dict[str, list[dict]], args, skipped: str, done: int) -> list[str]:
    command = "python perf/loader_benchmark.py " + " ".join(sys.argv[1:])
    return [
        SECTION, "",
        f"Command: `{command.strip()}` on {platform.machine()}, {os.cpu_count()} cores (shared with other jobs: "
        f"load {os.getloadavg()[0]:.0f} at the end), Python {platform.python_version()}; corpus {args.cells:,} x "
        f"{args.genes:,} synthetic counts, ~{args.nnz:,} non-zeros per cell, batch {BATCH}; our stream's defaults.",
        f"Medians of {done} interleaved runs (of {args.repeats} asked), each in a fresh process; peak RSS is the largest run's. Layout "
        "`new`: store_layout.DEFAULT_LAYOUT; `legacy`: the first writer's chunks. Ratios are to raw decode of the "
        "same store in the same run (on a shared machine the absolute figures move, the ratios hold better).",
        "", *table(runs, args), "", skipped, *ratio_to_annbatch(runs), "",
    ]


def ratio_to_annbatch(runs: dict[str, list[dict]]) -> list[str]:
    """Our CSR stream's cells/s over annbatch's on its collection, per store and batch size (medians)."""
    rate = {k: float(np.median([m["cells"] / m["seconds"] for m in ms])) for k, ms in runs.items() if ms}
    pairs = [(f"csr{size} {key}", f"abcoll{size} {key}", f"{key}, batch {size or BATCH}")
             for size in ("", str(BIG_BATCH)) for key in ("new", "new-sorted")]
    found = [f"{what} {rate[ours] / rate[theirs]:.2f}" for ours, theirs, what in pairs if ours in rate and theirs in rate]
    return ["", "Our CSR stream over annbatch on its collection (cells/s): " + "; ".join(found) + "."] if found else []


if __name__ == "__main__":
    main()
