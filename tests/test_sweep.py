"""End to end: `omicsweep sweep` on real data with real Ray Tune, Optuna, ASHA and MLflow, then the leaderboard."""

from __future__ import annotations

import json

import polars as pl
import pytest
from mlflow import MlflowClient

from omicsweep.benchmark.space import load_space
from omicsweep.models import get_model
from omicsweep.reports.tracking import default_tracking_uri

pytestmark = pytest.mark.slow


def _runs(out):
    client = MlflowClient(default_tracking_uri(out))
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client, client.search_runs(experiments, max_results=1000)


def test_one_parent_per_model_with_nested_trials(swept):
    out, _ = swept
    client, runs = _runs(out)
    parents = {r.data.tags["omicsweep.model"]: r for r in runs if r.data.tags.get("omicsweep.role") == "sweep"}
    assert set(parents) == {"mlp", "logreg", "majority"}
    children = [r for r in runs if r.data.tags.get("omicsweep.role") == "trial"]
    per_model = {m: [c for c in children if c.data.tags["omicsweep.model"] == m] for m in parents}
    assert {m: len(c) for m, c in per_model.items()} == {"mlp": 4, "logreg": 4, "majority": 1}
    for model, kids in per_model.items():
        for child in kids:
            assert child.data.tags["mlflow.parentRunId"] == parents[model].info.run_id
            assert child.info.status == "FINISHED"
            tags = child.data.tags
            assert tags["omicsweep.fingerprint"].startswith("sha256:") and tags["omicsweep.seed"] == "0"
            assert tags["omicsweep.code_version"]
            assert "torch" in json.loads(tags["omicsweep.packages"])
            assert child.data.params["seed"] == "0"
            assert "test_accuracy" in child.data.metrics and "overhead_s" in child.data.metrics


def test_per_epoch_metrics_are_logged(swept):
    out, _ = swept
    client, runs = _runs(out)
    mlp = [r for r in runs if r.data.tags.get("omicsweep.model") == "mlp" and r.data.tags.get("omicsweep.role") == "trial"]
    histories = [client.get_metric_history(r.info.run_id, "val_accuracy") for r in mlp]
    assert max(len(h) for h in histories) == 3  # max_epochs=3; ASHA may stop others earlier
    for history in histories:
        assert [m.step for m in history] == list(range(1, len(history) + 1))


def test_leaderboard_printed_and_written(swept, cli):
    out, result = swept
    for model in ("mlp", "logreg", "majority"):
        assert model in result.stdout
    table = pl.read_parquet(out / "leaderboard.parquet")
    assert pl.read_csv(out / "leaderboard.csv").shape == table.shape
    assert set(table["model"]) == {"mlp", "logreg", "majority"}
    rows = {r["model"]: r for r in table.iter_rows(named=True)}
    assert rows["mlp"]["trials_finished"] == 4 and rows["majority"]["trials_finished"] == 1
    assert rows["mlp"]["test_accuracy"] > rows["majority"]["test_accuracy"]
    assert rows["logreg"]["test_accuracy"] > rows["majority"]["test_accuracy"]
    assert all(r["wall_time_s"] > 0 for r in rows.values())
    # everything Ray wrote is inside the run folder: one Tune experiment, all three models' trials in one Tuner
    assert (out / "ray").is_dir() and len(list((out / "ray").iterdir())) == 1
    code, stdout, _ = cli("leaderboard", "--runs", out)
    assert code == 0 and "majority" in stdout


def test_same_sweep_seed_proposes_the_same_configurations(swept, tmp_path):
    """A second mlp sweep with the same seed samples the same first configurations (TPE seeded)."""
    from typer.testing import CliRunner

    from omicsweep.cli import app

    out, _ = swept
    again = tmp_path / "again"
    result = CliRunner().invoke(
        app, ["sweep", "--model", "mlp", "--trials", "2", "--concurrency", "1", "--seed", "0", "--max-epochs", "1",
              "--reruns", "0", "--runs", str(again)],
    )
    assert result.exit_code == 0, result.stderr

    def configs(folder):
        _, runs = _runs(folder)
        trials = [r for r in runs if r.data.tags.get("omicsweep.role") == "trial" and r.data.tags["omicsweep.model"] == "mlp"]
        trials.sort(key=lambda r: r.info.start_time)
        # compare what the sampler proposed: the searched dimensions of mlp's space
        searched = {d.name for d in load_space(get_model("mlp").space_file).dimensions}
        return [{k: v for k, v in r.data.params.items() if k in searched} for r in trials]

    first, second = configs(out), configs(again)
    # the first two proposals start together under concurrency 2, in either order: compare them as a set
    key = lambda params: sorted(params.items())  # noqa: E731
    assert sorted(map(key, second)) == sorted(map(key, first[:2]))


def test_trials_record_store_config_resources_and_checkpoint_artifacts(swept, tmp_path):
    import torch

    out, _ = swept
    client, runs = _runs(out)
    trials = [r for r in runs if r.data.tags.get("omicsweep.role") == "trial"]
    for run in trials:
        tags, metrics = run.data.tags, run.data.metrics
        assert tags["omicsweep.store_path"].endswith(".zarr") and json.loads(tags["omicsweep.config"])["seed"] == 0
        assert metrics["cpu_s"] > 0 and metrics["peak_rss_mb"] > 10 and metrics["trial_wall_s"] > 0
        assert metrics["epochs_run"] == metrics["epoch"]
        folder = tmp_path / run.info.run_id
        client.download_artifacts(run.info.run_id, "checkpoint", str(folder))
        names = {p.name for p in (folder / "checkpoint").iterdir()}
        assert {"trial.json", "transform.npz", "genes.txt", "classes.json"} <= names
        if "model.pt" in names:  # never unpickled: weights only; estimators in skops' format, no pickle
            state = torch.load(folder / "checkpoint" / "model.pt", weights_only=True)
            assert all(isinstance(v, torch.Tensor) for v in state.values())
        else:
            import skops.io

            assert skops.io.get_untrusted_types(file=folder / "checkpoint" / "estimator.skops") == []
        assert len((folder / "checkpoint" / "genes.txt").read_text().split()) == 765


def test_best_configuration_rerun_with_fresh_seeds(swept):
    out, _ = swept
    _, runs = _runs(out)
    parents = {r.data.tags["omicsweep.model"]: r.info.run_id for r in runs if r.data.tags.get("omicsweep.role") == "sweep"}
    trial_ids = {r.data.tags["omicsweep.trial_id"]: r for r in runs if r.data.tags.get("omicsweep.role") == "trial"}
    reruns = [r for r in runs if r.data.tags.get("omicsweep.role") == "seed-rerun"]
    for model, parent in parents.items():
        mine = [r for r in reruns if r.data.tags["omicsweep.model"] == model]
        assert sorted(int(r.data.tags["omicsweep.seed"]) for r in mine) == [1000, 2000]
        for run in mine:
            assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == parent
            source = trial_ids[run.data.tags["omicsweep.rerun_of"]]
            config = json.loads(run.data.tags["omicsweep.config"])
            assert {**json.loads(source.data.tags["omicsweep.config"]), "seed": config["seed"]} == config
            assert "test_accuracy" in run.data.metrics and run.data.metrics["cpu_s"] > 0
