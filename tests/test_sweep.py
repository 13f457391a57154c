"""End to end: `omicsweep sweep` on real data with real Ray Tune, Optuna, ASHA and MLflow, then the leaderboard."""

from __future__ import annotations

import json

import polars as pl
import pytest
from mlflow import MlflowClient

from omicsweep.reports.tracking import default_tracking_uri

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def swept(ray_session, pbmc_store, tmp_path_factory):
    from typer.testing import CliRunner

    from omicsweep.cli import app

    out = tmp_path_factory.mktemp("runs") / "run"
    result = CliRunner().invoke(
        app, ["sweep", "--dataset", "pbmc68k", "--model", "mlp,logreg,majority", "--trials", "4", "--concurrency", "2",
              "--seed", "0", "--max-epochs", "3", "--out", str(out)],
    )
    assert result.exit_code == 0, result.stdout + result.stderr
    return out, result


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
    # everything Ray wrote is inside the run folder
    assert (out / "ray").is_dir() and len(list((out / "ray").iterdir())) == 3
    code, stdout, _ = cli("leaderboard", "--out", out)
    assert code == 0 and "majority" in stdout


def test_same_sweep_seed_proposes_the_same_configurations(swept, tmp_path):
    """A second mlp sweep with the same seed samples the same first configurations (TPE seeded)."""
    from typer.testing import CliRunner

    from omicsweep.cli import app

    out, _ = swept
    again = tmp_path / "again"
    result = CliRunner().invoke(
        app, ["sweep", "--model", "mlp", "--trials", "2", "--concurrency", "1", "--seed", "0", "--max-epochs", "1", "--out", str(again)],
    )
    assert result.exit_code == 0, result.stderr

    def configs(folder):
        _, runs = _runs(folder)
        trials = [r for r in runs if r.data.tags.get("omicsweep.role") == "trial" and r.data.tags["omicsweep.model"] == "mlp"]
        trials.sort(key=lambda r: r.info.start_time)
        return [{k: v for k, v in r.data.params.items() if k != "max_epochs"} for r in trials]

    first, second = configs(out), configs(again)
    # the first two proposals start together under concurrency 2, in either order: compare them as a set
    key = lambda params: sorted(params.items())  # noqa: E731
    assert sorted(map(key, second)) == sorted(map(key, first[:2]))
