"""`--searcher` (Optuna's samplers by name), `--scheduler`, and the sweep's Optuna study in a real RDB storage.

One conformance test per sampler, parametrised over the searcher table (adding a sampler adds no test code): the
sweep's searcher is driven as Tune drives it (set_search_properties, suggest, on_trial_result,
on_trial_complete) without Tune trials, on a SQLite study, as `_search_alg` builds it for a sweep. One real
tiny CLI sweep checks the parent run's tags and the study optuna-dashboard would show.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import assert_one_line_error
from optuna.trial import TrialState

from omicsweep.benchmark.resume import PriorTrial, SweepHistory
from omicsweep.benchmark.searchers import SEARCHERS, StudyRef, searcher_notes, study_url
from omicsweep.benchmark.space import Dimension, SearchSpace
from omicsweep.benchmark.sweep import SEARCH_METRIC, SweepRequest, _search_alg, tune_config
from omicsweep.benchmark.trial import TrialContext

SPACE = SearchSpace(
    path=Path("tiny.yaml"), defaults={"max_epochs": 3},
    dimensions=(Dimension("lr", "loguniform", (1e-4, 1e-1)), Dimension("dropout", "uniform", (0.0, 0.5)),
                Dimension("n_layers", "int", (1, 3)), Dimension("width", "choice", (8, 16, 32))),
)
N_TRIALS = 12  # past every sampler's start-up (GP: 10 random trials), so each proposes on its own at least twice


def _request(tmp_path: Path, searcher: str, *, seed: int = 0, scheduler: str = "asha",
             concurrency: int = 1) -> SweepRequest:
    (tmp_path / "run").mkdir(exist_ok=True)
    return SweepRequest(dataset="toy", store_path=tmp_path / "toy.zarr", fingerprint="sha256:toy", model="mlp",
                        space=SPACE, trials=N_TRIALS, concurrency=concurrency, seed=seed, metric="accuracy",
                        run_folder=tmp_path / "run", searcher=searcher, scheduler=scheduler)


def _searcher(request: SweepRequest, study: StudyRef, history: SweepHistory | None = None):
    """The sweep's searcher on `study`, told the metric, mode and space as Tune tells it."""
    dims = request.space.to_tune()
    searcher = _search_alg(request, dims, history, study=study)
    searcher.set_search_properties(SEARCH_METRIC, "max", dims)
    return searcher


def _value(params: dict) -> float:
    """A smooth, deterministic stand-in for a validation accuracy: best near lr 1e-2, low dropout, width 32."""
    import math

    return 0.9 - 0.05 * (math.log10(params["lr"]) + 2) ** 2 - 0.2 * params["dropout"] + 0.001 * params["width"]


def _run(searcher, trial_id: str) -> tuple[dict, float]:
    """Propose, report two epochs (val, best val so far), complete; as Tune does."""
    params = searcher.suggest(trial_id)
    val = _value(params)
    for epoch, epoch_val in enumerate([val - 0.1, val], start=1):
        searcher.on_trial_result(trial_id, {"training_iteration": epoch, SEARCH_METRIC: epoch_val})
    searcher.on_trial_complete(trial_id, result={"training_iteration": 2, SEARCH_METRIC: val})
    return params, val


def _sweep(tmp_path: Path, searcher: str, seed: int, name: str, n: int = N_TRIALS) -> list[tuple[dict, float]]:
    request = _request(tmp_path, searcher, seed=seed)
    limited = _searcher(request, StudyRef(study_url(request.run_folder), name))
    return [_run(limited, f"t{i}") for i in range(n)]


def _needs(name: str) -> None:
    """Every searcher's modules are declared dependencies (pyproject): one missing is an install bug, not a skip."""
    missing = [m for m in SEARCHERS[name].needs if importlib.util.find_spec(m) is None]
    assert not missing, f"--searcher {name} needs {', '.join(missing)}: declared in pyproject.toml but not installed"


@pytest.mark.parametrize("name", list(SEARCHERS))
def test_each_searcher_proposes_seeded_reproducible_configurations_into_its_study(name, tmp_path):
    _needs(name)
    first = _sweep(tmp_path, name, 3, "toy/mlp:a")
    assert first == _sweep(tmp_path, name, 3, "toy/mlp:b")  # same seed, same configurations
    assert [p for p, _ in first[:3]] != [p for p, _ in _sweep(tmp_path, name, 4, "toy/mlp:c", n=3)]
    for params, _ in first:
        assert 1e-4 <= params["lr"] <= 1e-1 and 0.0 <= params["dropout"] <= 0.5
        assert params["n_layers"] in (1, 2, 3) and params["width"] in (8, 16, 32)
    assert len({tuple(sorted(p.items())) for p, _ in first}) == N_TRIALS
    study = optuna.load_study(study_name="toy/mlp:a", storage=study_url(tmp_path / "run"))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * N_TRIALS
    assert [t.value for t in study.trials] == [v for _, v in first]  # each trial told its best_val
    assert [t.params for t in study.trials] == [p for p, _ in first]
    assert study.trials[0].intermediate_values == {1: first[0][1] - 0.1, 2: first[0][1]}  # the dashboard's curves
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE


def test_resume_reads_the_study_fails_its_running_trials_and_proposes_the_interrupted_one_first(tmp_path):
    """The dead driver's study holds its finished trials and the ones it left RUNNING; the resumed searcher
    opens the same study: finished trials kept once, RUNNING ones FAIL, the interrupted configuration first."""
    request = _request(tmp_path, "tpe", concurrency=2)
    ref = StudyRef(study_url(request.run_folder), "toy/mlp:parent")
    dead = _searcher(request, ref)
    done = [_run(dead, f"t{i}") for i in range(3)]
    interrupted = dead.suggest("t3")  # running when the driver died (tracked: its run is deleted, re-queued)
    dead.suggest("t4")  # proposed but never started: no run to re-queue
    del dead
    history = SweepHistory("parent", [
        *(PriorTrial(f"t{i}", "trial", "FINISHED", params, {SEARCH_METRIC: value})
          for i, (params, value) in enumerate(done)),
        PriorTrial("t3", "trial", "RUNNING", interrupted),
    ])
    resumed = _searcher(request, ref, history)
    states = [t.state for t in optuna.load_study(study_name=ref.name, storage=ref.url).trials]
    assert states == [TrialState.COMPLETE] * 3 + [TrialState.FAIL] * 2 + [TrialState.WAITING]
    assert resumed.suggest("r0") == interrupted
    _run(resumed, "r1")
    study = optuna.load_study(study_name=ref.name, storage=ref.url)
    assert [t.value for t in study.trials if t.state == TrialState.COMPLETE][:3] == [v for _, v in done]
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) == 4  # nothing counted twice


def test_a_lost_study_is_filled_from_the_tracking_record(tmp_path):
    request = _request(tmp_path, "random")
    history = SweepHistory("parent", [
        PriorTrial("a", "trial", "FINISHED", {"lr": 1e-3, "dropout": 0.1, "n_layers": 2, "width": 16},
                   {SEARCH_METRIC: 0.8}),
        PriorTrial("b", "trial", "FAILED", {"lr": 1e-2, "dropout": 0.2, "n_layers": 1, "width": 8}, {}),
    ])
    ref = StudyRef(study_url(request.run_folder), "toy/mlp:lost")
    _searcher(request, ref, history)
    study = optuna.load_study(study_name=ref.name, storage=ref.url)
    assert [(t.state, t.value) for t in study.trials] == [(TrialState.COMPLETE, 0.8), (TrialState.FAIL, None)]


def test_scheduler_none_runs_every_trial_to_the_end(tmp_path):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    context = TrialContext(store_path="toy.zarr", fingerprint="sha256:toy", model="mlp", defaults=SPACE.defaults)
    dims = SPACE.to_tune()
    fifo = tune_config(_request(tmp_path, "random", scheduler="none"), context, dims, None, num_samples=2).scheduler
    asha = tune_config(_request(tmp_path, "random"), context, dims, None, num_samples=2).scheduler
    assert type(fifo) is FIFOScheduler and isinstance(asha, ASHAScheduler)


def test_cmaes_says_once_which_dimensions_it_leaves_to_random_sampling():
    other = SearchSpace(path=Path("b.yaml"), defaults={}, dimensions=(Dimension("lr", "uniform", (0.0, 1.0)),))
    (line,) = searcher_notes("cmaes", {"mlp": SPACE, "logreg": other})
    assert "categorical" in line and "mlp (width)" in line and "logreg" not in line
    assert searcher_notes("cmaes", {"logreg": other}) == [] and searcher_notes("tpe", {"mlp": SPACE}) == []


@pytest.mark.parametrize(("args", "needles"), [
    (("--searcher", "hyperband"), ("--searcher", "hyperband", "tpe, gp, cmaes, qmc, random")),
    (("--scheduler", "pbt"), ("--scheduler", "pbt", "asha, none")),
    (("--optuna-storage", "not a url"), ("--optuna-storage", "not a database URL")),
    (("--optuna-storage", "postgresql://me:secret@127.0.0.1:1/db"), ("--optuna-storage", "cannot open")),
])
def test_bad_searcher_scheduler_or_storage_is_a_one_line_error_before_anything_starts(cli, tmp_path, args, needles):
    out = tmp_path / "run"
    code, stdout, stderr = cli("sweep", *args, "--runs", out)
    assert_one_line_error(code, stdout, stderr, *needles)
    assert "secret" not in stderr and not out.exists()


def test_a_sampler_that_cannot_run_here_is_a_one_line_error(cli, tmp_path, monkeypatch):
    """A machine without cmaes (a trimmed install): hidden from the sampler check only, the sweep never starts."""
    from omicsweep.benchmark import searchers

    real = importlib.util.find_spec
    monkeypatch.setattr(searchers.importlib.util, "find_spec", lambda name, *a: None if name == "cmaes" else real(name, *a))
    code, stdout, stderr = cli("sweep", "--searcher", "cmaes", "--runs", tmp_path / "run")
    assert_one_line_error(code, stdout, stderr, "--searcher cmaes", "CmaEsSampler", "pip install cmaes")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # a real sweep: Ray trials, MLflow, the leaderboard (about 15-35 s on 2 cores)
def test_random_fifo_sweep_tags_its_parent_and_keeps_its_study_in_the_run_folder(cli, ray_session, pbmc_store, tmp_path):
    """A real tiny sweep: the parent run says which searcher and scheduler ran, and optuna.db holds the sweep's
    study with one COMPLETE trial per finished Tune trial, valued at the trial's best_val."""
    from mlflow import MlflowClient

    space = tmp_path / "tiny_mlp.yaml"
    space.write_text(yaml.safe_dump({
        "defaults": {"n_layers": 1, "width": 16, "lr": 1.0e-3, "weight_decay": 0.0, "dropout": 0.0, "batch_size": 64,
                     "max_epochs": 2, "patience": 10},
        "space": {"lr": {"loguniform": [1.0e-4, 1.0e-2]}, "width": {"choice": [8, 16]}},
    }))
    out = tmp_path / "run"
    code, stdout, stderr = cli("sweep", "--model", "mlp", "--space", space, "--trials", "3", "--max-epochs", "1",
                               "--reruns", "0", "--concurrency", "2", "--searcher", "random", "--scheduler", "none",
                               "--runs", out)
    assert code == 0, stdout + stderr
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    (parent,) = [r for r in runs if r.data.tags.get("omicsweep.role") == "sweep"]
    assert parent.data.tags["omicsweep.searcher"] == "random"
    assert parent.data.tags["omicsweep.scheduler"] == "none"
    assert parent.data.params["searcher.sampler"] == "RandomSampler" and parent.data.params["scheduler"] == "none"
    assert parent.data.params["searcher.storage"] == f"sqlite:///{(out / 'optuna.db').resolve()}"
    trials = [r for r in runs if r.data.tags.get("omicsweep.role") == "trial" and r.info.status == "FINISHED"]
    assert len(trials) == 3 and all(r.data.metrics["epochs_run"] == 1 for r in trials)
    study = optuna.load_study(study_name=f"pbmc68k/mlp:{parent.info.run_id}", storage=f"sqlite:///{out / 'optuna.db'}")
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == len(study.trials) == 3
    assert sorted(t.value for t in complete) == sorted(r.data.metrics[SEARCH_METRIC] for r in trials)
