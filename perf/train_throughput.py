"""Trainer-side throughput (issue 16, item 3): cells/s of one mlp training epoch fed by the shuffled stream
(`CellBatches`, dense transformed batches) vs the same epoch from tensors already in memory; the loader's share
of the step time is 1 - in_memory / streamed. On the CPU, then on a GPU when torch sees one (one line when not).

    .venv/bin/python perf/train_throughput.py --quick          # 20k x 2,000 synthetic store in /tmp
    .venv/bin/python perf/train_throughput.py --store S.zarr --width 1024 --repeats 3

Medians of --repeats epochs after one warm-up epoch; the machine is shared, so treat the numbers as noisy.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch import nn


def _store(args):
    from omicsweep.datasets.store import Store
    from omicsweep.datasets.synth import write_synthetic

    if args.store:
        return Store(args.store)
    out = Path(f"/tmp/omicsweep-train-throughput-{args.cells}x{args.genes}.zarr")
    if not out.exists():
        write_synthetic(out, cells=args.cells, genes=args.genes, nnz_per_cell=min(900, args.genes // 4), n_types=20)
    return Store(out)


def _model(n_genes: int, n_classes: int, width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(n_genes, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, n_classes))


def _epoch(model, batches, optimizer, device) -> tuple[float, int]:
    loss_fn, seen = nn.CrossEntropyLoss(), 0
    started = time.perf_counter()
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()
        seen += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started, seen


def measure(store, device: torch.device, *, width: int, batch_size: int, repeats: int) -> dict[str, float]:
    from omicsweep.datasets.loader import CellBatches
    from omicsweep.datasets.transform import fit_transform_on_train

    transform = fit_transform_on_train(store)
    stream = CellBatches(store, "train", batch_size=batch_size, transform=transform, shuffle=True, seed=0)
    in_memory = [(x.to(device), y.to(device)) for x, y in stream]  # the same epoch's batches, resident
    torch.manual_seed(0)
    model = _model(store.n_genes, len(store.classes), width).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    _epoch(model, in_memory, optimizer, device)  # warm-up
    rates = {"stream": [], "memory": []}
    for epoch in range(repeats):  # interleaved
        stream.set_epoch(epoch + 1)
        for name, batches in (("stream", stream), ("memory", in_memory)):
            seconds, seen = _epoch(model, batches, optimizer, device)
            rates[name].append(seen / seconds)
    stream_rate, memory_rate = statistics.median(rates["stream"]), statistics.median(rates["memory"])
    return {"stream": stream_rate, "memory": memory_rate, "loader_share": 1.0 - stream_rate / memory_rate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store")
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--genes", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true", help="20k x 2,000 synthetic store, 2 repeats")
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.quick:
        args.cells, args.genes, args.repeats = 20_000, 2_000, 2
    torch.set_num_threads(args.threads)
    store = _store(args)
    print(f"store {store.path}: {store.n_cells} x {store.n_genes}; mlp 2 x {args.width}, batch {args.batch_size}, "
          f"medians of {args.repeats} epochs")
    print("| device | streamed cells/s | in-memory cells/s | loader share of step time |")
    print("| --- | ---: | ---: | ---: |")
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        r = measure(store, device, width=args.width, batch_size=args.batch_size, repeats=args.repeats)
        print(f"| {device.type} | {r['stream']:,.0f} | {r['memory']:,.0f} | {r['loader_share']:.0%} |", flush=True)
    if not torch.cuda.is_available():
        print("no GPU visible to torch here: the GPU row was not measured")


if __name__ == "__main__":
    main()
