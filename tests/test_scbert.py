"""scBERT fine-tuning (issue 14, item 1): vocabulary mapping, scBERT's head, a pretraining checkpoint loaded into
the backbone, frozen and trained blocks, gradient accumulation, bad input, and one `train` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from conftest import assert_one_line_error
from omicsweep.datasets.tokens import expression_tokens
from omicsweep.errors import ConfigError
from omicsweep.models import Task, get_model
from omicsweep.models.performer import Performer, vocabulary_fingerprint
from omicsweep.models.scbert import ScBertHead, coverage_note, gene_index, tokens_from_counts

SIZES = {"dim": 8, "depth": 2, "heads": 2, "dim_head": 4, "nb_features": 4, "ff_mult": 2, "redraw_every": 1000,
         "attention": "favor", "gene_embedding": "learned"}
FIT = {"lr": 1e-2, "batch_size": 8, "max_epochs": 1, "patience": 1, "dropout": 0.0}


def write_checkpoint(folder, genes, *, seed=0, **sizes):
    """A pretraining checkpoint as `omicsweep pretrain` writes one: module.pt (a Performer's state) + pretrain.json."""
    sizes = {**SIZES, **sizes}
    folder.mkdir(parents=True)
    torch.manual_seed(seed)
    performer = Performer(n_genes=len(genes), seed=seed, **sizes)
    torch.save(performer.state_dict(), folder / "module.pt")
    meta = {"config": sizes, "seed": seed, "vocabulary_fingerprint": vocabulary_fingerprint(genes),
            "n_genes": len(genes), "genes": list(genes), "step": 10, "streams": [{}]}
    (folder / "pretrain.json").write_text(json.dumps(meta))
    return folder, performer.state_dict()


def built(config, genes, n_classes=3):
    """The scbert model as a trial builds it: prepare's pins, then the registry's build (load_priors)."""
    entry = get_model("scbert")
    task = Task(n_features=len(genes), n_classes=n_classes, genes=tuple(genes))
    pins, notes = entry.prepared(config, task)
    return entry.build({**config, **pins, "seed": 0}, task), notes


STORE_GENES = [f"G{i}" for i in range(12)]
VOCAB = [g.lower() for g in STORE_GENES[2:10]] + ["OTHER1", "OTHER2"]  # 8 of 10 vocabulary genes in the store


@pytest.fixture
def checkpoint(tmp_path):
    return write_checkpoint(tmp_path / "ckpt", VOCAB)


def test_head_is_scberts_conv_and_mlp_over_the_whole_sequence():
    head = ScBertHead(seq_len=11, dim=8, n_classes=4, dropout=0.1)
    assert tuple(head.conv.weight.shape) == (1, 1, 1, 8)
    linears = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(11, 512), (512, 128), (128, 4)]
    assert sum(isinstance(m, torch.nn.Dropout) for m in head.mlp) == 2
    assert tuple(head(torch.randn(5, 11, 8)).shape) == (5, 4)


def test_store_genes_map_onto_the_vocabulary_by_symbol_with_coverage():
    index = gene_index(STORE_GENES, VOCAB)
    assert index.tolist() == [2, 3, 4, 5, 6, 7, 8, 9, 12, 12]  # case-insensitive; absent genes -> the zero column
    note = coverage_note(index, len(STORE_GENES), {"min_vocab_coverage": 0.5})
    assert "8 of 10 vocabulary genes found in the store (80.0%)" in note and "4 store genes" in note
    with pytest.raises(ConfigError, match="min_vocab_coverage=0.9"):
        coverage_note(index, len(STORE_GENES), {"min_vocab_coverage": 0.9})


def test_tokens_are_expression_tokens_of_the_cells_mapped_onto_the_vocabulary():
    counts = sp.random(6, len(STORE_GENES), density=0.5, random_state=1, format="csr") * 50
    counts.data = np.round(counts.data) + 1
    index = gene_index(STORE_GENES, VOCAB)
    padded = sp.hstack([counts, sp.csr_matrix((6, 1))]).tocsr()
    expected = expression_tokens(padded[:, index])  # normalised over the vocabulary's genes, as scBERT did
    dense = torch.from_numpy(counts.toarray().astype(np.float32))
    got = tokens_from_counts(torch.cat([dense, torch.zeros(6, 1)], 1)[:, torch.from_numpy(index)])
    assert torch.equal(got, expected) and int(expected.max()) > 1


def test_a_pretraining_checkpoint_loads_into_the_backbone_and_its_sizes_are_pinned(checkpoint):
    folder, state = checkpoint
    model, notes = built({"pretrained": str(folder / "module.pt"), "unfreeze_layers": 1}, STORE_GENES)
    assert any("8 of 10 vocabulary genes" in n for n in notes)
    own = model.backbone.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items() if not k.startswith("to_logits."))
    assert model.head.mlp[0].in_features == len(VOCAB) + 1
    with pytest.raises(ConfigError, match="another size"):
        built({"pretrained": str(folder), "dim": 16}, STORE_GENES)
    # the ablation: `pretrained: none` with backbone_from builds the same network from random weights
    untrained, _ = built({"pretrained": "none", "backbone_from": str(folder), "unfreeze_layers": 1}, STORE_GENES)
    assert untrained.head.mlp[0].in_features == len(VOCAB) + 1
    assert untrained.backbone.state_dict().keys() == own.keys()
    assert not torch.equal(untrained.backbone.layers[0].attn.to_qkv.weight, own["layers.0.attn.to_qkv.weight"])
    assert set(untrained.state_dict()) >= {f"backbone.{k}" for k in own}  # all of it: no checkpoint holds it
    untrained.eval()
    counts = torch.randint(0, 9, (5, len(STORE_GENES)))
    with torch.no_grad():
        whole = untrained(counts)
        untrained.eval_elements = 2 * (len(VOCAB) + 1) * 8  # chunks of 2 cells
        assert torch.allclose(untrained(counts), whole, atol=1e-6)


def test_frozen_blocks_do_not_change_trained_ones_do_and_the_checkpoint_holds_what_trained(checkpoint):
    folder, _ = checkpoint
    config = {"pretrained": str(folder), "unfreeze_blocks": "1", **FIT}
    model, _ = built(config, STORE_GENES)
    before = {k: v.clone() for k, v in model.named_parameters()}
    optimizer = torch.optim.SGD(model.param_groups(config), lr=1.0)
    counts = torch.randint(0, 30, (4, len(STORE_GENES))).to(torch.int32)
    torch.nn.functional.cross_entropy(model(counts), torch.tensor([0, 1, 2, 0])).backward()
    optimizer.step()
    changed = {k for k, v in model.named_parameters() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith(("head.", "backbone.layers.1.", "backbone.norm.")) for k in changed)
    assert any(k.startswith("backbone.layers.1.") for k in changed)
    saved = model.state_dict()
    frozen = {k for k, v in model.named_parameters() if not v.requires_grad}
    assert frozen and not frozen & set(saved) and "backbone.layers.0.attn.to_qkv.weight" in frozen
    assert "backbone.layers.0.attn.projection" in saved  # buffers are kept: redraws change them
    fresh, _ = built(config, STORE_GENES)
    fresh.load_state_dict(saved)  # strict: the frozen weights come from the pinned checkpoint
    model.eval(), fresh.eval()
    assert torch.allclose(model(counts), fresh(counts))


def test_the_loss_is_divided_by_accumulation():
    """Two micro-batches of 4 accumulated give the gradient of one batch of 8 (equal batches, mean losses)."""
    from omicsweep.benchmark.training import train_epoch

    torch.manual_seed(0)
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    grads = []
    for batches, steps in (([(x, y)], 1), ([(x[:4], y[:4]), (x[4:], y[4:])], 2)):
        torch.manual_seed(1)
        net = torch.nn.Linear(5, 3)
        start = net.weight.detach().clone()
        train_epoch(net, batches, torch.optim.SGD(net.parameters(), lr=1.0), torch.nn.CrossEntropyLoss(),
                    accumulation=steps)
        grads.append(start - net.weight.detach())  # one SGD step of lr 1: the gradient
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


@pytest.mark.parametrize("setting, says", [
    ("pretrained=/no/such/ckpt", "no such checkpoint"),
    ("pretrained=0123456789abcdef0123456789abcdef", "0123456789abcdef0123456789abcdef"),
    ("dim=64", "another size"),
    ("min_vocab_coverage=0.99", "min_vocab_coverage"),
    ("unfreeze_layers=-1", "unfreeze_layers"),
    ("unfreeze_blocks=1,5", "blocks 0..1"),
    ("accumulation=0", "accumulation"),
])
def test_bad_pretrained_input_is_one_line_and_exit_2(setting, says, cli, pbmc_store, tmp_path):
    from omicsweep.datasets import open_store

    genes = list(map(str, open_store(pbmc_store).genes()))
    folder, _ = write_checkpoint(tmp_path / "ckpt", genes[:100] + [f"NOT{i}" for i in range(60)])
    extra = [] if setting.startswith("pretrained=") else ["--set", f"pretrained={folder}"]
    code, stdout, stderr = cli("train", "--dataset", "pbmc68k", "--model", "scbert", *extra, "--set", setting,
                               "--runs", tmp_path / "run")
    assert_one_line_error(code, stdout, stderr, says)


@pytest.mark.slow
def test_train_fine_tunes_a_pretraining_run_end_to_end(ray_session, cli, pbmc_store, tmp_path):
    """`pretrained=RUN_ID` finds the run's logged checkpoint in the sweep's tracking store (read in place); a run of
    another model is refused; the trial's checkpoint holds the head, not the frozen backbone."""
    from omicsweep.datasets import open_store

    genes = list(map(str, open_store(pbmc_store).genes()))
    folder, _ = write_checkpoint(tmp_path / "ckpt", genes[::2])
    runs = tmp_path / "run"
    pretrain_run, other_run = _logged_runs(runs, folder, ["scbert_pretrain", "logreg"])
    code, stdout, stderr = cli("train", "--dataset", "pbmc68k", "--model", "scbert", "--set",
                               f"pretrained={other_run}", "--runs", runs)
    assert_one_line_error(code, stdout, stderr, other_run, "not a pretraining run")
    code, stdout, stderr = cli("train", "--dataset", "pbmc68k", "--model", "scbert", "--set",
                               f"pretrained={pretrain_run}", "--set", "max_epochs=1", "--set", "accumulation=2",
                               "--set", "unfreeze_layers=0", "--runs", runs)
    assert code == 0, stdout + stderr
    assert "383 of 383 vocabulary genes found in the store (100.0%)" in stderr
    assert str(runs / "mlartifacts") in stderr and "scbert (pretrained)" in stdout
    [model_file] = list((runs / "ray").rglob("model.pt"))
    saved = torch.load(model_file, weights_only=True)
    assert any(k.startswith("head.") for k in saved)
    assert not any(k.startswith("backbone.layers.") and not k.endswith(("projection", "feature_step"))
                   for k in saved)  # a frozen backbone is referenced, not copied


def test_the_head_s_convolution_is_scberts_conv2d():
    head = ScBertHead(seq_len=7, dim=5, n_classes=2)
    x = torch.randn(3, 7, 5)
    conv = torch.relu(head.conv(x.unsqueeze(1))).flatten(1)  # scBERT: conv -> ReLU -> flatten
    assert torch.allclose(head(x), head.mlp(conv), atol=1e-6)


def _logged_runs(runs, checkpoint_folder, models):
    """A finished trial of each model in the run folder's tracking store, the checkpoint logged as sweeps log one."""
    from omicsweep.reports.tracking import MlflowRecorder, default_tracking_uri

    recorder = MlflowRecorder(default_tracking_uri(runs), artifact_root=runs / "mlartifacts")
    for model in models:
        recorder.start_sweep(dataset="corpus", model=model, params={}, tags={})
        recorder.start_trial(model, params={}, tags={})
        recorder.log_artifacts(model, str(checkpoint_folder), artifact_path="checkpoint")
        recorder.end_trial(model, status="FINISHED")
        recorder.end_sweep(status="FINISHED", summary={})
    return [recorder.trial_runs[model] for model in models]


def test_gene_embedding_none_builds_a_backbone_without_gene_embedding():
    # "none" is a value of gene_embedding (no gene identity in the tokens), not an unset size
    from omicsweep.models.scbert import backbone_sizes

    config = {"gene_embedding": "none", "dim": 16, "depth": 1}
    assert backbone_sizes(config, None)["gene_embedding"] == "none"
    assert backbone_sizes({"gene_embedding": None}, None)["gene_embedding"] != "none"
