"""`omicsweep train`: one run of a model's defaults plus --set overrides, tracked like a sweep with one trial."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
from mlflow import MlflowClient

from omicsweep.reports.tracking import default_tracking_uri

TINY_MLP = ["--set", "n_layers=1", "--set", "width=32", "--set", "lr=1e-3", "--set", "max_epochs=2",
            "--set", "batch_size=64"]  # mlp.yaml's `tiny` overrides


@pytest.mark.slow
def test_train_runs_the_defaults_once_with_overrides_and_an_ensemble(ray_session, pbmc_store, cli, tmp_path):
    out = tmp_path / "run"
    code, stdout, stderr = cli("train", "--dataset", "pbmc68k", "--model", "mlp", "--ensemble", "2", *TINY_MLP,
                               "--runs", out)
    assert code == 0, stdout + stderr
    assert "mlp" in stdout and "ensemble=2" in stderr

    client = MlflowClient(default_tracking_uri(out))
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=100)
    parents = [r for r in runs if r.data.tags.get("omicsweep.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("omicsweep.role") == "trial"]
    assert len(parents) == 1 and parents[0].data.tags["omicsweep.command"] == "train"
    assert len(children) == 1 and children[0].data.tags["mlflow.parentRunId"] == parents[0].info.run_id
    params = children[0].data.params
    assert children[0].info.status == "FINISHED"
    assert (params["ensemble"], params["width"], params["n_layers"], params["lr"]) == ("2", "32", "1", "0.001")
    assert params["weight_decay"] == "0.001" and params["dropout"] == "0.2"  # untouched defaults: study 000's

    board = pl.read_csv(out / "leaderboard.csv")
    assert board["model"].to_list() == ["mlp"] and board["trials_finished"].to_list() == [1]

    [model_file] = list((out / "ray").rglob("model.pt"))  # Tune keeps the best checkpoint only
    state = torch.load(model_file, weights_only=True)
    assert {key.split(".")[1] for key in state} == {"0", "1"}  # members.0.*, members.1.*
    with np.load(model_file.parent / "test_predictions.npz", allow_pickle=False) as saved:
        assert saved["proba"].shape[0] == len(saved["y_true"]) > 0


@pytest.mark.parametrize(
    "args, says",
    [
        (["--set", "nonsense=1"], "nonsense"),
        (["--set", "width=wide"], "width"),
        (["--set", "loss=hinge"], "hinge"),
        (["--set", "lr"], "KEY=VALUE"),
        (["--set", "seed=3"], "--seed"),
        (["--set", "ensemble=0"], "ensemble"),
        (["--set", "scaling=sideways"], "scaling"),
        (["--model", "logreg", "--ensemble", "2"], "--ensemble"),
        (["--model", "dnn", "--set", "n_layers=9"], "n_layers"),
        (["--model", "no_such_model"], "no_such_model"),
    ],
)
def test_bad_train_options_are_one_line_and_exit_2(args, says, cli, pbmc_store, tmp_path):
    model = [] if "--model" in args else ["--model", "mlp"]
    code, _, stderr = cli("train", "--dataset", "pbmc68k", *model, *args, "--runs", tmp_path / "run")
    assert code == 2, stderr
    assert says in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert not (tmp_path / "run").exists()  # nothing written when the options are wrong


@pytest.mark.slow
def test_sweep_ensemble_option_fixes_the_member_count_of_torch_models_only(ray_session, pbmc_store, cli, tmp_path):
    out = tmp_path / "sweep"
    code, stdout, stderr = cli("sweep", "--dataset", "pbmc68k", "--model", "softmax,majority", "--trials", "1",
                               "--max-epochs", "1", "--reruns", "0", "--ensemble", "3", "--runs", out)
    assert code == 0, stdout + stderr
    client = MlflowClient(default_tracking_uri(out))
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=100)
    trials = {r.data.tags["omicsweep.model"]: r for r in runs if r.data.tags.get("omicsweep.role") == "trial"}
    assert trials["softmax"].data.params["ensemble"] == "3" and "ensemble" not in trials["majority"].data.params


def test_fixed_spaces_and_override_values():
    from omicsweep.benchmark.space import fixed_space, load_space, parse_value, with_fixed
    from omicsweep.models import get_model

    space = load_space(get_model("dnn").space_file)
    fixed = fixed_space(space, {"lr": 0.01})
    assert fixed.dimensions == () and fixed.n_trials(16) == 1 and fixed.defaults["lr"] == 0.01
    assert fixed.defaults["size_1"] == space.defaults["size_1"]
    narrowed = with_fixed(space, {"lr": 0.01})
    assert "lr" not in {d.name for d in narrowed.dimensions} and len(narrowed.dimensions) == len(space.dimensions) - 1
    assert [parse_value(t) for t in ("1e-3", "3", "true", "null", "[64, 32]", "adam")] == [
        0.001, 3, True, None, [64, 32], "adam"]
