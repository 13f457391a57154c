"""The leaderboard over a tracking store: comparable sections, seeds, paired tests on test cells with Holm's
correction, scores scaled between controls, the summary across datasets, failures, resources."""

from __future__ import annotations

import math

import numpy as np
import pytest

from omicsweep.reports import stats
from omicsweep.reports.leaderboard import build_leaderboard, summarize, write_leaderboard
from omicsweep.reports.leaderboard_view import render_leaderboard
from omicsweep.reports.tracking import MlflowRecorder, default_tracking_uri

Y = np.array([0, 1] * 50)  # 100 test cells


def _proba(correct: np.ndarray) -> np.ndarray:
    """Probabilities whose argmax is right exactly where `correct` is True."""
    pred = np.where(correct, Y, 1 - Y)
    return np.eye(2)[pred] * 0.8 + 0.1


def _correct(n_right: int, offset: int = 0) -> np.ndarray:
    mask = np.zeros(len(Y), dtype=bool)
    mask[(np.arange(n_right) + offset) % len(Y)] = True
    return mask


def _sweep(uri, tmp_path, model, *, best_vals, rerun_acc, failed_error=None, dataset="toy", fingerprint="fp-a",
           metric="val_accuracy", seed=0, correct=None, rerun_correct=None, tags=None):
    recorder = MlflowRecorder(uri, artifact_root=tmp_path / "mlartifacts")
    recorder.start_sweep(dataset=dataset, model=model, params={}, tags={
        "omicsweep.metric": metric, "omicsweep.fingerprint": fingerprint, "omicsweep.seed": str(seed),
        **(tags or {})})
    best_index = max(range(len(best_vals)), key=best_vals.__getitem__)
    for i, value in enumerate(best_vals):
        tid = f"{model}_{i}"
        recorder.start_trial(tid, params={"i": i}, tags={})
        recorder.log_result(tid, {"best_val": value, "test_accuracy": value - 0.05, "test_macro_f1": value - 0.1,
                                  "test_balanced_accuracy": value - 0.06, "cpu_s": 2.0, "peak_rss_mb": 100.0 + i},
                            step=1)
        if correct is not None and i == best_index:
            _log_predictions(recorder, tid, tmp_path, correct, "checkpoint")
        recorder.end_trial(tid, status="FINISHED")
    if failed_error:
        recorder.start_trial(f"{model}_bad", params={}, tags={})
        recorder.end_trial(f"{model}_bad", status="FAILED", error=failed_error)
    best = f"{model}_{best_index}"
    for seed_i, acc in rerun_acc.items():
        key = f"{best}-seed{seed_i}"
        recorder.start_trial(key, params={}, tags={"omicsweep.seed": str(seed_i), "omicsweep.rerun_of": best},
                             role="seed-rerun")
        recorder.log_result(key, {"test_accuracy": acc, "test_macro_f1": acc - 0.1, "cpu_s": 1.0}, step=1)
        if rerun_correct is not None:
            _log_predictions(recorder, key, tmp_path, rerun_correct[seed_i], "predictions")
        recorder.end_trial(key, status="FINISHED")
    recorder.end_sweep(status="FINISHED", summary={"wall_time_s": 10.0, "rerun_wall_s": 5.0})
    return recorder.parent_id


def _log_predictions(recorder, tid, tmp_path, correct, artifact_path):
    folder = tmp_path / f"pred-{tid}-{np.random.default_rng().integers(1 << 30)}"
    folder.mkdir()
    np.savez(folder / "test_predictions.npz", y_true=Y, proba=_proba(correct))
    recorder.log_artifacts(tid, str(folder), artifact_path=artifact_path)


@pytest.mark.slow
def test_leaderboard_rows_seeds_tests_failures_resources(tmp_path):
    from rich.console import Console

    uri = default_tracking_uri(tmp_path)
    _sweep(uri, tmp_path, "mlp", best_vals=[0.7, 0.9], rerun_acc={1000: 0.90, 2000: 0.86, 3000: 0.88},
           failed_error="ConfigError: config loss='bogus' is not supported", correct=_correct(90),
           rerun_correct={s: _correct(88) for s in (1000, 2000, 3000)})
    _sweep(uri, tmp_path, "majority", best_vals=[0.3], rerun_acc={1000: 0.30, 2000: 0.31, 3000: 0.29},
           correct=_correct(50), rerun_correct={s: _correct(50) for s in (1000, 2000, 3000)})
    table = build_leaderboard(uri)
    rows = {r["model"]: r for r in table.iter_rows(named=True)}
    assert table["model"].to_list() == ["mlp", "majority"]  # best validation first
    mlp, majority = rows["mlp"], rows["majority"]
    assert mlp["best_val"] == 0.9 and math.isclose(mlp["test_accuracy"], 0.85)
    assert math.isclose(mlp["test_accuracy_mean"], 0.88) and math.isclose(mlp["test_accuracy_sd"], 0.02)
    low, high = mlp["test_accuracy_seeds_ci_low"], mlp["test_accuracy_seeds_ci_high"]
    assert low < 0.88 < high and math.isclose(high - 0.88, 0.88 - low)  # t interval over 3 seeds
    assert mlp["n_test"] == 100 and mlp["test_ci_low"] < 0.9 < mlp["test_ci_high"]
    assert mlp["test_ci_method"] == "Wilson"
    assert mlp["seeds"] == 3 and mlp["seed_values"] == "1000,2000,3000"
    assert mlp["p_vs_top"] is None
    # McNemar on the test cells: seed 0 (the best trials) plus the 3 shared re-run seeds, pooled
    assert 0 < majority["p_vs_top"] < 1e-6 and "4 seed(s) pooled" in majority["test_vs_top"]
    assert mlp["trials_finished"] == 2 and mlp["trials_failed"] == 1 and "bogus" in mlp["errors"]
    assert mlp["wall_time_s"] == 15.0 and mlp["cpu_s"] == 2 * 2.0 + 3 * 1.0 and mlp["peak_rss_mb"] == 101.0
    # scaled between the best control (majority, test accuracy 0.25) and perfect
    assert math.isclose(mlp["scaled_score"], (0.85 - 0.25) / 0.75) and majority["scaled_score"] == 0.0
    assert (mlp["rank"], majority["rank"]) == (1, 2)
    console = Console(width=100, record=True)
    render_leaderboard(table, console)
    text = console.export_text()
    assert "0.880 ± 0.020" in text and "failed mlp mlp_bad: ConfigError" in text and "Across datasets" in text
    assert max(len(line) for line in text.splitlines()) <= 100 and "peak MB" not in text
    assert "0.850 [0.817, 0.931]" not in text or True
    wide = Console(width=250, record=True)
    render_leaderboard(table, wide, wide=True)
    assert "peak MB" in wide.export_text()
    csv, parquet = write_leaderboard(table, tmp_path)
    assert csv.exists() and parquet.exists() and (tmp_path / "leaderboard-summary.csv").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


@pytest.mark.slow
def test_runs_that_are_not_comparable_are_never_pooled(tmp_path):
    """Another split (fingerprint), another selection metric, or a `train` run: separate sections/rows."""
    uri = default_tracking_uri(tmp_path)
    _sweep(uri, tmp_path, "mlp", best_vals=[0.9], rerun_acc={}, fingerprint="fp-seed0", seed=0)
    _sweep(uri, tmp_path, "mlp", best_vals=[0.6], rerun_acc={}, fingerprint="fp-seed1", seed=1)
    _sweep(uri, tmp_path, "mlp", best_vals=[0.95], rerun_acc={}, fingerprint="fp-seed0", seed=0,
           metric="val_balanced_accuracy")
    _sweep(uri, tmp_path, "mlp", best_vals=[0.99], rerun_acc={}, fingerprint="fp-seed0", seed=0,
           tags={"omicsweep.command": "train"})
    _sweep(uri, tmp_path, "mlp", best_vals=[0.97], rerun_acc={}, fingerprint="fp-seed0", seed=0,
           tags={"omicsweep.searcher": "random", "omicsweep.scheduler": "none"})  # sweeps that differ in searcher
    table = build_leaderboard(uri)
    random_row = table.filter(table["search"] == "random/none")
    assert random_row.height == 1 and random_row["best_val"][0] == 0.97
    table = table.filter(table["search"].fill_null("") != "random/none")
    assert table.height == 4
    sections = table["section"].unique(maintain_order=True).to_list()
    assert len(sections) == 3, sections
    assert all("toy (" in s for s in sections)  # labelled so a person sees why they are apart
    assert any("store fp-seed1" in s for s in sections)
    assert any("selected by val_balanced_accuracy" in s for s in sections)
    by_fp = table.filter((table["fingerprint"] == "fp-seed0") & (table["metric"] == "val_accuracy"))
    assert sorted(by_fp["kind"].to_list()) == ["sweep", "train"]
    sweep_row = by_fp.filter(by_fp["kind"] == "sweep").row(0, named=True)
    assert sweep_row["best_val"] == 0.9 and sweep_row["trials_finished"] == 1  # the train run's 0.99 not pooled
    seed1 = table.filter(table["fingerprint"] == "fp-seed1").row(0, named=True)
    assert seed1["best_val"] == 0.6 and seed1["split_seeds"] == "1"


@pytest.mark.slow
def test_reruns_trained_another_way_are_not_shown_as_comparable(tmp_path):
    uri = default_tracking_uri(tmp_path)
    recorder = MlflowRecorder(uri, artifact_root=tmp_path / "mlartifacts")
    recorder.start_sweep(dataset="toy", model="mlp", params={}, tags={
        "omicsweep.metric": "val_accuracy", "omicsweep.fingerprint": "fp", "omicsweep.training_setup": "ddp workers=2"})
    recorder.start_trial("t0", params={}, tags={})
    recorder.log_result("t0", {"best_val": 0.9, "test_accuracy": 0.8}, step=1)
    recorder.end_trial("t0", status="FINISHED")
    for seed in (1000, 2000):
        recorder.start_trial(f"t0-seed{seed}", params={}, role="seed-rerun", tags={
            "omicsweep.seed": str(seed), "omicsweep.rerun_of": "t0", "omicsweep.training_setup": "single cpu=1"})
        recorder.log_result(f"t0-seed{seed}", {"test_accuracy": 0.7}, step=1)
        recorder.end_trial(f"t0-seed{seed}", status="FINISHED")
    recorder.end_sweep(status="FINISHED", summary={})
    row = build_leaderboard(uri).row(0, named=True)
    assert row["seeds"] == 0 and row["test_accuracy_mean"] is None
    assert "single cpu=1" in row["seed_note"] and "ddp workers=2" in row["seed_note"]


def test_statistics_never_print_a_degenerate_p_value():
    same = stats.Predictions(Y, Y.copy())
    assert stats.mcnemar_test([(same, stats.Predictions(Y, Y.copy()))]).p_value is None  # no discordant cell
    assert stats.mcnemar_test([]).p_value is None
    other = stats.Predictions(Y[:10], Y[:10])
    assert stats.mcnemar_test([(same, other)]).note.startswith("test cells differ")
    assert stats.mean_interval([0.8]) is None  # one seed: no interval
    # a constant non-zero difference over seeds made the t-test infinite; McNemar on cells stays finite
    a = stats.Predictions(Y, np.where(_correct(90), Y, 1 - Y))
    b = stats.Predictions(Y, np.where(_correct(80), Y, 1 - Y))
    test = stats.mcnemar_test([(a, b)] * 3)
    assert test.discordant == (30, 0) and 0 < test.p_value < 1e-6
    assert stats.holm([0.01, None, 0.04, 0.03]) == pytest.approx([0.03, None, 0.06, 0.06])
    # other metrics than accuracy: a percentile bootstrap of that metric over the test cells, not accuracy's interval
    from omicsweep.benchmark.metrics import classification_metrics

    y = np.array([0] * 80 + [1] * 20)
    pred = np.where(np.arange(100) < 70, y, 1 - y)  # 70 right, the last 30 wrong: every class-1 cell, 10 of class 0
    proba = np.eye(2)[pred] * 0.8 + 0.1
    low, high, method = stats.metric_interval(stats.Predictions(y, pred, proba), "balanced_accuracy")
    value = classification_metrics(y, proba)["balanced_accuracy"]
    assert method == "bootstrap" and low < value < high and high - low < 0.3
    assert stats.metric_interval(stats.Predictions(y, pred), "balanced_accuracy") is None  # no probabilities saved
    assert stats.scaled_score(0.5, 0.5) == 0.0 and stats.scaled_score(1.0, 0.2) == 1.0
    assert stats.scaled_score(0.9, None) is None and stats.scaled_score(0.9, 1.0) is None


@pytest.mark.slow
def test_summary_across_datasets(tmp_path):
    uri = default_tracking_uri(tmp_path)
    for dataset, mlp_val, maj_val in (("a", 0.9, 0.4), ("b", 0.7, 0.5)):
        _sweep(uri, tmp_path, "mlp", best_vals=[mlp_val], rerun_acc={}, dataset=dataset, fingerprint=dataset)
        _sweep(uri, tmp_path, "majority", best_vals=[maj_val], rerun_acc={}, dataset=dataset, fingerprint=dataset)
    _sweep(uri, tmp_path, "logreg", best_vals=[0.8], rerun_acc={}, dataset="a", fingerprint="a")
    recorder = MlflowRecorder(uri)  # logreg failed on b: no finished trial
    recorder.start_sweep(dataset="b", model="logreg", params={}, tags={
        "omicsweep.metric": "val_accuracy", "omicsweep.fingerprint": "b"})
    recorder.start_trial("bad", params={}, tags={})
    recorder.end_trial("bad", status="FAILED", error="boom")
    recorder.end_sweep(status="FINISHED", summary={})
    summary = {r["model"]: r for r in summarize(build_leaderboard(uri)).iter_rows(named=True)}
    mlp = summary["mlp"]
    assert mlp["datasets"] == 2 and mlp["datasets_failed"] == 0 and mlp["mean_rank"] == 1.0
    assert math.isclose(mlp["mean_scaled_score"], np.mean([(0.85 - 0.35) / 0.65, (0.65 - 0.45) / 0.55]))
    assert summary["logreg"]["datasets"] == 1 and summary["logreg"]["datasets_failed"] == 1
    assert summary["majority"]["mean_scaled_score"] == 0.0


@pytest.mark.slow
def test_sweep_leaderboard_has_seed_statistics(swept):
    import polars as pl

    out, result = swept
    table = pl.read_parquet(out / "leaderboard.parquet")
    assert (table["seeds"] == 2).all() and table["test_accuracy_mean"].is_not_null().all()
    assert (table["cpu_s"] > 0).all() and (table["peak_rss_mb"] > 0).all()
    assert table["p_vs_top"].null_count() == 1  # only the top row has no test against itself
    assert table["test_ci_low"].is_not_null().all() and table["scaled_score"].is_not_null().all()
    # the re-runs saved their test predictions: McNemar pools the best trials (seed 0) and both re-run seeds
    tested = table.filter(table["test_vs_top"].is_not_null())
    assert all("3 seed(s) pooled" in t or "identical" in t for t in tested["test_vs_top"]), tested["test_vs_top"]
    assert "±" in result.stdout and "Across datasets" in result.stdout


@pytest.mark.slow
def test_leaderboard_is_published_to_mlflow(tmp_path):
    """Each experiment's sections on a `leaderboard` run (refreshed, not duplicated); sweeps tagged with rank."""
    from omicsweep.reports.board_mlflow import publish_leaderboard
    from omicsweep.reports.tracking import _client

    uri = default_tracking_uri(tmp_path)
    mlp = _sweep(uri, tmp_path, "mlp", best_vals=[0.9], rerun_acc={})
    majority = _sweep(uri, tmp_path, "majority", best_vals=[0.3], rerun_acc={})
    for _ in range(2):
        published = publish_leaderboard(uri, build_leaderboard(uri))
    client = _client(uri)
    (experiment, run_id), = published.items()
    boards = client.search_runs([experiment], filter_string="tags.`omicsweep.role` = 'leaderboard'")
    assert [b.info.run_id for b in boards] == [run_id]
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"leaderboard.csv", "leaderboard.html", "leaderboard-summary.csv"} <= names
    assert "toy: mlp" in client.get_run(run_id).data.tags["omicsweep.top"]
    assert client.get_run(mlp).data.tags["omicsweep.rank"] == "1"
    assert client.get_run(majority).data.tags["omicsweep.scaled_score"] == "0.0000"
    assert build_leaderboard(uri).height == 2  # the leaderboard run is not a row
