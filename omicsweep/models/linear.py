"""Linear baseline: scikit-learn logistic regression (L1 or L2), a strong baseline in published re-evaluations.

It trains on the CSR split (benchmark/estimator_fit.py): saga (L1) and lbfgs (L2) take sparse input, so an epoch
costs the split's non-zeros, not cells x genes."""

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
        # saga's tolerance: 1e-3 (logreg.yaml) instead of scikit-learn's 1e-4 (perf/RESULTS.md, baseline timings)
        tol=float(config.get("tol", 1.0e-4)),
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
