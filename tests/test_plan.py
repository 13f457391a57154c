"""The plan (benchmark/plan.py): what `sweep` and `train` asked for, as typed options and (dataset, model) requests,
built and checked before anything runs; persisted to the run folder so `--resume` builds it again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from omicsweep.benchmark.plan import SweepOptions, build_plan
from omicsweep.errors import ConfigError, InputError

from conftest import assert_one_line_error


def test_options_round_trip_through_the_run_folder(tmp_path):
    options = SweepOptions(model="mlp,logreg", space=tmp_path / "s.yaml", runs=tmp_path / "run", reruns=1,
                           settings=["lr=1e-3"], address="10.0.0.1:6379")
    options.runs.mkdir()
    options.save()
    assert json.loads((options.runs / "sweep.json").read_text())["reruns"] == 1
    moved = tmp_path / "moved"
    options.runs.rename(moved)
    loaded = SweepOptions.load(moved, address="head:6379")
    assert loaded.space == tmp_path / "s.yaml" and isinstance(loaded.space, Path)
    assert loaded.runs == moved and loaded.address == "head:6379"  # the folder it is resumed from; a new address
    assert (loaded.model, loaded.reruns, loaded.settings) == ("mlp,logreg", 1, ["lr=1e-3"])


def test_resume_refuses_options_it_does_not_know_in_one_line(cli, tmp_path):
    (tmp_path / "sweep.json").write_text(json.dumps({**SweepOptions(runs=tmp_path).to_json(), "seeds": 3}))
    with pytest.raises(InputError, match="seeds"):
        SweepOptions.load(tmp_path)
    assert_one_line_error(*cli("sweep", "--resume", tmp_path), "sweep.json", "seeds")


def test_a_sweep_plan_is_one_request_per_model_and_train_one_fixed_configuration(pbmc_store, tmp_path):
    plan = build_plan(SweepOptions(dataset=str(pbmc_store), model="mlp,majority", trials=3, reruns=2,
                                   runs=tmp_path / "run"))
    assert [r.model for r in plan.requests] == ["mlp", "majority"]
    assert plan.requests[0].n_trials == 3 and plan.requests[0].reruns == 2 and not plan.tags
    assert not (tmp_path / "run").exists()  # building a plan writes nothing
    plan = build_plan(SweepOptions(dataset=str(pbmc_store), model="mlp", settings=["width=32"], ensemble=2,
                                   fixed=True, runs=tmp_path / "run"))
    (request,) = plan.requests
    assert request.space.dimensions == () and request.n_trials == 1 and request.reruns == 0
    assert request.space.defaults["width"] == 32 and request.space.defaults["ensemble"] == 2
    assert plan.tags == {"omicsweep.command": "train"} and "width=32" in plan.overrides


@pytest.mark.parametrize("command, old, new", [
    ("sweep", "--out", "--runs"), ("sweep", "--seeds", "--reruns"), ("train", "--out", "--runs"),
    ("leaderboard", "--out", "--runs"), ("reproduce", "--out", "--runs"), ("export", "--out", "--runs"),
])
def test_the_run_folder_is_runs_everywhere(cli, command, old, new):
    code, stdout, stderr = cli(command, "--help")
    assert code == 0 and new in stdout and f"{old} " not in stdout


def test_a_grid_plan_is_every_dataset_with_the_models_that_fit_its_task(pbmc_store, pair_store, tmp_path):
    """--dataset A,B: one request per (dataset, model) pair, datasets in order; a named model that does not fit a
    dataset's task (cnnc eats gene-pair stores) is left out of that dataset's pairs, not an error."""
    plan = build_plan(SweepOptions(dataset=f"{pbmc_store},{pair_store}", model="majority,cnnc", trials=2,
                                   runs=tmp_path / "run"))
    pairs = [(Path(str(r.store_path)).name, r.model) for r in plan.requests]
    assert pairs == [(Path(pbmc_store).name, "majority"), (Path(pair_store).name, "majority"),
                     (Path(pair_store).name, "cnnc")]
    assert any("cnnc left out" in line for line in plan.notes)
    assert not (tmp_path / "run").exists()


def test_a_grid_of_no_registered_store_is_one_line(cli, tmp_path):
    assert_one_line_error(*cli("sweep", "--dataset", "all-registered", "--runs", tmp_path / "run"),
                          "all-registered", "datasets register")
    assert not (tmp_path / "run").exists()


def test_train_checks_a_pair_model_against_the_store_its_trials_read(pair_store, tmp_path):
    """train of cnnc at --set bins=16: the plan checks the configuration against cnnc's featuriser view of the store
    (16 x 16 images), so three blocks are refused before anything runs, not in the trial; two fit."""
    with pytest.raises(ConfigError, match="n_blocks=3 does not fit 16x16"):
        build_plan(SweepOptions(dataset=str(pair_store), model="cnnc", settings=["bins=16"], fixed=True,
                                runs=tmp_path / "run"))
    plan = build_plan(SweepOptions(dataset=str(pair_store), model="cnnc", settings=["bins=16", "n_blocks=2"],
                                   fixed=True, runs=tmp_path / "run"))
    (request,) = plan.requests
    assert request.space.defaults["bins"] == 16 and request.fingerprint.startswith("sha256:")
    assert not (tmp_path / "run").exists()
