"""Ensembles (config `ensemble`, study 004): members seeded seed + i, trained in lockstep, probabilities averaged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omicsweep.benchmark.space import load_space
from omicsweep.datasets import Store
from omicsweep.models import Task, get_model


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _inputs(store_path, **config):
    from omicsweep.benchmark.training import FitInputs
    from omicsweep.datasets.transform import fit_transform_on_train

    store = Store(store_path)
    space = load_space(get_model("mlp").space_file)
    return FitInputs(
        store=store, transform=fit_transform_on_train(store), seed=5, metric="accuracy",
        task=Task(n_features=store.n_genes, n_classes=len(store.classes)),
        config={**space.defaults, **space.tiny, **config},
    )


def test_ensemble_output_is_the_log_of_the_averaged_probabilities():
    from omicsweep.models.ensemble import EnsembleClassifier

    torch.manual_seed(0)
    members = [torch.nn.Linear(6, 4) for _ in range(3)]
    x = torch.randn(10, 6)
    ensemble = EnsembleClassifier(members).requires_grad_(False)
    expected = torch.stack([torch.softmax(m(x), dim=1) for m in members]).mean(dim=0)
    assert torch.allclose(torch.softmax(ensemble(x), dim=1), expected, atol=1e-6)
    y = torch.arange(10) % 4
    loss = torch.nn.functional.cross_entropy(ensemble(x), y)
    assert float(loss) == pytest.approx(float(-expected[torch.arange(10), y].log().mean()), rel=1e-5)


@pytest.mark.parametrize("value", [0, -1, 1.5, "two", True])
def test_bad_ensemble_size_is_a_config_error(value):
    from omicsweep.errors import ConfigError
    from omicsweep.models.ensemble import ensemble_size

    with pytest.raises(ConfigError, match="ensemble"):
        ensemble_size({"ensemble": value})
    assert ensemble_size({}) == 1 and ensemble_size({"ensemble": None}) == 1 and ensemble_size({"ensemble": 3.0}) == 3


def test_member_zero_trains_exactly_like_the_single_model(pbmc_store):
    """Each member has its own seed, data order and RNG stream, so adding members leaves member 0 unchanged."""
    from omicsweep.benchmark.training import _make_member, _train_members_one_epoch
    from omicsweep.benchmark.training_options import make_loss

    inputs = _inputs(pbmc_store, dropout=0.3)
    loss_fn = make_loss(inputs.config, n_classes=inputs.task.n_classes)
    single = [_make_member(get_model("mlp"), inputs, 0)]
    trio = [_make_member(get_model("mlp"), inputs, i) for i in range(3)]
    for epoch in (1, 2):
        _train_members_one_epoch(single, epoch, loss_fn, 0.0)
        _train_members_one_epoch(trio, epoch, loss_fn, 0.0)
    for key, value in single[0].model.state_dict().items():
        assert torch.equal(value, trio[0].model.state_dict()[key]), key
    first = trio[0].model.net[0].weight
    assert not torch.equal(first, trio[1].model.net[0].weight) and not torch.equal(first, trio[2].model.net[0].weight)


def test_ensemble_trial_checkpoints_all_members_and_scores_their_average(pbmc_store, tmp_path):
    from omicsweep.benchmark.metrics import classification_metrics
    from omicsweep.benchmark.training import _eval_batches, fit_torch, predict_torch
    from omicsweep.models.ensemble import build_torch_model

    inputs = _inputs(pbmc_store, ensemble=3, max_epochs=2, patience=5)
    entry = get_model("mlp")
    results = []

    def report(metrics, files):
        results.append(metrics)
        for name, write in (files or {}).items():
            write(str(tmp_path / name))

    fit_torch(entry, inputs, report)
    assert len(results) == 2  # one result per epoch: the ensemble is one trial, one leaderboard row
    model = build_torch_model(entry, inputs.config, inputs.task)
    model.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    assert len(model.members) == 3
    members_proba = [predict_torch(member, _eval_batches(inputs, "test"))[0] for member in model.members]
    with np.load(tmp_path / "test_predictions.npz", allow_pickle=False) as saved:
        np.testing.assert_allclose(saved["proba"], np.mean(members_proba, axis=0), atol=1e-6)
        assert classification_metrics(saved["y_true"], saved["proba"])["accuracy"] == results[-1]["test_accuracy"]
