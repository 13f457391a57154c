"""`sweep --vary KEY=V1,V2` (benchmark/variants.py): each model that knows KEY is one pair of the grid per value,
with its own parent run, seed re-runs and leaderboard row; bad --vary input and a searched `pretrained` choice
that cannot build the defaults' network fail at plan time, in one line."""

from __future__ import annotations

import pytest

from conftest import assert_one_line_error
from omicsweep.benchmark.plan import SweepOptions, build_plan
from omicsweep.errors import ConfigError


def _plan(store, tmp_path, **options):
    return build_plan(SweepOptions(dataset=str(store), runs=tmp_path / "run", **options))


def test_a_model_knowing_the_key_is_one_request_per_value(pbmc_store, tmp_path):
    plan = _plan(pbmc_store, tmp_path, model="mlp,majority", trials=2, vary="lr=1e-3,0.01")
    assert [(r.model, r.variant) for r in plan.requests] == [("mlp", "lr=1e-3"), ("mlp", "lr=0.01"),
                                                              ("majority", "")]
    assert [r.space.defaults["lr"] for r in plan.requests[:2]] == [1e-3, 0.01]
    assert all("lr" not in {d.name for d in r.space.dimensions} for r in plan.requests[:2])
    assert [r.key for r in plan.requests][0].endswith("/mlp[lr=1e-3]")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("vary, settings, says", [
    ("nosuchkey=1,2", [], "no model of this sweep"),
    ("lr=", [], "empty value"),
    ("lr=1e-3,", [], "empty value"),
    ("lr=1e-3,0.001", [], "given twice"),
    ("lr=1e-3,1e-2", ["lr=1e-4"], "--set lr"),
    ("lr", [], "KEY=V1,V2"),
])
def test_bad_vary_is_one_line_config_error(vary, settings, says, pbmc_store, tmp_path, cli):
    with pytest.raises(ConfigError, match=says):
        _plan(pbmc_store, tmp_path, model="mlp,majority", vary=vary, settings=settings)
    if vary.startswith("nosuch"):
        assert_one_line_error(*cli("sweep", "--dataset", pbmc_store, "--model", "mlp", "--vary", vary, "--runs",
                                   tmp_path / "run"), "--vary nosuchkey")


def test_vary_pretrained_gives_the_none_variant_the_checkpoint_as_backbone(pbmc_store, tmp_path):
    from test_scbert import write_checkpoint

    from omicsweep.datasets import open_store

    genes = list(map(str, open_store(pbmc_store).genes()))
    folder, _ = write_checkpoint(tmp_path / "ckpt", genes[::2])
    plan = _plan(pbmc_store, tmp_path, model="scbert", vary=f"pretrained={folder},none")
    pre, none = plan.requests
    assert (pre.variant, none.variant) == (f"pretrained={folder}", "pretrained=none")
    assert none.space.defaults["backbone_from"] == str(folder) and none.space.defaults["pretrained"] == "none"
    assert none.space.defaults["dim"] == pre.space.defaults["dim"] == 8  # the same network for both
    assert any("takes backbone_from" in line for line in plan.notes)


def test_a_searched_pretrained_choice_without_backbone_from_fails_at_plan_time(pbmc_store, tmp_path):
    """Today's failure inside the worker: the defaults (pretrained none) pin the untrained sizes, a trial of
    `pretrained: CKPT` then meets them. Now the plan says so; with backbone_from the same space plans."""
    from test_scbert import write_checkpoint

    from omicsweep.datasets import open_store
    from omicsweep.models import get_model

    genes = list(map(str, open_store(pbmc_store).genes()))
    folder, _ = write_checkpoint(tmp_path / "ckpt", genes[::2])
    space = tmp_path / "scbert.yaml"
    text = get_model("scbert").space_file.read_text()
    space.write_text(text.replace("space:\n", f"space:\n  pretrained: {{choice: [{folder}, none]}}\n", 1))
    with pytest.raises(ConfigError, match="backbone_from=CHECKPOINT") as caught:
        _plan(pbmc_store, tmp_path, model="scbert", space=space)
    assert "\n" not in str(caught.value)
    plan = _plan(pbmc_store, tmp_path, model="scbert", space=space, settings=[f"backbone_from={folder}"])
    assert plan.requests[0].space.defaults["checkpoint_path"] == str(folder)


@pytest.mark.slow
def test_one_sweep_is_the_pretraining_ablation(ray_session, cli, pbmc_store, tmp_path):
    """`sweep --model scbert,majority --vary pretrained=CKPT,none`: two scbert sweeps (parent runs tagged with
    their variant), each with its seed re-run, and majority once; the leaderboard has both scbert rows with
    seeds, and `--resume` of the finished folder rebuilds the same pairs (all kept)."""
    import polars as pl

    from test_scbert import write_checkpoint

    from omicsweep.datasets import open_store
    from omicsweep.reports.tracking import _client, default_tracking_uri

    genes = list(map(str, open_store(pbmc_store).genes()))
    folder, _ = write_checkpoint(tmp_path / "ckpt", genes[::8], depth=1)  # a 96-gene vocabulary: short sequences
    runs = tmp_path / "run"
    code, stdout, stderr = cli("sweep", "--dataset", "pbmc68k", "--model", "scbert,majority", "--vary",
                               f"pretrained={folder},none", "--trials", "1", "--reruns", "1", "--max-epochs", "1",
                               "--set", "batch_size=64", "--runs", runs)
    assert code == 0, stdout + stderr
    assert "takes backbone_from" in stderr and "scbert[pretrained=none]: 1 finished" in stderr
    assert "pbmc68k/scbert[pretrained=none]  running" in stderr  # the progress bar names its variant
    client = _client(default_tracking_uri(runs))
    parents = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                 filter_string="tags.`omicsweep.role` = 'sweep'")
    variants = sorted(r.data.tags.get("omicsweep.variant", "") for r in parents)
    assert variants == ["", f"pretrained={folder}", "pretrained=none"]
    board = pl.read_csv(runs / "leaderboard.csv")
    rows = {row["model"]: row for row in board.iter_rows(named=True)}
    assert set(rows) == {"scbert (pretrained)", "scbert (no pretraining)", "majority"}
    assert all(rows[m]["seeds"] == 1 for m in rows)
    code, stdout, stderr = cli("sweep", "--resume", runs)
    assert code == 0, stdout + stderr
    assert "scbert[pretrained=none]: finished before" in stderr and f"scbert[pretrained={folder}]" in stderr


def test_leaderboard_labels_a_varied_key_as_model_key_value():
    """A sweep tagged with its --vary value is a row apart: 'mlp (lr=0.01)'; a `pretrained` variant keeps the
    existing labels (from the param). The runs are MLflow's run records as the leaderboard reads them (tags,
    params): a tracking store costs ~20 s here, and the real sweep above covers the pretrained rows end to end."""
    from types import SimpleNamespace

    from omicsweep.reports.leaderboard import _role_of, _row_key

    def sweep(model, variant, **params):
        tags = {"omicsweep.model": model, "omicsweep.variant": variant}
        return SimpleNamespace(data=SimpleNamespace(tags=tags, params=params))

    assert _row_key(sweep("mlp", "lr=0.01"))[0] == "mlp (lr=0.01)"
    assert _row_key(sweep("scbert", "pretrained=none", **{"default.pretrained": "none"}))[0] == \
        "scbert (no pretraining)"
    assert _row_key(sweep("scbert", "pretrained=/ckpt", **{"default.pretrained": "/ckpt"}))[0] == "scbert (pretrained)"
    assert _role_of("mlp (lr=0.01)") == "model"


def test_set_model_dot_key_fixes_the_key_for_that_model_only(pbmc_store, tmp_path):
    """The ablation's one command needs scbert's lr and epochs without fixing mlp's: --set MODEL.KEY=VALUE."""
    plan = _plan(pbmc_store, tmp_path, model="mlp,logreg,majority", trials=2, settings=["mlp.lr=0.02"])
    mlp, logreg = plan.requests[0], plan.requests[1]
    assert mlp.model == "mlp" and mlp.space.defaults["lr"] == 0.02
    assert "lr" not in {d.name for d in mlp.space.dimensions}
    assert "lr" not in logreg.space.defaults  # logreg has no lr; and no other model got it
    plain = _plan(pbmc_store, tmp_path, model="mlp", trials=2)
    assert "lr" in {d.name for d in plain.requests[0].space.dimensions}


@pytest.mark.parametrize("setting, says", [
    ("nosuchmodel.lr=1", "nosuchmodel is not a model of this sweep"),
    ("majority.lr=1", "majority has no key lr"),
])
def test_bad_model_dot_key_is_one_line_config_error(setting, says, pbmc_store, tmp_path):
    with pytest.raises(ConfigError, match=says):
        _plan(pbmc_store, tmp_path, model="mlp,majority", settings=[setting])


def test_train_takes_its_own_model_dot_key(pbmc_store, tmp_path):
    plan = _plan(pbmc_store, tmp_path, model="mlp", settings=["mlp.lr=0.02"], fixed=True)
    assert plan.requests[0].space.defaults["lr"] == 0.02
