"""Pretraining (scBERT masked expression modelling): the trial in steps, its metrics, checkpoints and resume, the
`omicsweep pretrain` run and sweep, the leaderboard section, `reproduce`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from omicsweep.benchmark.pretrain import META_FILE, MODULE_FILE, STATE_FILE
from omicsweep.benchmark.space import load_space
from omicsweep.benchmark.trial import TrialContext, execute_trial
from omicsweep.datasets.open import open_store
from omicsweep.datasets.store import StoreWriter
from omicsweep.models import get_model

N_GENES = 128


def write_structured_corpus(out: Path, *, cells: int = 480, seed: int = 0) -> Path:
    """A corpus whose bins depend on the gene: one housekeeping gene holds most counts, the others have
    gene-specific Poisson levels, so their scBERT bins (2..5) differ by gene and a model that learns the genes
    beats the most-common-bin baseline."""
    rng = np.random.default_rng(seed)
    levels = np.exp(rng.uniform(np.log(0.5), np.log(30), N_GENES))
    counts = rng.poisson(levels, size=(cells, N_GENES)) * (rng.random((cells, N_GENES)) < 0.7)
    counts[:, 0] = 3000
    n_val = cells // 5
    with StoreWriter(out, genes=np.array([f"G{i}" for i in range(N_GENES)]), nnz_per_row_hint=N_GENES) as writer:
        writer.append(sp.csr_matrix(counts.astype(np.float32)))
        writer.finish(codes=np.zeros(cells, np.int64), classes=["unlabelled"],
                      split_codes=np.repeat(np.array([0, 1], np.int8), [cells - n_val, n_val]),
                      cell_ids=np.char.add("c", np.arange(cells).astype(str)),
                      provenance={"source": "test", "value_kind": "counts", "preprocessing": []})
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_structured_corpus(tmp_path_factory.mktemp("pretrain") / "corpus.zarr")


def tiny_config(**overrides) -> dict:
    space = load_space(get_model("scbert_pretrain").space_file)
    return {**space.defaults, **space.tiny, "lr": 3e-3, **overrides}


def run_trial(corpus: Path, config: dict, *, checkpoint_root=None, stop_after: int | None = None, seed: int = 3):
    """Every result of one in-process trial (and its checkpoint files); `stop_after` results, then it raises as a
    killed trial would."""
    context = TrialContext(store_path=str(corpus), fingerprint=open_store(corpus).fingerprint,
                           model="scbert_pretrain", defaults=config, seed=seed, metric="mlm_loss",
                           checkpoint_root=None if checkpoint_root is None else str(checkpoint_root))
    results, files = [], []

    class Killed(Exception):
        pass

    def report(metrics, ckpt):
        results.append(metrics)
        files.append(ckpt or {})
        if stop_after is not None and len(results) >= stop_after:
            raise Killed

    try:
        execute_trial(context, {}, report)
    except Killed:
        pass
    return results, files


def test_pretraining_reports_mlm_metrics_and_beats_the_baseline(corpus, tmp_path):
    results, files = run_trial(corpus, tiny_config(max_steps=60, eval_every=20, checkpoint_every=60, max_epochs=3))
    assert [r["step"] for r in results] == [20, 40, 60] and [r["epoch"] for r in results] == [1, 2, 3]
    last = results[-1]
    for key in ("val_mlm_loss", "val_mlm_accuracy", "val_mlm_baseline_accuracy", "train_tokens_per_s",
                "train_cells_per_s", "train_loss", "best_val"):
        assert np.isfinite(last[key]), key
    assert last["best_val"] == -min(r["val_mlm_loss"] for r in results)
    assert results[-1]["val_mlm_loss"] < results[0]["val_mlm_loss"]
    assert 0.2 < last["val_mlm_baseline_accuracy"] < 0.9  # the bins vary: the baseline is not trivially right
    assert last["val_mlm_accuracy"] > last["val_mlm_baseline_accuracy"], last
    assert len({r["val_mlm_baseline_accuracy"] for r in results}) == 1  # the same masked val cells every time
    assert not files[0] and sorted(files[-1]) == sorted([MODULE_FILE, META_FILE, STATE_FILE])
    for name, write in files[-1].items():
        write(str(tmp_path / name))
    meta = json.loads((tmp_path / META_FILE).read_text())
    assert meta["step"] == 60 and meta["n_genes"] == N_GENES and len(meta["vocabulary_fingerprint"]) == 16
    from omicsweep.models import Task
    from omicsweep.models.performer import build_performer

    module = build_performer(meta["config"], Task(n_features=N_GENES, n_classes=7))
    module.load_state_dict(torch.load(tmp_path / MODULE_FILE, weights_only=True))


def test_a_trial_with_gene2vec_reads_the_vectors_through_load_priors(corpus, tmp_path):
    """The trial builds through the registry (load_priors reads the file once in its process): the frozen gene
    embedding holds the file's vectors after training."""
    config = tiny_config(max_steps=2, eval_every=2, checkpoint_every=2, max_epochs=1)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(N_GENES, int(config["dim"]))).astype(np.float32)
    path = tmp_path / "g2v.txt"
    path.write_text("".join(f"G{i} {' '.join(map(repr, map(float, row)))}\n" for i, row in enumerate(vectors)))
    results, files = run_trial(corpus, {**config, "gene_embedding": "gene2vec", "gene2vec": str(path)})
    assert [r["step"] for r in results] == [2]
    files[-1][MODULE_FILE](str(tmp_path / MODULE_FILE))
    state = torch.load(tmp_path / MODULE_FILE, weights_only=True)
    np.testing.assert_allclose(state["gene_emb.weight"][:N_GENES].numpy(), vectors, rtol=1e-6)


def test_a_killed_trial_resumes_at_the_same_step_and_stream_position(corpus, tmp_path):
    """Killed after its second step group (checkpointed), the trial run again continues from step 8: the
    remaining groups' losses are those of an uninterrupted run (CPU, same seed)."""
    config = tiny_config(max_steps=16, eval_every=4, checkpoint_every=8, max_epochs=4, warmup_steps=3,
                         schedule="cosine")
    reference, _ = run_trial(corpus, config)
    killed, _ = run_trial(corpus, config, checkpoint_root=tmp_path / "ck", stop_after=3)  # groups 1-3; ckpt at 8
    resumed, _ = run_trial(corpus, config, checkpoint_root=tmp_path / "ck")
    assert [r["step"] for r in killed] == [4, 8, 12] and [r["step"] for r in resumed] == [12, 16]
    keys = ("train_loss", "val_mlm_loss", "val_mlm_accuracy", "train_lr", "best_val")
    assert [[r[k] for k in keys] for r in resumed] == [[r[k] for k in keys] for r in reference[2:]]
    meta = json.loads(next((tmp_path / "ck").iterdir()).joinpath(META_FILE).read_text())
    assert meta["step"] == 16 and meta["streams"][0]["batch"] > 0


def test_checkpoint_of_another_vocabulary_is_refused(corpus, tmp_path):
    from omicsweep.benchmark.pretrain import checkpoint_folder_for
    from omicsweep.errors import InputError

    config = tiny_config(max_steps=4, eval_every=4, checkpoint_every=4, max_epochs=1)
    run_trial(corpus, config, checkpoint_root=tmp_path / "ck")
    folder = checkpoint_folder_for(str(tmp_path / "ck"), 3, {**config, "seed": 3})
    meta = json.loads((folder / META_FILE).read_text())
    (folder / META_FILE).write_text(json.dumps({**meta, "vocabulary_fingerprint": "0" * 16}))
    with pytest.raises(InputError, match="another gene vocabulary"):
        run_trial(corpus, config, checkpoint_root=tmp_path / "ck")


def test_bad_pretraining_settings_are_one_line_errors(corpus):
    from omicsweep.errors import ConfigError

    for key, value in (("max_steps", 0), ("eval_every", "often"), ("mask_prob", 1.5)):
        with pytest.raises(ConfigError, match=key):
            run_trial(corpus, tiny_config(**{key: value}))


# ---- omicsweep pretrain: tracked run, leaderboard section, reproduce, sweep with ASHA ---------------------------
TINY_SETS = ["--set", "dim=16", "--set", "depth=1", "--set", "heads=2", "--set", "dim_head=8", "--set",
             "nb_features=8", "--set", "val_cells=32", "--set", "lr=3e-3"]


def _trial_runs(runs: Path):
    from omicsweep.reports.tracking import _client, default_tracking_uri
    from omicsweep.schema import ROLE_TAG, TRIAL_ROLE

    client = _client(default_tracking_uri(runs))
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client, client.search_runs(experiments, filter_string=f"tags.`{ROLE_TAG}` = '{TRIAL_ROLE}'")


@pytest.mark.slow
def test_pretrain_run_is_tracked_on_its_own_leaderboard_section_and_reproduces(ray_session, corpus, tmp_path, cli):
    import polars as pl

    from omicsweep.schema import CHECKPOINT_ARTIFACTS, MLM_ACCURACY, MLM_BASELINE_ACCURACY, MLM_LOSS, METRIC_TAG

    runs = tmp_path / "runs"
    code, stdout, stderr = cli("pretrain", "--corpus", corpus, "--runs", runs, "--max-steps", 8, "--eval-every", 4,
                               *TINY_SETS)
    assert code == 0, stderr
    client, (trial,) = _trial_runs(runs)
    assert trial.data.tags[METRIC_TAG] == MLM_LOSS
    history = client.get_metric_history(trial.info.run_id, MLM_LOSS)
    assert [m.step for m in history] == [1, 2]
    assert {MLM_ACCURACY, MLM_BASELINE_ACCURACY, "train_tokens_per_s", "train_cells_per_s"} <= set(trial.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(trial.info.run_id, CHECKPOINT_ARTIFACTS)}
    assert {f"{CHECKPOINT_ARTIFACTS}/{MODULE_FILE}", f"{CHECKPOINT_ARTIFACTS}/{META_FILE}"} <= artifacts
    board = pl.read_csv(runs / "leaderboard.csv")
    section = board.filter(pl.col("metric") == MLM_LOSS)
    assert section["model"].to_list() == ["scbert_pretrain"]
    assert section[MLM_LOSS][0] == pytest.approx(-trial.data.metrics["best_val"])
    assert section[MLM_BASELINE_ACCURACY][0] == pytest.approx(trial.data.metrics[MLM_BASELINE_ACCURACY])
    assert "val MLM loss" in stdout and "baseline acc" in stdout
    code, stdout, stderr = cli("reproduce", trial.info.run_id, "--runs", runs)
    assert code == 0 and "match exactly" in stdout, stdout + stderr


@pytest.mark.slow
def test_pretraining_sweep_with_asha_completes(ray_session, corpus, tmp_path, cli):
    import polars as pl

    from omicsweep.schema import MLM_LOSS, SCHEDULER_TAG

    runs = tmp_path / "runs"
    code, stdout, stderr = cli("pretrain", "--corpus", corpus, "--runs", runs, "--trials", 3, "--concurrency", 2,
                               "--max-steps", 12, "--eval-every", 4, *TINY_SETS)
    assert code == 0, stderr
    client, trials = _trial_runs(runs)
    assert len(trials) == 3 and all(t.info.status == "FINISHED" for t in trials)
    assert len({t.data.params["lr"] for t in trials} | {t.data.params["mask_prob"] for t in trials}) > 1
    row = pl.read_csv(runs / "leaderboard.csv").filter(pl.col("metric") == MLM_LOSS).row(0, named=True)
    assert row["trials_finished"] == 3 and row["search"] == "tpe/asha"
    assert row[MLM_LOSS] == pytest.approx(min(-t.data.metrics["best_val"] for t in trials))


@pytest.mark.slow
def test_pretrain_resumes_after_the_driver_is_killed(ray_session, corpus, tmp_path, cli):
    """kill -9 `omicsweep pretrain` after its first checkpoint; `--resume` continues the run from that checkpoint
    (its first result is the next step group) and ends on the uninterrupted run's final validation loss."""
    import os
    import signal
    import subprocess
    import sys
    import tempfile
    import time

    from ray_procs import end_cluster, ray_env

    from omicsweep.schema import CONFIG_TAG, MLM_LOSS

    runs, temp_dir = tmp_path / "runs", tempfile.mkdtemp(prefix="omr")
    sets = [*TINY_SETS, "--set", "checkpoint_every=8"]
    args = [str(Path(sys.executable).parent / "omicsweep"), "pretrain", "--corpus", str(corpus), "--runs", str(runs),
            "--max-steps", "96", "--eval-every", "4", *sets]
    driver = subprocess.Popen(args, env=ray_env(RAY_TMPDIR=temp_dir), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.time() + 240
        while not list((runs / "checkpoints").glob(f"*/{META_FILE}")) and time.time() < deadline:
            assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
            time.sleep(0.05)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
        end_cluster(temp_dir)
    (folder,) = (runs / "checkpoints").iterdir()
    killed_at = json.loads((folder / META_FILE).read_text())["step"]
    assert 8 <= killed_at < 96
    code, stdout, stderr = cli("pretrain", "--resume", runs)
    assert code == 0, stdout + stderr
    client, (trial,) = _trial_runs(runs)
    epochs = [int(m.value) for m in client.get_metric_history(trial.info.run_id, "epoch")]
    assert epochs[0] == killed_at // 4 + 1 and epochs[-1] == 24
    config = json.loads(trial.data.tags[CONFIG_TAG])
    reference, _ = run_trial(corpus, {**config}, seed=0)
    assert trial.data.metrics[MLM_LOSS] == reference[-1][MLM_LOSS]


@pytest.mark.parametrize("args, needles", [
    ([], ["--corpus"]),
    (["--corpus", "{tmp}/none.zarr"], ["none.zarr", "not found"]),
    (["--corpus", "{corpus}", "--set", "mask_prob=2"], ["mask_prob"]),
    (["--corpus", "{corpus}", "--set", "attention=flash"], ["attention", "favor, exact"]),
    (["--corpus", "{corpus}", "--set", "gene_embedding=gene2vec"], ["gene2vec=PATH"]),
    (["--corpus", "{corpus}", "--set", "gene_embedding=gene2vec", "--set", "gene2vec={tmp}/g2v.txt"], ["g2v.txt"]),
])
def test_bad_pretrain_input_is_one_line_exit_2_and_writes_nothing(corpus, tmp_path, cli, args, needles):
    from conftest import assert_one_line_error

    args = [a.format(tmp=tmp_path, corpus=corpus) for a in args]
    assert_one_line_error(*cli("pretrain", "--runs", tmp_path / "runs", *args), *needles)
    assert not (tmp_path / "runs").exists()


def test_a_trial_whose_last_checkpoint_is_written_reports_its_final_result_again(corpus, tmp_path):
    """Killed between the last checkpoint and its report (or started again on a finished checkpoint), the trial
    reports that final state once instead of nothing."""
    config = tiny_config(max_steps=8, eval_every=4, checkpoint_every=4, max_epochs=2)
    first, _ = run_trial(corpus, config, checkpoint_root=tmp_path / "ck")
    again, files = run_trial(corpus, config, checkpoint_root=tmp_path / "ck")
    assert [r["step"] for r in again] == [8] and files[0]
    assert again[0]["val_mlm_loss"] == first[-1]["val_mlm_loss"] and again[0]["best_val"] == first[-1]["best_val"]


def test_accumulation_with_deepspeed_is_refused(corpus, tmp_path, cli):
    from conftest import assert_one_line_error

    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    assert_one_line_error(*cli("pretrain", "--corpus", corpus, "--runs", tmp_path / "runs", "--deepspeed", ds,
                               "--set", "accumulation=2"), "accumulation=2", "gradient_accumulation_steps")
    assert not (tmp_path / "runs").exists()


def test_accumulated_step_uses_the_mean_of_its_micro_batch_losses(corpus):
    """accumulation=2: one optimiser step moves the weights by -lr x the gradient of (loss_1 + loss_2) / 2, each
    loss on its micro-batch's masked positions only (SGD's first step: the momentum buffer is the gradient)."""
    import copy

    from omicsweep.benchmark.pretrain import _mask, _one_step, _setup
    from omicsweep.benchmark.strategies import Strategy
    from omicsweep.models.performer import mlm_loss

    config = {**tiny_config(accumulation=2, optimizer="sgd", lr=0.5, grad_clip=0, weight_decay=0.0), "seed": 0}
    context = TrialContext(store_path=str(corpus), fingerprint=open_store(corpus).fingerprint,
                           model="scbert_pretrain", defaults=config, seed=0)
    torch.manual_seed(0)
    run = _setup(context, config, Strategy())
    reference = copy.deepcopy(run["model"])
    batches = list(run["stream"])[:2]
    _one_step(0, iter(batches), run["settings"], run)
    losses = [mlm_loss(reference(_mask(b, 0, 0, 0, i, mask_prob=0.15)[0]), _mask(b, 0, 0, 0, i, mask_prob=0.15)[1])
              for i, b in enumerate(batches)]
    (sum(losses) / 2).backward()
    for (name, moved), before in zip(run["model"].named_parameters(), reference.parameters()):
        expected = before.detach() - 0.5 * (before.grad if before.grad is not None else 0)
        assert torch.allclose(moved.detach(), expected, atol=1e-6), name


def test_sweep_of_the_pretraining_model_points_at_pretrain(corpus, tmp_path, cli):
    from conftest import assert_one_line_error

    code, stdout, stderr = cli("sweep", "--dataset", corpus, "--model", "scbert_pretrain", "--runs", tmp_path / "runs")
    assert_one_line_error(code, stdout, stderr, "scbert_pretrain", "omicsweep pretrain --corpus", "docs/pretrain.md")
    assert not (tmp_path / "runs").exists()
