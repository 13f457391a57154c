"""A fine-tuned scbert outside the machine it trained on (issue 14): `export` bundles the frozen backbone's pinned
pretraining checkpoint and its vocabulary into the MLflow model, and `predict` reports the input's coverage of the
model's vocabulary (refusing one below min_vocab_coverage, as training does)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_one_line_error, load_registered
from test_scbert import write_checkpoint

NAME = "pbmc-scbert"


@pytest.fixture(scope="module")
def finetuned(pbmc_store, tmp_path_factory):
    """A one-epoch scbert trial on a frozen pretrained backbone whose pretrain.json holds no gene list (the
    vocabulary is a text file beside it), run in this process and tracked as a sweep tracks one: (run folder,
    run id, checkpoint folder, vocabulary file, vocabulary)."""
    from omicsweep.datasets import open_store

    root = tmp_path_factory.mktemp("scbert-export")
    vocabulary = list(map(str, open_store(pbmc_store).genes()))[::2]
    folder, _ = write_checkpoint(root / "ckpt", vocabulary)
    meta = json.loads((folder / "pretrain.json").read_text())
    del meta["genes"]  # pretrained before pretrain.json held them: `vocabulary=` names them
    (folder / "pretrain.json").write_text(json.dumps(meta))
    genes_file = root / "vocabulary.txt"
    genes_file.write_text("\n".join(vocabulary) + "\n")
    runs = root / "run"
    run = _tracked_trial(pbmc_store, runs, root / "trial", {"pretrained": str(folder), "vocabulary": str(genes_file),
                                                            "max_epochs": 1, "unfreeze_layers": 0})
    return runs, run, folder, genes_file, vocabulary


def _tracked_trial(store_path, runs, files, settings) -> str:
    """`omicsweep train`'s one trial without Ray: the model's defaults, `settings` and `prepare`'s pins, trained by
    execute_trial; its checkpoint files logged as the sweep logs them. The trial's run id."""
    import torch

    from omicsweep.benchmark.space import load_space
    from omicsweep.benchmark.sweep import write_dataset_files
    from omicsweep.benchmark.trial import TrialContext, execute_trial
    from omicsweep.datasets import open_store
    from omicsweep.models import Task, get_model
    from omicsweep.reports.tracking import MlflowRecorder, default_tracking_uri
    from omicsweep.schema import CHECKPOINT_ARTIFACTS, CONFIG_TAG, TRAINING_SETUP_TAG

    entry, store = get_model("scbert"), open_store(store_path)
    config = {**load_space(entry.space_file).defaults, **settings}
    pins, _ = entry.prepared(config, Task(n_features=len(store.genes()), n_classes=len(store.classes),
                                          genes=tuple(map(str, store.genes()))))
    context = TrialContext(store_path=str(store_path), fingerprint=store.fingerprint, model="scbert",
                           defaults={**config, **pins}, seed=0, metric="accuracy")
    files.mkdir()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        execute_trial(context, {}, lambda metrics, written: [write(str(files / name))
                                                             for name, write in (written or {}).items()])
    finally:
        torch.set_num_threads(threads)
    write_dataset_files(store_path, files)
    recorder = MlflowRecorder(default_tracking_uri(runs), artifact_root=runs / "mlartifacts")
    recorder.start_sweep(dataset="pbmc68k", model="scbert", params={}, tags={})
    recorder.start_trial("t0", params={}, tags={CONFIG_TAG: json.dumps({**context.defaults, "seed": 0}),
                                                TRAINING_SETUP_TAG: "single cpu=1 gpu=0"})
    recorder.log_artifacts("t0", str(files), artifact_path=CHECKPOINT_ARTIFACTS)
    recorder.end_trial("t0", status="FINISHED")
    recorder.end_sweep(status="FINISHED", summary={})
    return recorder.trial_runs["t0"]


@pytest.mark.filterwarnings("ignore::UserWarning")  # MLflow's advice to add type hints to predict
def test_an_exported_scbert_predicts_without_its_pretraining_checkpoint(finetuned, cli, pbmc_adata, tmp_path):
    """The registered pyfunc loaded only where the pinned module.pt and the vocabulary file still were; it
    carries copies of both (module.pt's sha256 checked against the pin) and labels cells the same without them."""
    import mlflow
    import pandas as pd

    from omicsweep.errors import InputError
    from omicsweep.models.scbert import _CHECKPOINTS
    from omicsweep.reports.tracking import default_tracking_uri

    runs, run, folder, genes_file, _ = finetuned
    code, stdout, stderr = cli("export", "--run", run, "--name", NAME, "--runs", runs)
    assert code == 0, stdout + stderr
    frame = pd.DataFrame(pbmc_adata.raw.X[:30].toarray(), columns=list(pbmc_adata.raw.var_names))
    before = load_registered(runs, NAME).predict(frame)
    previous = mlflow.get_tracking_uri()
    moved = [(path, path.with_name(path.name + ".moved")) for path in (folder, genes_file)]
    try:
        for path, away in moved:
            path.rename(away)
        _CHECKPOINTS._items.clear()  # as a new process starts: nothing read from the original checkpoint
        model = load_registered(runs, NAME)
        after = model.predict(frame)
        assert after["predicted_label"].tolist() == before["predicted_label"].tolist()
        assert np.allclose(after["predicted_probability"], before["predicted_probability"], atol=1e-6)
        # the bundled copy is checked: a module.pt that is not the pinned one is refused
        mlflow.set_tracking_uri(default_tracking_uri(runs))  # the registry's too: not a ./mlflow.db
        local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{NAME}/1", dst_path=str(tmp_path))
        [bundled] = list(Path(local).rglob("module.pt"))
        bundled.write_bytes(bundled.read_bytes() + b"\0")
        with pytest.raises(InputError, match="sha256"):
            mlflow.pyfunc.load_model(local)
    finally:
        mlflow.set_tracking_uri(previous)
        for path, away in moved:
            if away.exists():
                away.rename(path)


def test_predict_reports_the_inputs_coverage_of_the_vocabulary(finetuned, cli, pbmc_adata, tmp_path):
    """The coverage that matters is of the model's vocabulary by the input's genes, not of the training store's;
    below min_vocab_coverage it is the same one-line error as in training."""
    runs, run, _, _, vocabulary = finetuned
    raw = pbmc_adata.raw.to_adata()
    few = raw[:, :100].copy()
    present = len(set(vocabulary) & set(map(str, few.var_names)))
    whole, partial = tmp_path / "whole.h5ad", tmp_path / "few.h5ad"
    raw.write_h5ad(whole)
    few.write_h5ad(partial)
    code, stdout, stderr = cli("predict", whole, "--run", run, "--runs", runs, "--out", tmp_path / "a.csv")
    assert code == 0, stdout + stderr
    text = " ".join(stdout.split())
    assert f"{len(vocabulary)} of {len(vocabulary)} vocabulary genes present in whole.h5ad (100.0%)" in text
    code, stdout, stderr = cli("predict", partial, "--run", run, "--runs", runs, "--out", tmp_path / "b.csv")
    assert_one_line_error(code, stdout, stderr, f"{present} of {len(vocabulary)} vocabulary genes present in "
                          "few.h5ad", "min_vocab_coverage=0.5")
    assert not (tmp_path / "b.csv").exists()
