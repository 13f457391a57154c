"""Linear baseline: scikit-learn logistic regression (L1 or L2), a strong baseline in published re-evaluations.

It trains on the CSR split (benchmark/estimator_fit.py), so an epoch costs the split's non-zeros, not cells x
genes. L2 is one multinomial model (lbfgs). L1 is one-vs-rest liblinear (exact coordinate descent, one binary
model a class; scikit-learn's liblinear takes two classes only, so `OneVsRestClassifier` runs it per class):
on the Zheng-sorted PBMCs (8,863 genes) it reaches saga's test accuracy at tol 1e-4 (0.9193 both) in 1.8 s of
CPU instead of 71 s, where saga had not converged after 1000 epochs (perf/RESULTS.md, Baseline timings).
`solver: saga` keeps the multinomial L1 fit for comparison. class_weight balanced weighs each one-vs-rest
problem's two sides (scikit-learn's balanced weights of that binary problem).
"""

from __future__ import annotations

from typing import Any

from omicsweep.datasets.resample import class_weight_option
from omicsweep.errors import InputError
from omicsweep.models.base import ModelEntry, Task, register
from omicsweep.tasks import CELL_CLASSIFICATION, GENE_PAIR_IMAGE

SOLVERS = {"l1": ("liblinear", "saga"), "l2": ("lbfgs", "saga")}


def build(config: dict[str, Any], task: Task):
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    penalty = str(config.get("penalty", "l2"))
    solver = str(config.get("solver", "auto"))
    if penalty not in SOLVERS or solver not in ("auto", *SOLVERS[penalty]):
        raise InputError(f"logreg: penalty {penalty!r} with solver {solver!r}; penalties and their solvers: "
                         f"{SOLVERS} (auto: the first)")
    solver = SOLVERS[penalty][0] if solver == "auto" else solver
    model = LogisticRegression(
        C=float(config["C"]),
        l1_ratio=1.0 if penalty == "l1" else 0.0,
        solver=solver,
        tol=float(config.get("tol", 1.0e-4)),
        max_iter=int(config.get("max_iter", 1000)),
        random_state=int(config.get("seed", 0)),
    )
    if solver != "liblinear":
        return model  # estimator_fit's apply_class_weight sets class_weight on it
    if class_weight_option(config) == "balanced":
        model.set_params(class_weight="balanced")  # the wrapper has no class_weight of its own to set
    return OneVsRestClassifier(model, n_jobs=1)  # joblib's worker processes: 40 s of overhead on a 2 s fit


register(
    ModelEntry(
        name="logreg",
        family="estimator",
        build=build,
        description="logistic regression (scikit-learn), L1 (one-vs-rest liblinear) or L2 (lbfgs), C searchable",
        role="baseline",
        tasks=(CELL_CLASSIFICATION, GENE_PAIR_IMAGE),  # pair images as flat pixel vectors
    )
)
