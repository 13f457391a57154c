"""Study 002's FC classifier with optional autoencoder initialisation.

The encoder is the classifier's hidden stack ([Linear -> ReLU -> Dropout] x n_layers); the decoder mirrors it
(Linear back through the hidden widths to the genes, ReLU between, linear output). With init=autoencoder,
`pretrain` fits encoder + decoder to reconstruct the training profiles (MSE) for ae_epochs epochs, so the
classifier starts from the encoder's weights; with init=random it does nothing. The shared training loop calls
`pretrain(train_batches, config)` on any module that has it, then trains the classifier as usual.
The decoder is always built, so both init modes share one state_dict layout.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
from torch import nn

from omicsweep.errors import ConfigError
from omicsweep.models.base import ModelEntry, Task, register
from omicsweep.models.featurise import DENSE_KEY, as_inputs

INITS = ("random", "autoencoder")
MAX_LAYERS = 3
PRETRAIN_EPOCHS_FROM = 1_000_000  # epoch numbers handed to the loader during pretraining


class AutoencoderInitClassifier(nn.Module):
    def __init__(self, n_features: int, n_classes: int, *, hidden: Sequence[int] = (512, 256), dropout: float = 0.0,
                 init: str = "autoencoder"):
        super().__init__()
        if init not in INITS:
            raise ConfigError(f"ae_mlp: init={init!r}; use one of {', '.join(INITS)}")
        self.init = init
        widths = [n_features, *map(int, hidden)]
        encoder: list[nn.Module] = []
        for size_in, size_out in zip(widths[:-1], widths[1:]):
            encoder += [nn.Linear(size_in, size_out), nn.ReLU(), nn.Dropout(float(dropout))]
        self.encoder = nn.Sequential(*encoder)
        decoder: list[nn.Module] = []
        mirrored = widths[::-1]
        for i, (size_in, size_out) in enumerate(zip(mirrored[:-1], mirrored[1:])):
            decoder.append(nn.Linear(size_in, size_out))
            if i < len(mirrored) - 2:
                decoder.append(nn.ReLU())
        self.decoder = nn.Sequential(*decoder)
        self.head = nn.Linear(widths[-1], n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))

    @torch.no_grad()
    def reconstruction_loss(self, batches: Iterable) -> float:
        """Mean squared reconstruction error per value over `batches` (eval mode)."""
        was_training = self.training
        self.eval()
        total, count = 0.0, 0
        for batch, _ in batches:
            x = as_inputs(batch)[DENSE_KEY]  # the default featuriser's dense vector
            total += float(nn.functional.mse_loss(self.reconstruct(x), x, reduction="sum"))
            count += x.numel()
        self.train(was_training)
        return total / max(1, count)

    def pretrain(self, train_batches, config: dict[str, Any]) -> float | None:
        """Autoencoder pretraining (init=autoencoder): Adam on MSE for ae_epochs; returns the last epoch's mean loss."""
        if self.init != "autoencoder":
            return None
        params = [*self.encoder.parameters(), *self.decoder.parameters()]
        optimizer = torch.optim.Adam(params, lr=float(config.get("ae_lr") or config["lr"]))
        self.train()
        loss_mean = None
        for epoch in range(1, int(config.get("ae_epochs", 10)) + 1):
            if hasattr(train_batches, "set_epoch"):
                train_batches.set_epoch(PRETRAIN_EPOCHS_FROM + epoch)  # shuffles apart from the classifier's epochs
            loss_sum, seen = 0.0, 0
            for batch, _ in train_batches:
                x = as_inputs(batch)[DENSE_KEY]
                optimizer.zero_grad(set_to_none=True)
                loss = nn.functional.mse_loss(self.reconstruct(x), x)
                loss.backward()
                optimizer.step()
                loss_sum += loss.item() * len(x)
                seen += len(x)
            loss_mean = loss_sum / max(1, seen)
        return loss_mean


def hidden_sizes(config: dict[str, Any]) -> list[int]:
    n_layers = int(config["n_layers"])
    if not 1 <= n_layers <= MAX_LAYERS:
        raise ConfigError(f"ae_mlp: n_layers must be between 1 and {MAX_LAYERS}, got {n_layers}")
    missing = [f"size_{i}" for i in range(1, n_layers + 1) if f"size_{i}" not in config]
    if missing:
        raise ConfigError(f"ae_mlp: n_layers={n_layers} needs {', '.join(missing)} in the config")
    return [int(config[f"size_{i}"]) for i in range(1, n_layers + 1)]


def build(config: dict[str, Any], task: Task) -> nn.Module:
    return AutoencoderInitClassifier(
        task.n_features, task.n_classes, hidden=hidden_sizes(config), dropout=float(config.get("dropout", 0.0)),
        init=str(config.get("init", "autoencoder")),
    )


register(
    ModelEntry(
        name="ae_mlp",
        family="torch",
        build=build,
        description="FC classifier, optionally initialised from a mirrored autoencoder's encoder (study 002)",
    )
)
