"""Conformance: every registered model, found through the registry; a new model adds no test code here."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from omicsweep.benchmark.space import load_space
from omicsweep.benchmark.trial import TrialContext, execute_trial
from omicsweep.datasets import open_store
from omicsweep.models import CELL_CLASSIFICATION, GENE_PAIR_IMAGE, Task, available_models, get_model
from omicsweep.models.featurise import run_model
from omicsweep.schema import TRAIN_SECONDS, TRIAL_OVERHEAD
from omicsweep.tasks import PRETRAINING_TASKS, TASK_KINDS

MODELS = available_models()
# per task kind: a sample task for store-free checks and the real-data store fixture trials run on; each model is
# tested on every kind it accepts, so a new model (or a new kind with its two entries here) adds no test code
SAMPLE_TASKS = {
    CELL_CLASSIFICATION: Task(n_features=20, n_classes=3),
    GENE_PAIR_IMAGE: Task(n_features=16 * 16, n_classes=3, kind=GENE_PAIR_IMAGE, input_shape=(1, 16, 16)),
}
STORE_FIXTURES = {CELL_CLASSIFICATION: "pbmc_store", GENE_PAIR_IMAGE: "pair_store"}
CASES = [pytest.param(name, kind, id=f"{name}-{kind}") for name in MODELS for kind in get_model(name).tasks
         if kind not in PRETRAINING_TASKS]  # pretraining models (no classes, a corpus store): tests/test_pretrain.py


def _inputs(entry, task, rows) -> dict:
    """A model's inputs for sample rows, made by its own featuriser (no transform: the rows stand for scaled ones)."""
    genes = task.genes or tuple(f"f{i}" for i in range(task.n_features))
    return entry.featurise(sp.csr_matrix(np.asarray(rows, dtype=np.float32)), genes, None)


def test_every_task_kind_has_a_sample_task_and_a_store():
    assert set(TASK_KINDS) == set(SAMPLE_TASKS) == set(STORE_FIXTURES)
    assert all(get_model(name).tasks and set(get_model(name).tasks) <= {*TASK_KINDS, *PRETRAINING_TASKS}
               for name in MODELS)


def test_registry_has_the_skeleton_models(cli):
    assert {"mlp", "logreg", "majority"} <= set(MODELS)
    code, stdout, _ = cli("models")
    assert code == 0 and all(name in stdout for name in MODELS)


@pytest.mark.parametrize("name, kind", CASES)
def test_space_file_is_valid_and_defaults_build(name, kind):
    entry = get_model(name)
    space = load_space(entry.space_file)
    for dim in space.dimensions:
        assert dim.name in space.defaults, f"{name}: searched {dim.name} has no default"
    task = SAMPLE_TASKS[kind]
    model = entry.build({**space.defaults, **space.tiny}, task)
    if entry.family == "torch":
        model.eval()
        inputs = _inputs(entry, task, torch.randn(4, task.n_features).numpy())
        assert isinstance(inputs, dict) and all(isinstance(v, torch.Tensor) for v in inputs.values())
        assert run_model(model, inputs).shape == (4, 3)
    else:
        assert hasattr(model, "fit") and hasattr(model, "predict_proba")


def _run(name: str, store_path, seed: int):
    entry = get_model(name)
    space = load_space(entry.space_file)
    store = open_store(store_path)
    context = TrialContext(
        store_path=str(store_path), fingerprint=store.fingerprint, model=name,
        defaults={**space.defaults, **space.tiny}, seed=seed, metric="accuracy",
    )
    results, files = [], []
    execute_trial(context, {}, lambda metrics, ckpt: (results.append(metrics), files.append(sorted(ckpt or {}))))
    return results, files


@pytest.mark.parametrize("name, kind", CASES)
def test_trial_reports_metrics_checkpoints_and_is_deterministic(name, kind, request):
    store_path = request.getfixturevalue(STORE_FIXTURES[kind])
    results, files = _run(name, store_path, seed=3)
    assert results, "no result reported"
    last = results[-1]
    for key in ("val_accuracy", "test_accuracy", "test_macro_f1", "test_macro_auroc", "best_val", "epoch_time_s",
                "test_degenerate", "test_pred_top_share"):
        assert key in last and np.isfinite(last[key]), key
    assert files[0] and "trial.json" in files[0] and "transform.npz" in files[0]  # first result is a new best
    again, _ = _run(name, store_path, seed=3)
    timings = {"epoch_time_s", TRAIN_SECONDS, TRIAL_OVERHEAD}  # wall-clock seconds differ run to run
    strip = lambda rs: [{k: v for k, v in r.items() if k not in timings} for r in rs]  # noqa: E731
    assert strip(results) == strip(again), "same seed on CPU must give the same metrics"



def _tiny_config(name: str) -> dict:
    space = load_space(get_model(name).space_file)
    return {**space.defaults, **space.tiny, "seed": 0}


def _separable(n_per_class: int = 20, n_features: int = 20, n_classes: int = 3, seed: int = 0):
    """Well separated Gaussian classes (float32, as the loader gives them)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), n_per_class)
    x = 3.0 * rng.normal(size=(n_classes, n_features))[y] + rng.normal(size=(len(y), n_features))
    return x.astype(np.float32), y


@pytest.mark.parametrize("name, kind", CASES)
def test_training_lowers_the_loss_and_fits_a_tiny_batch(name, kind, one_thread):
    """torch: 16 samples with arbitrary labels are memorised; estimators: a separable set is fitted (not controls)."""
    from omicsweep.benchmark.training import train_epoch
    from omicsweep.benchmark.training_options import make_loss, make_optimizer

    entry = get_model(name)
    task = SAMPLE_TASKS[kind]
    if entry.family == "estimator":
        if entry.role == "control":
            pytest.skip("controls cannot learn from expression")
        x, y = _separable(n_features=task.n_features)
        estimator = entry.build(_tiny_config(name), task).fit(x, y)
        accuracy = (np.asarray(estimator.classes_)[estimator.predict_proba(x).argmax(axis=1)] == y).mean()
        assert accuracy >= 0.95, f"{name}: training accuracy {accuracy:.2f} on a separable set"
        return
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, task.n_features, generator=gen), torch.randperm(16, generator=gen) % 3
    x = _inputs(entry, task, x.numpy())  # what the model eats, through its featuriser
    # the model's own loss and optimiser family, at a rate that fits 16 cells quickly (mlp's default is 1e-6)
    cfg = {**_tiny_config(name), "lr": 1e-2, "weight_decay": 0.0, "schedule": "none", "grad_clip": 0}
    model = entry.build(cfg, task)
    loss_fn, optimizer = make_loss(cfg, n_classes=3, train_labels=y.numpy()), make_optimizer(model.parameters(), cfg)

    def evaluate():
        model.eval()
        with torch.no_grad():
            logits = run_model(model, x)
        return float(loss_fn(logits, y)), float((logits.argmax(dim=1) == y).float().mean())

    before, _ = evaluate()
    for _ in range(300):
        train_epoch(model, [(x, y)], optimizer, loss_fn)
    after, accuracy = evaluate()
    assert after < 0.5 * before, f"{name}: loss {before:.3f} -> {after:.3f}"
    assert accuracy == 1.0, f"{name}: fits {accuracy:.2f} of 16 training cells"


@pytest.mark.parametrize("name, kind", CASES)
def test_save_then_load_predicts_identically(name, kind, one_thread, tmp_path):
    """torch: state_dict through torch.save / torch.load(weights_only=True), one model and a 2-member ensemble;
    estimators: a skops file, loaded trusting only the allowed types the file declares (nothing unpickled)."""
    import io

    from omicsweep.models.ensemble import build_torch_model
    from omicsweep.models.estimator_state import load_estimator, save_estimator

    entry = get_model(name)
    task = SAMPLE_TASKS[kind]
    x, y = _separable(n_features=task.n_features)
    if entry.family == "estimator":
        fitted = entry.build(_tiny_config(name), task).fit(x, y)
        save_estimator(fitted, tmp_path / "estimator.skops")
        restored = load_estimator(tmp_path / "estimator.skops", type(entry.build(_tiny_config(name), task)))
        assert restored is not fitted and type(restored) is type(fitted)
        assert np.array_equal(restored.predict_proba(x), fitted.predict_proba(x))
        assert np.array_equal(np.asarray(restored.classes_), np.asarray(fitted.classes_))
        return
    xt, yt = _inputs(entry, task, x), torch.from_numpy(y)
    for members in (1, 2):
        cfg = {**_tiny_config(name), "ensemble": members}
        torch.manual_seed(0)
        model = build_torch_model(entry, cfg, task)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(3):  # move weights and BatchNorm statistics away from their initial values
            model.train()
            optimizer.zero_grad()
            torch.nn.functional.nll_loss(torch.log_softmax(run_model(model, xt), dim=1), yt).backward()
            optimizer.step()
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        buffer.seek(0)
        torch.manual_seed(1)  # a different initialisation, overwritten by the load
        restored = build_torch_model(entry, cfg, task)
        restored.load_state_dict(torch.load(buffer, weights_only=True))
        model.eval(), restored.eval()
        with torch.no_grad():
            assert torch.equal(run_model(model, xt), run_model(restored, xt)), f"{name}: ensemble={members}"


@pytest.mark.parametrize("name, kind", CASES)
def test_checkpoint_reloads_as_predict_does_and_repeats_the_trial_s_test_predictions(name, kind, request, tmp_path,
                                                                                    one_thread):
    """Train tiny (1 epoch), write the checkpoint as a sweep logs it (the trial's files, then the dataset files),
    load it with `predict`'s own functions and label the store's test split from its raw rows: the probabilities
    are the ones the in-memory model gave (test_predictions.npz), and they match the reported test metrics."""
    from omicsweep.benchmark.metrics import classification_metrics
    from omicsweep.benchmark.predict import align_genes, load_trained_model
    from omicsweep.benchmark.sweep import write_dataset_files

    entry = get_model(name)
    space = load_space(entry.space_file)
    store_path = request.getfixturevalue(STORE_FIXTURES[kind])
    store = open_store(store_path)
    one_epoch = {"max_epochs": 1} if entry.family == "torch" else {}
    context = TrialContext(
        store_path=str(store_path), fingerprint=store.fingerprint, model=name,
        defaults={**space.defaults, **space.tiny, **one_epoch}, seed=0, metric="accuracy",
    )
    last: dict = {}

    def report(metrics, files):
        last.update(metrics)
        for file_name, write in (files or {}).items():  # later bests overwrite earlier ones, as Tune keeps one
            write(str(tmp_path / file_name))

    execute_trial(context, {}, report)
    write_dataset_files(store_path, tmp_path)  # genes.txt and classes.json, logged beside every checkpoint
    with np.load(tmp_path / "test_predictions.npz", allow_pickle=False) as saved:
        y_true, proba = saved["y_true"], saved["proba"]
    assert proba.shape == (len(store.split_indices("test")), len(store.classes)) and len(y_true) == len(proba)
    assert sorted(y_true) == sorted(store.labels()[store.split_indices("test")])
    recomputed = classification_metrics(y_true, proba)
    for key in ("accuracy", "macro_f1", "macro_auroc", "degenerate", "pred_top_share"):
        assert recomputed[key] == pytest.approx(last[f"test_{key}"], abs=1e-12), key

    trained = load_trained_model(tmp_path, name)
    assert trained.task.kind == kind and trained.classes == list(store.classes)
    seen = entry.featurised_store(open_store(store_path), trained.config)  # a pair task: images at the trial's bins
    test = seen.split_indices("test")
    aligned = align_genes(seen.read_rows(0, seen.n_cells)[test], list(map(str, seen.genes())), trained.genes)
    assert aligned.present == len(trained.genes) == trained.task.n_features
    again = trained.predict_proba(aligned.matrix.toarray())
    np.testing.assert_allclose(again, proba, rtol=1e-5, atol=1e-6, err_msg=name)
    assert np.array_equal(again.argmax(axis=1), proba.argmax(axis=1)), name


def test_estimator_files_with_foreign_types_or_not_skops_are_refused_without_loading(tmp_path):
    """A checkpoint is a user's file: types outside the allow-list (a function, another model) are never trusted."""
    import os

    import skops.io

    from omicsweep.errors import InputError
    from omicsweep.models.estimator_state import load_estimator, save_estimator

    entry = get_model("knn")
    expected = type(entry.build(_tiny_config("knn"), SAMPLE_TASKS[CELL_CLASSIFICATION]))
    x, y = _separable()
    fitted = entry.build(_tiny_config("knn"), SAMPLE_TASKS[CELL_CLASSIFICATION]).fit(x, y)
    fitted.payload_ = os.system  # what an attacker would plant: a callable run on load
    skops.io.dump(fitted, tmp_path / "evil.skops")
    assert "posix.system" in skops.io.get_untrusted_types(file=tmp_path / "evil.skops")
    (tmp_path / "garbage.skops").write_bytes(b"PK\x03\x04 not a zip\n at all")
    (tmp_path / "text.skops").write_text("estimator\n")
    forest = get_model("random_forest").build(_tiny_config("random_forest"), SAMPLE_TASKS[CELL_CLASSIFICATION])
    save_estimator(forest.fit(x, y), tmp_path / "forest.skops")
    few = get_model("knn").build(_tiny_config("knn"), Task(n_features=3, n_classes=3)).fit(x[:, :3], y)
    save_estimator(few, tmp_path / "kd.skops")  # on 3 features knn keeps a KD tree: allowed, it loads
    assert few._fit_method == "kd_tree"
    restored = load_estimator(tmp_path / "kd.skops", expected)
    assert np.array_equal(restored.predict_proba(x[:, :3]), few.predict_proba(x[:, :3]))
    for file_name, needle in (("evil.skops", "posix.system"), ("garbage.skops", "not a valid skops file"),
                              ("text.skops", "not a valid skops file"), ("forest.skops", "RandomForestClassifier")):
        with pytest.raises(InputError) as caught:
            load_estimator(tmp_path / file_name, expected)
        message = str(caught.value)
        assert needle in message and file_name in message and "\n" not in message, message
    with pytest.raises(InputError, match="no such file"):
        load_estimator(tmp_path / "absent.skops", expected)


def test_mlp_learns_and_controls_do_not(pbmc_store):
    mlp, _ = _run("mlp", pbmc_store, seed=0)
    majority, _ = _run("majority", pbmc_store, seed=0)
    assert mlp[-1]["train_loss"] < mlp[0]["train_loss"]
    assert mlp[-1]["best_val"] > majority[-1]["best_val"] + 0.2
    assert majority[-1]["test_macro_auroc"] == pytest.approx(0.5)


# ---- torch training options (loss, optimizer, schedule, grad_clip) -------------------------------------------------


def _synthetic_batch(n: int = 64, n_features: int = 10, n_classes: int = 3):
    """Separable classes with unequal sizes (so weighted_ce differs from ce)."""
    gen = torch.Generator().manual_seed(0)
    y = torch.tensor([0] * (n // 2) + [1] * (n // 3) + [2] * (n - n // 2 - n // 3))
    centres = 2.0 * torch.randn(n_classes, n_features, generator=gen)
    x = centres[y] + 0.5 * torch.randn(n, n_features, generator=gen)
    return x, y


@pytest.mark.parametrize("schedule", ["none", "cosine", "step"])
@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
@pytest.mark.parametrize("loss", ["ce", "weighted_ce", "focal"])
def test_every_training_option_combination_lowers_the_loss(loss, optimizer, schedule):
    from omicsweep.benchmark.training import train_epoch
    from omicsweep.benchmark.training_options import make_loss, make_optimizer, make_scheduler

    x, y = _synthetic_batch()
    for grad_clip in (0, 1.0):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
        cfg = {"loss": loss, "optimizer": optimizer, "schedule": schedule, "grad_clip": grad_clip,
               "lr": 0.05, "weight_decay": 1e-4, "max_epochs": 20, "step_size": 5}
        loss_fn = make_loss(cfg, n_classes=3, train_labels=y.numpy())
        opt = make_optimizer(model.parameters(), cfg)
        scheduler = make_scheduler(opt, cfg)
        assert (scheduler is None) == (schedule == "none")
        with torch.no_grad():
            before = float(loss_fn(model(x), y))
        for _ in range(cfg["max_epochs"]):
            train_epoch(model, [(x, y)], opt, loss_fn, grad_clip=float(grad_clip))
            if scheduler is not None:
                scheduler.step()
        model.eval()
        with torch.no_grad():
            after = float(loss_fn(model(x), y))
        assert after < 0.5 * before, f"{loss}/{optimizer}/{schedule}/clip={grad_clip}: {before:.4f} -> {after:.4f}"


def test_training_options_default_to_plain_adam_and_cross_entropy():
    from omicsweep.benchmark.training_options import make_loss, make_optimizer, make_scheduler

    cfg = {"lr": 1e-3, "weight_decay": 1e-4, "max_epochs": 3}
    assert type(make_loss(cfg, n_classes=3)) is torch.nn.CrossEntropyLoss
    assert make_loss(cfg, n_classes=3).weight is None
    assert type(make_optimizer(torch.nn.Linear(2, 2).parameters(), cfg)) is torch.optim.Adam
    assert make_scheduler(torch.optim.Adam(torch.nn.Linear(2, 2).parameters()), cfg) is None


def test_weighted_ce_uses_balanced_class_weights():
    from omicsweep.benchmark.training_options import balanced_class_weights, make_loss

    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1, 2, 2, 2, 2])  # n = 12, k = 3 present, class 3 absent
    weights = balanced_class_weights(labels, n_classes=4)
    assert weights.tolist() == pytest.approx([12 / (3 * 6), 12 / (3 * 2), 12 / (3 * 4), 0.0])
    loss_fn = make_loss({"loss": "weighted_ce"}, n_classes=4, train_labels=labels)
    assert torch.allclose(loss_fn.weight, weights)


def test_focal_loss_with_gamma_zero_is_cross_entropy():
    from omicsweep.benchmark.training_options import make_loss

    logits, y = torch.randn(8, 4, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 3] * 2)
    focal0 = make_loss({"loss": "focal", "focal_gamma": 0.0}, n_classes=4)
    focal2 = make_loss({"loss": "focal"}, n_classes=4)
    ce = torch.nn.functional.cross_entropy(logits, y)
    assert float(focal0(logits, y)) == pytest.approx(float(ce), rel=1e-6)
    assert float(focal2(logits, y)) < float(ce)


def test_step_schedule_halves_every_step_size_epochs_and_cosine_reaches_zero():
    from omicsweep.benchmark.training_options import make_optimizer, make_scheduler

    def lrs(cfg):
        opt = make_optimizer(torch.nn.Linear(2, 2).parameters(), cfg)
        scheduler, seen = make_scheduler(opt, cfg), []
        for _ in range(cfg["max_epochs"]):
            seen.append(opt.param_groups[0]["lr"])
            opt.step()
            scheduler.step()
        return seen + [opt.param_groups[0]["lr"]]

    step = lrs({"lr": 1.0, "schedule": "step", "max_epochs": 10})
    assert step[:5] == [1.0] * 5 and step[5:10] == [0.5] * 5 and step[10] == 0.25
    assert lrs({"lr": 1.0, "schedule": "step", "step_size": 2, "max_epochs": 4})[:5] == [1.0, 1.0, 0.5, 0.5, 0.25]
    cosine = lrs({"lr": 1.0, "schedule": "cosine", "max_epochs": 10})
    assert cosine[0] == 1.0 and all(a > b for a, b in zip(cosine, cosine[1:])) and cosine[-1] == pytest.approx(0.0)


def test_sgd_uses_momentum_and_adamw_decoupled_decay():
    from omicsweep.benchmark.training_options import make_optimizer

    params = lambda: torch.nn.Linear(2, 2).parameters()  # noqa: E731
    sgd = make_optimizer(params(), {"optimizer": "sgd", "lr": 0.1, "weight_decay": 1e-3})
    assert type(sgd) is torch.optim.SGD and sgd.param_groups[0]["momentum"] == 0.9
    adamw = make_optimizer(params(), {"optimizer": "adamw", "lr": 0.1, "weight_decay": 1e-3})
    assert type(adamw) is torch.optim.AdamW and adamw.param_groups[0]["weight_decay"] == 1e-3


@pytest.mark.parametrize("key, value", [("loss", "hinge"), ("optimizer", "lbfgs"), ("schedule", "linear")])
def test_unknown_training_option_is_a_config_error(key, value):
    from omicsweep.benchmark.training_options import make_loss, make_optimizer, make_scheduler
    from omicsweep.errors import ConfigError

    cfg = {"lr": 1e-3, "max_epochs": 2, key: value}
    with pytest.raises(ConfigError, match=key):
        make_loss(cfg, n_classes=3, train_labels=np.array([0, 1, 2]))
        opt = make_optimizer(torch.nn.Linear(2, 2).parameters(), cfg)
        make_scheduler(opt, cfg)


def test_mlp_trial_runs_with_non_default_training_options(pbmc_store):
    entry = get_model("mlp")
    space = load_space(entry.space_file)
    store = open_store(pbmc_store)
    options = {"loss": "weighted_ce", "optimizer": "sgd", "schedule": "step", "step_size": 1, "grad_clip": 1.0}
    context = TrialContext(
        store_path=str(pbmc_store), fingerprint=store.fingerprint, model="mlp",
        defaults={**space.defaults, **space.tiny, "max_epochs": 2}, seed=0, metric="accuracy",
    )
    results = []
    execute_trial(context, options, lambda metrics, ckpt: results.append(metrics))
    assert len(results) == 2 and all(np.isfinite(r["train_loss"]) for r in results)


# ---- dnn: variable depth -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_layers", [1, 2, 3, 4, 5])
def test_dnn_builds_the_requested_depth_and_widths(n_layers):
    sizes = {"size_1": 50, "size_2": 40, "size_3": 30, "size_4": 20, "size_5": 10}
    model = get_model("dnn").build({"n_layers": n_layers, "dropout": 0.1, **sizes}, Task(n_features=7, n_classes=3))
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == n_layers + 1
    widths = [sizes[f"size_{i}"] for i in range(1, n_layers + 1)]
    assert [m.out_features for m in linears] == widths + [3]
    assert [m.in_features for m in linears] == [7] + widths
    assert sum(isinstance(m, torch.nn.ELU) for m in model.modules()) == n_layers
    assert sum(isinstance(m, torch.nn.Dropout) for m in model.modules()) == n_layers


def test_dnn_defaults_are_study_004s_architecture():
    space = load_space(get_model("dnn").space_file)
    model = get_model("dnn").build(space.defaults, Task(n_features=978, n_classes=4314))
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [5000, 2000, 500, 1000, 2000, 4314]


@pytest.mark.parametrize("config", [{"n_layers": 0}, {"n_layers": 6}, {"n_layers": 3, "size_1": 8, "size_2": 8}])
def test_dnn_rejects_bad_depth(config):
    from omicsweep.errors import ConfigError

    with pytest.raises(ConfigError, match="dnn"):
        get_model("dnn").build({"dropout": 0.1, **config}, Task(n_features=7, n_classes=3))


# ---- the model contract a transformer fits: featuriser dicts, parameter groups, per-step schedules, bf16 ---------


def _token_featurise(batch, genes, transform):
    """scBERT-style inputs from a CSR batch: expression tokens and a padding mask (1 where a gene is expressed)."""
    from omicsweep.datasets.tokens import expression_tokens

    tokens = expression_tokens(batch, append_position=False)
    return {"tokens": tokens, "padding_mask": tokens > 0}


class _TokenPooler(torch.nn.Module):
    """Throw-away token model: embeds each gene's token, averages the expressed ones, a linear head."""

    def __init__(self, n_genes: int, n_classes: int, dim: int = 8):
        super().__init__()
        self.n_genes = n_genes
        self.token = torch.nn.Embedding(8, dim)
        self.gene = torch.nn.Embedding(n_genes, dim)
        self.head = torch.nn.Linear(dim, n_classes)

    def forward(self, tokens, padding_mask):
        assert tokens.dtype == torch.long and padding_mask.dtype == torch.bool  # each tensor kept its own dtype
        h = self.token(tokens.clamp(max=7)) + self.gene.weight
        weights = padding_mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * weights).sum(1) / weights.sum(1).clamp_min(1.0))

    def param_groups(self, config):
        lr = float(config["lr"])
        return [{"params": [*self.token.parameters(), *self.gene.parameters()], "lr": lr / 10},
                {"params": self.head.parameters(), "lr": lr}]


@pytest.fixture
def token_model():
    """A model with its own featuriser (two tensors), registered for one test and removed after."""
    from omicsweep.models.base import _REGISTRY, ModelEntry, register

    entry = register(ModelEntry(name="throwaway_tokens", family="torch", featuriser=_token_featurise,
                                build=lambda config, task: _TokenPooler(task.n_features, task.n_classes),
                                description="test-only token model"))
    try:
        yield entry
    finally:
        _REGISTRY.pop(entry.name, None)


def test_a_model_with_its_own_featuriser_trains_through_the_real_fit_path(token_model, pbmc_store, one_thread):
    """One epoch of the sweep's trial: the loader yields the featuriser's dict, the loop moves each tensor and
    passes them as keyword arguments, the backbone trains at a tenth of the head's lr under a per-step warm-up
    cosine schedule in bf16; the checkpoint reloads as `predict` does and labels through the same featuriser."""
    import tempfile
    from pathlib import Path

    from omicsweep.benchmark.predict import load_trained_model
    from omicsweep.benchmark.sweep import write_dataset_files

    assert "throwaway_tokens" in available_models()
    store = open_store(pbmc_store)
    config = {"lr": 1e-2, "batch_size": 64, "max_epochs": 1, "patience": 1, "schedule": "cosine",
              "schedule_unit": "step", "warmup_steps": 2, "precision": "bf16"}
    context = TrialContext(store_path=str(pbmc_store), fingerprint=store.fingerprint, model="throwaway_tokens",
                           defaults=config, seed=0, metric="accuracy")
    results = []
    with tempfile.TemporaryDirectory() as folder:
        def report(metrics, files):
            results.append(metrics)
            for name, write in (files or {}).items():
                write(str(Path(folder) / name))

        execute_trial(context, {}, report)
        write_dataset_files(pbmc_store, Path(folder))
        trained = load_trained_model(Path(folder), "throwaway_tokens")
        proba = trained.predict_proba(store.read_rows(0, 10))
    assert len(results) == 1 and np.isfinite(results[0]["train_loss"]) and np.isfinite(results[0]["test_accuracy"])
    assert results[0]["train_lr"] == pytest.approx(1e-2 / 10 / 3)  # first group, before the first of 2 warm-up steps
    assert proba.shape == (10, len(store.classes)) and np.allclose(proba.sum(axis=1), 1, atol=1e-3)


def test_per_step_schedule_warms_up_then_follows_the_schedule_in_every_parameter_group():
    from omicsweep.benchmark.training_options import make_lr_schedule, make_optimizer, model_parameters

    model = _TokenPooler(4, 2)
    cfg = {"lr": 1.0, "max_epochs": 2, "schedule": "cosine", "schedule_unit": "step", "warmup_steps": 3}
    optimizer = make_optimizer(model_parameters(model, cfg), cfg)
    schedule = make_lr_schedule(optimizer, cfg, steps_per_epoch=5)
    seen = []
    for _ in range(10):  # 2 epochs of 5 optimiser steps
        seen.append([group["lr"] for group in optimizer.param_groups])
        schedule.optimizer_step()
    head = [lrs[1] for lrs in seen]
    assert head[:3] == pytest.approx([0.25 * np.cos(0) * 1, 0.5 * 0.5 * (1 + np.cos(np.pi / 10)),
                                      0.75 * 0.5 * (1 + np.cos(2 * np.pi / 10))])
    assert all(a > b for a, b in zip(head[3:], head[4:])) and optimizer.param_groups[1]["lr"] == pytest.approx(0.0)
    assert all(lrs[0] == pytest.approx(lrs[1] / 10) for lrs in seen)  # the backbone keeps its tenth
    step = make_lr_schedule(make_optimizer(torch.nn.Linear(2, 2).parameters(), {**cfg, "schedule": "step",
                                                                                 "warmup_steps": 0, "step_size": 2}),
                            {**cfg, "schedule": "step", "warmup_steps": 0, "step_size": 2}, steps_per_epoch=5)
    lrs = []
    for _ in range(5):
        lrs.append(step.groups[0]["lr"])
        step.optimizer_step()
    assert lrs == [1.0, 1.0, 0.5, 0.5, 0.25]
    default = make_lr_schedule(torch.optim.Adam(torch.nn.Linear(2, 2).parameters()), {"schedule": "none",
                                                                                       "max_epochs": 2},
                               steps_per_epoch=5)
    assert default is None  # per epoch, no warm-up: today's torch schedulers, stepped once per epoch
