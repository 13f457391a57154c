"""Data-parallel trials: Ray Train workers (DDP on gloo) and DeepSpeed ZeRO-2, on CPU, through the real CLI.

Each trial trains on two Ray Train workers (0.5 CPU each, so they fit the suite's 2-CPU Ray beside the Tune
actor); metrics and the best checkpoint come back to Tune and MLflow like a single-process trial's.
"""

from __future__ import annotations

import json
import math
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from omicsweep.datasets import Store
from omicsweep.datasets.loader import CellBatches
from omicsweep.datasets.transform import fit_transform_on_train

from conftest import assert_one_line_error

TINY = {
    "defaults": {"n_layers": 1, "width": 16, "lr": 3.0e-3, "weight_decay": 0.0, "dropout": 0.0, "batch_size": 32,
                 "max_epochs": 2, "patience": 5},
    "space": {},
}


@pytest.fixture
def tiny_space(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def _trial_run(out):
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("pbmc68k")
    runs = client.search_runs([experiment.experiment_id])
    trials = [r for r in runs if r.data.tags.get("omicsweep.role") == "trial"]
    assert len(trials) == 1
    parent = next(r for r in runs if r.data.tags.get("omicsweep.role") == "sweep")
    return client, trials[0], parent


def _check_checkpoint(client, run, tmp_path):
    """The chief's checkpoint reached MLflow and loads into the plain (unwrapped) module."""
    from omicsweep.models import Task, get_model

    folder = client.download_artifacts(run.info.run_id, "checkpoint", str(tmp_path / "ckpt"))
    state = torch.load(f"{folder}/model.pt", weights_only=True)
    config = json.loads(run.data.tags["omicsweep.config"])
    model = get_model("mlp").build(config, Task(n_features=765, n_classes=10))
    model.load_state_dict(state)  # no DDP "module." prefix, float32 weights
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())


@pytest.mark.slow
def test_two_worker_ddp_trial(cli, ray_session, pbmc_store, tiny_space, tmp_path):
    """A DDP trial, its seed re-run trained the same way (2 Ray Train workers, tagged alike), and `reproduce`
    saying that a one-process re-run is a different setup."""
    out = tmp_path / "run"
    code, stdout, stderr = cli("sweep", "--model", "mlp", "--space", tiny_space, "--trials", "1", "--reruns", "1",
                               "--runs", out, "--workers-per-trial", "2", "--cpus-per-trial", "0.5")
    assert code == 0, stdout + stderr
    client, run, parent = _trial_run(out)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["epoch"] == 2 and 0.0 < run.data.metrics["test_accuracy"] <= 1.0
    assert parent.data.params["workers_per_trial"] == "2"
    _check_checkpoint(client, run, tmp_path)
    setup = "ddp workers=2 cpu=0.5 gpu=0"
    assert parent.data.tags["omicsweep.training_setup"] == setup
    assert run.data.tags["omicsweep.training_setup"] == setup and run.data.metrics["world_size"] == 2
    reruns = [r for r in client.search_runs([run.info.experiment_id]) if r.data.tags["omicsweep.role"] == "seed-rerun"]
    assert len(reruns) == 1 and reruns[0].info.status == "FINISHED", reruns[0].data.tags.get("omicsweep.error")
    rerun = reruns[0]
    assert rerun.data.tags["omicsweep.training_setup"] == setup
    assert rerun.data.metrics["world_size"] == 2  # logged from inside training: it really ran on 2 workers
    assert rerun.data.metrics["epoch"] == 2 and 0.0 < rerun.data.metrics["test_accuracy"] <= 1.0
    code, stdout, _ = cli("reproduce", run.info.run_id, "--runs", out, "--workers", "1")
    text = " ".join(stdout.split())
    assert code == 1 and "setup differs" in text and "not expected to match" in text, stdout


@pytest.mark.slow
def test_two_worker_deepspeed_zero2_trial(cli, ray_session, pbmc_store, tmp_path):
    """With the learning-rate schedule searched: ZeRO's optimiser is DeepSpeed's wrapper, not a torch one."""
    space = tmp_path / "scheduled.yaml"
    space.write_text(yaml.safe_dump({"defaults": {**TINY["defaults"], "step_size": 1},
                                     "space": {"schedule": {"choice": ["cosine", "step"]}}}))
    config = tmp_path / "zero2.json"
    config.write_text(json.dumps({"zero_optimization": {"stage": 2}, "gradient_accumulation_steps": 2}))
    out = tmp_path / "run"
    code, stdout, stderr = cli("sweep", "--model", "mlp", "--space", space, "--trials", "1", "--reruns", "0",
                               "--runs", out, "--workers-per-trial", "2", "--cpus-per-trial", "0.5",
                               "--deepspeed", config)
    assert code == 0, stdout + stderr
    client, run, parent = _trial_run(out)
    assert run.info.status == "FINISHED", run.data.tags.get("omicsweep.error")
    assert run.data.metrics["epoch"] == 2 and np.isfinite(run.data.metrics["train_loss"])
    assert json.loads(run.data.tags["omicsweep.config"])["schedule"] in ("cosine", "step")
    # epoch 2 trains at half the rate: cosine over 2 epochs and halving every epoch agree there
    assert run.data.metrics["train_lr"] == pytest.approx(TINY["defaults"]["lr"] / 2)
    assert json.loads(parent.data.params["deepspeed"])["zero_optimization"]["stage"] == 2
    _check_checkpoint(client, run, tmp_path)


SCHEDULE_EPOCHS, SCHEDULE_LR = 3, 3.0e-3


def _lr_per_epoch(schedule: str) -> list[float]:
    """What each schedule should train epoch 1, 2, 3 with (cosine over max_epochs, step halving every epoch)."""
    if schedule == "cosine":
        return [SCHEDULE_LR * (1 + math.cos(math.pi * e / SCHEDULE_EPOCHS)) / 2 for e in range(SCHEDULE_EPOCHS)]
    if schedule == "step":
        return [SCHEDULE_LR * 0.5**e for e in range(SCHEDULE_EPOCHS)]
    return [SCHEDULE_LR] * SCHEDULE_EPOCHS


def _schedule_worker(rank: int, port: int, store_path: str, out: str) -> None:
    """One of two ranks (gloo, CPU): a real trial per (ZeRO stage, schedule) through the DeepSpeed strategy and the
    shared loop, all in the same process group; records each epoch's learning rate or the error."""
    import os

    import torch.distributed as dist

    from omicsweep.benchmark.strategies import make_strategy
    from omicsweep.benchmark.options import SCHEDULES
    from omicsweep.benchmark.trial import TrialContext, execute_trial

    # what a launcher (Ray Train's TorchConfig, torchrun) sets before DeepSpeed starts
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        defaults = {**TINY["defaults"], "lr": SCHEDULE_LR, "max_epochs": SCHEDULE_EPOCHS, "step_size": 1}
        context = TrialContext(store_path=store_path, fingerprint=Store(store_path).fingerprint, model="mlp",
                               defaults=defaults)
        results = {}
        for stage in (0, 2):
            for schedule in SCHEDULES:
                ds = {"zero_optimization": {"stage": stage}, "gradient_accumulation_steps": 2}
                strategy = make_strategy(workers=2, rank=rank, deepspeed=ds)
                reported = []
                try:
                    execute_trial(context, {"schedule": schedule}, lambda m, files: reported.append(m),
                                  strategy=strategy)
                    results[f"{stage}/{schedule}"] = [m.get("train_lr") for m in reported]
                except Exception as exc:  # recorded, so the parent names every failing combination
                    results[f"{stage}/{schedule}"] = f"{type(exc).__name__}: {exc}"
        (Path(out) / f"rank{rank}.json").write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_deepspeed_trains_every_schedule_at_zero_stages_0_and_2(pbmc_store, tmp_path):
    """Two gloo processes, no Ray: each schedule x ZeRO stage finishes and trains each epoch at the scheduled lr
    (ZeRO wraps the torch optimiser in one a torch scheduler rejects)."""
    import torch.multiprocessing as mp

    from omicsweep.benchmark.options import SCHEDULES

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.start_processes(_schedule_worker, args=(port, str(pbmc_store), str(tmp_path)), nprocs=2, start_method="spawn")
    for rank in range(2):
        results = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for stage in (0, 2):
            for schedule in SCHEDULES:
                lrs = results[f"{stage}/{schedule}"]
                assert isinstance(lrs, list) and None not in lrs, (rank, stage, schedule, lrs)
                assert lrs == pytest.approx(_lr_per_epoch(schedule)), (rank, stage, schedule)


def test_deepspeed_config_scheduler_and_a_trial_schedule_conflict():
    from omicsweep.benchmark.strategies import make_strategy
    from omicsweep.errors import ConfigError

    strategy = make_strategy(workers=1, deepspeed={"scheduler": {"type": "WarmupLR", "params": {}}})
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ConfigError, match="schedule='cosine'.*'scheduler'"):
        strategy.prepare(model, torch.optim.Adam(model.parameters()), {"batch_size": 4, "schedule": "cosine"})


def test_ranks_sharing_one_chunk_see_disjoint_halves(pbmc_store):
    """A split of a single chunk is shared by both ranks, cut at the same seeded random rows on each, so the two
    ranks see disjoint halves of the training cells each epoch (tests/test_shards.py: many chunks)."""
    store = Store(pbmc_store)
    transform = fit_transform_on_train(store)

    def labels_and_rows(rank: int) -> np.ndarray:
        batches = CellBatches(store, "train", batch_size=16, transform=transform, shuffle=True, seed=3,
                              rank=rank, world_size=2, prefetch=False)
        batches.set_epoch(2)
        return np.concatenate([x.numpy() for x, _ in batches])

    a, b = labels_and_rows(0), labels_and_rows(1)
    n_train = len(store.split_indices("train"))
    assert abs(len(a) - len(b)) <= 1 and len(a) + len(b) == n_train
    rows = {r.tobytes() for r in np.concatenate([a, b])}
    assert len(rows) == n_train  # disjoint (pbmc68k has no duplicate cells)


def test_bad_distributed_options_are_one_line_errors(cli, tmp_path, pbmc_store):
    bad = tmp_path / "ds.json"
    bad.write_text(json.dumps({"zero_optimization": {"stage": 5}}))
    assert_one_line_error(*cli("sweep", "--model", "mlp", "--deepspeed", bad, "--runs", tmp_path / "a"),
                          "ds.json", "stage")
    bad.write_text("{not json")
    assert_one_line_error(*cli("sweep", "--model", "mlp", "--deepspeed", bad, "--runs", tmp_path / "b"),
                          "ds.json", "not valid JSON")
    assert_one_line_error(*cli("sweep", "--model", "mlp", "--workers-per-trial", "64", "--runs", tmp_path / "c"),
                          "--workers-per-trial 64", "CPUs")
    assert_one_line_error(*cli("sweep", "--model", "mlp", "--inject-faults", "explode:2", "--runs", tmp_path / "d"),
                          "--inject-faults")
    assert_one_line_error(*cli("sweep", "--resume", tmp_path / "nowhere"), "sweep.json")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
