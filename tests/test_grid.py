"""A grid of (dataset, model) sweeps in one Tuner (benchmark/grid.py): the routing scheduler keeps ASHA's
comparisons inside a pair, the routing searcher gives each pair exactly its budget from its own seeded searcher,
and a real 2-dataset x 2-model CLI sweep runs every pair's trials in one Ray Tune experiment, side by side."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search import Searcher

from omicsweep.benchmark.grid import PAIR_KEY, FixedSearcher, PairScheduler, PairSearcher, PairSweep, _pair_searcher
from omicsweep.benchmark.space import Dimension, SearchSpace
from omicsweep.benchmark.sweep import SEARCH_METRIC, SweepRequest
from omicsweep.reports.tracking import default_tracking_uri

SPACE = SearchSpace(path=Path("tiny.yaml"), defaults={"max_epochs": 3},
                    dimensions=(Dimension("lr", "loguniform", (1e-4, 1e-1)), Dimension("width", "choice", (8, 16))))


# ---- the routing scheduler -------------------------------------------------------------------------------------


def _asha():
    return ASHAScheduler(time_attr="training_iteration", max_t=9, grace_period=1, reduction_factor=3)


def _trial(pair: str, n: int) -> Trial:
    return Trial("__fake", config={PAIR_KEY: pair}, trial_id=f"{pair}-{n}", stub=True)


def _decisions(scheduler) -> list[str]:
    """Three strong trials of pair A, then two weak ones of pair B, each reporting its first epoch."""
    scheduler.set_search_properties(SEARCH_METRIC, "max")
    trials = [(_trial("A", i), 0.9) for i in range(3)] + [(_trial("B", i), 0.1 - 0.01 * i) for i in range(2)]
    for trial, _ in trials:
        scheduler.on_trial_add(None, trial)
    return [scheduler.on_trial_result(None, trial, {"training_iteration": 1, SEARCH_METRIC: value})
            for trial, value in trials]


def test_asha_decisions_never_compare_trials_of_different_pairs():
    # one ASHA over both pairs cuts B's first trial at A's rung (the failure the routing prevents)
    assert _decisions(_asha())[3] == TrialScheduler.STOP
    routed = PairScheduler({"A": _asha(), "B": _asha()})
    decisions = _decisions(routed)
    assert decisions[3] == TrialScheduler.CONTINUE  # B's rung was empty: nothing of A counts
    assert decisions[4] == TrialScheduler.STOP  # below B's own first trial at B's rung
    assert set(routed.schedulers["A"]._trial_info) == {"A-0", "A-1", "A-2"}
    assert set(routed.schedulers["B"]._trial_info) == {"B-0", "B-1"}


# ---- the routing searcher --------------------------------------------------------------------------------------


def _pair(tmp_path: Path, dataset: str, model: str, space: SearchSpace, *, seed: int) -> PairSweep:
    (tmp_path / "run").mkdir(parents=True, exist_ok=True)
    request = SweepRequest(dataset=dataset, store_path=tmp_path / "toy.zarr", fingerprint="sha256:toy", model=model,
                           space=space, trials=3, concurrency=2, seed=seed, metric="accuracy",
                           run_folder=tmp_path / "run")
    return PairSweep(request, None, None, None, None, None, parent_run_id=f"parent-{dataset}-{seed}")


def _drive(searcher: Searcher, *, limit: int = 50) -> list[dict]:
    """Tune's loop, one trial at a time: suggest, report one epoch, complete; until the searcher is finished."""
    proposed = []
    for i in range(limit):
        config = searcher.suggest(f"t{i}")
        if config == Searcher.FINISHED:
            return proposed
        assert config is not None, "a trial slot is free but nothing was proposed"
        value = 0.5 + 0.1 * (config.get("width", 8) == 16)
        searcher.on_trial_result(f"t{i}", {"training_iteration": 1, SEARCH_METRIC: value})
        searcher.on_trial_complete(f"t{i}", result={"training_iteration": 1, SEARCH_METRIC: value})
        proposed.append(config)
    raise AssertionError("the searcher never finished")


def _grid_searcher(tmp_path: Path, seed: int) -> PairSearcher:
    pairs = {"a/mlp": _pair(tmp_path, "a", "mlp", SPACE, seed=seed), "b/mlp": _pair(tmp_path, "b", "mlp", SPACE, seed=seed)}
    searchers: dict[str, Searcher] = {key: _pair_searcher(pair) for key, pair in pairs.items()}
    searchers["a/majority"] = FixedSearcher(SEARCH_METRIC, "max")
    return PairSearcher(searchers, {"a/mlp": 3, "b/mlp": 2, "a/majority": 1}, concurrency=2,
                        metric=SEARCH_METRIC, mode="max")


def test_each_pair_gets_its_budget_from_its_own_seeded_searcher(tmp_path):
    proposed = _drive(_grid_searcher(tmp_path / "first", seed=0))
    per_pair = {key: [{k: v for k, v in c.items() if k != PAIR_KEY} for c in proposed if c[PAIR_KEY] == key]
                for key in ("a/mlp", "b/mlp", "a/majority")}
    assert {k: len(v) for k, v in per_pair.items()} == {"a/mlp": 3, "b/mlp": 2, "a/majority": 1}
    assert per_pair["a/majority"] == [{}]  # nothing to search: the defaults, once
    # the same seed proposes the same configurations for each pair; another seed does not
    again = _drive(_grid_searcher(tmp_path / "again", seed=0))
    assert again == proposed
    assert [c for c in _drive(_grid_searcher(tmp_path / "other", seed=1)) if c[PAIR_KEY] == "a/mlp"] != \
        [c for c in proposed if c[PAIR_KEY] == "a/mlp"]
    # the grid does not perturb a pair's sampler: alone, with the same seed, it proposes the same first trials
    alone = _pair_searcher(_pair(tmp_path / "alone", "a", "mlp", SPACE, seed=0))
    assert [alone.suggest("x0")] == per_pair["a/mlp"][:1]


def test_the_grid_keeps_to_its_concurrency_and_pairs_share_the_slots(tmp_path):
    searcher = _grid_searcher(tmp_path, seed=0)
    first, second = searcher.suggest("t0"), searcher.suggest("t1")
    assert {first[PAIR_KEY], second[PAIR_KEY]} == {"a/mlp", "b/mlp"}  # fewest started first: both pairs going
    assert searcher.suggest("t2") is None  # two slots, both busy
    searcher.on_trial_complete("t0", result={SEARCH_METRIC: 0.5})
    assert searcher.suggest("t2")[PAIR_KEY] == "a/majority"


# ---- a real grid through the CLI -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def second_store(private_cache) -> Path:
    """pbmc68k with another split seed: a second, cheap dataset (its own store, its own name)."""
    from omicsweep.datasets import resolve_dataset

    return resolve_dataset("pbmc68k", seed=1)[1]


@pytest.mark.slow
def test_a_grid_runs_every_pair_in_one_tuner_side_by_side(cli, ray_session, pbmc_store, second_store, tmp_path):
    out = tmp_path / "run"
    code, stdout, stderr = cli("sweep", "--dataset", f"{pbmc_store},{second_store}", "--model", "logreg,majority",
                               "--trials", "2", "--concurrency", "2", "--reruns", "0", "--runs", out)
    assert code == 0, stdout + stderr
    assert len(list((out / "ray").iterdir())) == 1  # one Tune experiment: one Tuner for the whole grid
    client = MlflowClient(default_tracking_uri(out))
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=100)
    parents = {(r.data.tags["omicsweep.dataset"], r.data.tags["omicsweep.model"]): r.info.run_id for r in runs
               if r.data.tags.get("omicsweep.role") == "sweep"}
    datasets = {Path(pbmc_store).name.removesuffix(".zarr"), Path(second_store).name.removesuffix(".zarr")}
    assert set(parents) == {(d, m) for d in datasets for m in ("logreg", "majority")}
    trials = [r for r in runs if r.data.tags.get("omicsweep.role") == "trial"]
    counts = {pair: sum(r.data.tags["mlflow.parentRunId"] == parent for r in trials) for pair, parent in parents.items()}
    assert counts == {(d, m): 2 if m == "logreg" else 1 for d, m in parents}  # each pair its own budget
    assert all(r.info.status == "FINISHED" and PAIR_KEY not in r.data.params for r in trials)
    spans = [(r.data.tags["mlflow.parentRunId"], r.info.start_time, r.info.end_time) for r in trials]
    assert any(p != q and s1 < e2 and s2 < e1 for p, s1, e1 in spans for q, s2, e2 in spans), \
        "no two trials of different pairs ran at the same time"
    for dataset in datasets:
        assert f"{dataset}/logreg" in stderr and f"{dataset}/majority" in stderr  # progress and outcome per pair
