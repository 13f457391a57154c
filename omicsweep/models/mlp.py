"""Study 000's fully-connected classifier: [Linear -> BatchNorm -> ReLU -> Dropout] x layers -> Linear."""

from __future__ import annotations

from typing import Any

from torch import nn

from omicsweep.models.base import ModelEntry, Task, register


class FullyConnectedClassifier(nn.Module):
    def __init__(self, n_features: int, n_classes: int, *, n_layers: int = 2, width: int = 8192, dropout: float = 0.2):
        super().__init__()
        layers: list[nn.Module] = []
        size = n_features
        for _ in range(int(n_layers)):
            layers += [nn.Linear(size, int(width)), nn.BatchNorm1d(int(width)), nn.ReLU(), nn.Dropout(float(dropout))]
            size = int(width)
        layers.append(nn.Linear(size, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


def build(config: dict[str, Any], task: Task) -> nn.Module:
    return FullyConnectedClassifier(
        task.n_features, task.n_classes, n_layers=config["n_layers"], width=config["width"], dropout=config["dropout"]
    )


register(
    ModelEntry(
        name="mlp",
        family="torch",
        build=build,
        description="fully-connected classifier with BatchNorm and dropout (study 000)",
    )
)
