"""Conformance: every registered model, found through the registry; a new model adds no test code here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omicsweep.benchmark.space import load_space
from omicsweep.benchmark.trial import TrialContext, execute_trial
from omicsweep.datasets import Store
from omicsweep.models import Task, available_models, get_model

MODELS = available_models()


def test_registry_has_the_skeleton_models(cli):
    assert {"mlp", "logreg", "majority"} <= set(MODELS)
    code, stdout, _ = cli("models")
    assert code == 0 and all(name in stdout for name in MODELS)


@pytest.mark.parametrize("name", MODELS)
def test_space_file_is_valid_and_defaults_build(name):
    entry = get_model(name)
    space = load_space(entry.space_file)
    for dim in space.dimensions:
        assert dim.name in space.defaults, f"{name}: searched {dim.name} has no default"
    model = entry.build({**space.defaults, **space.tiny}, Task(n_features=20, n_classes=3))
    if entry.family == "torch":
        model.eval()
        assert model(torch.randn(4, 20)).shape == (4, 3)
    else:
        assert hasattr(model, "fit") and hasattr(model, "predict_proba")


def _run(name: str, store_path, seed: int):
    entry = get_model(name)
    space = load_space(entry.space_file)
    store = Store(store_path)
    context = TrialContext(
        store_path=str(store_path), fingerprint=store.fingerprint, model=name,
        defaults={**space.defaults, **space.tiny}, seed=seed, metric="accuracy",
    )
    results, files = [], []
    execute_trial(context, {}, lambda metrics, ckpt: (results.append(metrics), files.append(sorted(ckpt or {}))))
    return results, files


@pytest.mark.parametrize("name", MODELS)
def test_trial_reports_metrics_checkpoints_and_is_deterministic(name, pbmc_store):
    results, files = _run(name, pbmc_store, seed=3)
    assert results, "no result reported"
    last = results[-1]
    for key in ("val_accuracy", "test_accuracy", "test_macro_f1", "test_macro_auroc", "best_val", "epoch_time_s"):
        assert key in last and np.isfinite(last[key]), key
    assert files[0] and "trial.json" in files[0] and "transform.npz" in files[0]  # first result is a new best
    again, _ = _run(name, pbmc_store, seed=3)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in rs]  # noqa: E731
    assert strip(results) == strip(again), "same seed on CPU must give the same metrics"


def test_mlp_learns_and_controls_do_not(pbmc_store):
    mlp, _ = _run("mlp", pbmc_store, seed=0)
    majority, _ = _run("majority", pbmc_store, seed=0)
    assert mlp[-1]["train_loss"] < mlp[0]["train_loss"]
    assert mlp[-1]["best_val"] > majority[-1]["best_val"] + 0.2
    assert majority[-1]["test_macro_auroc"] == pytest.approx(0.5)
