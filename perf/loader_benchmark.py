"""Streaming-loader benchmark: our shuffled stream vs raw zarr decode vs anndata backed random reads.

    .venv/bin/python perf/loader_benchmark.py                      # 1,000,000 x 20,000, ~1,000 nnz per cell
    .venv/bin/python perf/loader_benchmark.py --cells 100000       # quicker

Builds (once, cached in --workdir) a synthetic count corpus with `omicsweep datasets synth`'s generator and an
uncompressed h5ad copy of the same matrix, then measures, each in a fresh process and on the same data:
  raw decode     chunk-by-chunk sequential read of the store (no shuffle, no filtering)
  stream (csr)   CellBatches over the training split, block-shuffled, prefetching, sparse batches
  stream (dense) the same, densified and min-max transformed (what a CPU torch model eats)
  anndata backed random batches of training cells from read_h5ad(backed='r')
plus the loader's peak RSS and label mixing (class entropy of shuffled vs fully random batches).
Results go to perf/RESULTS.md.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
BATCH = 256


def build_corpus(workdir: Path, cells: int, genes: int, nnz: int) -> tuple[Path, Path]:
    from omicsweep.datasets.synth import write_synthetic

    store = workdir / f"synth-{cells}x{genes}-{nnz}.zarr"
    h5ad = workdir / f"synth-{cells}x{genes}-{nnz}.h5ad"
    if not store.exists():
        started = time.time()
        write_synthetic(store, cells=cells, genes=genes, nnz_per_cell=nnz, seed=0)
        print(f"wrote {store} in {time.time() - started:.0f}s", flush=True)
    if not h5ad.exists():
        started = time.time()
        write_h5ad_copy(store, h5ad)
        print(f"wrote {h5ad} in {time.time() - started:.0f}s", flush=True)
    return store, h5ad


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


def _peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM; unlike ru_maxrss it does not carry over the parent's across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_raw_decode(store_path: str, limit: int) -> dict:
    from omicsweep.datasets import Store

    store = Store(store_path)
    started, cells = time.perf_counter(), 0
    for chunk in range(store.n_chunks):
        start, stop = store.chunk_bounds(chunk)
        cells += store.read_rows(start, stop).shape[0]
        if cells >= limit:
            break
    return {"cells": cells, "seconds": time.perf_counter() - started, "rss_mb": _peak_rss_mb()}


def measure_stream(store_path: str, limit: int, output: str) -> dict:
    from omicsweep.datasets import CellBatches, Store
    from omicsweep.datasets.loader import ExpressionTransform

    store = Store(store_path)
    transform = None
    if output == "dense":  # a fitted transform's cost, without the fitting pass
        transform = ExpressionTransform(True, np.zeros(store.n_genes, np.float32), np.full(store.n_genes, 5.0, np.float32))
    batches = CellBatches(store, "train", batch_size=BATCH, transform=transform, shuffle=True, seed=0, output=output)
    started, cells, entropies = time.perf_counter(), 0, []
    n_classes = len(store.classes)
    for _, labels in batches:
        labels = np.asarray(labels)
        cells += len(labels)
        entropies.append(_entropy(np.bincount(labels, minlength=n_classes)))
        if cells >= limit:
            break
    seconds = time.perf_counter() - started
    train_labels = store.labels()[store.split_indices("train")]
    rng = np.random.default_rng(0)
    random_entropy = np.mean([
        _entropy(np.bincount(rng.choice(train_labels, BATCH, replace=False), minlength=n_classes)) for _ in range(200)
    ])
    return {"cells": cells, "seconds": seconds, "rss_mb": _peak_rss_mb(),
            "entropy": float(np.mean(entropies)), "random_entropy": float(random_entropy)}


def measure_anndata_backed(h5ad_path: str, store_path: str, limit: int) -> dict:
    import anndata as ad

    from omicsweep.datasets import Store

    train = Store(store_path).split_indices("train")
    adata = ad.read_h5ad(h5ad_path, backed="r")
    rng = np.random.default_rng(0)
    started, cells = time.perf_counter(), 0
    while cells < limit:
        rows = np.sort(rng.choice(train, BATCH, replace=False))
        cells += adata.X[rows].shape[0]
    return {"cells": cells, "seconds": time.perf_counter() - started, "rss_mb": _peak_rss_mb()}


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def in_fresh_process(func, *args) -> dict:
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(func, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=1_000_000)
    parser.add_argument("--genes", type=int, default=20_000)
    parser.add_argument("--nnz", type=int, default=1000)
    parser.add_argument("--measure-cells", type=int, default=100_000, help="cells read per zarr measurement")
    parser.add_argument("--anndata-cells", type=int, default=20_000, help="cells read by the anndata baseline")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats; medians are reported")
    parser.add_argument("--workdir", type=Path, default=HERE / ".data")
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    store, h5ad = build_corpus(args.workdir, args.cells, args.genes, args.nnz)

    # interleave repeats so that load from other processes hits every measurement alike; report medians
    runs: dict[str, list[dict]] = {"raw": [], "csr": [], "dense": [], "backed": []}
    for _ in range(args.repeats):
        runs["raw"].append(in_fresh_process(measure_raw_decode, str(store), args.measure_cells))
        runs["csr"].append(in_fresh_process(measure_stream, str(store), args.measure_cells, "csr"))
        runs["dense"].append(in_fresh_process(measure_stream, str(store), args.measure_cells // 4, "dense"))
        runs["backed"].append(in_fresh_process(measure_anndata_backed, str(h5ad), str(store), args.anndata_cells))
    rate = {name: float(np.median([m["cells"] / m["seconds"] for m in ms])) for name, ms in runs.items()}
    raw, csr, dense, backed = (max(runs[k], key=lambda m: m["rss_mb"]) for k in ("raw", "csr", "dense", "backed"))
    command = "python perf/loader_benchmark.py " + " ".join(sys.argv[1:])
    lines = [
        "# Loader benchmark",
        "",
        f"Command: `{command.strip()}` on {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"corpus {args.cells:,} x {args.genes:,} synthetic counts, ~{args.nnz:,} non-zeros per cell, batch {BATCH}.",
        f"Each figure is the median of {args.repeats} interleaved runs, each in a fresh process, on the same machine and "
        "data; peak RSS is the largest of the runs.",
        "",
        "| measurement | cells/s | ratio | target | peak RSS (MB) |",
        "|---|---:|---:|---|---:|",
        f"| raw zarr decode, sequential chunks | {rate['raw']:,.0f} | 1.00 | baseline | {raw['rss_mb']:,.0f} |",
        f"| shuffled training stream (CSR batches) | {rate['csr']:,.0f} | {rate['csr'] / rate['raw']:.2f} of raw | >= 0.85 of raw | {csr['rss_mb']:,.0f} |",
        f"| shuffled training stream vs anndata backed | | {rate['csr'] / rate['backed']:.1f}x backed | >= 5x | |",
        f"| shuffled training stream (dense float32, transformed) | {rate['dense']:,.0f} | {rate['dense'] / rate['raw']:.2f} of raw | (information) | {dense['rss_mb']:,.0f} |",
        f"| anndata `read_h5ad(backed='r')` random batches | {rate['backed']:,.0f} | {rate['backed'] / rate['raw']:.2f} of raw | baseline | {backed['rss_mb']:,.0f} |",
        "",
        f"Label mixing: mean class entropy of a shuffled batch {csr['entropy']:.3f} nats vs {csr['random_entropy']:.3f} for a "
        f"fully random batch = {csr['entropy'] / csr['random_entropy']:.1%} (target >= 90%).",
        f"Loader peak RSS {csr['rss_mb']:,.0f} MB (target < 1,500 MB).",
        "",
    ]
    args.results.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
