"""scBERT fine-tuning as a user runs it (issue 14, items 2 and 5): the pretraining ablation's leaderboard rows and
the integration paths (predict, reproduce, export) that a fine-tuned scbert goes through like every model."""

from __future__ import annotations

import numpy as np

from omicsweep.reports.leaderboard import build_leaderboard
from omicsweep.reports.tracking import MlflowRecorder, default_tracking_uri

Y = np.array([0, 1] * 20)  # 40 test cells


def _log_sweep(uri, tmp_path, model, trials, *, defaults=None, dataset="pbmc3k"):
    """A finished sweep of `model` on one store whose trials have the given (params, best_val, cells right)."""
    recorder = MlflowRecorder(uri, artifact_root=tmp_path / "mlartifacts")
    recorder.start_sweep(dataset=dataset, model=model, params={f"default.{k}": v for k, v in (defaults or {}).items()},
                         tags={"omicsweep.metric": "val_accuracy", "omicsweep.fingerprint": "fp", "omicsweep.seed": "0"})
    for i, (params, value, right) in enumerate(trials):
        tid = f"{model}_{recorder.parent_id[:6]}_{i}"
        recorder.start_trial(tid, params=params, tags={})
        recorder.log_result(tid, {"best_val": value, "test_accuracy": right / len(Y)}, step=1)
        folder = tmp_path / f"pred-{tid}"
        folder.mkdir()
        pred = np.where(np.arange(len(Y)) < right, Y, 1 - Y)
        np.savez(folder / "test_predictions.npz", y_true=Y, proba=np.eye(2)[pred])
        recorder.log_artifacts(tid, str(folder), artifact_path="checkpoint")
        recorder.end_trial(tid, status="FINISHED")
    recorder.end_sweep(status="FINISHED", summary={"wall_time_s": 3.0})
    return recorder.parent_id


def _rows(table, dataset) -> dict[str, dict]:
    return {row["model"]: row for row in table.iter_rows(named=True) if row["dataset"] == dataset}


def test_pretrained_and_untrained_scbert_are_rows_apart(tmp_path):
    """The ablation: sweeps of scbert with `pretrained` fixed to a run and to none are two rows, each with its own
    best trial, CI and paired test against the top row; a sweep that searched it splits by each trial's value."""
    uri = default_tracking_uri(tmp_path)
    _log_sweep(uri, tmp_path, "logreg", [({"C": 1.0}, 0.95, 38)])
    pre = _log_sweep(uri, tmp_path, "scbert", [({"pretrained": "0123abcd", "lr": 1e-3}, 0.90, 35)],
                     defaults={"pretrained": "0123abcd"})
    none = _log_sweep(uri, tmp_path, "scbert", [({"pretrained": "none", "lr": 1e-3}, 0.80, 30)],
                      defaults={"pretrained": "none"})
    sweep = _log_sweep(uri, tmp_path, "scbert", [({"pretrained": "0123abcd"}, 0.7, 20), ({"pretrained": "none"}, 0.9, 36)],
                       defaults={"pretrained": "none"}, dataset="zheng")
    table = build_leaderboard(uri)
    rows = _rows(table, "pbmc3k")
    assert set(rows) == {"logreg", "scbert (pretrained)", "scbert (no pretraining)"}
    assert rows["scbert (pretrained)"]["sweep_run_ids"] == pre
    assert rows["scbert (no pretraining)"]["sweep_run_ids"] == none
    assert rows["scbert (no pretraining)"]["test_accuracy"] == 30 / 40
    assert rows["scbert (pretrained)"]["role"] == rows["scbert (no pretraining)"]["role"] == "model"  # not "unknown"
    assert rows["scbert (no pretraining)"]["p_vs_top"] is not None
    assert rows["scbert (no pretraining)"]["test_vs_top"].startswith("vs logreg")

    rows = _rows(table, "zheng")
    assert set(rows) == {"scbert (pretrained)", "scbert (no pretraining)"}
    assert rows["scbert (pretrained)"]["test_accuracy"] == 20 / 40
    assert rows["scbert (pretrained)"]["sweep_run_ids"] == rows["scbert (no pretraining)"]["sweep_run_ids"] == sweep
    assert rows["scbert (pretrained)"]["wall_time_s"] == 3.0
    assert rows["scbert (pretrained)"]["test_vs_top"].startswith("vs scbert (no pretraining)")


def _tiny_scbert(batch_size: int):
    """A real scbert (no pretraining, tiny sizes) over 12 genes, ready to predict as `predict` loads one."""
    from omicsweep.benchmark.predict import TrainedModel
    from omicsweep.models import Task, get_model

    entry, genes = get_model("scbert"), [f"G{i}" for i in range(12)]
    config = {"pretrained": "none", "dim": 8, "depth": 1, "heads": 2, "dim_head": 4, "nb_features": 4,
              "batch_size": batch_size, "unfreeze_layers": 1}
    model = entry.build(config, Task(n_features=len(genes), n_classes=2, genes=tuple(genes))).eval()
    return TrainedModel(name="scbert", family="torch", genes=genes, classes=["a", "b"], transform=None, model=model,
                        config=config, featuriser=entry.featurise)


def test_predict_runs_a_torch_model_in_its_own_batch_size():
    """predict fed a torch model all cells of a 4,096-row block at once (4.8 GB peak for 2,140 cells of a dim-16
    scbert over 2,000 genes); it runs in the trial's batch_size, as training did, with the same probabilities."""
    import scipy.sparse as sp

    from omicsweep.benchmark.predict import predict_cells

    trained = _tiny_scbert(batch_size=8)
    seen: list[int] = []
    trained.model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(len(kwargs["counts"])),
                                            with_kwargs=True)
    counts = sp.random(30, 12, density=0.5, format="csr", random_state=0) * 20
    counts.data = np.round(counts.data)
    result = predict_cells(trained, counts)
    assert seen == [8, 8, 8, 6]
    trained.config["batch_size"] = 64
    assert np.allclose(predict_cells(trained, counts).probability, result.probability, atol=1e-5)


def test_agreement_through_a_label_map_and_the_crosstab():
    """Zheng's sorted labels are not pbmc3k's class names: the agreement counts cells whose label the map sends
    to a class the model knows; the table says what each true label was called."""
    import pandas as pd

    from omicsweep.benchmark.predict import label_agreement

    truth = pd.Series(["CD19+ B"] * 3 + ["CD56+ NK"] * 2 + ["CD34+"])
    predicted = ["B", "B", "NK", "NK", "NK", "B"]
    plain = label_agreement(truth, predicted, ["B", "NK"])
    assert plain.known == 0 and np.isnan(plain.agreement)
    assert plain.table[0] == ("CD19+ B", 3, [("B", 2), ("NK", 1)])
    mapped = label_agreement(truth, predicted, ["B", "NK"], mapping={"CD19+ B": "B", "CD56+ NK": "NK"})
    assert (mapped.known, mapped.others) == (5, 1) and mapped.agreement == 4 / 5
