"""scBERT's Performer at small sizes: FAVOR+ against exact attention, column sums against the explicit matrix,
deterministic feature redraws, bf16 autocast, the gene embedding options."""

import numpy as np
import pytest
import torch

from omicsweep.errors import ConfigError
from omicsweep.models.performer import (
    NUM_TOKENS,
    Performer,
    exact_column_sums,
    favor_column_sums,
    feature_generator,
    linear_attention,
    mlm_loss,
    orthogonal_random_features,
    softmax_features,
)

SMALL = dict(n_genes=255, dim=32, depth=2, heads=2, dim_head=16, nb_features=32)


def _qkv(n=64, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 2, n, d, generator=g) * 0.5 for _ in range(3)]


def _tokens(batch=3, n=256, seed=0):
    return torch.randint(0, 6, (batch, n), generator=torch.Generator().manual_seed(seed))


def test_orthogonal_features_are_orthogonal_within_blocks():
    w = orthogonal_random_features(40, 16, generator=torch.Generator().manual_seed(0))
    assert w.shape == (40, 16)
    block = w[:16] / w[:16].norm(dim=1, keepdim=True)
    torch.testing.assert_close(block @ block.T, torch.eye(16), atol=1e-5, rtol=0)


def test_favor_approximates_softmax_attention_with_many_features():
    q, k, v = _qkv()
    projection = orthogonal_random_features(4096, 16, generator=torch.Generator().manual_seed(1))
    approx = linear_attention(softmax_features(q, projection, is_query=True),
                              softmax_features(k, projection, is_query=False), v)
    exact = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert (approx - exact).abs().mean() / exact.abs().mean() < 0.05


def test_favor_column_sums_match_the_explicit_matrix():
    q, k, _ = _qkv()
    projection = orthogonal_random_features(64, 16, generator=torch.Generator().manual_seed(2))
    qp, kp = softmax_features(q, projection, is_query=True), softmax_features(k, projection, is_query=False)
    explicit = qp @ kp.transpose(-1, -2)
    explicit = explicit / explicit.sum(dim=-1, keepdim=True)  # rows of D^-1 phi(Q) phi(K)^T
    torch.testing.assert_close(favor_column_sums(qp, kp), explicit.sum(dim=-2), rtol=1e-4, atol=1e-5)
    assert torch.allclose(favor_column_sums(qp, kp).sum(-1), torch.full((2, 2), 64.0))  # each query row sums to 1


def test_exact_column_sums_by_chunks_match_the_explicit_matrix():
    q, k, _ = _qkv(n=50)
    explicit = ((q @ k.transpose(-1, -2)) / 4.0).softmax(dim=-1).sum(dim=-2)
    torch.testing.assert_close(exact_column_sums(q, k, chunk=7), explicit, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attention", ["favor", "exact"])
def test_forward_backward_and_attention_received(attention):
    model = Performer(**SMALL, attention=attention, gene_embedding="learned")
    tokens = _tokens()
    logits = model(tokens)
    assert logits.shape == (3, 256, NUM_TOKENS)
    labels = torch.full((3, 256), -100)
    labels[:, :20] = tokens[:, :20]
    mlm_loss(logits, labels).backward()
    assert model.token_emb.weight.grad is not None and model.gene_emb.weight.grad is not None
    model.eval()
    received = model.attention_received(tokens, chunk=64)
    assert received.shape == (3, 256)
    torch.testing.assert_close(received.sum(-1), torch.full((3,), 256.0), rtol=1e-4, atol=1e-3)
    assert model.representation(tokens).shape == (3, 256, 32)


@pytest.mark.parametrize("attention", ["favor", "exact"])
def test_bf16_autocast_forward_backward_on_cpu(attention):
    model = Performer(**SMALL, attention=attention, gene_embedding="none")
    tokens = _tokens()
    labels = torch.where(tokens > 0, tokens, torch.full_like(tokens, -100))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(tokens)
        loss = mlm_loss(logits, labels)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_features_redraw_every_n_steps_identically_in_every_process():
    a = Performer(**SMALL, redraw_every=3, seed=5, gene_embedding="none")
    b = Performer(**SMALL, redraw_every=3, seed=5, gene_embedding="none")  # another "rank": same seed, no comms
    first = a.layers[0].attn.projection.clone()
    assert not torch.equal(first, a.layers[1].attn.projection)  # layers draw different features
    tokens = _tokens()
    for _ in range(3):
        a(tokens)
    assert torch.equal(a.layers[0].attn.projection, first)  # steps 0..2 use draw 0
    a(tokens)  # step 3: draw 1
    assert not torch.equal(a.layers[0].attn.projection, first)
    b.set_feature_step(3)
    b(tokens)
    assert torch.equal(a.layers[0].attn.projection, b.layers[0].attn.projection)
    fresh = orthogonal_random_features(32, 16, generator=feature_generator(5, 0, 1))
    assert torch.equal(a.layers[0].attn.projection, fresh)
    c = Performer(**SMALL, redraw_every=3, seed=5, gene_embedding="none")
    c.load_state_dict(a.state_dict())  # a resumed run keeps the step and its features
    assert int(c.feature_step) == 4 and torch.equal(c.layers[0].attn.projection, fresh)
    a.eval()
    a(tokens)
    assert int(a.feature_step) == 4  # evaluation does not advance the schedule


def test_gene2vec_embedding_is_frozen_and_checked():
    matrix = np.random.default_rng(0).normal(size=(256, 32)).astype(np.float32)
    model = Performer(**SMALL, gene_embedding="gene2vec", gene2vec=matrix)
    assert not model.gene_emb.weight.requires_grad
    np.testing.assert_array_equal(model.gene_emb.weight.numpy(), matrix)
    with pytest.raises(ConfigError, match=r"expected \(256, 32\)"):
        Performer(**SMALL, gene_embedding="gene2vec", gene2vec=matrix[:, :16])
    with pytest.raises(ConfigError, match="needs a gene2vec matrix"):
        Performer(**SMALL, gene_embedding="gene2vec")
    with pytest.raises(ConfigError, match="attention='linear'"):
        Performer(**SMALL, attention="linear")
    with pytest.raises(ConfigError, match="expects 256"):
        model(_tokens(n=100))


def test_default_sizes_are_scberts():
    model = Performer(depth=1, gene_embedding="learned")  # one layer keeps the test cheap; the rest as scBERT
    attn = model.layers[0].attn
    assert model.seq_len == 16_907 and model.dim == 200 and attn.heads == 10
    assert attn.projection.shape == (266, 64) and model.redraw_every == 1000
    assert model.layers[0].ff.net[0].out_features == 800


def test_a_gene2vec_build_opens_no_file_after_prepare(tmp_path):
    """Issue 12: prepare reads the gene2vec file once; the build takes the vectors from task.priors."""
    from omicsweep.models import Task, get_model
    from omicsweep.models.performer import build_performer

    genes = [f"G{i}" for i in range(255)]
    path = tmp_path / "g2v.txt"
    rng = np.random.default_rng(0)
    path.write_text("".join(f"{g} {' '.join(f'{v:.4f}' for v in rng.normal(size=32))}\n" for g in genes[:200]))
    config = {**{k: v for k, v in SMALL.items() if k != "n_genes"}, "gene_embedding": "gene2vec",
              "gene2vec": str(path)}
    task = Task(n_features=255, n_classes=NUM_TOKENS, genes=tuple(genes))
    entry = get_model("scbert_pretrain")
    _, notes = entry.prepared(config, task)
    assert "200" in notes[0]
    path.unlink()  # a build after prepare reads nothing
    model = entry.build(config, task)
    weight = model.gene_emb.weight.detach().numpy()
    assert weight.shape == (256, 32) and weight[:200].any(axis=1).all()
    assert not weight[200:].any()  # genes without a vector and the appended position are zero rows
    with pytest.raises(ConfigError, match="not loaded"):
        build_performer(config, task)  # the bare builder: the vectors only come through task.priors
