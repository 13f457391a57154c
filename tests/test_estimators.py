"""Estimators train on CSR splits (datasets/split_matrix.py, benchmark/estimator_fit.py), never on a dense split,
and xgboost's state is its own UBJSON model, loaded only when omicsweep wrote it."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp

from omicsweep.datasets.loader import load_split
from omicsweep.datasets.split_matrix import sparse_safe, split_csr
from omicsweep.datasets.store import Store
from omicsweep.datasets.synth import write_synthetic
from omicsweep.datasets.transform import fit_transform_on_train
from omicsweep.errors import InputError
from omicsweep.models import Task, get_model


@pytest.fixture(scope="module")
def synth_store(tmp_path_factory) -> Store:
    out = tmp_path_factory.mktemp("estimators") / "synth.zarr"
    write_synthetic(out, cells=3000, genes=2000, nnz_per_cell=40, n_types=4, seed=0)
    return Store(out)


@pytest.mark.parametrize("scaling", ["minmax", "zscore", "none"])
def test_split_csr_is_the_shift_free_transform_of_the_dense_split(synth_store, scaling):
    transform = fit_transform_on_train(synth_store, scaling)
    x, y = split_csr(synth_store, "val", transform)
    dense, dense_y = load_split(synth_store, "val", sparse_safe(transform))
    assert sp.isspmatrix_csr(x) and x.dtype == np.float32 and x.shape == dense.shape
    np.testing.assert_allclose(x.toarray(), dense, rtol=1e-6)
    np.testing.assert_array_equal(y, dense_y)
    if scaling == "minmax":  # counts: every gene's training minimum is 0, so min-max itself is unchanged
        np.testing.assert_allclose(x.toarray(), load_split(synth_store, "val", transform)[0], rtol=1e-6)


def _fit(store: Store, model: str, config: dict) -> tuple[dict, dict]:
    from omicsweep.benchmark.training import FITTERS, FitInputs

    inputs = FitInputs(store=store, transform=fit_transform_on_train(store, "minmax"),
                       task=Task(n_features=store.n_genes, n_classes=len(store.classes)),
                       config={**config, "seed": 0}, seed=0, metric="accuracy")
    reported = {}
    FITTERS[get_model(model).family](get_model(model), inputs, lambda m, f: reported.update(metrics=m, files=f))
    return reported["metrics"], reported["files"]


def test_fitting_logreg_never_allocates_a_dense_split(synth_store):
    """The training split dense would be 2100 x 2000 float32 (16.8 MB); its CSR is 2100 x 40 values (0.7 MB).
    The whole fit and scoring (numpy's allocations, which tracemalloc sees) stays under a quarter of the dense
    (the code before CSR concatenated the dense split: a peak above it)."""
    dense_bytes = len(synth_store.split_indices("train")) * synth_store.n_genes * 4
    _fit(synth_store, "logreg", {"C": 1.0, "penalty": "l1", "max_iter": 1})  # imports and caches: not the fit's
    tracemalloc.start()
    try:
        metrics, _ = _fit(synth_store, "logreg", {"C": 1.0, "penalty": "l1", "max_iter": 100})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < dense_bytes / 4, f"peak {peak / 1e6:.1f} MB vs the dense split's {dense_bytes / 1e6:.1f} MB"
    assert metrics["test_accuracy"] > 0.9  # four well separated types


def test_xgboost_trial_checkpoint_reloads_and_predicts_its_test_split(synth_store, tmp_path):
    from omicsweep.models.estimator_state import load_estimator, state_file
    from omicsweep.models.xgboost_model import XGBoostClassifier

    metrics, files = _fit(synth_store, "xgboost", {"n_estimators": 100, "max_depth": 6})
    assert metrics["test_accuracy"] > 0.9
    name = state_file(XGBoostClassifier)
    assert name in files and "estimator.skops" not in files
    for file_name, write in files.items():
        write(str(tmp_path / file_name))
    restored = load_estimator(tmp_path / name, XGBoostClassifier)
    x, _ = split_csr(synth_store, "test", fit_transform_on_train(synth_store, "minmax"))
    saved = np.load(tmp_path / "test_predictions.npz")
    np.testing.assert_allclose(restored.predict_proba(x), saved["proba"], rtol=1e-6)
    # dense rows (as predict's batches are) score the same: zeros are missing values in both
    np.testing.assert_allclose(restored.predict_proba(x.toarray()), saved["proba"], rtol=1e-6)


def test_xgboost_learns_with_a_class_absent_from_training():
    from omicsweep.benchmark.estimator_fit import full_proba

    rng = np.random.default_rng(0)
    y = np.repeat([0, 2], 30)  # class 1 of 3 is absent from this split
    x = sp.csr_matrix((rng.random((60, 10)) < 0.3) * (1.0 + 3.0 * y[:, None]), dtype=np.float32)
    model = get_model("xgboost").build({"n_estimators": 10, "max_depth": 2}, Task(n_features=10, n_classes=3))
    proba = full_proba(model.fit(x, y), x, 3)
    assert proba.shape == (60, 3) and np.all(proba[:, 1] == 0)
    assert (proba.argmax(axis=1) == y).mean() > 0.9


def test_xgboost_state_that_omicsweep_did_not_write_is_refused(tmp_path):
    import xgboost

    from omicsweep.models.xgboost_model import XGBoostClassifier

    (tmp_path / "text.ubj").write_text("not a model\n")
    foreign = xgboost.train({"objective": "binary:logistic"}, xgboost.DMatrix(np.eye(4), label=[0, 1, 0, 1]), 2)
    (tmp_path / "foreign.ubj").write_bytes(bytes(foreign.save_raw(raw_format="ubj")))
    for name, says in (("text.ubj", "not an xgboost model"), ("foreign.ubj", "omicsweep_classes"),
                       ("absent.ubj", "no such file")):
        with pytest.raises(InputError, match=says):
            XGBoostClassifier.load_state(tmp_path / name)


def test_xgboost_device_auto_is_cpu_without_a_cuda_build_or_gpu():
    import torch
    import xgboost

    from omicsweep.models.xgboost_model import resolve_device

    expected = "cuda" if xgboost.build_info().get("USE_CUDA") and torch.cuda.is_available() else "cpu"
    assert resolve_device("auto") == expected
    assert resolve_device("cpu") == "cpu"
