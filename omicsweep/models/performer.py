"""scBERT's Performer (Yang et al. 2022), one file: kernel helpers, attention, blocks, the model.

Written from the paper and REFERENCE.md rather than depending on performer-pytorch (2022, unmaintained): the
feature redraw must be identical on every data-parallel rank without communication, the key stabiliser is the
detached per-(batch, head) max of upstream's later versions (scBERT's fork used a global, non-detached one),
and `attention='exact'` swaps in torch's fused scaled-dot-product attention for the trade-off measurement.

Shapes: b batch, h heads, n positions (n_genes + 1: scBERT appends one position), d dim_head, m random features.
Tokens: bins 0..5 and MASK_TOKEN = 6 (mask / pad), so NUM_TOKENS = 7 logits per position.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from omicsweep.errors import ConfigError
from omicsweep.models.base import PriorCache

NUM_TOKENS = 7
MASK_TOKEN = 6
ATTENTIONS = ("favor", "exact")
GENE_EMBEDDINGS = ("gene2vec", "learned", "none")


# ---- kernel helpers ---------------------------------------------------------------------------------------------
def feature_generator(seed: int, layer: int, redraw_index: int) -> torch.Generator:
    """A CPU generator seeded from (seed, layer, redraw index) alone: every rank draws the same features."""
    state = np.random.SeedSequence([int(seed), int(layer), int(redraw_index)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def orthogonal_random_features(nb_features: int, dim_head: int, *, generator: torch.Generator) -> torch.Tensor:
    """[nb_features, dim_head] rows orthogonal within blocks of dim_head, each row scaled to a chi(d) norm
    (Choromanski et al. 2021, positive orthogonal random features; performer-pytorch's scaling=0)."""
    blocks = []
    for _ in range(math.ceil(nb_features / dim_head)):
        q, _ = torch.linalg.qr(torch.randn(dim_head, dim_head, generator=generator))
        blocks.append(q.T)
    matrix = torch.cat(blocks)[:nb_features]
    norms = torch.randn(nb_features, dim_head, generator=generator).norm(dim=1)
    return norms[:, None] * matrix


def softmax_features(x: torch.Tensor, projection: torch.Tensor, *, is_query: bool, eps: float = 1e-4) -> torch.Tensor:
    """phi(x) = exp(w.x' - |x'|^2 / 2 - stabiliser) / sqrt(m) with x' = x / d^(1/4): the positive random-feature
    map whose inner products estimate exp(q.k / sqrt(d)) (FAVOR+, Lemma 1). The stabiliser cancels in the
    normalisation: per query row for queries, one detached max per (batch, head) for keys."""
    d, m = x.shape[-1], projection.shape[0]
    x = x * d**-0.25
    projected = torch.einsum("bhnd,md->bhnm", x, projection)
    half_norm = (x**2).sum(dim=-1, keepdim=True) / 2
    dims = (-1,) if is_query else (-2, -1)
    stabiliser = projected.amax(dim=dims, keepdim=True).detach()
    return (torch.exp(projected - half_norm - stabiliser) + eps) * m**-0.5


def linear_attention(q_prime: torch.Tensor, k_prime: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """D^-1 (phi(Q) (phi(K)^T V)) in O(n m d) time and memory (FAVOR+, bidirectional)."""
    normaliser = 1.0 / torch.einsum("bhnm,bhm->bhn", q_prime, k_prime.sum(dim=-2))
    context = torch.einsum("bhnm,bhne->bhme", k_prime, v)
    return torch.einsum("bhnm,bhme,bhn->bhne", q_prime, context, normaliser)


def favor_column_sums(q_prime: torch.Tensor, k_prime: torch.Tensor) -> torch.Tensor:
    """sum_i A_ij for A = D^-1 phi(Q) phi(K)^T, i.e. the attention each key receives, as
    phi(k_j) . sum_i phi(q_i) / D_i: O(n m) memory instead of the n x n matrix scBERT's script built."""
    normaliser = 1.0 / torch.einsum("bhnm,bhm->bhn", q_prime, k_prime.sum(dim=-2))
    weighted_queries = torch.einsum("bhnm,bhn->bhm", q_prime, normaliser)
    return torch.einsum("bhnm,bhm->bhn", k_prime, weighted_queries)


def exact_column_sums(q: torch.Tensor, k: torch.Tensor, *, chunk: int = 1024) -> torch.Tensor:
    """sum_i softmax(q_i K^T / sqrt(d))_j, over query chunks: O(chunk x n) memory."""
    total = torch.zeros(k.shape[:-1], dtype=torch.float32, device=k.device)
    scale = q.shape[-1] ** -0.5
    for start in range(0, q.shape[-2], chunk):
        scores = torch.einsum("bhid,bhjd->bhij", q[..., start : start + chunk, :].float(), k.float()) * scale
        total += scores.softmax(dim=-1).sum(dim=-2)
    return total


# ---- attention --------------------------------------------------------------------------------------------------
class Attention(nn.Module):
    """Multi-head self-attention: FAVOR+ (Choromanski et al. 2021, eq. for bidirectional attention with positive
    orthogonal random features) or exact softmax attention through `scaled_dot_product_attention`.

    The FAVOR+ projection is a buffer (saved in checkpoints) redrawn by `redraw(index)`; the model decides when.
    The feature map and the linear attention run in float32 even under bf16 autocast: exp() of bf16 projections
    loses the precision the normaliser needs (FlashAttention's authors ran Performer in fp32 for this reason).
    """

    def __init__(self, dim: int, *, heads: int, dim_head: int, attention: str, nb_features: int, seed: int,
                 layer: int, dropout: float = 0.0):
        super().__init__()
        self.heads, self.attention, self.seed, self.layer = heads, attention, seed, layer
        inner = heads * dim_head
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_out = nn.Linear(inner, dim)
        self.dropout = nn.Dropout(dropout)
        self.register_buffer(
            "projection", orthogonal_random_features(nb_features, dim_head, generator=feature_generator(seed, layer, 0))
        )

    def redraw(self, index: int) -> None:
        fresh = orthogonal_random_features(*self.projection.shape, generator=feature_generator(self.seed, self.layer, index))
        self.projection.copy_(fresh.to(self.projection.device))

    def _qkv(self, x: torch.Tensor):
        return rearrange(self.to_qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads).unbind(0)

    def _features(self, q: torch.Tensor, k: torch.Tensor):
        projection = self.projection.float()
        return (softmax_features(q.float(), projection, is_query=True),
                softmax_features(k.float(), projection, is_query=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._qkv(x)
        if self.attention == "exact":
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            with torch.autocast(device_type=x.device.type, enabled=False):
                out = linear_attention(*self._features(q, k), v.float()).to(v.dtype)
        return self.dropout(self.to_out(rearrange(out, "b h n d -> b n (h d)")))

    @torch.no_grad()
    def column_sums(self, x: torch.Tensor, *, chunk: int = 1024) -> torch.Tensor:
        """(b, h, n): the attention each position receives, summed over queries, never the n x n matrix."""
        q, k, _ = self._qkv(x)
        if self.attention == "exact":
            return exact_column_sums(q, k, chunk=chunk)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return favor_column_sums(*self._features(q, k))


class FeedForward(nn.Module):
    """Linear -> GELU -> Linear, hidden width ff_mult x dim (scBERT: 4)."""

    def __init__(self, dim: int, *, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim * mult), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Block(nn.Module):
    """Pre-LayerNorm residual block: x + attn(norm(x)), then x + ff(norm(x))."""

    def __init__(self, dim: int, *, layer: int, heads: int, dim_head: int, attention: str, nb_features: int,
                 seed: int, ff_mult: int, dropout: float):
        super().__init__()
        self.attn_norm, self.ff_norm = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads=heads, dim_head=dim_head, attention=attention, nb_features=nb_features,
                              seed=seed, layer=layer, dropout=dropout)
        self.ff = FeedForward(dim, mult=ff_mult, dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.ff(self.ff_norm(x))


# ---- the model --------------------------------------------------------------------------------------------------
class Performer(nn.Module):
    """scBERT: token embedding (7 tokens) + gene embedding, `depth` Performer blocks, a final LayerNorm, and a
    masked-expression head predicting the bin (7 logits) of every position.

    gene_embedding: 'gene2vec' (the given frozen [n_genes + 1, dim] matrix, e.g. `read_gene2vec`; scBERT's last
    row, for the appended position, is zero), 'learned' (trainable, one row per position) or 'none'.
    Random features are redrawn every `redraw_every` training forward passes (performer-pytorch's
    feature_redraw_interval); a trainer that accumulates gradients calls `set_feature_step(optimizer_step)` before
    each micro-batch to count optimizer steps instead. Redraw k is drawn from (seed, layer, k) alone.
    """

    def __init__(self, *, n_genes: int = 16_906, dim: int = 200, depth: int = 6, heads: int = 10, dim_head: int = 64,
                 nb_features: int = 266, redraw_every: int = 1000, attention: str = "favor",
                 gene_embedding: str = "gene2vec", gene2vec: torch.Tensor | np.ndarray | None = None,
                 ff_mult: int = 4, dropout: float = 0.0, seed: int = 0):
        super().__init__()
        _check_choice("attention", attention, ATTENTIONS)
        _check_choice("gene_embedding", gene_embedding, GENE_EMBEDDINGS)
        self.n_genes, self.seq_len, self.dim = n_genes, n_genes + 1, dim
        self.attention, self.gene_embedding_kind, self.redraw_every = attention, gene_embedding, redraw_every
        self.token_emb = nn.Embedding(NUM_TOKENS, dim)
        self.gene_emb = _gene_embedding(gene_embedding, gene2vec, self.seq_len, dim)
        self.layers = nn.ModuleList(
            Block(dim, layer=i, heads=heads, dim_head=dim_head, attention=attention, nb_features=nb_features,
                  seed=seed, ff_mult=ff_mult, dropout=dropout)
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.to_logits = nn.Linear(dim, NUM_TOKENS)
        self.register_buffer("feature_step", torch.zeros((), dtype=torch.long))  # saved: resume keeps the schedule
        self._drawn = 0

    def set_feature_step(self, step: int) -> None:
        self.feature_step.fill_(int(step))

    def _maybe_redraw(self) -> None:
        if self.attention != "favor" or self.redraw_every <= 0:
            return
        index = int(self.feature_step) // self.redraw_every
        if index != self._drawn:
            for block in self.layers:
                block.attn.redraw(index)
            self._drawn = index

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        # the loaded projections are those the last training step used, drawn before feature_step was advanced:
        # the next training forward redraws for the loaded step (a draw is a function of (seed, layer, index)
        # alone, so this is the projection an uninterrupted run uses there)
        if prefix + "feature_step" in state_dict:
            self._drawn = -1

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[-1] != self.seq_len:
            raise ConfigError(f"tokens have {tokens.shape[-1]} positions; this model expects {self.seq_len} "
                              f"(n_genes {self.n_genes} + 1)")
        x = self.token_emb(tokens)
        if self.gene_emb is not None:
            x = x + self.gene_emb(torch.arange(self.seq_len, device=tokens.device))
        return x

    def representation(self, tokens: torch.Tensor) -> torch.Tensor:
        """(b, n, dim) after the final LayerNorm: what a fine-tuning head reads (scBERT II)."""
        if self.training:
            self._maybe_redraw()
            self.feature_step += 1
        x = self.embed(tokens)
        for block in self.layers:
            x = block(x)
        return self.norm(x)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(b, n, 7) logits over the bins: the masked-expression-modelling head."""
        return self.to_logits(self.representation(tokens))

    @torch.no_grad()
    def attention_received(self, tokens: torch.Tensor, *, chunk: int = 1024) -> torch.Tensor:
        """(b, n): the attention each position (gene) receives, summed over queries and averaged over heads and
        layers (scBERT's gene importance) in O(n) memory per layer."""
        x, total = self.embed(tokens), None
        for block in self.layers:
            sums = block.attn.column_sums(block.attn_norm(x), chunk=chunk).mean(dim=1)
            total = sums if total is None else total + sums
            x = block(x)
        return total / len(self.layers)


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the masked positions only (labels -100 elsewhere), averaged over them."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100)


def _check_choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"config {key}={value!r}: expected one of {', '.join(allowed)}")


def _gene_embedding(kind: str, gene2vec, seq_len: int, dim: int) -> nn.Embedding | None:
    if kind == "none":
        return None
    if kind == "learned":
        return nn.Embedding(seq_len, dim)
    if gene2vec is None:
        raise ConfigError("config gene_embedding='gene2vec' needs a gene2vec matrix (read_gene2vec); "
                          "or use gene_embedding: learned | none")
    weight = torch.as_tensor(np.asarray(gene2vec), dtype=torch.float32)
    if tuple(weight.shape) != (seq_len, dim):
        raise ConfigError(f"gene2vec matrix is {tuple(weight.shape)}; expected ({seq_len}, {dim}) = (n_genes + 1, dim)")
    return nn.Embedding.from_pretrained(weight, freeze=True)


def vocabulary_fingerprint(genes) -> str:
    """16 hex digits of SHA-256 over the ordered gene symbols: a checkpoint fits a corpus with the same vocabulary."""
    import hashlib

    return hashlib.sha256("\n".join(map(str, genes)).encode()).hexdigest()[:16]


# ---- registration: scBERT pretraining (masked expression modelling; benchmark/pretrain.py trains it) ------------
MODEL_KEYS = ("dim", "depth", "heads", "dim_head", "nb_features", "redraw_every", "attention", "gene_embedding",
              "ff_mult", "dropout")


_GENE2VEC = PriorCache(kept=2)  # aligned matrices per process (24,447 x 200 float32 is 20 MB)


def _gene2vec_key(config: dict, task) -> tuple | None:
    if config.get("gene_embedding", "learned") != "gene2vec":
        return None
    if not config.get("gene2vec"):
        raise ConfigError("config gene_embedding=gene2vec needs gene2vec=PATH (a file `omicsweep gene2vec` "
                          "writes); or set gene_embedding to learned | none")
    if not task.genes:
        raise ConfigError("config gene_embedding=gene2vec needs the corpus's gene symbols to align the vectors")
    from pathlib import Path

    return str(Path(config["gene2vec"]).expanduser().resolve()), int(config["dim"]), tuple(task.genes)


def _read_gene2vec(key: tuple) -> tuple[np.ndarray, dict]:
    from omicsweep.models.gene2vec import read_gene2vec

    matrix, coverage = read_gene2vec(key[0], list(key[2]), dim=key[1])
    return _GENE2VEC.put(key, matrix), coverage


def load_priors(config: dict, task) -> dict:
    """{"gene2vec": the [n_genes + 1, dim] matrix aligned to the task's genes, or None}: the one read `prepare`
    made in this process, else read once (a trial's worker process)."""
    key = _gene2vec_key(config, task)
    if key is None:
        return {"gene2vec": None}
    cached = _GENE2VEC.get(key)
    return {"gene2vec": cached if cached is not None else _read_gene2vec(key)[0]}


def build_performer(config: dict, task) -> Performer:
    """The Performer of a pretraining configuration over the task's genes (task.n_features of them), its gene2vec
    vectors from `task.priors` (load_priors): opens no file."""
    if config.get("gene_embedding", "learned") == "gene2vec" and "gene2vec" not in task.priors:
        raise ConfigError(f"scbert_pretrain: gene2vec={config.get('gene2vec')} is not loaded; build through the "
                          "registry (get_model('scbert_pretrain').build), which runs load_priors")
    sizes = {key: config[key] for key in MODEL_KEYS if key in config}
    return Performer(n_genes=int(task.n_features), gene2vec=task.priors.get("gene2vec"),
                     seed=int(config.get("seed", 0)), **sizes)


def _prepare(config: dict, task) -> tuple[dict, list[str]]:
    """A gene2vec file is read once before any trial (dimension, format, coverage of the corpus's genes) and kept
    for this process's builds."""
    key = _gene2vec_key(config, task)
    if key is None:
        return {}, []
    _, coverage = _read_gene2vec(key)
    return {}, [f"gene2vec {config['gene2vec']}: {coverage}"]


def _register() -> None:
    from omicsweep.models.base import ModelEntry, register
    from omicsweep.tasks import MASKED_EXPRESSION

    register(ModelEntry(
        name="scbert_pretrain", family="torch", build=build_performer, tasks=(MASKED_EXPRESSION,),
        prepare=_prepare, load_priors=load_priors,
        description="scBERT's Performer pretrained by masked expression modelling on a corpus store "
                    "(omicsweep pretrain)",
    ))


_register()
