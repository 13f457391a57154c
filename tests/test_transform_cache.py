"""The fitted transform is computed once per (store fingerprint, fold, scaling) and reused (issue 15, item 5):
every trial of a sweep, a seed re-run and `reproduce` read the run folder's transforms/ instead of streaming the
training split again, and train exactly as with a fresh fit."""

from __future__ import annotations

import numpy as np
import pytest

from omicsweep.datasets import transform as transform_module
from omicsweep.datasets.store import Store
from omicsweep.datasets.transform import fit_transform_on_train, load_or_fit_transform, transform_cache_file
from omicsweep.schema import RESOURCE_KEYS, TRAIN_SECONDS, TRANSFORM_CACHE, TRIAL_OVERHEAD

TIMINGS = {"epoch_time_s", *RESOURCE_KEYS}


def _same_transform(a, b) -> None:
    assert (a.log1p, a.scaling) == (b.log1p, b.scaling)
    for name in ("minimum", "maximum", "mean", "std"):
        left, right = getattr(a, name), getattr(b, name)
        assert (left is None) == (right is None), name
        if left is not None:
            np.testing.assert_array_equal(left, right, err_msg=name)


@pytest.fixture
def counted_fits(monkeypatch):
    """Counts the real fits (the real function runs: this only counts its calls)."""
    calls = []
    real = transform_module.fit_transform_on_train

    def counting(store, scaling="minmax"):
        calls.append(scaling)
        return real(store, scaling)

    monkeypatch.setattr(transform_module, "fit_transform_on_train", counting)
    return calls


@pytest.mark.parametrize("scaling", ["minmax", "zscore"])
def test_second_use_reads_the_cache_file_and_equals_a_fresh_fit(pbmc_store, tmp_path, counted_fits, monkeypatch,
                                                                scaling):
    store = Store(pbmc_store)
    first = load_or_fit_transform(store, scaling, tmp_path)
    path = transform_cache_file(tmp_path, store, scaling)
    assert path.is_file() and path.name == f"{store.fingerprint.replace(':', '-')}-all-{scaling}.npz"
    written = path.stat().st_mtime_ns
    reads = []
    real_read = Store.read_rows
    monkeypatch.setattr(Store, "read_rows", lambda self, *a, **k: reads.append(a) or real_read(self, *a, **k))
    second = load_or_fit_transform(Store(pbmc_store), scaling, tmp_path)
    assert counted_fits == [scaling] and reads == []  # the second use streamed nothing
    assert path.stat().st_mtime_ns == written
    fresh = fit_transform_on_train(Store(pbmc_store), scaling)
    _same_transform(first, fresh)
    _same_transform(second, fresh)
    assert not list(tmp_path.glob(".*partial*"))  # written atomically: no temporary sibling left behind


def test_each_fold_and_scaling_has_its_own_file_and_a_mismatched_file_is_refitted(pbmc_store, tmp_path, counted_fits):
    store = Store(pbmc_store)
    load_or_fit_transform(store, "minmax", tmp_path)
    load_or_fit_transform(store, "zscore", tmp_path)
    assert counted_fits == ["minmax", "zscore"]
    path = transform_cache_file(tmp_path, store, "minmax")
    np.savez(path, log1p=np.array(False), minimum=np.zeros(3), maximum=np.ones(3), scaling=np.array("minmax"))
    refitted = load_or_fit_transform(store, "minmax", tmp_path)
    assert len(counted_fits) == 3 and len(refitted.minimum) == store.n_genes
    _same_transform(refitted, fit_transform_on_train(store, "minmax"))


def _trial_results(store_path, cache) -> list[dict]:
    from omicsweep.benchmark.space import load_space
    from omicsweep.benchmark.trial import TrialContext, execute_trial, with_resources
    from omicsweep.models import get_model

    space = load_space(get_model("mlp").space_file)
    context = TrialContext(
        store_path=str(store_path), fingerprint=Store(store_path).fingerprint, model="mlp",
        defaults={**space.defaults, **space.tiny, "max_epochs": 2}, seed=0, metric="accuracy",
        transform_cache=None if cache is None else str(cache),
    )
    results: list[dict] = []
    execute_trial(context, {"scaling": "zscore"}, with_resources(lambda metrics, files: results.append(metrics)))
    return results


def _comparable(results: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in results]


def test_trials_fit_once_and_train_exactly_as_without_the_cache(pbmc_store, tmp_path, counted_fits):
    uncached = _trial_results(pbmc_store, None)
    assert counted_fits == ["zscore"]
    first, second = _trial_results(pbmc_store, tmp_path), _trial_results(pbmc_store, tmp_path)
    assert counted_fits == ["zscore", "zscore"]  # the cached trials fitted once between them
    assert _comparable(first) == _comparable(uncached) and _comparable(second) == _comparable(uncached)
    for result in second:  # every result says how long it trained and what the rest of the trial cost
        assert 0 < result[TRAIN_SECONDS] <= result["trial_wall_s"]
        assert result[TRIAL_OVERHEAD] == pytest.approx(result["trial_wall_s"] - result[TRAIN_SECONDS])
    assert second[1][TRAIN_SECONDS] > second[0][TRAIN_SECONDS]  # cumulative over the fit loop


def test_a_sweep_keeps_its_fitted_transform_in_the_run_folder_and_logs_train_s(swept, pbmc_store):
    from mlflow import MlflowClient

    from omicsweep.reports.tracking import default_tracking_uri
    from omicsweep.schema import MODEL_TAG, ROLE_TAG, TRIAL_ROLE

    run_folder, _ = swept
    store = Store(pbmc_store)
    path = transform_cache_file(run_folder / TRANSFORM_CACHE, store, "minmax")
    assert path.is_file()
    with np.load(path, allow_pickle=False) as arrays:
        cached = transform_module.ExpressionTransform.from_arrays(arrays)
    _same_transform(cached, fit_transform_on_train(store, "minmax"))
    client = MlflowClient(default_tracking_uri(run_folder))
    runs = [run for experiment in client.search_experiments() for run in client.search_runs([experiment.experiment_id])
            if run.data.tags.get(ROLE_TAG) == TRIAL_ROLE and run.data.tags.get(MODEL_TAG) == "mlp"]
    assert runs
    for run in runs:
        metrics = run.data.metrics
        assert metrics[TRAIN_SECONDS] > 0
        assert metrics[TRIAL_OVERHEAD] == pytest.approx(metrics["trial_wall_s"] - metrics[TRAIN_SECONDS])
