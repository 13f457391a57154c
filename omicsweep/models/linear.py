"""Linear baseline: scikit-learn logistic regression (L1 or L2), a strong baseline in published re-evaluations.

It trains on the CSR split (benchmark/estimator_fit.py), so an epoch costs the split's non-zeros, not cells x
genes. L2 is one multinomial model (lbfgs). L1 is one-vs-rest liblinear (exact coordinate descent, one binary
model a class; scikit-learn's liblinear takes two classes only, so `OneVsRestClassifier` runs it per class):
on the Zheng-sorted PBMCs (8,863 genes) it reaches saga's test accuracy at tol 1e-4 (0.9193 both) in 1.8 s of
CPU instead of 71 s, where saga had not converged after 1000 epochs (perf/RESULTS.md, Baseline timings).
`solver: saga` keeps the multinomial L1 fit for comparison. class_weight balanced weighs each one-vs-rest
problem's two sides (scikit-learn's balanced weights of that binary problem).

liblinear's cost is a copy of the training split: `solver: auto` is resolved per trial by size (`resolve`, run
by `trial.trial_config`, so the run's params name the solver it fitted with): L1 is liblinear while that copy's
estimate stays within `liblinear_budget_mb`, saga (no copy) above it, e.g. on a 200k x 20k store.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from omicsweep.datasets.resample import (
    class_weight_option, repeat_counts, resample_option, resample_rng, resample_target,
)
from omicsweep.errors import ConfigError, InputError
from omicsweep.models.base import ModelEntry, Task, register
from omicsweep.tasks import CELL_CLASSIFICATION, GENE_PAIR_IMAGE

SOLVERS = {"l1": ("liblinear", "saga"), "l2": ("lbfgs", "saga")}
# What liblinear one-vs-rest adds to the float32 training CSR: scikit-learn's float64 CSR copy and liblinear's own
# feature nodes, 31 bytes a training non-zero (perf/RESULTS.md, "L1 logistic regression": peak RSS 939 MB vs
# saga's 543 MB on the synthetic 20k x 20,000 store's 13.2M training non-zeros)
LIBLINEAR_BYTES_PER_NNZ = 31
LIBLINEAR_BUDGET_MB = 2048  # default of config `liblinear_budget_mb`: above it, `solver: auto` fits L1 with saga


def l1_solver(train_nnz: int, budget_mb: float = LIBLINEAR_BUDGET_MB) -> str:
    """`solver: auto`'s L1 solver for a training split of `train_nnz` non-zeros: liblinear within the budget."""
    return "liblinear" if int(train_nnz) * LIBLINEAR_BYTES_PER_NNZ <= float(budget_mb) * 2**20 else "saga"


def resolve(config: dict[str, Any], open_store: Callable[[], Any]) -> dict[str, Any]:
    """`config` with `solver: auto` made the solver the trial fits with (L2: lbfgs; L1: `l1_solver` of the
    store's training non-zeros, `open_store()` called only then); an explicit solver is kept."""
    penalty = str(config.get("penalty", "l2"))
    if str(config.get("solver", "auto")) != "auto" or penalty not in SOLVERS:
        return config  # build names a bad penalty or solver
    if penalty == "l2":
        return {**config, "solver": SOLVERS["l2"][0]}
    budget = config.get("liblinear_budget_mb", LIBLINEAR_BUDGET_MB)
    try:
        budget = float(budget)
    except (TypeError, ValueError):
        raise ConfigError(f"logreg: liblinear_budget_mb {budget!r} is not a number of MB") from None
    return {**config, "solver": l1_solver(training_nnz(open_store(), config), budget)}


_NNZ: dict[tuple, int] = {}  # (store fingerprint, fold, resampling, seed, target) -> training non-zeros


def training_nnz(store, config: dict[str, Any]) -> int:
    """The non-zeros of the training split the fit will see: resampled (over, under) as estimator_fit does, with
    the same counts; smote counted as over (its new rows are about as dense as the ones they are drawn from).
    Computed once per store, fold and resampling in a process: every trial's config resolves through it, on the
    driver and in the worker, and the count reads the whole store's row pointers."""
    key = (store.fingerprint, config.get("fold"), resample_option(config), int(config.get("seed", 0)),
           repr(resample_target(config)))
    if key not in _NNZ:
        _NNZ[key] = _training_nnz(store, config)
    return _NNZ[key]


def _training_nnz(store, config: dict[str, Any]) -> int:
    rows = store.split_indices("train")
    row_nnz = np.diff(np.asarray(store.indptr, dtype=np.int64))[rows]
    method = resample_option(config)
    if method == "none":
        return int(row_nnz.sum())
    counts = repeat_counts(store.labels()[rows], "over" if method == "smote" else method,
                           resample_rng(int(config.get("seed", 0)), 0), target=resample_target(config))
    return int((row_nnz * counts).sum())


def build(config: dict[str, Any], task: Task):
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    penalty = str(config.get("penalty", "l2"))
    solver = str(config.get("solver", "auto"))
    if penalty not in SOLVERS or solver not in ("auto", *SOLVERS[penalty]):
        raise InputError(f"logreg: penalty {penalty!r} with solver {solver!r}; penalties and their solvers: "
                         f"{SOLVERS} (auto: the first; a trial resolves it by size first, see `resolve`)")
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
        resolve=resolve,
        description="logistic regression (scikit-learn), L1 (one-vs-rest liblinear) or L2 (lbfgs), C searchable",
        role="baseline",
        tasks=(CELL_CLASSIFICATION, GENE_PAIR_IMAGE),  # pair images as flat pixel vectors
    )
)
