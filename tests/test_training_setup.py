"""The training setup (strategy, workers, CPUs, GPUs) named once per run, and `reproduce` saying when it differs.

The leaderboard compares a seed re-run's setup tag with its trial's, so the tag must be the same canonical string
for the same setup and must tell the truth when a run could not train the way its trial did.
"""

from __future__ import annotations

import json

import pytest

from omicsweep.benchmark.reproduce import runnable_context
from omicsweep.benchmark.trial import TrialContext, parse_training_setup, training_setup
from omicsweep.reports.tracking import TRAINING_SETUP_TAG

ZERO2_BF16 = {"zero_optimization": {"stage": 2}, "bf16": {"enabled": True}}


def _context(**kwargs) -> TrialContext:
    return TrialContext(store_path="s.zarr", fingerprint="f", model=kwargs.pop("model", "mlp"), **kwargs)


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({}, "single cpu=1 gpu=0"),
    ({"cpus": 2.0, "gpus": 1.0}, "single cpu=2 gpu=1"),
    ({"workers": 2, "cpus": 0.5}, "ddp workers=2 cpu=0.5 gpu=0"),
    ({"workers": 2, "deepspeed": ZERO2_BF16}, "deepspeed zero=2 bf16 workers=2 cpu=1 gpu=0"),
    ({"workers": 1, "deepspeed": {"gradient_accumulation_steps": 2}, "gpus": 0.5},
     "deepspeed zero=0 fp32 accum=2 workers=1 cpu=1 gpu=0.5"),
    ({"model": "logreg", "cpus": 2.0, "gpus": 1.0}, "single cpu=2"),  # an estimator never uses a GPU
])
def test_training_setup_is_one_canonical_string(kwargs, expected):
    setup = training_setup(_context(**kwargs))
    assert setup == expected
    assert TRAINING_SETUP_TAG == "omicsweep.training_setup"
    parsed = parse_training_setup(setup)
    context = _context(**kwargs)
    assert (parsed["workers"], parsed["cpus"]) == (context.workers, context.cpus)


def test_reproduce_runs_what_this_machine_allows_and_says_so():
    ddp_gpu = _context(workers=2, cpus=1.0, gpus=1.0)
    same, notes = runnable_context(ddp_gpu, cpus_here=8, gpus_here=2)
    assert same == ddp_gpu and notes == []
    cpu_only, notes = runnable_context(ddp_gpu, cpus_here=8, gpus_here=0)
    assert training_setup(cpu_only) == "ddp workers=2 cpu=1 gpu=0"
    assert len(notes) == 1 and "GPU" in notes[0]
    squeezed, notes = runnable_context(_context(workers=4, cpus=1.0), cpus_here=2, gpus_here=0)
    assert squeezed.workers == 4 and squeezed.cpus * 4 <= 2
    assert len(notes) == 1 and "CPU" in notes[0]
    single, notes = runnable_context(ddp_gpu, workers=1, cpus_here=8, gpus_here=2)
    assert training_setup(single) == "single cpu=1 gpu=1" and "--workers 1" in notes[0]
    estimator = _context(model="logreg", gpus=1.0)
    assert runnable_context(estimator, workers=2, cpus_here=1, gpus_here=0) == (estimator, [])


TINY_MLP = {"n_layers": 1, "width": 16, "lr": 3.0e-3, "weight_decay": 0.0, "dropout": 0.0, "batch_size": 32,
            "max_epochs": 1, "patience": 5, "seed": 0}


def test_reproduce_a_ddp_trial_in_one_process_says_the_setup_differs(cli, pbmc_store, tmp_path):
    """A DDP trial's record re-run with --workers 1: the output says the setups differ and does not call the
    metrics a (failed) reproduction; the exit code is 1 (not confirmed)."""
    from omicsweep.datasets.open import open_store
    from omicsweep.reports.tracking import MlflowRecorder, default_tracking_uri

    store = open_store(pbmc_store)
    recorder = MlflowRecorder(default_tracking_uri(tmp_path))
    recorder.start_sweep(dataset="pbmc68k", model="mlp", params={}, tags={
        "omicsweep.fingerprint": store.fingerprint, "omicsweep.store_path": str(pbmc_store),
        "omicsweep.metric": "val_accuracy", "omicsweep.threads": "1", TRAINING_SETUP_TAG: "ddp workers=2 cpu=0.5 gpu=0",
    })
    run_id = recorder.start_trial("t1", params=TINY_MLP, tags={
        "omicsweep.seed": "0", "omicsweep.config": json.dumps(TINY_MLP),
        TRAINING_SETUP_TAG: "ddp workers=2 cpu=0.5 gpu=0",
    })
    recorder.log_result("t1", {"epoch": 1, "test_accuracy": 0.5, "epochs_run": 1}, step=1)
    recorder.end_trial("t1", status="FINISHED")
    code, stdout, stderr = cli("reproduce", run_id, "--runs", tmp_path, "--workers", "1")
    assert code == 1, stdout + stderr
    text = " ".join(stdout.split())
    assert "setup differs" in text and "ddp workers=2 cpu=0.5 gpu=0" in text and "single cpu=0.5 gpu=0" in text
    assert "not expected to match" in text
    assert "NOT reproduced" not in text and "match exactly" not in text


@pytest.mark.slow
def test_single_process_reruns_carry_their_trials_setup(swept):
    """The shared sweep's seed re-runs (Ray tasks) are tagged with their trial's setup and trained in one process."""
    from mlflow import MlflowClient

    from omicsweep.reports.tracking import default_tracking_uri

    out, _ = swept
    client = MlflowClient(default_tracking_uri(out))
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)
    trials = {r.data.tags["omicsweep.trial_id"]: r for r in runs if r.data.tags.get("omicsweep.role") == "trial"}
    reruns = [r for r in runs if r.data.tags.get("omicsweep.role") == "seed-rerun"]
    expected = {"mlp": "single cpu=1 gpu=0", "logreg": "single cpu=1", "majority": "single cpu=1"}
    assert {r.data.tags["omicsweep.model"] for r in reruns} == set(expected)
    for rerun in reruns:
        trial = trials[rerun.data.tags["omicsweep.rerun_of"]]
        setup = expected[rerun.data.tags["omicsweep.model"]]
        assert rerun.data.tags[TRAINING_SETUP_TAG] == trial.data.tags[TRAINING_SETUP_TAG] == setup
        assert rerun.data.metrics["world_size"] == trial.data.metrics["world_size"] == 1
