"""`omicsweep explain` (issue 14, items 3-4): attention column sums in O(L), checked against the explicit matrix;
a fine-tuned scbert ranks the planted marker genes of each class on top; bad input is one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from omicsweep.benchmark.explain import attention_received, explain_store
from omicsweep.models.performer import Performer

TOP = 20


def _explicit_received(model: Performer, tokens: torch.Tensor) -> torch.Tensor:
    """The attention each position receives, from the n x n matrices built explicitly per layer: FAVOR+ as
    D^-1 phi(Q) phi(K)^T from the module's own features, exact as softmax(QK^T / sqrt(d))."""
    inputs = []
    handles = [b.attn.register_forward_pre_hook(lambda m, a: inputs.append((m, a[0]))) for b in model.layers]
    with torch.no_grad():
        model(tokens)
    for h in handles:
        h.remove()
    per_layer = []
    for module, x in inputs:
        q, k, _ = module._qkv(x)
        if module.attention == "favor":
            q_prime, k_prime = module._features(q, k)
            matrix = q_prime @ k_prime.transpose(-1, -2)
            matrix = matrix / matrix.sum(dim=-1, keepdim=True)
        else:
            matrix = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(dim=-1)
        per_layer.append(matrix.sum(dim=-2).mean(dim=1))
    return torch.stack(per_layer).mean(dim=0)


@pytest.mark.parametrize("attention", ["favor", "exact"])
def test_column_sums_equal_the_explicit_matrix(attention, one_thread):
    torch.manual_seed(0)
    model = Performer(n_genes=49, dim=16, depth=2, heads=2, dim_head=8, nb_features=16, attention=attention,
                      gene_embedding="learned").eval()
    tokens = torch.randint(0, 6, (3, 50))
    got = attention_received(model, lambda: model(tokens), chunk=7)  # exact: 8 query chunks, the last short
    want = _explicit_received(model, tokens)
    error = (got - want).abs().max().item()
    print(f"{attention}: max abs error {error:.2e} (column sums ~{want.mean().item():.2f})")
    assert got.shape == (3, 50)
    assert error < 1e-4 * want.abs().max().item()
    assert torch.allclose(got.sum(dim=-1), torch.full((3,), 50.0), rtol=1e-4)  # each query's row sums to 1


class LargestTensor(TorchFunctionMode):
    """Every torch function's outputs seen as they are made (einsum, softmax, exp, the layers' functionals): the
    largest number of elements any one of them held. (A TorchDispatchMode sees the aten ops under them too, but
    made this forward 60x slower.)"""

    largest = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in torch.utils._pytree.tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                self.largest = max(self.largest, tensor.numel())
        return out


@pytest.mark.parametrize("attention,n", [("favor", 20_000), ("exact", 4_000)])
def test_a_long_sequence_never_allocates_the_matrix(attention, n, one_thread):
    """No tensor the forward and its column sums make comes near n x n elements (20,000^2 float32: 1.6 GB):
    FAVOR+ works on n x m features, exact attention on chunks of 256 queries x n keys."""
    model = Performer(n_genes=n - 1, dim=8, depth=1, heads=1, dim_head=4, nb_features=4, attention=attention,
                      gene_embedding="none").eval()
    tokens = torch.randint(0, 6, (1, n))
    with LargestTensor() as seen:
        received = attention_received(model, lambda: model(tokens), chunk=256)
    print(f"{attention}, n={n}: largest tensor {seen.largest:,} elements ({seen.largest / n**2:.4f} of n^2)")
    assert received.shape == (1, n)
    assert abs(float(received.sum()) - n) < n * 1e-3  # every query's attention sums to one
    assert seen.largest <= 256 * n * 2  # a query chunk's scores (x2: headroom for an op's scratch), never n x n


# ---- the planted-marker test ----------------------------------------------------------------------------------
def _fine_tuned_scbert(store_path, *, epochs: int):
    """scbert (pretrained: none, tiny sizes, the last of 2 blocks and the head trained: the re-evaluation's
    unfreeze_layers=1) trained a few epochs on the store's training cells, as `predict` loads
    a trial's model: a TrainedModel."""
    from omicsweep.benchmark.predict import TrainedModel
    from omicsweep.benchmark.space import load_space
    from omicsweep.datasets.open import open_store
    from omicsweep.datasets.split_matrix import split_csr
    from omicsweep.datasets.transform import ExpressionTransform
    from omicsweep.models import Task, get_model
    from omicsweep.models.featurise import run_model

    torch.manual_seed(0)
    store = open_store(store_path)
    genes = list(map(str, store.genes()))
    entry = get_model("scbert")
    space = load_space(entry.space_file)
    config = {**space.defaults, **space.tiny, "seed": 0, "dim": 16, "depth": 2, "heads": 2, "dim_head": 8,
              "nb_features": 16, "unfreeze_layers": 1, "lr": 3e-3,
              # without gene identity in the keys, the attention a gene receives follows its expression token
              "gene_embedding": "none"}
    task = Task(n_features=len(genes), n_classes=len(store.classes), genes=tuple(genes))
    config.update(entry.prepare(config, task)[0])
    model = entry.build(config, task)
    assert model.backbone.gene_emb is None
    raw = ExpressionTransform(False, np.zeros(len(genes)), np.ones(len(genes)), scaling="none")
    x, y = split_csr(store, "train", raw)
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config["lr"])
    model.train()
    for _ in range(epochs):
        for batch in np.array_split(np.random.default_rng(0).permutation(len(y)), len(y) // 32):
            inputs = entry.featurise(x[batch], genes, raw)
            loss = torch.nn.functional.cross_entropy(run_model(model, inputs), torch.as_tensor(y[batch]))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return TrainedModel(name="scbert", family="torch", genes=genes, classes=list(store.classes), transform=raw,
                        model=model.eval(), config=config, value_kind="counts", task=task, featuriser=entry.featurise)


def _test_accuracy(trained, store_path) -> float:
    from omicsweep.datasets.open import open_store
    from omicsweep.datasets.split_matrix import split_csr

    x, y = split_csr(open_store(store_path), "test", trained.transform)
    return float((trained.predict_proba(x).argmax(axis=1) == y).mean())


def test_a_fine_tuned_scbert_ranks_each_class_planted_markers_in_its_top_20(tmp_path, one_thread):
    from omicsweep.datasets.synth_markers import write_marker_store

    store = tmp_path / "markers.zarr"
    planted = write_marker_store(store, cells=320, genes=200, n_classes=4, markers=5, seed=0)
    trained = _fine_tuned_scbert(store, epochs=2)
    accuracy = _test_accuracy(trained, store)
    print(f"fine-tuned scbert: test accuracy {accuracy:.3f}")
    assert accuracy > 0.5  # 4 balanced classes: chance is 0.25
    explained = explain_store(trained, store, split="test", top=TOP)
    table = explained.table
    for cls, genes in planted.items():
        ranks = table[(table["class"] == cls) & table["gene"].isin(genes)]["rank"].tolist()
        print(cls, "planted ranks", sorted(ranks))
        assert len(ranks) == len(genes) and max(ranks) <= TOP, (cls, sorted(ranks))
    print(explained.overlap[["class", "overlap", "shared"]])
    assert set(table.columns) == {"class", "gene", "score", "rank"}
    assert (explained.overlap["overlap"] >= 5).all()  # rank_genes_groups finds the planted genes too


# ---- the command --------------------------------------------------------------------------------------------
def _tracked_run(runs, store_path, name: str) -> str:
    """A trial run of the registered model `name` (tiny, untrained) on the store, tracked the way a sweep tracks
    one: its config and training-setup tags and its checkpoint artifacts (model.pt, trial.json, transform.npz,
    genes.txt, classes.json)."""
    from omicsweep.benchmark.space import load_space
    from omicsweep.datasets.open import open_store
    from omicsweep.models import Task, get_model
    from omicsweep.reports.tracking import MlflowRecorder, default_tracking_uri
    from omicsweep.schema import CONFIG_TAG, TRAINING_SETUP_TAG

    store = open_store(store_path)
    genes = list(map(str, store.genes()))
    entry = get_model(name)
    space = load_space(entry.space_file)
    config = {**space.defaults, **space.tiny, "seed": 0}
    task = Task(n_features=len(genes), n_classes=len(store.classes), genes=tuple(genes))
    if entry.prepare is not None:
        config.update(entry.prepare(config, task)[0])
    folder = runs / f"ckpt-{name}"
    folder.mkdir(parents=True)
    torch.save(entry.build(config, task).state_dict(), folder / "model.pt")
    (folder / "trial.json").write_text(json.dumps({"config": config, "classes": list(store.classes)}))
    (folder / "classes.json").write_text(json.dumps({"classes": list(store.classes), "value_kind": "counts"}))
    (folder / "genes.txt").write_text("\n".join(genes) + "\n")
    np.savez(folder / "transform.npz", log1p=np.array(True), minimum=np.zeros(len(genes)),
             maximum=np.ones(len(genes)), scaling=np.array("none"))
    recorder = MlflowRecorder(default_tracking_uri(runs), artifact_root=runs / "mlartifacts")
    recorder.start_sweep(dataset="markers", model=name, params={}, tags={"omicsweep.store_path": str(store_path)})
    recorder.start_trial("t0", params={}, tags={CONFIG_TAG: json.dumps(config), TRAINING_SETUP_TAG: "single cpu=1"})
    recorder.log_artifacts("t0", str(folder), artifact_path="checkpoint")
    recorder.end_trial("t0", status="FINISHED")
    recorder.end_sweep(status="FINISHED", summary={})
    return recorder.trial_runs["t0"]


@pytest.mark.slow
def test_explain_writes_the_ranking_and_its_overlap_and_logs_the_plot(tmp_path, cli, one_thread):
    from mlflow import MlflowClient

    from omicsweep.datasets.synth_markers import write_marker_store
    from omicsweep.reports.tracking import default_tracking_uri

    from conftest import assert_one_line_error

    store, runs = tmp_path / "markers.zarr", tmp_path / "runs"
    write_marker_store(store, cells=120, genes=60, n_classes=3, markers=4, seed=1)
    run = _tracked_run(runs, store, "scbert")
    out = tmp_path / "importance.csv"
    code, stdout, stderr = cli("explain", "--run", run, "--dataset", store, "--out", out, "--top", 5,
                               "--runs", runs)
    assert code == 0, stdout + stderr
    import pandas as pd

    table = pd.read_csv(out)
    assert list(table.columns) == ["class", "gene", "score", "rank"]
    assert table.groupby("class")["rank"].max().tolist() == [60, 60, 60]  # every gene ranked in every class
    overlap = pd.read_csv(tmp_path / "importance.overlap.csv")
    assert list(overlap["class"]) == ["class_0", "class_1", "class_2"] and overlap["overlap"].between(0, 5).all()
    assert "top 5 genes per class by attention" in stdout and "vs rank_genes_groups top 5" in stdout
    logged = {a.path for a in MlflowClient(default_tracking_uri(runs)).list_artifacts(run, "plots")}
    assert {"plots/attention_top_genes.png", "plots/importance.csv", "plots/importance.overlap.csv"} <= logged

    other = tmp_path / "other.zarr"
    write_marker_store(other, cells=60, genes=60, n_classes=3, markers=4, seed=1, gene_prefix="other_")
    assert_one_line_error(*cli("explain", "--run", run, "--dataset", other, "--out", out, "--runs", runs),
                          "has 0 of the model's 60 genes")
    assert_one_line_error(*cli("explain", "--run", "0" * 32, "--dataset", store, "--out", out, "--runs", runs),
                          "not found")
    mlp = _tracked_run(runs, store, "mlp")
    assert_one_line_error(*cli("explain", "--run", mlp, "--dataset", store, "--out", out, "--runs", runs),
                          "model mlp: has no attention")



def test_attention_received_is_the_same_when_the_model_scores_a_batch_in_chunks():
    # scbert scores without gradients in chunks of eval_elements / (seq x dim) cells (19 at scBERT's size): the
    # hook then sees one call per chunk and layer, which must be joined per layer, not stacked
    import scipy.sparse as sp

    from omicsweep.models import Task, get_model
    from omicsweep.models.featurise import run_model

    entry = get_model("scbert")
    genes = tuple(f"G{i}" for i in range(30))
    config = {"seed": 0, "pretrained": "none", "dim": 8, "depth": 2, "heads": 2, "dim_head": 4, "nb_features": 8}
    task = Task(n_features=len(genes), n_classes=3, genes=genes)
    model = entry.build(config, task).eval()
    rows = sp.random(10, len(genes), density=0.3, format="csr", random_state=0, dtype=np.float32) * 5
    inputs = entry.featurise(rows, list(genes), None)
    whole = attention_received(model, lambda: run_model(model, inputs))
    model.eval_elements = 3 * model.backbone.seq_len * model.backbone.dim  # chunks of 3 cells
    chunked = attention_received(model, lambda: run_model(model, inputs))
    assert chunked.shape == whole.shape == (10, model.backbone.seq_len)
    assert torch.allclose(chunked, whole, atol=1e-6)
