"""The host dense path against raw decode and the CSR stream, in one process, interleaved (perf/RESULTS.md, loader
section, "dense path"): cells/s and CPU microseconds per cell (time.process_time, all threads: on a shared,
loaded machine the honest measure), medians over rounds, and ratios to raw decode taken round by round.

    .venv/bin/python perf/dense_path.py STORE [--cells 40000] [--rounds 6] [--baseline OLD_TREE]

STORE: a store (e.g. `omicsweep datasets synth --cells 100000 --genes 20000 --out STORE`). --baseline: a folder
holding another version's omicsweep package (`git archive COMMIT omicsweep | tar -x -C OLD_TREE`): its
batch_gather.HostDensifier also runs, per batch on fresh arrays as that version's stream did, in the same rounds.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import numpy as np
import torch

from omicsweep.datasets import CellBatches, Store
from omicsweep.datasets.transform import ExpressionTransform


def transforms(n_genes: int) -> dict[str, ExpressionTransform]:
    """min-max of log counts with minimum 0 (the usual fit on counts) and a z-score with per-gene statistics."""
    rng = np.random.default_rng(0)
    return {
        "minmax": ExpressionTransform(True, np.zeros(n_genes, np.float32), np.full(n_genes, 5.0, np.float32)),
        "zscore": ExpressionTransform(True, np.zeros(n_genes, np.float32), np.ones(n_genes, np.float32),
                                      scaling="zscore", mean=rng.random(n_genes, dtype=np.float32),
                                      std=rng.random(n_genes, dtype=np.float32) + 0.5),
    }


def baseline_batches(tree: Path):
    """CellBatches densifying with the HostDensifier of the omicsweep package under `tree`."""
    spec = importlib.util.spec_from_file_location("baseline_gather", tree / "omicsweep/datasets/batch_gather.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    class BaselineBatches(CellBatches):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._baseline, self._host_densify = module.HostDensifier(self.transform), None  # values untransformed

        def _emit(self, matrix, labels, out):
            return torch.from_numpy(self._baseline(matrix)), torch.from_numpy(labels.astype(np.int64))

    return BaselineBatches


def raw_decode(store: Store, limit: int) -> int:
    train, cells = store.split_indices("train"), 0
    for start in range(int(train[0]), int(train[-1]) + 1, store.rows_per_chunk):
        cells += store.read_rows(start, min(start + store.rows_per_chunk, int(train[-1]) + 1)).shape[0]
        if cells >= limit:
            break
    return cells


def stream(cls, store: Store, transform, seed: int, limit: int) -> int:
    batches = cls(store, "train", batch_size=256, transform=transform, shuffle=True, seed=seed,
                  output="csr" if transform is None else "dense")
    cells = 0
    for _, y in batches:  # as a training loop: a batch is held while the next one is drawn
        cells += len(y)
        if cells >= limit:
            break
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("store")
    parser.add_argument("--cells", type=int, default=40000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--baseline", type=Path)
    args = parser.parse_args()
    store = Store(args.store)
    baseline = baseline_batches(args.baseline) if args.baseline else None
    runs: dict[str, list[tuple[float, float]]] = {}
    for r in range(args.rounds):
        cases = [("raw decode", lambda: raw_decode(store, args.cells)),
                 ("csr stream", lambda: stream(CellBatches, store, None, r, args.cells))]
        for name, transform in transforms(store.n_genes).items():
            pair = [(f"dense {name}", lambda t=transform: stream(CellBatches, store, t, r, args.cells))]
            if baseline is not None:
                pair.append((f"dense {name} baseline", lambda t=transform: stream(baseline, store, t, r, args.cells)))
            cases += pair if r % 2 == 0 else pair[::-1]
        for name, run in cases:
            wall, cpu = time.perf_counter(), time.process_time()
            cells = run()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            runs.setdefault(name, []).append((cells / wall, cpu / cells * 1e6))
    raw = runs["raw decode"]
    for name, values in runs.items():
        rate, cpu = np.median([v[0] for v in values]), np.median([v[1] for v in values])
        wall_ratio = np.median([v[0] / base[0] for v, base in zip(values, raw)])
        cpu_ratio = np.median([base[1] / v[1] for v, base in zip(values, raw)])
        print(f"{name:22s} {rate:8.0f} cells/s {cpu:6.1f} CPU-us/cell   of raw: wall {wall_ratio:.2f} CPU {cpu_ratio:.2f}")


if __name__ == "__main__":
    main()
