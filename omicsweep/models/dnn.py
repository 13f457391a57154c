"""Study 004's deep classifier: [Linear -> ELU -> Dropout] x n_layers -> Linear, no normalisation layers.

Hidden widths come from the flat keys size_1 ... size_5; only the first n_layers are used, so a sweep can search
depth and widths with one flat space (004 searched widths in {5000, 2000, 1000, 500, 200, 100}).
"""

from __future__ import annotations

from typing import Any, Sequence

from torch import nn

from omicsweep.errors import ConfigError
from omicsweep.models.base import ModelEntry, Task, register

MAX_LAYERS = 5


class DeepClassifier(nn.Module):
    def __init__(self, n_features: int, n_classes: int, *, hidden: Sequence[int] = (5000, 2000, 500, 1000, 2000),
                 dropout: float = 0.1):
        super().__init__()
        layers: list[nn.Module] = []
        size = n_features
        for width in hidden:
            layers += [nn.Linear(size, int(width)), nn.ELU(), nn.Dropout(float(dropout))]
            size = int(width)
        layers.append(nn.Linear(size, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


def hidden_sizes(config: dict[str, Any]) -> list[int]:
    """[size_1, ..., size_n] for n = config['n_layers'] (1 to 5)."""
    n_layers = int(config["n_layers"])
    if not 1 <= n_layers <= MAX_LAYERS:
        raise ConfigError(f"dnn: n_layers must be between 1 and {MAX_LAYERS}, got {n_layers}")
    missing = [f"size_{i}" for i in range(1, n_layers + 1) if f"size_{i}" not in config]
    if missing:
        raise ConfigError(f"dnn: n_layers={n_layers} needs {', '.join(missing)} in the config")
    return [int(config[f"size_{i}"]) for i in range(1, n_layers + 1)]


def build(config: dict[str, Any], task: Task) -> nn.Module:
    return DeepClassifier(task.n_features, task.n_classes, hidden=hidden_sizes(config), dropout=config["dropout"])


register(
    ModelEntry(
        name="dnn",
        family="torch",
        build=build,
        description="deep fully-connected classifier with ELU and dropout, variable depth (study 004)",
    )
)
