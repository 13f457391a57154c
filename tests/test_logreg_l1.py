"""L1 logistic regression is one-vs-rest liblinear (models/linear.py): it converges where saga does not in the same
budget, its checkpoint reloads through skops, and class_weight reaches the per-class models."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

from omicsweep.datasets.split_matrix import split_csr
from omicsweep.datasets.store import Store
from omicsweep.datasets.synth import write_synthetic
from omicsweep.datasets.transform import fit_transform_on_train
from omicsweep.errors import InputError
from omicsweep.models import Task, get_model


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    out = tmp_path_factory.mktemp("logreg_l1") / "synth.zarr"
    write_synthetic(out, cells=1500, genes=1000, nnz_per_cell=60, n_types=4, seed=1)
    return Store(out)


def _fit(store: Store, config: dict) -> tuple[dict, dict]:
    from omicsweep.benchmark.training import FITTERS, FitInputs

    inputs = FitInputs(store=store, transform=fit_transform_on_train(store, "minmax"),
                       task=Task(n_features=store.n_genes, n_classes=len(store.classes)),
                       config={"C": 1.0, "penalty": "l1", **config, "seed": 0}, seed=0, metric="accuracy")
    got = {}
    entry = get_model("logreg")
    FITTERS[entry.family](entry, inputs, lambda m, f: got.update(metrics=m, files=f))
    return got["metrics"], got["files"]


def _converged(store: Store, config: dict) -> tuple[bool, float]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics, _ = _fit(store, config)
    return not any(issubclass(w.category, ConvergenceWarning) for w in caught), metrics["test_accuracy"]


def test_l1_converges_in_a_budget_where_saga_does_not(store):
    converged, accuracy = _converged(store, {"max_iter": 30})
    assert converged and accuracy > 0.9
    saga_converged, _ = _converged(store, {"max_iter": 30, "solver": "saga"})
    assert not saga_converged  # the multinomial saga fit (the old default) in the same 30 passes


def test_l1_checkpoint_reloads_and_predicts_its_test_split(store, tmp_path):
    from sklearn.multiclass import OneVsRestClassifier

    from omicsweep.models.estimator_state import load_estimator, state_file

    _, files = _fit(store, {})
    for name, write in files.items():
        write(str(tmp_path / name))
    kind = type(get_model("logreg").build({"C": 1.0, "penalty": "l1"}, Task(n_features=1000, n_classes=4)))
    assert kind is OneVsRestClassifier
    restored = load_estimator(tmp_path / state_file(kind), kind)
    x, _ = split_csr(store, "test", fit_transform_on_train(store, "minmax"))
    np.testing.assert_allclose(restored.predict_proba(x), np.load(tmp_path / "test_predictions.npz")["proba"])


def test_l1_class_weight_and_bad_solver():
    build, task = get_model("logreg").build, Task(n_features=10, n_classes=3)
    assert build({"C": 1.0, "penalty": "l1", "class_weight": "balanced"}, task).estimator.class_weight == "balanced"
    assert build({"C": 1.0, "penalty": "l1"}, task).estimator.class_weight is None
    assert build({"C": 1.0, "penalty": "l2"}, task).solver == "lbfgs"
    with pytest.raises(InputError, match="liblinear"):
        build({"C": 1.0, "penalty": "l2", "solver": "liblinear"}, task)
