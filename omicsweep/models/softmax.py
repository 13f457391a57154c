"""Study 004's softmax-regression baseline: one Linear layer from the input to the class logits.

The shared training loop applies the softmax through its cross-entropy loss; this is multinomial logistic regression
trained by the torch loop (Adam, minibatches) rather than by scikit-learn's solvers (see `logreg`).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from omicsweep.models.base import ModelEntry, Task, register


class SoftmaxRegression(nn.Module):
    def __init__(self, n_features: int, n_classes: int):
        super().__init__()
        self.linear = nn.Linear(n_features, n_classes)

    def forward(self, x):
        return self.linear(x)


def build(config: dict[str, Any], task: Task) -> nn.Module:
    return SoftmaxRegression(task.n_features, task.n_classes)


register(
    ModelEntry(
        name="softmax",
        family="torch",
        build=build,
        description="softmax regression: one Linear layer to the classes, torch-trained (study 004 baseline)",
    )
)
