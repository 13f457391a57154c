"""Data-parallel trials: Ray Train workers (DDP on gloo) and DeepSpeed ZeRO-2, on CPU, through the real CLI.

Each trial trains on two Ray Train workers (0.5 CPU each, so they fit the suite's 2-CPU Ray beside the Tune
actor); metrics and the best checkpoint come back to Tune and MLflow like a single-process trial's.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from omicsweep.datasets import Store
from omicsweep.datasets.loader import CellBatches, fit_transform_on_train

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
    code, stdout, stderr = cli("sweep", "--model", "mlp", "--space", tiny_space, "--trials", "1", "--seeds", "1",
                               "--out", out, "--workers-per-trial", "2", "--cpus-per-trial", "0.5")
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
    code, stdout, _ = cli("reproduce", run.info.run_id, "--out", out, "--workers", "1")
    text = " ".join(stdout.split())
    assert code == 1 and "setup differs" in text and "not expected to match" in text, stdout


@pytest.mark.slow
def test_two_worker_deepspeed_zero2_trial(cli, ray_session, pbmc_store, tiny_space, tmp_path):
    config = tmp_path / "zero2.json"
    config.write_text(json.dumps({"zero_optimization": {"stage": 2}, "gradient_accumulation_steps": 2}))
    out = tmp_path / "run"
    code, stdout, stderr = cli("sweep", "--model", "mlp", "--space", tiny_space, "--trials", "1", "--seeds", "0",
                               "--out", out, "--workers-per-trial", "2", "--cpus-per-trial", "0.5",
                               "--deepspeed", config)
    assert code == 0, stdout + stderr
    client, run, parent = _trial_run(out)
    assert run.info.status == "FINISHED", run.data.tags.get("omicsweep.error")
    assert run.data.metrics["epoch"] == 2 and np.isfinite(run.data.metrics["train_loss"])
    assert json.loads(parent.data.params["deepspeed"])["zero_optimization"]["stage"] == 2
    _check_checkpoint(client, run, tmp_path)


def test_row_shards_are_disjoint_and_cover_the_split(pbmc_store):
    """A split with fewer chunks than ranks is sharded by rows of each shuffled buffer: same permutation on
    every rank, so the two ranks see disjoint halves of the training cells each epoch."""
    store = Store(pbmc_store)
    transform = fit_transform_on_train(store)

    def labels_and_rows(rank: int) -> np.ndarray:
        batches = CellBatches(store, "train", batch_size=16, transform=transform, shuffle=True, seed=3,
                              rank=rank, world_size=2, shard="rows", prefetch=False)
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
    assert_one_line_error(*cli("sweep", "--model", "mlp", "--deepspeed", bad, "--out", tmp_path / "a"),
                          "ds.json", "stage")
    bad.write_text("{not json")
    assert_one_line_error(*cli("sweep", "--model", "mlp", "--deepspeed", bad, "--out", tmp_path / "b"),
                          "ds.json", "not valid JSON")
    assert_one_line_error(*cli("sweep", "--model", "mlp", "--workers-per-trial", "64", "--out", tmp_path / "c"),
                          "--workers-per-trial 64", "CPUs")
    assert_one_line_error(*cli("sweep", "--model", "mlp", "--inject-faults", "explode:2", "--out", tmp_path / "d"),
                          "--inject-faults")
    assert_one_line_error(*cli("sweep", "--resume", tmp_path / "nowhere"), "sweep.json")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
