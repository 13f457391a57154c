"""Ensembles of one torch architecture (study 004: five members, probabilities averaged).

Config key `ensemble` (int, default 1) applies to every torch model. The shared training loop trains the
members side by side (seeds seed + i) and evaluates and checkpoints them as one `EnsembleClassifier`, whose
output is the log of the averaged probabilities: softmax of it is the average, cross-entropy on it is the
ensemble's loss, so everything downstream treats an ensemble like a single model.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from omicsweep.errors import ConfigError
from omicsweep.models.base import ModelEntry, Task


class EnsembleClassifier(nn.Module):
    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor | None = None, **inputs: torch.Tensor) -> torch.Tensor:
        """The members' averaged probabilities (as log) for featurised inputs (keyword arguments; `x` positional
        for the default featuriser)."""
        from omicsweep.models.featurise import run_model

        inputs = inputs if x is None else {"x": x, **inputs}
        proba = torch.stack([torch.softmax(run_model(member, inputs), dim=1) for member in self.members]).mean(dim=0)
        return torch.log(proba.clamp_min(torch.finfo(proba.dtype).tiny))


def ensemble_size(config: dict[str, Any]) -> int:
    """config['ensemble'] as a positive int (absent or null: 1)."""
    value = config.get("ensemble")
    if value is None:
        return 1
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not number.is_integer() or number < 1:
        raise ConfigError(f"config ensemble={value!r}: expected a whole number of members >= 1")
    return int(number)


def build_torch_model(entry: ModelEntry, config: dict[str, Any], task: Task) -> nn.Module:
    """The module a torch checkpoint (model.pt) holds: the entry's model, or an ensemble of `ensemble` of them."""
    n_members = ensemble_size(config)
    if n_members == 1:
        return entry.build(config, task)
    return EnsembleClassifier([entry.build(config, task) for _ in range(n_members)])
