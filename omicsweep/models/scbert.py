"""scBERT fine-tuned for cell classification (issue 14): a pretrained Performer (`omicsweep pretrain`) and scBERT's
head, on any cell store whose genes are mapped onto the pretraining vocabulary by symbol.

    pretrained: RUN_ID | PATH | none   RUN_ID: a trial run of `omicsweep pretrain` (looked up in the sweep's tracking
                                       store, see `set_run_resolver`); PATH: a checkpoint folder or its module.pt;
                                       none: the same network from random weights
    backbone_from: RUN_ID | PATH       the checkpoint whose vocabulary and sizes a `pretrained: none` network takes
                                       (default: `pretrained`'s), so a sweep searching pretrained in {RUN, none}
                                       builds one network for both; without either, the vocabulary is the store's
                                       own genes and the sizes are the config's (UNTRAINED_SIZES where unset)

`prepare` (on the driver) resolves the checkpoint, checks its sizes against the config and the store's coverage of
its vocabulary, and pins `checkpoint_path`, `checkpoint_sha256` and the sizes into the config; `load_priors` (in
the worker) reads module.pt (its hash checked) and the vocabulary; `build` opens no file.

The featuriser hands the model a cell's counts over the store's genes ("counts"); the model gathers them onto
the vocabulary (store genes absent from it dropped, vocabulary genes absent from the store zero), then bins them
as `datasets.tokens.expression_tokens` does (1e4 per cell over the vocabulary's genes, log2(1 + x), capped at 5:
scBERT normalised after mapping onto its 16,906 genes; values below 0, a scaled store's, count as 0). Doing the
mapping in the model keeps `predict`, the pyfunc and every caller of the featuriser unchanged: they hand it the
training store's genes.

Head (scBERT's `Identity`): Conv2d(1, 1, (1, dim)) -> ReLU -> flatten -> Linear(seq, 512) -> ReLU -> Dropout ->
Linear(512, 128) -> ReLU -> Dropout -> Linear(128, classes), seq = vocabulary + 1 (the appended position).
Trained: the head, the final LayerNorm (scBERT trained it too) and the blocks `unfreeze_layers` N names, the last N
(0: a frozen backbone; the re-evaluation: 1, the last), or `unfreeze_blocks` lists by index (scBERT: [4] of 6,
its 5th). A checkpoint of a pretrained model holds only what it trained (and the
buffers): the frozen weights are re-read from the pinned pretraining checkpoint when it is built.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from omicsweep.datasets.tokens import MAX_BIN, TARGET_SUM
from omicsweep.errors import ConfigError, InputError
from omicsweep.models.base import ModelEntry, PriorCache, Task, register
from omicsweep.models.performer import MODEL_KEYS, Performer

MODULE_FILE, STATE_FILE = "module.pt", "pretrain.json"  # benchmark/pretrain_checkpoint.py's names
COUNTS_KEY = "counts"
SIZE_KEYS = ("dim", "depth", "heads", "dim_head", "nb_features", "ff_mult", "gene_embedding")  # must match
BACKBONE_KEYS = tuple(k for k in MODEL_KEYS if k != "dropout")  # sizes + attention, redraw_every (may differ)
# a `pretrained: none` network without `backbone_from`: scbert_pretrain.yaml's defaults
UNTRAINED_SIZES = {"dim": 32, "depth": 2, "heads": 2, "dim_head": 16, "nb_features": 32, "redraw_every": 1000,
                   "attention": "favor", "gene_embedding": "learned", "ff_mult": 4}
DEFAULT_MIN_COVERAGE = 0.5
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_CHECKPOINTS = PriorCache(kept=2)  # (folder, sha256) -> (vocabulary, state dict, pretraining config)
_run_resolver: Callable[[str], Path] | None = None


def set_run_resolver(resolver: Callable[[str], Path] | None) -> None:
    """How `prepare` turns a RUN_ID into a checkpoint folder: the CLI sets one for the tracking store of the
    sweep (reports/pretrained.py); models know no MLflow."""
    global _run_resolver
    _run_resolver = resolver


def is_none(value: Any) -> bool:
    return value is None or str(value).strip().lower() in ("", "none", "null")


# ---- the network -------------------------------------------------------------------------------------------------
def tokens_from_counts(counts: torch.Tensor) -> torch.Tensor:
    """(b, n) counts -> (b, n + 1) int64 tokens, as `expression_tokens` bins a CSR batch (float32 throughout)."""
    counts = counts.float()
    totals = counts.sum(dim=1, keepdim=True)
    totals = torch.where(totals == 0, torch.ones_like(totals), totals)
    values = torch.log1p(counts / (totals / TARGET_SUM)) / math.log(2)
    tokens = values.clamp(max=MAX_BIN).long()
    return torch.cat([tokens, torch.zeros_like(tokens[:, :1])], dim=1)


class ScBertHead(nn.Module):
    """scBERT's classification head over the backbone's (b, seq, dim) representation."""

    def __init__(self, seq_len: int, dim: int, n_classes: int, *, dropout: float = 0.0):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, (1, dim))
        self.mlp = nn.Sequential(nn.Linear(seq_len, 512), nn.ReLU(), nn.Dropout(dropout), nn.Linear(512, 128),
                                 nn.ReLU(), nn.Dropout(dropout), nn.Linear(128, n_classes))

    def forward(self, representation: torch.Tensor) -> torch.Tensor:
        # the (1, dim) convolution of one channel is a dot product per position: computed as one (torch's CPU
        # convolution backward of this shape took most of a training step), with the Conv2d's own weights
        weight = self.conv.weight.reshape(-1)
        return self.mlp(torch.relu(representation @ weight + self.conv.bias))


class ScBertClassifier(nn.Module):
    """Store counts -> vocabulary tokens -> Performer representation -> scBERT's head."""

    def __init__(self, backbone: Performer, gene_index: np.ndarray, n_classes: int, *, dropout: float,
                 trained_blocks: list[int], drop_frozen: bool):
        super().__init__()
        self.backbone = backbone
        if hasattr(backbone, "to_logits"):
            del backbone.to_logits  # the masked-expression head: no part of the classifier
        self.head = ScBertHead(backbone.seq_len, backbone.dim, n_classes, dropout=dropout)
        # store column of each vocabulary gene, n_store (a zero column) where the store lacks it
        self.register_buffer("gene_index", torch.as_tensor(gene_index, dtype=torch.long), persistent=False)
        self.trained_blocks = list(trained_blocks)
        self.eval_elements = 2**26  # floats of one activation when scoring (256 MB)
        for name, param in backbone.named_parameters():
            param.requires_grad = _trained_name(name, self.trained_blocks)
        # a pretrained backbone's frozen weights stay in its checkpoint, not in every trial's (load_priors reads them)
        frozen = [f"backbone.{n}" for n, p in backbone.named_parameters() if not p.requires_grad]
        self.frozen = frozen if drop_frozen else []
        self.register_load_state_dict_post_hook(_tolerate_frozen)

    def forward(self, counts: torch.Tensor) -> torch.Tensor:
        """Logits; without gradients in chunks of at most `eval_elements` / (seq x dim) cells (the loop scores
        1,024 cells a batch: scBERT's sizes would hold 1,024 x 16,907 x 200 floats per activation)."""
        step = max(1, self.eval_elements // (self.backbone.seq_len * self.backbone.dim))
        if torch.is_grad_enabled() or len(counts) <= step:
            return self._logits(counts)
        return torch.cat([self._logits(chunk) for chunk in counts.split(step)])

    def _logits(self, counts: torch.Tensor) -> torch.Tensor:
        padded = torch.cat([counts.float(), torch.zeros_like(counts[:, :1], dtype=torch.float32)], dim=1)
        tokens = tokens_from_counts(padded[:, self.gene_index])
        return self.head(self.backbone.representation(tokens))

    def param_groups(self, config: dict[str, Any]) -> list[dict[str, Any]]:
        """Trained backbone blocks at `backbone_lr`, the head and final norm at `head_lr` (both default `lr`)."""
        lr = float(config["lr"])
        backbone = [p for n, p in self.backbone.named_parameters() if p.requires_grad and not n.startswith("norm.")]
        head = [*self.head.parameters(), *self.backbone.norm.parameters()]
        groups = [{"params": head, "lr": float(config.get("head_lr") or lr)}]
        if backbone:
            groups.append({"params": backbone, "lr": float(config.get("backbone_lr") or lr)})
        return groups

    def state_dict(self, *args, destination=None, prefix="", keep_vars=False):
        state = super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        for name in self.frozen:
            state.pop(prefix + name, None)
        return state


def _trained_name(name: str, blocks: list[int]) -> bool:
    if name.startswith("norm."):
        return True
    match = re.match(r"layers\.(\d+)\.", name)
    return match is not None and int(match.group(1)) in blocks


def _tolerate_frozen(module: ScBertClassifier, incompatible) -> None:
    """A trial's checkpoint lacks the frozen backbone weights: the build already holds them."""
    frozen = tuple(module.frozen)
    incompatible.missing_keys[:] = [k for k in incompatible.missing_keys
                                    if not any(k == f or k.endswith("." + f) for f in frozen)]


def trained_blocks(config: dict[str, Any], depth: int) -> list[int]:
    """The trained blocks: `unfreeze_blocks` (block indices: a list, one index or "i,j"; each must exist) when set,
    else `unfreeze_layers` N = the last N blocks (all of them for N >= depth, so a searched N fits any checkpoint;
    a list there is block indices too)."""
    value, key = config.get("unfreeze_blocks"), "unfreeze_blocks"
    if is_none(value):
        value, key = config.get("unfreeze_layers", 1), "unfreeze_layers"
    elif not isinstance(value, (list, tuple)):
        value = [v for v in str(value).strip("[] ").split(",") if v.strip()]
    try:
        if isinstance(value, (list, tuple)):
            blocks = sorted({int(v) for v in value})
        else:
            count = 0 if value is None else int(value)
            if count < 0 or count != float(value):
                raise ValueError
            blocks = list(range(max(0, depth - count), depth))
    except (TypeError, ValueError):
        expected = "block indices" if key == "unfreeze_blocks" else "a whole number of last blocks >= 0"
        raise ConfigError(f"config {key}={value!r}: expected {expected}") from None
    if any(b < 0 or b >= depth for b in blocks):
        raise ConfigError(f"config {key}={value!r}: the backbone has blocks 0..{depth - 1}")
    return blocks


def gene_index(store_genes, vocabulary) -> np.ndarray:
    """For each vocabulary gene its store column (by symbol, case-insensitively; the first of duplicates), and
    len(store_genes) where the store lacks it."""
    position: dict[str, int] = {}
    for i, gene in enumerate(map(str, store_genes)):
        position.setdefault(gene.casefold(), i)
    return np.array([position.get(str(g).casefold(), len(store_genes)) for g in vocabulary], dtype=np.int64)


def coverage_note(index: np.ndarray, n_store: int, config: dict[str, Any]) -> str:
    """'N of V vocabulary genes found in the store (x%)'; a ConfigError below `min_vocab_coverage`."""
    found, total = int((index < n_store).sum()), len(index)
    fraction = found / max(1, total)
    minimum = float(config.get("min_vocab_coverage", DEFAULT_MIN_COVERAGE) or 0.0)
    note = (f"scbert: {found} of {total} vocabulary genes found in the store ({fraction:.1%}); "
            f"{n_store - found} store genes are not in it and are dropped")
    if fraction < minimum:
        raise ConfigError(f"{note.removeprefix('scbert: ')}: below min_vocab_coverage={minimum}; the store's gene "
                          "symbols barely overlap the pretraining vocabulary (another species or id type?)")
    return note


# ---- checkpoints -------------------------------------------------------------------------------------------------
def checkpoint_folder(ref: str) -> Path:
    """The checkpoint folder a `pretrained`/`backbone_from` value names: a folder, its module.pt, or a RUN_ID."""
    path = Path(str(ref)).expanduser()
    if path.exists():
        folder = (path if path.is_dir() else path.parent).resolve()
        if not (folder / STATE_FILE).is_file() or not (folder / MODULE_FILE).is_file():
            raise InputError(f"pretrained={ref}: not a pretraining checkpoint (needs {MODULE_FILE} and {STATE_FILE})")
        return folder
    if _RUN_ID.match(str(ref)):
        if _run_resolver is None:
            raise ConfigError(f"pretrained={ref}: a run id, but no tracking store to look it up in; give the "
                              "checkpoint folder (or its module.pt) instead")
        return checkpoint_folder(str(_run_resolver(str(ref))))
    raise InputError(f"pretrained={ref}: no such checkpoint folder or file, and not a run id")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _vocabulary(meta: dict[str, Any], folder: Path, config: dict[str, Any]) -> tuple[str, ...]:
    """The checkpoint's genes: pretrain.json's `genes`, else `vocabulary` (the corpus store it was pretrained on,
    or a text file of its genes one a line), checked against the checkpoint's vocabulary fingerprint."""
    from omicsweep.models.performer import vocabulary_fingerprint

    genes = meta.get("genes")
    source = f"{folder / STATE_FILE}"
    if genes is None:
        if is_none(config.get("vocabulary")):
            raise InputError(f"{source}: holds no gene list (pretrained before it was written); set "
                             "vocabulary=CORPUS.zarr (the corpus it was pretrained on) or a text file of its genes")
        genes, source = _read_vocabulary(Path(str(config["vocabulary"])).expanduser()), str(config["vocabulary"])
    genes = tuple(map(str, genes))
    expected = meta.get("vocabulary_fingerprint")
    if expected is not None and vocabulary_fingerprint(genes) != expected:
        raise InputError(f"{source}: genes of another vocabulary than the checkpoint's ({len(genes)} genes, "
                         f"fingerprint {vocabulary_fingerprint(genes)}; the checkpoint's {expected})")
    return genes


def _read_vocabulary(path: Path) -> list[str]:
    if path.is_file():
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    from omicsweep.datasets.open import open_store

    return list(map(str, open_store(path).genes()))


def read_checkpoint(folder: Path, config: dict[str, Any], sha256: str | None = None):
    """(vocabulary, state dict, pretraining config, sha256 of module.pt) of a pretraining checkpoint, read once
    per process; a pinned sha256 that differs (the file changed since the sweep pinned it) is an InputError."""
    cached = _CHECKPOINTS.get((str(folder), sha256)) if sha256 is not None else None
    if cached is not None:
        return cached
    try:
        meta = json.loads((folder / STATE_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{folder / STATE_FILE}: not a pretraining checkpoint state ({exc})") from None
    data = (folder / MODULE_FILE).read_bytes()
    digest = _sha256(data)
    if sha256 is not None and digest != sha256:
        raise InputError(f"{folder / MODULE_FILE}: sha256 {digest[:12]} differs from the {sha256[:12]} pinned when "
                         "the sweep started; the checkpoint was replaced")
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    pretrain_config = dict(meta.get("config") or {})
    vocabulary = _vocabulary(meta, folder, config)
    if int(meta.get("n_genes", len(vocabulary))) != len(vocabulary):
        raise InputError(f"{folder / STATE_FILE}: {meta.get('n_genes')} genes but a vocabulary of {len(vocabulary)}")
    return _CHECKPOINTS.put((str(folder), digest), (vocabulary, state, pretrain_config, digest))


def backbone_sizes(config: dict[str, Any], pretrain_config: dict[str, Any] | None) -> dict[str, Any]:
    """The backbone's sizes: the checkpoint's (a config value that differs is a ConfigError), else the config's
    over UNTRAINED_SIZES. attention and redraw_every may differ from the pretraining run's."""
    if pretrain_config is None:
        return {k: config[k] if _is_set(config, k) else UNTRAINED_SIZES[k] for k in BACKBONE_KEYS}
    sizes = {k: pretrain_config.get(k, UNTRAINED_SIZES[k]) for k in BACKBONE_KEYS}
    clashes = [f"{k}={config[k]!r} (checkpoint: {sizes[k]!r})" for k in SIZE_KEYS
               if _is_set(config, k) and str(config[k]) != str(sizes[k])]
    if clashes:
        raise ConfigError(f"config {', '.join(clashes)}: the pretraining checkpoint is of another size; leave the "
                          "sizes unset (they come from the checkpoint)")
    for key in ("attention", "redraw_every"):
        if not is_none(config.get(key)):
            sizes[key] = config[key]
    return sizes


def _is_set(config: dict[str, Any], key: str) -> bool:
    """A size the config gives; gene_embedding's "none" is a value (no gene embedding), not an unset size."""
    return config.get(key) is not None if key == "gene_embedding" else not is_none(config.get(key))


# ---- prepare, priors, build --------------------------------------------------------------------------------------
def backbone_ref(config: dict[str, Any]) -> str | None:
    """The checkpoint a configuration builds on: `backbone_from`, else `pretrained` (None: neither)."""
    for key in ("backbone_from", "pretrained"):
        if not is_none(config.get(key)):
            return str(config[key])
    return None


def _pinned_folder(config: dict[str, Any]) -> tuple[Path, str | None] | None:
    """The checkpoint folder (and pinned sha256) of a configuration; None for the store's own vocabulary."""
    ref = backbone_ref(config)
    if ref is None:
        return None
    pretrained = config.get("pretrained")
    if not is_none(pretrained) and not is_none(config.get("backbone_from")) and str(pretrained) not in (
            str(config["backbone_from"]), str(config.get("checkpoint_path"))):
        raise ConfigError(f"config pretrained={pretrained} differs from backbone_from={config['backbone_from']}; a "
                          "sweep compares one pretraining run with none (pretrained: [RUN, none])")
    if not is_none(config.get("checkpoint_path")):
        return Path(str(config["checkpoint_path"])), config.get("checkpoint_sha256")
    return checkpoint_folder(ref), None


def prepare(config: dict[str, Any], task: Task) -> tuple[dict[str, Any], list[str]]:
    """Resolve and check the checkpoint once on the driver; pin its folder, module.pt's sha256 and the sizes."""
    pinned = _pinned_folder(config)
    if pinned is None:
        sizes = backbone_sizes(config, None)
        return sizes, [f"scbert: no pretraining; the vocabulary is the store's {len(task.genes)} genes"]
    folder, sha = pinned
    vocabulary, _, pretrain_config, digest = read_checkpoint(folder, config, sha)
    sizes = backbone_sizes(config, pretrain_config)
    note = coverage_note(gene_index(task.genes, vocabulary), len(task.genes), config)
    ref = backbone_ref(config)
    pins = {**sizes, "backbone_from": ref, "checkpoint_path": str(folder), "checkpoint_sha256": digest}
    return pins, [f"scbert: backbone from {ref} ({folder}, module.pt sha256 {digest[:12]})", note]


def load_priors(config: dict[str, Any], task: Task) -> dict[str, Any]:
    """{"vocabulary", "state" (the pretrained weights, None for `pretrained: none`), "gene2vec", "sizes"}."""
    pinned = _pinned_folder(config)
    if pinned is None:
        sizes = backbone_sizes(config, None)
        return {"vocabulary": tuple(task.genes), "state": None, "sizes": sizes,
                "gene2vec": _gene2vec(config, sizes, task.genes)}
    vocabulary, state, pretrain_config, _ = read_checkpoint(pinned[0], config, pinned[1])
    sizes = backbone_sizes(config, pretrain_config)
    weights = state if not is_none(config.get("pretrained")) else None
    return {"vocabulary": vocabulary, "state": weights, "sizes": sizes, "gene2vec": state.get("gene_emb.weight")
            if sizes["gene_embedding"] == "gene2vec" else None}


def _gene2vec(config: dict[str, Any], sizes: dict[str, Any], genes) -> Any:
    if sizes["gene_embedding"] != "gene2vec":
        return None
    from omicsweep.models.performer import load_priors as performer_priors

    task = Task(n_features=len(genes), n_classes=1, genes=tuple(genes))
    return performer_priors({**config, **sizes}, task)["gene2vec"]


def build(config: dict[str, Any], task: Task) -> ScBertClassifier:
    """The classifier of a configuration from `task.priors` (load_priors): opens no file."""
    priors, sizes = task.priors, task.priors["sizes"]
    if not task.genes and priors.get("state") is not None:
        raise ConfigError("scbert maps the store's genes onto its vocabulary by symbol; the task has no gene names")
    vocabulary = priors["vocabulary"] or tuple(map(str, range(task.n_features)))  # no names: the columns in order
    genes = task.genes or vocabulary
    backbone = Performer(n_genes=len(vocabulary), gene2vec=priors.get("gene2vec"), dropout=0.0,
                         seed=int(config.get("seed", 0)), **sizes)
    state = priors.get("state")
    if state is not None:
        backbone.load_state_dict(state)
    return ScBertClassifier(backbone, gene_index(genes, vocabulary), task.n_classes,
                            dropout=float(config.get("dropout") or 0.0),
                            trained_blocks=trained_blocks(config, int(sizes["depth"])),
                            drop_frozen=state is not None)


def featurise(batch, genes, transform) -> dict[str, torch.Tensor]:
    """A batch's counts over the store's genes (int32 when whole, so no dtype cast of the strategy rounds them)."""
    dense = np.maximum(sp.csr_matrix(batch).toarray(), 0)  # tokens bin counts: a scaled store's negatives are 0
    whole = dense.size == 0 or (np.array_equal(dense, np.round(dense)) and dense.max() < 2**31)
    return {COUNTS_KEY: torch.from_numpy(dense.astype(np.int32 if whole else np.float32))}


register(ModelEntry(
    name="scbert", family="torch", build=build, prepare=prepare, load_priors=load_priors, featuriser=featurise,
    description="scBERT fine-tuned for cell classification: a pretrained Performer (omicsweep pretrain, or none) "
                "over the store's genes mapped onto its vocabulary, scBERT's conv + MLP head",
))
