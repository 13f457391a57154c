"""The leaderboard over a tracking store: seeds as mean +/- sd, paired tests, failures with errors, resources."""

from __future__ import annotations

import math

import pytest

from omicsweep.reports.leaderboard import build_leaderboard, paired_p_value, render_leaderboard, write_leaderboard
from omicsweep.reports.tracking import MlflowRecorder, default_tracking_uri


def test_paired_p_value():
    assert paired_p_value({1: 0.9, 2: 0.8}, {1: 0.9, 2: 0.8}) == 1.0
    assert paired_p_value({1: 0.9}, {1: 0.5}) is None  # one pair: no test
    p = paired_p_value({1: 0.90, 2: 0.85, 3: 0.88}, {1: 0.70, 2: 0.72, 3: 0.69})
    assert 0 < p < 0.05


def _sweep(uri, tmp_path, model, *, best_vals, rerun_acc, failed_error=None):
    recorder = MlflowRecorder(uri, artifact_root=tmp_path / "mlartifacts")
    recorder.start_sweep(dataset="toy", model=model, params={}, tags={"omicsweep.metric": "val_accuracy"})
    for i, value in enumerate(best_vals):
        tid = f"{model}_{i}"
        recorder.start_trial(tid, params={"i": i}, tags={})
        recorder.log_result(tid, {"best_val": value, "test_accuracy": value - 0.05, "test_macro_f1": value - 0.1,
                                  "cpu_s": 2.0, "peak_rss_mb": 100.0 + i}, step=1)
        recorder.end_trial(tid, status="FINISHED")
    if failed_error:
        recorder.start_trial(f"{model}_bad", params={}, tags={})
        recorder.end_trial(f"{model}_bad", status="FAILED", error=failed_error)
    best = f"{model}_{max(range(len(best_vals)), key=best_vals.__getitem__)}"
    for seed, acc in rerun_acc.items():
        key = f"{best}-seed{seed}"
        recorder.start_trial(key, params={}, tags={"omicsweep.seed": str(seed), "omicsweep.rerun_of": best},
                             role="seed-rerun")
        recorder.log_result(key, {"test_accuracy": acc, "test_macro_f1": acc - 0.1, "cpu_s": 1.0}, step=1)
        recorder.end_trial(key, status="FINISHED")
    recorder.end_sweep(status="FINISHED", summary={"wall_time_s": 10.0, "rerun_wall_s": 5.0})


def test_leaderboard_rows_seeds_tests_failures_resources(tmp_path):
    from rich.console import Console

    uri = default_tracking_uri(tmp_path)
    _sweep(uri, tmp_path, "mlp", best_vals=[0.7, 0.9], rerun_acc={1000: 0.90, 2000: 0.86, 3000: 0.88},
           failed_error="ConfigError: config loss='bogus' is not supported")
    _sweep(uri, tmp_path, "majority", best_vals=[0.3], rerun_acc={1000: 0.30, 2000: 0.31, 3000: 0.29})
    table = build_leaderboard(uri)
    rows = {r["model"]: r for r in table.iter_rows(named=True)}
    assert table["model"].to_list() == ["mlp", "majority"]  # best validation first
    mlp, majority = rows["mlp"], rows["majority"]
    assert mlp["best_val"] == 0.9 and math.isclose(mlp["test_accuracy"], 0.85)
    assert math.isclose(mlp["test_accuracy_mean"], 0.88) and math.isclose(mlp["test_accuracy_sd"], 0.02)
    assert mlp["seeds"] == 3 and mlp["seed_values"] == "1000,2000,3000"
    assert mlp["p_vs_top"] is None and 0 < majority["p_vs_top"] < 0.01
    assert mlp["trials_finished"] == 2 and mlp["trials_failed"] == 1 and "bogus" in mlp["errors"]
    assert mlp["wall_time_s"] == 15.0 and mlp["cpu_s"] == 2 * 2.0 + 3 * 1.0 and mlp["peak_rss_mb"] == 101.0
    console = Console(width=200, record=True)
    render_leaderboard(table, console)
    text = console.export_text()
    assert "0.880 ± 0.020" in text and "failed mlp mlp_bad: ConfigError" in text
    csv, parquet = write_leaderboard(table, tmp_path)
    assert csv.exists() and parquet.exists()


@pytest.mark.slow
def test_sweep_leaderboard_has_seed_statistics(swept):
    import polars as pl

    out, result = swept
    table = pl.read_parquet(out / "leaderboard.parquet")
    assert (table["seeds"] == 2).all() and table["test_accuracy_mean"].is_not_null().all()
    assert (table["cpu_s"] > 0).all() and (table["peak_rss_mb"] > 0).all()
    assert table["p_vs_top"].null_count() == 1  # only the top row has no test against itself
    assert "±" in result.stdout
