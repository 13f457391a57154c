"""Distributed pretraining: DeepSpeed config checks, checkpoints under every strategy, kill and resume.

The DeepSpeed file is checked against DeepSpeed's own pydantic schema where it has one (zero_optimization, bf16,
fp16) and a curated set of the top-level keys DeepSpeed reads, before any worker starts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import assert_one_line_error
from omicsweep.benchmark.strategies import load_deepspeed_config
from omicsweep.errors import ConfigError, InputError


@pytest.mark.parametrize("settings, needles", [
    ({"zero_optimisation": {"stage": 2}}, ["zero_optimisation", "unknown top-level key"]),
    ({"zero_optimization": {"stage": 2, "overlap_com": True}}, ["zero_optimization.overlap_com", "unknown key"]),
    ({"bf16": {"enabled": True, "enable": True}}, ["bf16.enable", "unknown key"]),
    ({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu", "pin": True}}},
     ["zero_optimization.offload_optimizer.pin", "unknown key"]),
])
def test_deepspeed_file_with_unknown_keys_is_refused(tmp_path, settings, needles):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(settings))
    with pytest.raises(ConfigError) as info:
        load_deepspeed_config(str(path))
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    for needle in needles:
        assert needle in message, (needle, message)


def test_documented_deepspeed_settings_are_accepted(tmp_path):
    settings = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2, "bf16": {"enabled": True},
                "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 10,
                                      "offload_optimizer": {"device": "none"}, "overlap_comm": False},
                "zero_force_ds_cpu_optimizer": False, "gradient_clipping": 1.0, "steps_per_print": 100,
                "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}}
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(settings))
    assert load_deepspeed_config(str(path)) == settings  # the file as written: DeepSpeed reads it itself


def test_a_lock_left_by_a_killed_extension_build_is_refused_before_any_worker_waits_on_it(tmp_path, monkeypatch):
    # a DeepSpeed CPU trial builds its shm_comm op on first use under torch's file lock; a build killed midway
    # leaves the lock, and every later trial then waited on it forever (a two-worker ZeRO-2 trial hung)
    import os
    import time

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    lock = tmp_path / "ext" / "py311_cpu" / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir(parents=True)
    lock.touch()
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    assert load_deepspeed_config(str(path))  # a lock this fresh is a build in progress
    old = time.time() - 3600
    os.utime(lock, (old, old))
    with pytest.raises(ConfigError) as info:
        load_deepspeed_config(str(path))
    message = str(info.value)
    assert "\n" not in message and str(lock) in message and "delete" in message, message


def test_sweep_with_unknown_deepspeed_key_exits_2_naming_file_and_key(cli, tmp_path, pbmc_store):
    bad = tmp_path / "ds.json"
    bad.write_text(json.dumps({"zero_optimization": {"stage": 2, "contiguous_gradient": True}}))
    assert_one_line_error(*cli("sweep", "--model", "mlp", "--deepspeed", bad, "--runs", tmp_path / "runs"),
                          "ds.json", "zero_optimization.contiguous_gradient")
    assert not (tmp_path / "runs").exists()


def test_allowed_top_level_keys_are_keys_deepspeed_reads():
    import pathlib
    import re

    import deepspeed

    from omicsweep.benchmark.strategies import DEEPSPEED_TOP_LEVEL_KEYS

    sources = "\n".join(p.read_text(errors="ignore") for p in pathlib.Path(deepspeed.__file__).parent.rglob("*.py"))
    missing = [key for key in sorted(DEEPSPEED_TOP_LEVEL_KEYS) if not re.search(rf"[\"']{key}[\"']", sources)]
    assert not missing, missing


# ---- checkpoints under every strategy: two gloo processes, no Ray ----------------------------------------------
N_GENES, VOCAB = 31, [f"G{i}" for i in range(31)]
PERFORMER = {"n_genes": N_GENES, "dim": 16, "depth": 1, "heads": 2, "dim_head": 8, "nb_features": 8,
             "redraw_every": 2, "gene_embedding": "learned", "seed": 5}
STRATEGIES = {  # name -> (workers, DeepSpeed settings or None)
    "single": (1, None),
    "ddp": (2, None),
    "zero1": (2, {"zero_optimization": {"stage": 1}}),
    "zero2_bf16_accum2": (2, {"zero_optimization": {"stage": 2}, "bf16": {"enabled": True},
                              "gradient_accumulation_steps": 2}),
    "zero3": (2, {"zero_optimization": {"stage": 3}}),
}
SCHEDULE = {"schedule": "cosine", "schedule_unit": "step", "warmup_steps": 2, "max_epochs": 1}
PER_RANK_FOLDERS = ("zero2_bf16_accum2",)  # each rank writes its own folder (Ray Train); the others share one


def _micro_batch(rank: int, index: int):
    from omicsweep.datasets.tokens import mask_tokens

    generator = torch.Generator().manual_seed(1000 * rank + index)
    tokens = torch.randint(0, 6, (4, N_GENES + 1), generator=generator)
    return mask_tokens(tokens, generator=generator)


def _fresh(strategy_factory):
    """A seeded Performer prepared by a fresh strategy, its torch optimiser and a step LR scheduler."""
    from omicsweep.benchmark.training_options import StepSchedule
    from omicsweep.models.performer import Performer

    torch.manual_seed(0)
    strategy = strategy_factory()
    model = Performer(**PERFORMER)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model, optimizer = strategy.prepare(model, optimizer, {"batch_size": 4})
    # the pretraining loop's schedule: warm-up then cosine, in optimiser steps
    schedule = StepSchedule(strategy.torch_optimizer(model, optimizer), SCHEDULE, steps_per_epoch=8)
    return strategy, model, optimizer, schedule


def _train(strategy, model, optimizer, scheduler, *, start: int, micro_batches: int, accumulation: int) -> list:
    from omicsweep.models.performer import mlm_loss

    losses = []
    for index in range(start, start + micro_batches):
        strategy.module(model).set_feature_step(index // accumulation)  # FAVOR+ redraws counted in optimiser steps
        tokens, labels = _micro_batch(strategy.rank, index)
        with strategy.autocast("fp32"):
            loss = mlm_loss(model(strategy.to_device(tokens)), labels)
        if strategy.step(model, optimizer, loss, 0.0):
            scheduler.optimizer_step()
        losses.append(float(loss.detach()))
    return losses


def _checkpoint_worker(rank: int, port: int, name: str, out: str) -> None:
    """One rank: train 4 micro-batches, checkpoint, train 4 more (reference); a fresh model and strategy load the
    checkpoint and train the same 4 (resumed). Writes both losses, the projections, the module.pt check."""
    import os

    import shutil

    import torch.distributed as dist

    from omicsweep.benchmark import pretrain_checkpoint as ckpt
    from omicsweep.benchmark.strategies import make_strategy

    workers, ds = STRATEGIES[name]
    if workers > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                          WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")
        dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        accumulation = int((ds or {}).get("gradient_accumulation_steps", 1))
        factory = lambda: make_strategy(workers=workers, rank=rank, deepspeed=ds)  # noqa: E731
        folder = Path(out) / "ckpt"
        fingerprint = ckpt.vocabulary_fingerprint(VOCAB)
        strategy, model, optimizer, scheduler = _fresh(factory)
        _train(strategy, model, optimizer, scheduler, start=0, micro_batches=4, accumulation=accumulation)
        # per-rank folders, merged afterwards, as Ray Train gives each worker a temporary folder and merges uploads
        own = Path(out) / f"rank{rank}" / "ckpt" if name in PER_RANK_FOLDERS else folder
        ckpt.save_checkpoint(own, strategy=strategy, model=model, optimizer=optimizer, scheduler=scheduler,
                             step=4 // accumulation, stream_state={"epoch": 0, "batch": 4, "rank": rank},
                             vocabulary_fingerprint=fingerprint, n_genes=N_GENES, extra={"best": 1.5})
        if own != folder:
            dist.barrier()
            if rank == 0:
                for r in range(workers):
                    shutil.copytree(Path(out) / f"rank{r}" / "ckpt", folder, dirs_exist_ok=True)
            dist.barrier()
        reference = _train(strategy, model, optimizer, scheduler, start=4, micro_batches=4, accumulation=accumulation)
        projections = [block.attn.projection.clone() for block in strategy.module(model).layers]
        del model, optimizer
        strategy, model, optimizer, scheduler = _fresh(factory)
        state = ckpt.load_checkpoint(folder, strategy=strategy, model=model, optimizer=optimizer,
                                     scheduler=scheduler, vocabulary_fingerprint=fingerprint)
        resumed = _train(strategy, model, optimizer, scheduler, start=4, micro_batches=4, accumulation=accumulation)
        same_projections = all(torch.equal(a, block.attn.projection)
                               for a, block in zip(projections, strategy.module(model).layers))
        torch.save(projections, Path(out) / f"{name}-rank{rank}-projections.pt")
        result = {"reference": reference, "resumed": resumed, "step": state.step, "stream": state.stream(rank),
                  "extra": state.extra, "strategy": state.strategy, "same_projections": same_projections,
                  "lr": strategy.torch_optimizer(model, optimizer).param_groups[0]["lr"]}
        (Path(out) / f"{name}-rank{rank}.json").write_text(json.dumps(result))
    finally:
        if workers > 1:
            dist.destroy_process_group()


def _run_ranks(name: str, out: Path) -> list[dict]:
    import socket

    import torch.multiprocessing as mp

    workers = STRATEGIES[name][0]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.start_processes(_checkpoint_worker, args=(port, name, str(out)), nprocs=workers, start_method="spawn")
    return [json.loads((out / f"{name}-rank{rank}.json").read_text()) for rank in range(workers)]


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in ("zero1", "zero3") else n
                                  for n in STRATEGIES])  # ~15 s each with DeepSpeed on 2 loaded CPUs
def test_checkpoint_resumes_training_exactly_under_every_strategy(name, tmp_path):
    """Train, checkpoint, train on (reference); a fresh model, optimiser and scheduler loaded from the checkpoint
    train the same micro-batches to the same losses. The consolidated module.pt is float32 and loads with
    weights_only; the FAVOR+ projections are the same on every rank."""
    from omicsweep.benchmark import pretrain_checkpoint as ckpt

    results = _run_ranks(name, tmp_path)
    accumulation = int((STRATEGIES[name][1] or {}).get("gradient_accumulation_steps", 1))
    for rank, result in enumerate(results):
        assert result["resumed"] == pytest.approx(result["reference"], rel=1e-5, abs=1e-6), (name, rank, result)
        assert result["step"] == 4 // accumulation and result["stream"] == {"epoch": 0, "batch": 4, "rank": rank}
        assert result["extra"] == {"best": 1.5} and result["same_projections"]
    # FAVOR+ features redrawn (every 2 optimiser steps) identically on every rank, and not the initial draw
    from omicsweep.models.performer import Performer, feature_generator, orthogonal_random_features

    drawn = [torch.load(tmp_path / f"{name}-rank{rank}-projections.pt", weights_only=True)
             for rank in range(len(results))]
    assert all(torch.equal(a, b) for other in drawn[1:] for a, b in zip(drawn[0], other))
    initial = orthogonal_random_features(*drawn[0][0].shape, generator=feature_generator(PERFORMER["seed"], 0, 0))
    assert not torch.equal(drawn[0][0].float(), initial)
    assert len({r["lr"] for r in results}) == 1
    module = ckpt.load_module_state(tmp_path / "ckpt", vocabulary_fingerprint=ckpt.vocabulary_fingerprint(VOCAB))
    assert all(v.dtype in (torch.float32, torch.long) for v in module.values())
    Performer(**PERFORMER).load_state_dict(module)  # the plain module takes it as is (fine-tuning's path)
    assert ckpt.read_state(tmp_path / "ckpt").strategy == results[0]["strategy"]
    assert not [p for p in tmp_path.rglob(".*")]  # no staging folder left


def test_checkpoint_of_another_vocabulary_is_refused_naming_the_file(tmp_path):
    from omicsweep.benchmark import pretrain_checkpoint as ckpt
    from omicsweep.benchmark.strategies import make_strategy

    strategy, model, optimizer, scheduler = _fresh(lambda: make_strategy(workers=1))
    ckpt.save_checkpoint(tmp_path / "ckpt", strategy=strategy, model=model, optimizer=optimizer, step=0,
                         stream_state={}, vocabulary_fingerprint=ckpt.vocabulary_fingerprint(VOCAB), n_genes=N_GENES)
    other = ckpt.vocabulary_fingerprint(VOCAB[::-1])
    for load in (lambda: ckpt.load_module_state(tmp_path / "ckpt", vocabulary_fingerprint=other),
                 lambda: ckpt.load_checkpoint(tmp_path / "ckpt", strategy=strategy, model=model,
                                              optimizer=optimizer, vocabulary_fingerprint=other)):
        with pytest.raises(InputError) as info:
            load()
        assert str(tmp_path / "ckpt" / ckpt.STATE_FILE) in str(info.value) and "vocabulary" in str(info.value)


# ---- the real CLI: 2 Ray Train workers, DeepSpeed ZeRO-2 bf16, SIGKILL mid-run, --resume -------------------------
KILL_STEPS, KILL_EVERY = 24, 4
TINY_SETTINGS = ["dim=16", "depth=1", "heads=2", "dim_head=8", "nb_features=8", "val_cells=32", "batch_size=8",
                 "redraw_every=2", f"checkpoint_every={KILL_EVERY}"]


@pytest.fixture(scope="module")
def synth_corpus(tmp_path_factory) -> Path:
    """A 200-gene corpus from `omicsweep datasets synth --vocab` (the real CLI)."""
    from typer.testing import CliRunner

    from omicsweep.cli import app

    folder = tmp_path_factory.mktemp("corpus")
    (folder / "vocab.txt").write_text("\n".join(f"G{i}" for i in range(200)) + "\n")
    result = CliRunner().invoke(app, ["datasets", "synth", "--out", str(folder / "corpus.zarr"), "--cells", "2000",
                                      "--vocab", str(folder / "vocab.txt"), "--nnz", "40", "--types", "4"])
    assert result.exit_code == 0, result.stdout + result.stderr
    return folder / "corpus.zarr"


def _checkpoint_step(runs: Path) -> int:
    from omicsweep.benchmark.pretrain_checkpoint import STATE_FILE

    steps = [json.loads(p.read_text())["step"] for p in (runs / "checkpoints").glob(f"*/{STATE_FILE}")]
    return max(steps, default=0)


def _kill_by_environment(marker: str) -> None:
    """SIGKILL the processes whose environment holds `marker` (those this test started: Ray workers call setsid,
    so a process-group kill misses them, and setproctitle hides their command line from ray_procs), then wait
    until they are gone: left alone they train on for seconds and write later checkpoints."""
    import os
    import signal
    import time

    def matching() -> list[int]:
        found = []
        for pid in (int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()):
            try:
                if marker.encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                    found.append(pid)
            except OSError:
                pass
        return found

    deadline = time.time() + 20
    while (pids := matching()) and time.time() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    assert not matching(), "processes of the killed run survived"


def _trial_runs(runs: Path) -> list:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{runs / 'mlflow.db'}")
    found = []
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id]):  # active runs only: deleted ones are not shown
            if run.data.tags.get("omicsweep.role") == "trial":
                # "epoch" of a pretraining result: its step group, ceil(step / eval_every)
                groups = [int(m.value) for m in client.get_metric_history(run.info.run_id, "epoch")]
                found.append({"status": run.info.status, "groups": sorted(groups), "tags": run.data.tags})
    return found


@pytest.mark.slow
def test_sigkilled_zero2_pretraining_resumes_from_its_last_checkpoint(cli, ray_session, synth_corpus, tmp_path):
    """`omicsweep pretrain --workers-per-trial 2 --deepspeed docs/ds_zero2.json` as a process group, SIGKILLed
    after its first checkpoint; `omicsweep pretrain --resume RUNS` continues from that checkpoint's step and stream
    position to the same step count, with one trial run in MLflow."""
    import os
    import signal
    import subprocess
    import sys
    import tempfile
    import time

    from ray_procs import end_cluster, ray_env

    from omicsweep.benchmark.pretrain_checkpoint import STATE_FILE

    runs, temp_dir = tmp_path / "runs", tempfile.mkdtemp(prefix="omr")
    ds = Path(__file__).parents[1] / "docs" / "ds_zero2.json"
    accumulation = json.loads(ds.read_text())["gradient_accumulation_steps"]
    args = [str(Path(sys.executable).parent / "omicsweep"), "pretrain", "--corpus", str(synth_corpus), "--runs",
            str(runs), "--workers-per-trial", "2", "--cpus-per-trial", "0.5", "--deepspeed", str(ds),
            "--max-steps", str(KILL_STEPS), "--eval-every", str(KILL_EVERY)]
    for setting in TINY_SETTINGS:
        args += ["--set", setting]
    driver = subprocess.Popen(args, env=ray_env(RAY_TMPDIR=temp_dir), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.time() + 400
        while _checkpoint_step(runs) == 0 and time.time() < deadline and driver.poll() is None:
            time.sleep(0.2)
        assert driver.poll() is None, f"ended before the kill: {driver.stderr.read().decode()[-3000:]}"
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and everything in its process group (gcs, raylet)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
        end_cluster(temp_dir)
        _kill_by_environment(f"RAY_TMPDIR={temp_dir}")  # its Ray workers: own sessions, retitled command lines
    killed_at = _checkpoint_step(runs)
    assert 0 < killed_at < KILL_STEPS, killed_at

    code, stdout, stderr = cli("pretrain", "--resume", runs)
    assert code == 0, stdout + stderr
    [folder] = [p.parent for p in (runs / "checkpoints").glob(f"*/{STATE_FILE}")]
    state = json.loads((folder / STATE_FILE).read_text())
    assert state["step"] == KILL_STEPS and state["strategy"] == "deepspeed zero=2" and state["world_size"] == 2
    # each rank read its own shard, and as far as an uninterrupted run: steps x accumulation micro-batches
    assert [(s["rank"], s["batch"]) for s in state["streams"]] == [(r, KILL_STEPS * accumulation) for r in (0, 1)]
    assert sorted(p.name for p in (folder / "deepspeed" / f"step{KILL_STEPS}").iterdir()) == [
        "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt", "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt",
        "mp_rank_00_model_states.pt"]
    [trial] = _trial_runs(runs)  # the killed attempt's run was replaced, not duplicated
    assert trial["status"] == "FINISHED"
    # continued from the checkpoint: its first step group is the one after the checkpoint's step
    assert trial["groups"][0] == killed_at // KILL_EVERY + 1, (killed_at, trial["groups"])
    assert trial["groups"][-1] == KILL_STEPS // KILL_EVERY, trial["groups"]


def test_pretrain_with_unknown_deepspeed_key_exits_2_naming_file_and_key(cli, synth_corpus, tmp_path):
    bad = tmp_path / "ds.json"
    bad.write_text(json.dumps({"zero_optimization": {"stage": 2}, "bf16": {"enabled": True},
                               "gradient_accumulation_step": 2}))
    assert_one_line_error(*cli("pretrain", "--corpus", synth_corpus, "--workers-per-trial", "2", "--deepspeed", bad,
                               "--runs", tmp_path / "runs"), "ds.json", "gradient_accumulation_step")
    assert not (tmp_path / "runs").exists()
