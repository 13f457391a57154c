"""The sweep's searcher, ASHA and selection rank trials by one number: `best_val`, the best validation value so
far. The searcher is driven here as Tune drives it (set_search_properties, suggest, on_trial_result,
on_trial_complete with the trial's last result), without Tune trials."""

from __future__ import annotations

from pathlib import Path

import pytest

from omicsweep.benchmark.resume import PriorTrial, SweepHistory
from omicsweep.benchmark.space import Dimension, SearchSpace
from omicsweep.benchmark.sweep import SEARCH_METRIC, SweepRequest, _open_sweep, _search_alg, tune_config
from omicsweep.benchmark.trial import TrialContext

SPACE = SearchSpace(
    path=Path("tiny.yaml"), defaults={"max_epochs": 3},
    dimensions=(Dimension("lr", "loguniform", (1e-4, 1e-1)), Dimension("width", "choice", (8, 16, 32))),
)


def _request(tmp_path: Path, *, concurrency: int = 1, seed: int = 0) -> SweepRequest:
    return SweepRequest(dataset="toy", store_path=tmp_path / "toy.zarr", fingerprint="sha256:toy", model="mlp",
                        space=SPACE, trials=20, concurrency=concurrency, seed=seed, metric="accuracy",
                        run_folder=tmp_path / "run")


def _context() -> TrialContext:
    return TrialContext(store_path="toy.zarr", fingerprint="sha256:toy", model="mlp", defaults=SPACE.defaults)


def _tuned(request: SweepRequest, history: SweepHistory | None = None):
    """The run's TuneConfig with its searcher and scheduler told the metric and mode, as Tune tells them."""
    dims = request.space.to_tune()
    config = tune_config(request, _context(), dims, history, num_samples=request.trials)
    config.search_alg.set_search_properties(config.metric, config.mode, dims)
    config.scheduler.set_search_properties(config.metric, config.mode)
    return config


def _run_trial(searcher, trial_id: str, vals: list[float]) -> dict:
    """Propose a configuration, report one result per epoch (val, best val so far), complete it."""
    params = searcher.suggest(trial_id)
    best, result = float("-inf"), {}
    for epoch, val in enumerate(vals, start=1):
        best = max(best, val)
        result = {"training_iteration": epoch, "epoch": epoch, "val_accuracy": val, "best_val": best}
        searcher.on_trial_result(trial_id, result)
    searcher.on_trial_complete(trial_id, result=result)
    return params


def _study(config):
    return config.search_alg.searcher._ot_study


def test_searcher_is_told_the_best_value_so_far_not_the_last_epochs(tmp_path):
    config = _tuned(_request(tmp_path))
    _run_trial(config.search_alg, "t0", [0.9, 0.5])
    (trial,) = _study(config).trials
    assert trial.value == 0.9
    assert trial.intermediate_values == {1: 0.9, 2: 0.9}


def test_tune_and_asha_rank_trials_by_best_val(tmp_path):
    config = _tuned(_request(tmp_path))
    assert (config.metric, config.mode) == ("best_val", "max")
    assert (config.scheduler._metric, config.scheduler._mode) == ("best_val", "max")


def test_resumed_study_holds_each_trials_best_val(tmp_path):
    history = SweepHistory("parent", [
        PriorTrial("a", "trial", "FINISHED", {"lr": 1e-3, "width": 16}, {"val_accuracy": 0.5, "best_val": 0.9}),
        PriorTrial("b", "trial", "FAILED", {"lr": 1e-2, "width": 8}, {}),
    ])
    config = _tuned(_request(tmp_path), history)
    assert [t.value for t in _study(config).trials] == [0.9, None]


def test_tpe_proposals_after_start_up_follow_the_reported_values(tmp_path):
    """The same seed gives the same ten random start-up configurations; TPE's next proposals then depend on
    the values those trials reported (here: best at the largest lr versus best at the smallest)."""
    probe = _tuned(_request(tmp_path)).search_alg.searcher  # past the ConcurrencyLimiter: ten pending proposals
    lrs = [probe.suggest(f"t{i}")["lr"] for i in range(10)]
    rank = {i: sorted(lrs).index(lr) / 9 for i, lr in enumerate(lrs)}  # 0 at the smallest lr, 1 at the largest

    def proposals(value_of) -> tuple[list[dict], list[dict]]:
        limited = _tuned(_request(tmp_path)).search_alg
        start = [_run_trial(limited, f"t{i}", [0.1, value_of(i)]) for i in range(10)]
        return start, [limited.searcher.suggest(f"n{i}") for i in range(3)]

    start_up, after_up = proposals(lambda i: 0.2 + 0.7 * rank[i])
    start_down, after_down = proposals(lambda i: 0.9 - 0.7 * rank[i])
    assert start_up == start_down and [s["lr"] for s in start_up] == lrs
    assert after_up != after_down
    mean_lr = lambda props: sum(p["lr"] for p in props) / len(props)  # noqa: E731
    assert mean_lr(after_up) > mean_lr(after_down)  # TPE moved towards the better end each time


def test_constant_liar_for_concurrent_trials_only(tmp_path):
    dims = SPACE.to_tune()
    assert _search_alg(_request(tmp_path, concurrency=4), dims, None).searcher._sampler._constant_liar is True
    assert _search_alg(_request(tmp_path, concurrency=1), dims, None).searcher._sampler._constant_liar is False


def test_concurrent_proposals_repeat_per_seed(tmp_path):
    """With constant liar and trials still running, the same seed still proposes the same configurations."""
    def pending(seed: int) -> list[dict]:
        searcher = _tuned(_request(tmp_path, concurrency=4, seed=seed)).search_alg
        for i in range(10):
            _run_trial(searcher, f"t{i}", [0.5 + 0.04 * i])
        return [searcher.suggest(f"p{i}") for i in range(4)]

    first = pending(3)
    assert first == pending(3) and first != pending(4)
    assert len({(p["lr"], p["width"]) for p in first}) == 4


def test_parent_run_records_the_searcher(tmp_path):
    from mlflow import MlflowClient

    from omicsweep.reports.tracking import MlflowRecorder, default_tracking_uri

    request = _request(tmp_path, concurrency=2, seed=5)
    uri = default_tracking_uri(tmp_path)
    recorder = MlflowRecorder(uri, artifact_root=tmp_path / "artifacts")
    _open_sweep(request, recorder, _context(), "toy-mlp")
    params = MlflowClient(uri).get_run(recorder.parent_id).data.params
    assert params["searcher"] == "optuna"
    assert params["searcher.sampler"] == "TPESampler"
    assert params["searcher.constant_liar"] == "true"
    assert params["searcher.seed"] == "5"
    assert params["searcher.metric"] == "best_val"


@pytest.mark.parametrize("model", ["mlp", "logreg"])  # a torch model (one report per epoch) and an estimator (one)
def test_every_result_carries_the_best_val_so_far(model, pbmc_store):
    """Tune checks the metric is in every result; here it is also the running best of the validation metric."""
    from omicsweep.benchmark.space import load_space
    from omicsweep.benchmark.trial import execute_trial
    from omicsweep.datasets import open_store
    from omicsweep.models import get_model

    torch_model = get_model(model).family == "torch"
    space = load_space(get_model(model).space_file)
    defaults = {**space.defaults, **space.tiny, **({"max_epochs": 4, "patience": 4} if torch_model else {})}
    context = TrialContext(store_path=str(pbmc_store), fingerprint=open_store(pbmc_store).fingerprint, model=model,
                           defaults=defaults, metric="macro_f1")
    results: list[dict] = []
    execute_trial(context, {}, lambda metrics, files: results.append(metrics))
    assert len(results) == (4 if torch_model else 1)
    running = [max(r["val_macro_f1"] for r in results[: i + 1]) for i in range(len(results))]
    assert [r[SEARCH_METRIC] for r in results] == running
