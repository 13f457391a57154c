"""Linear baseline: scikit-learn logistic regression (L1 or L2), a strong baseline in published re-evaluations."""

from __future__ import annotations

from typing import Any

from omicsweep.models.base import ModelEntry, Task, register
from omicsweep.tasks import CELL_CLASSIFICATION, GENE_PAIR_IMAGE


def build(config: dict[str, Any], task: Task):
    from sklearn.linear_model import LogisticRegression

    penalty = config.get("penalty", "l2")
    return LogisticRegression(
        C=float(config["C"]),
        l1_ratio=1.0 if penalty == "l1" else 0.0,
        solver="saga" if penalty == "l1" else "lbfgs",
        max_iter=int(config.get("max_iter", 1000)),
        random_state=int(config.get("seed", 0)),
    )


register(
    ModelEntry(
        name="logreg",
        family="estimator",
        build=build,
        description="logistic regression (scikit-learn), L1 or L2, C searchable",
        role="baseline",
        tasks=(CELL_CLASSIFICATION, GENE_PAIR_IMAGE),  # pair images as flat pixel vectors
    )
)
