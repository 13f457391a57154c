"""logreg's `solver: auto` by size (models/linear.py): L1 is liblinear while its estimated copy of the training split
stays under the budget and saga above it; the trial's configuration names the solver it fitted with, so the run's
params (recorded from `trial_config`) and its checkpoint say which one it was."""

from __future__ import annotations

import json

import pytest

from omicsweep.datasets.store import Store
from omicsweep.datasets.synth import write_synthetic


def test_l1_solver_by_estimated_liblinear_memory():
    from omicsweep.models.linear import LIBLINEAR_BUDGET_MB, LIBLINEAR_BYTES_PER_NNZ, l1_solver

    assert LIBLINEAR_BYTES_PER_NNZ == 31 and LIBLINEAR_BUDGET_MB == 2048
    assert l1_solver(2_140 * 900) == "liblinear"        # the Zheng-sorted PBMCs
    assert l1_solver(13_200_000) == "liblinear"         # the synthetic 20k x 20,000 store: 0.39 GB
    assert l1_solver(140_000_000) == "saga"             # the 200k x 20,000 store: 4.0 GB over the 2 GB budget
    limit = LIBLINEAR_BUDGET_MB * 2**20 // LIBLINEAR_BYTES_PER_NNZ
    assert l1_solver(limit) == "liblinear" and l1_solver(limit + 1) == "saga"
    assert l1_solver(140_000_000, budget_mb=8192) == "liblinear"


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory) -> Store:
    out = tmp_path_factory.mktemp("logreg_solver") / "synth.zarr"
    write_synthetic(out, cells=300, genes=200, nnz_per_cell=20, n_types=3, seed=2)
    return Store(out)


def _context(store: Store, **defaults):
    from omicsweep.benchmark.space import load_space
    from omicsweep.benchmark.trial import TrialContext
    from omicsweep.models import get_model

    space = load_space(get_model("logreg").space_file)
    return TrialContext(store_path=str(store.path), fingerprint=store.fingerprint, model="logreg",
                        defaults={**space.defaults, **defaults}, seed=0, metric="accuracy")


def test_trial_config_names_the_solver_auto_chose(tiny_store):
    from omicsweep.benchmark.trial import trial_config

    context = _context(tiny_store)
    assert trial_config(context, {"penalty": "l1"})["solver"] == "liblinear"
    assert trial_config(context, {"penalty": "l2"})["solver"] == "lbfgs"
    assert trial_config(context, {"penalty": "l1", "solver": "saga"})["solver"] == "saga"  # --set solver wins
    tight = _context(tiny_store, liblinear_budget_mb=1e-6)  # a budget below the tiny split's copy
    assert trial_config(tight, {"penalty": "l1"})["solver"] == "saga"


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # saga in 10 epochs
def test_a_trial_over_the_budget_fits_saga_and_its_checkpoint_says_so(tiny_store, tmp_path, one_thread):
    from sklearn.linear_model import LogisticRegression

    from omicsweep.benchmark.trial import execute_trial
    from omicsweep.models.estimator_state import load_estimator, state_file

    got = {}
    context = _context(tiny_store, liblinear_budget_mb=1e-6, max_iter=10)
    execute_trial(context, {"penalty": "l1", "C": 1.0}, lambda m, f: got.update(metrics=m, files=f))
    for name, write in got["files"].items():
        write(str(tmp_path / name))
    assert json.loads((tmp_path / "trial.json").read_text())["config"]["solver"] == "saga"
    fitted = load_estimator(tmp_path / state_file(LogisticRegression), LogisticRegression)
    assert fitted.solver == "saga" and got["metrics"]["test_accuracy"] > 0.5


@pytest.mark.slow
def test_the_sweeps_logreg_trials_record_a_concrete_solver(swept):
    import mlflow

    from omicsweep.reports.tracking import default_tracking_uri
    from omicsweep.schema import MODEL_TAG

    out, _ = swept  # the shared session sweep: no run of its own
    client = mlflow.MlflowClient(tracking_uri=default_tracking_uri(out))
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    logreg = [r for r in runs if r.data.tags.get(MODEL_TAG) == "logreg" and "penalty" in r.data.params]
    assert logreg
    for run in logreg:
        expected = {"l1": "liblinear", "l2": "lbfgs"}[run.data.params["penalty"]]  # pbmc68k: small
        assert run.data.params["solver"] == expected


@pytest.mark.parametrize("resample", ["none", "over", "under"])
def test_training_nnz_is_the_resampled_split_the_fit_sees(tiny_store, resample):
    from omicsweep.datasets.resample import resample_arrays
    from omicsweep.datasets.split_matrix import split_csr
    from omicsweep.datasets.transform import fit_transform_on_train
    from omicsweep.models.linear import training_nnz

    config = {"resample": resample, "seed": 3}
    x, y = split_csr(tiny_store, "train", fit_transform_on_train(tiny_store, "minmax"))
    x, _ = resample_arrays(x, y, config, seed=3)  # as estimator_fit resamples the training split
    assert training_nnz(tiny_store, config) == x.nnz
