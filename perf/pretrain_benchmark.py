"""Pretraining benchmark (issue 13): is the corpus stream the bottleneck, and does memory grow with the corpus?

    .venv/bin/python perf/pretrain_benchmark.py                   # 1,000,000-cell corpus (written once, minutes)
    .venv/bin/python perf/pretrain_benchmark.py --cells 100000    # quick mode
    .venv/bin/python perf/pretrain_benchmark.py --gpu             # + the full scBERT size on a CUDA GPU

CPU part. A synthetic corpus on a --genes vocabulary (`omicsweep datasets synth --vocab`'s generator, cached in
--workdir, default perf/.data/) of --cells cells and one of --small-cells cells. A small Performer (scBERT masking,
Adam) trains --steps optimiser steps after --warmup steps, each run in a fresh process:
  stream      batches from TokenStream over the corpus's training split (block-shuffled, tokens per batch)
  in memory   the same batches read from the same stream beforehand, held as token tensors
  stream 10k  the stream over the small corpus (peak RSS: memory must not grow with the corpus)
The three are interleaved, --repeats times; figures are medians, peak RSS the largest run.

GPU part (--gpu; on a machine without CUDA it says so in one line and skips): the full scBERT size (16,906 genes +
1 position, dim 200, depth 6, 10 heads, dim_head 64), `favor` vs `exact`, bf16 autocast; the largest micro-batch
that trains one step without running out of memory (doubling, then bisection), then cells/s and peak GPU memory at
that micro-batch, on one GPU plainly and under DeepSpeed ZeRO-2 (world size 1). Token tensors are generated with
the corpus's sparsity (the loader is the CPU part's question). Results replace this script's section of
perf/RESULTS.md (--no-write to only print).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SECTION = "## Pretraining benchmark"
SMALL = {"dim": 32, "depth": 2, "heads": 2, "dim_head": 16, "nb_features": 32}
SCBERT = {"n_genes": 16_906, "dim": 200, "depth": 6, "heads": 10, "dim_head": 64, "nb_features": 266}


# ---- corpora ----------------------------------------------------------------------------------------------------
def corpus(workdir: Path, cells: int, genes: int, nnz: int) -> Path:
    """The cached synthetic corpus of `cells` cells on a `genes`-gene vocabulary (written once)."""
    from omicsweep.datasets.synth import write_synthetic

    workdir.mkdir(parents=True, exist_ok=True)
    vocab = workdir / f"vocab{genes}.txt"
    if not vocab.exists():
        vocab.write_text("".join(f"GENE{i:05d}\n" for i in range(genes)))
    store = workdir / f"corpus-{cells}x{genes}-{nnz}.zarr"
    if not store.exists():
        started = time.time()
        write_synthetic(store, cells=cells, genes=genes, nnz_per_cell=nnz, seed=0, vocab=vocab)
        print(f"wrote {store} in {time.time() - started:.0f}s", flush=True)
    return store


# ---- one measured run (in a fresh process) ----------------------------------------------------------------------
def make_step(model, *, device: str = "cpu", bf16: bool = False, engine=None):
    """One optimiser step of scBERT masked-expression modelling on a token batch: step(tokens) -> loss."""
    import torch

    from omicsweep.datasets.tokens import mask_tokens
    from omicsweep.models.performer import mlm_loss

    generator = torch.Generator().manual_seed(0)
    optimizer = None if engine is not None else torch.optim.Adam(model.parameters(), lr=1e-4)

    def step(tokens) -> float:
        masked, labels = mask_tokens(tokens, generator=generator)
        masked, labels = masked.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
            loss = mlm_loss((engine or model)(masked), labels)
        if engine is not None:
            engine.backward(loss)
            engine.step()
        else:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return float(loss)

    return step


def train_steps(step, batches, *, steps: int, warmup: int) -> dict:
    """warmup + steps calls of `step` on `batches` (an iterator of token tensors); the median wall time of the
    measured steps (batch included) and the time spent waiting for batches."""
    times, wait, loss = [], 0.0, float("nan")
    for index in range(warmup + steps):
        started = time.perf_counter()
        tokens = next(batches)
        got = time.perf_counter()
        loss = step(tokens)
        if index >= warmup:
            times.append(time.perf_counter() - started)
            wait += got - started
    return {"step_s": statistics.median(times), "mean_step_s": sum(times) / len(times), "wait_s": wait, "loss": loss}


def paired_steps(stream, model_factory, args: dict) -> dict:
    """Two identical models in one process, stepping alternately: one on the stream, one on the same batches held
    in memory, so both see the same CPU contention (the shared machine's noise cancels in the ratio)."""
    memory = iter([t for t, _ in zip(type(stream)(stream.store, "train", batch_size=args["batch"], seed=0),
                                     range(args["warmup"] + args["steps"]))])
    live = iter(stream)
    steps = {"stream": make_step(model_factory()), "memory": make_step(model_factory())}
    times: dict[str, list[float]] = {"stream": [], "memory": []}
    for index in range(args["warmup"] + args["steps"]):
        for name in (("stream", "memory") if index % 2 else ("memory", "stream")):
            started = time.perf_counter()
            steps[name](next(live if name == "stream" else memory))
            if index >= args["warmup"]:
                times[name].append(time.perf_counter() - started)
    ratios = sorted(a / b for a, b in zip(times["stream"], times["memory"]))
    return {"stream_step_s": statistics.median(times["stream"]), "memory_step_s": statistics.median(times["memory"]),
            "ratio": statistics.median(times["stream"]) / statistics.median(times["memory"]),
            "median_step_ratio": statistics.median(ratios)}


def cpu_run(mode: str, store: str, args: dict) -> dict:
    """One CPU measurement: 'stream' (batches from the store as training asks) or 'memory' (the same batches
    read first and held as tensors)."""
    import torch

    from omicsweep.datasets.corpus_stream import TokenStream
    from omicsweep.models.performer import Performer

    torch.manual_seed(0)
    torch.set_num_threads(args["threads"])
    started = time.perf_counter()
    stream = TokenStream(store, "train", batch_size=args["batch"], seed=0)
    setup_s = time.perf_counter() - started
    if mode == "loader":  # the stream alone: how far it is from being the bottleneck
        return {"mode": mode, "cells": stream.store.n_cells, "setup_s": setup_s, **stream_alone(stream, args)}

    def model_factory():
        torch.manual_seed(0)
        return Performer(n_genes=stream.store.n_genes, gene_embedding="learned", **SMALL)

    if mode == "paired":
        return {"mode": mode, "cells": stream.store.n_cells, **paired_steps(stream, model_factory, args)}
    needed = args["warmup"] + args["steps"]
    batches = iter(stream)
    if mode == "memory":
        batches = iter([next(batches) for _ in range(needed)])
    result = train_steps(make_step(model_factory()), batches, steps=args["steps"], warmup=args["warmup"])
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {**result, "mode": mode, "cells": stream.store.n_cells, "setup_s": setup_s, "peak_rss_mb": peak_mb,
            "block_rows": stream.block_rows}


def stream_alone(stream, args: dict) -> dict:
    """Token batches/s of the stream with no model, over `loader_cells` cells (several blocks)."""
    started, cells = time.perf_counter(), 0
    for tokens in stream:
        cells += tokens.shape[0]
        if cells >= args["loader_cells"]:
            break
    elapsed = time.perf_counter() - started
    return {"cells_per_s": cells / elapsed, "loader_cells": cells,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def in_fresh_process(kind: str, *payload) -> dict:
    """Run `kind` (cpu_run / gpu_run) in a new interpreter; its JSON result."""
    code = (f"import json, sys; sys.path.insert(0, {str(HERE)!r}); import pretrain_benchmark as b; "
            f"print('RESULT ' + json.dumps(b.{kind}(*json.loads(sys.argv[1]))))")
    done = subprocess.run([sys.executable, "-c", code, json.dumps(payload)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if kind == "gpu_run" and not lines and "out of memory" in done.stderr.lower():  # died of it outside torch
        return {"oom": True, "micro_batch": payload[2]}
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{kind}{payload[:1]} failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def cpu_part(args) -> tuple[list[str], dict]:
    big = corpus(args.workdir, args.cells, args.genes, args.nnz)
    small = corpus(args.workdir, args.small_cells, args.genes, args.nnz)
    settings = {"batch": args.batch, "steps": args.steps, "warmup": args.warmup, "threads": args.threads,
                "loader_cells": args.loader_cells}
    runs: dict[str, list[dict]] = {"stream": [], "memory": [], "stream_small": [], "loader": [], "paired": []}
    for repeat in range(args.repeats):  # interleaved: shared CPUs drift, each repeat sees the same drift
        for name, mode, store in (("stream", "stream", big), ("memory", "memory", big),
                                  ("stream_small", "stream", small), ("loader", "loader", big),
                                  ("paired", "paired", big)):
            runs[name].append(in_fresh_process("cpu_run", mode, str(store), settings))
            r = runs[name][-1]
            if mode == "paired":
                print(f"repeat {repeat + 1} {name:>12}: stream {r['stream_step_s'] * 1e3:.1f} vs memory "
                      f"{r['memory_step_s'] * 1e3:.1f} ms/step in one process, ratio {r['ratio']:.3f}", flush=True)
                continue
            if mode == "loader":
                print(f"repeat {repeat + 1} {name:>12}: {r['cells_per_s']:,.0f} cells/s over {r['loader_cells']} "
                      "cells, no model", flush=True)
                continue
            print(f"repeat {repeat + 1} {name:>12}: {r['step_s'] * 1e3:7.1f} ms/step, waited {r['wait_s']:.2f}s "
                  f"for batches, peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    return cpu_table(runs, args), runs


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def cpu_table(runs: dict, args) -> list[str]:
    stream, memory, small = (runs[k] for k in ("stream", "memory", "stream_small"))
    ratio = _median(stream, "step_s") / _median(memory, "step_s")
    ratios = [s["step_s"] / m["step_s"] for s, m in zip(stream, memory)]
    rss = {k: max(r["peak_rss_mb"] for r in v) for k, v in runs.items() if k != "paired"}
    train_cells_s = args.batch / _median(stream, "step_s")
    paired = ", ".join(f"{r['ratio']:.3f}" for r in runs["paired"])
    cfg = ", ".join(f"{k} {v}" for k, v in SMALL.items())
    rows = [
        f"Small Performer ({args.genes} genes + 1 position, {cfg}, learned gene embedding), batch {args.batch}, Adam, "
        f"scBERT masking; {args.steps} measured optimiser steps after {args.warmup} warm-up steps, "
        f"{args.threads} torch thread(s); {args.repeats} interleaved repeats, each run in a fresh process.",
        "",
        "| run | corpus cells | median step (ms) | batch wait per step (ms) | stream setup (s) | peak RSS (MB) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, label in (("stream", "TokenStream"), ("memory", "tensors in memory"),
                        ("stream_small", "TokenStream, small corpus")):
        r = runs[name]
        rows.append(f"| {label} | {r[0]['cells']:,} | {_median(r, 'step_s') * 1e3:.1f} | "
                    f"{_median(r, 'wait_s') / args.steps * 1e3:.2f} | {_median(r, 'setup_s'):.2f} | {rss[name]:.0f} |")
    rows += [
        "",
        f"Step time, streamed / in memory: **{ratio:.3f}** (median of medians; per repeat "
        f"{', '.join(f'{x:.3f}' for x in ratios)}; goal <= 1.05).",
        f"Paired in one process (two identical models stepping alternately, one on the stream, one on the same "
        f"batches in memory, so both share the machine's contention): stream / memory **{_median(runs['paired'], 'ratio'):.3f}** "
        f"(median of {args.repeats}; per repeat {paired}).",
        f"The stream alone (no model, {runs['loader'][0]['loader_cells']:,} cells of the "
        f"{runs['loader'][0]['cells']:,}-cell corpus, random blocks): "
        f"{_median(runs['loader'], 'cells_per_s'):,.0f} cells/s vs {train_cells_s:,.1f} cells/s trained "
        f"({_median(runs['loader'], 'cells_per_s') / train_cells_s:,.0f}x headroom); peak RSS {rss['loader']:.0f} MB.",
        f"Peak RSS, {runs['stream'][0]['cells']:,}-cell vs {runs['stream_small'][0]['cells']:,}-cell corpus: "
        f"{rss['stream']:.0f} vs {rss['stream_small']:.0f} MB ({rss['stream'] - rss['stream_small']:+.0f} MB; "
        "memory must not grow with the corpus).",
    ]
    return rows


# ---- the GPU part -----------------------------------------------------------------------------------------------
def _tokens(batch: int, n_genes: int, nnz: int, device: str):
    """Token batches with a corpus's sparsity: `nnz` non-zero bins (1..5) per cell, the rest 0."""
    import torch

    tokens = torch.zeros((batch, n_genes + 1), dtype=torch.long)
    for row in range(batch):
        genes = torch.randperm(n_genes)[:nnz]
        tokens[row, genes] = torch.randint(1, 6, (nnz,))
    return tokens


def _deepspeed_engine(model, micro_batch: int):
    import deepspeed
    import torch

    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29517", "RANK": "0", "WORLD_SIZE": "1",
                       "LOCAL_RANK": "0"}.items():
        os.environ.setdefault(key, value)
    deepspeed.init_distributed(dist_backend="nccl", verbose=False)
    config = {"train_micro_batch_size_per_gpu": micro_batch, "gradient_accumulation_steps": 1,
              "zero_optimization": {"stage": 2}, "bf16": {"enabled": True}, "gradient_clipping": 100.0}
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.Adam(model.parameters(), lr=1e-4),
                                      config=config)
    return engine


def gpu_run(attention: str, strategy: str, micro_batch: int, steps: int, nnz: int) -> dict:
    """Train `steps` steps of the full-size model at `micro_batch` on cuda:0; 'oom' if it does not fit."""
    import torch

    from omicsweep.models.performer import Performer

    torch.manual_seed(0)
    try:
        model = Performer(attention=attention, gene_embedding="learned", **SCBERT).cuda()
        engine = _deepspeed_engine(model, micro_batch) if strategy == "zero2" else None
        batch = _tokens(micro_batch, SCBERT["n_genes"], nnz, "cpu")
        step = make_step(model, device="cuda", bf16=strategy == "single", engine=engine)
        result = train_steps(step, iter([batch] * (steps + 1)), steps=steps, warmup=1)
    except (torch.cuda.OutOfMemoryError, RuntimeError) as exc:  # cuBLAS/cuDNN allocation failures are plain
        if "out of memory" not in str(exc).lower() and not isinstance(exc, torch.cuda.OutOfMemoryError):
            raise
        return {"oom": True, "micro_batch": micro_batch}
    return {**result, "oom": False, "micro_batch": micro_batch, "cells_per_s": micro_batch / result["step_s"],
            "peak_gpu_gb": torch.cuda.max_memory_allocated() / 2**30}


def largest_batch(attention: str, strategy: str, nnz: int, limit: int) -> dict | None:
    """Doubling from 1, then bisection: the largest micro-batch that trains (each try a fresh process)."""
    fits, fails, best = 0, None, None
    size = 1
    while size <= limit:
        result = in_fresh_process("gpu_run", attention, strategy, size, 1, nnz)
        print(f"  {attention} {strategy} micro-batch {size}: {'out of memory' if result['oom'] else 'fits'}",
              flush=True)
        if result["oom"]:
            fails = size
            break
        fits, best, size = size, result, size * 2
    while fails is not None and fails - fits > 1:
        middle = (fits + fails) // 2
        result = in_fresh_process("gpu_run", attention, strategy, middle, 1, nnz)
        fits, fails = (middle, fails) if not result["oom"] else (fits, middle)
        best = best if result["oom"] else result
    return best


def gpu_part(args) -> list[str]:
    import torch

    if not torch.cuda.is_available():
        print("GPU part skipped: no CUDA GPU is present on this machine.")
        return [f"GPU part: not run (no CUDA GPU on this machine; `python perf/pretrain_benchmark.py --gpu` runs it "
                "unchanged where one is present)."]
    rows = [f"GPU: {torch.cuda.get_device_name(0)}; full scBERT size ({SCBERT['n_genes'] + 1:,} tokens, dim 200, "
            f"depth 6, 10 heads x 64), bf16, ~{args.gpu_nnz} non-zero genes per cell, {args.gpu_steps} timed steps.",
            "", "| attention | strategy | largest micro-batch | median step (s) | cells/s | peak GPU memory (GB) |",
            "|---|---|---:|---:|---:|---:|"]
    try:
        import deepspeed  # noqa: F401
        strategies = ("single", "zero2")
    except ImportError:
        strategies = ("single",)
        rows.insert(1, "ZeRO-2 not run: DeepSpeed is not installed (pip install -e '.[deepspeed]').")
    for attention in ("favor", "exact"):
        for strategy in strategies:
            best = largest_batch(attention, strategy, args.gpu_nnz, args.gpu_max_batch)
            if best is None:
                rows.append(f"| {attention} | {strategy} | 0 (batch 1 does not fit) | | | |")
                continue
            timed = in_fresh_process("gpu_run", attention, strategy, best["micro_batch"], args.gpu_steps, args.gpu_nnz)
            rows.append(f"| {attention} | {strategy} | {timed['micro_batch']} | {timed['step_s']:.3f} | "
                        f"{timed['cells_per_s']:.1f} | {timed['peak_gpu_gb']:.1f} |")
            print(rows[-1], flush=True)
    return rows


# ---- results ----------------------------------------------------------------------------------------------------
def write_section(rows: list[str], command: str, results: Path = HERE / "RESULTS.md") -> None:
    """Replace (or append) this benchmark's section of RESULTS.md (its heading to the next `## `), keeping the
    other sections."""
    from results_section import replace_section

    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    replace_section(results, SECTION, [SECTION, "", f"Command: `{command}` on {machine}.", "", *rows, ""])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=1_000_000, help="cells of the large corpus")
    parser.add_argument("--small-cells", type=int, default=10_000, help="cells of the small corpus (peak RSS)")
    parser.add_argument("--genes", type=int, default=1024, help="vocabulary size of the CPU corpora")
    parser.add_argument("--nnz", type=int, default=200, help="non-zero genes per cell (about)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=40, help="measured optimiser steps per run")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--loader-cells", type=int, default=20_000, help="cells the stream alone yields (no model)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--workdir", type=Path, default=HERE / ".data")
    parser.add_argument("--gpu", action="store_true", help="also the full-size GPU part (skipped without CUDA)")
    parser.add_argument("--gpu-only", action="store_true", help="only the GPU part")
    parser.add_argument("--gpu-steps", type=int, default=5)
    parser.add_argument("--gpu-nnz", type=int, default=1000)
    parser.add_argument("--gpu-max-batch", type=int, default=256)
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--no-write", action="store_true", help="print only; leave the results file alone")
    args = parser.parse_args(argv)
    rows: list[str] = []
    if not args.gpu_only:
        rows, _ = cpu_part(args)
    if args.gpu or args.gpu_only:
        rows += ([""] if rows else []) + gpu_part(args)
    print("\n".join(rows))
    if not args.no_write:
        command = "python perf/pretrain_benchmark.py " + " ".join(sys.argv[1:] if argv is None else argv)
        write_section(rows, command.strip(), args.results)


if __name__ == "__main__":
    main()
