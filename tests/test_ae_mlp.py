"""ae_mlp (study 002): autoencoder pretraining initialises the classifier; fit_torch calls any module's pretrain."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omicsweep.benchmark.space import load_space
from omicsweep.models import Task, get_model


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _config(**overrides):
    space = load_space(get_model("ae_mlp").space_file)
    return {**space.defaults, "n_layers": 2, "size_1": 16, "size_2": 8, "ae_epochs": 30, "lr": 1e-2, **overrides}


def _profiles(n: int = 64, n_features: int = 30):
    """Low-rank profiles in [0, 1] (like min-max scaled data), in batches of 16."""
    gen = torch.Generator().manual_seed(0)
    x = torch.sigmoid(torch.randn(n, 4, generator=gen) @ torch.randn(4, n_features, generator=gen))
    return [(x[i : i + 16], torch.zeros(16, dtype=torch.long)) for i in range(0, n, 16)]


def _built(init: str):
    torch.manual_seed(0)
    return get_model("ae_mlp").build(_config(init=init), Task(n_features=30, n_classes=3))


def test_autoencoder_init_changes_the_initial_weights_and_lowers_reconstruction_loss():
    batches = _profiles()
    random_init, ae_init = _built("random"), _built("autoencoder")
    for a, b in zip(random_init.state_dict().values(), ae_init.state_dict().values()):
        assert torch.equal(a, b)  # same seed, same architecture: identical before pretraining
    before = ae_init.reconstruction_loss(batches)
    assert random_init.pretrain(batches, _config(init="random")) is None
    last_epoch_loss = ae_init.pretrain(batches, _config(init="autoencoder"))
    after = ae_init.reconstruction_loss(batches)
    assert after < 0.5 * before and last_epoch_loss < before
    assert random_init.reconstruction_loss(batches) == pytest.approx(before)  # random init: untouched
    encoder_random, encoder_ae = random_init.encoder[0].weight, ae_init.encoder[0].weight
    assert not torch.equal(encoder_random, encoder_ae)
    assert torch.equal(random_init.head.weight, ae_init.head.weight)  # the head is not pretrained


def test_encoder_is_the_classifier_hidden_stack_and_decoder_mirrors_it():
    model = get_model("ae_mlp").build(_config(n_layers=3, size_3=4), Task(n_features=30, n_classes=3))
    encoder = [m for m in model.encoder if isinstance(m, torch.nn.Linear)]
    decoder = [m for m in model.decoder if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in encoder] == [(30, 16), (16, 8), (8, 4)]
    assert [(m.in_features, m.out_features) for m in decoder] == [(4, 8), (8, 16), (16, 30)]
    assert model.head.in_features == 4 and model(torch.randn(5, 30)).shape == (5, 3)
    assert model.reconstruct(torch.randn(5, 30)).shape == (5, 30)


@pytest.mark.parametrize("config", [{"init": "pretrained"}, {"n_layers": 4}, {"n_layers": 3, "size_3": None}])
def test_bad_ae_mlp_config_is_a_config_error(config):
    from omicsweep.errors import ConfigError

    cfg = {k: v for k, v in {**_config(), **config}.items() if v is not None}
    with pytest.raises(ConfigError, match="ae_mlp"):
        get_model("ae_mlp").build(cfg, Task(n_features=30, n_classes=3))


class _CountingModule(torch.nn.Module):
    """A model that records each pretrain call: fit_torch must call it without knowing the model's name."""

    calls: list = []

    def __init__(self, n_features: int, n_classes: int):
        super().__init__()
        self.linear = torch.nn.Linear(n_features, n_classes)

    def forward(self, x):
        return self.linear(x)

    def pretrain(self, train_batches, config):
        x, _ = next(iter(train_batches))
        _CountingModule.calls.append((train_batches.seed, x.shape[1], config["marker"]))
        return 0.25


@pytest.mark.parametrize("members", [1, 3])
def test_fit_torch_calls_pretrain_once_per_member_before_training(members, pbmc_store):
    from omicsweep.benchmark.training import FitInputs, fit_torch
    from omicsweep.datasets import Store
    from omicsweep.datasets.transform import fit_transform_on_train
    from omicsweep.models import ModelEntry

    store = Store(pbmc_store)
    entry = ModelEntry(name="counting", family="torch", description="test",
                       build=lambda config, task: _CountingModule(task.n_features, task.n_classes))
    config = {"lr": 1e-3, "batch_size": 64, "max_epochs": 1, "patience": 1, "marker": "here", "ensemble": members}
    inputs = FitInputs(store=store, transform=fit_transform_on_train(store), seed=7, metric="accuracy",
                       task=Task(n_features=store.n_genes, n_classes=len(store.classes)), config=config)
    _CountingModule.calls = []
    results = []
    fit_torch(entry, inputs, lambda metrics, files: results.append(metrics))
    assert _CountingModule.calls == [(7 + i, store.n_genes, "here") for i in range(members)]
    assert results[0]["train_ae_loss"] == 0.25


def test_ae_mlp_trial_reports_pretraining_only_with_autoencoder_init(pbmc_store):
    from omicsweep.benchmark.trial import TrialContext, execute_trial
    from omicsweep.datasets import Store

    space = load_space(get_model("ae_mlp").space_file)
    context = TrialContext(store_path=str(pbmc_store), fingerprint=Store(pbmc_store).fingerprint, model="ae_mlp",
                           defaults={**space.defaults, **space.tiny, "max_epochs": 1}, seed=0)
    reported = {}
    for init in ("random", "autoencoder"):
        results = []
        execute_trial(context, {"init": init}, lambda metrics, files: results.append(metrics))
        reported[init] = results[-1]
    assert "train_ae_loss" not in reported["random"]
    assert np.isfinite(reported["autoencoder"]["train_ae_loss"])
    assert reported["random"]["val_loss"] != reported["autoencoder"]["val_loss"]
