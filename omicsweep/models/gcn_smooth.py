"""Study 002's feature smoothing with a GCN over a gene graph, then its FC classifier.

    x [cells, genes] -> per-gene features h = x * w + b + e_gene            [genes, cells, gene_dim]
      -> GCN        z = ReLU((G h + I(h) h) W)   G: global graph, I(h): per-cell individual graph
      -> readout    s = one value per gene (Linear gene_dim -> 1, zero at initialisation)
      -> residual   f = x + s                    002: smoothed features fused with the input by a sum
      -> FC         [Linear -> ReLU -> Dropout] x n_layers -> Linear         logits

Global graph G: an edge list (config `graph`: a file or folder, see datasets/graphs.py) aligned to the store's
genes by symbol; scores / max with diagonal 0 or 1 (`graph_diagonal`, 002's two variants), optionally
row-normalised (`graph_norm: row`) so every gene averages its neighbours instead of summing them.
Individual graph I(h) (002: softmax over embedded dot products theta(h_i).phi(h_j)/sqrt(d_k)): 002 used all
gene pairs with batch 1; here gene i attends only to its `individual_k` highest-scored graph neighbours, so its
memory is cells x graph genes x k x (gene_dim + key_dim) floats instead of cells x genes^2 (0 turns it off).
`input_genes: graph` keeps only the genes with an edge (002's 1,817-gene variant); `all` keeps every gene.

Without a graph (`graph: null`, or `none`) the model has no prior: no graph genes (so input_genes=graph means all
genes) and no individual graph; the GCN sees only the diagonal, and the model is the FC over lifted per-gene
features. That is the documented fallback the conformance tests run; `prepare` says so before a sweep.
The graph is read by `prepare` (once, on the driver) or `load_priors` (once per worker process) and reaches
`build` in `task.priors`: `build` opens no file.
A configured graph that cannot be used (missing, malformed, no gene matched) is an InputError before any trial.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from omicsweep.errors import ConfigError
from omicsweep.models.base import ModelEntry, PriorCache, Task, register

INPUT_GENES = ("all", "graph")
GRAPH_NORMS = ("max", "row")
MAX_LAYERS = 2
CELLS_PER_CHUNK = 128  # the largest training batch of the search space


def graph_location(config: dict[str, Any]) -> str | None:
    """The configured graph path, or None for no graph (null, empty or 'none')."""
    value = config.get("graph")
    if value is None or str(value).strip().lower() in ("", "none", "null"):
        return None
    return str(value)


class _GraphMatmul(torch.autograd.Function):
    """graph @ dense for a sparse CSR graph; the gradient goes through the precomputed transpose."""

    @staticmethod
    def forward(ctx, graph: torch.Tensor, graph_t: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        ctx.graph_t = graph_t
        return graph @ dense

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, None, ctx.graph_t @ grad.contiguous()


def _csr_tensor(matrix: sp.csr_matrix) -> torch.Tensor:
    import warnings

    matrix = sp.csr_matrix(matrix, dtype=np.float32)
    matrix.eliminate_zeros()
    matrix.sort_indices()
    with warnings.catch_warnings():  # torch calls CSR "beta"; CSR @ dense on CPU is all we use of it
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(
            torch.from_numpy(matrix.indptr.astype(np.int64)), torch.from_numpy(matrix.indices.astype(np.int64)),
            torch.from_numpy(matrix.data), size=matrix.shape, check_invariants=False,
        )


def top_neighbours(adjacency: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, neighbours [rows, k], valid [rows, k]): each gene with an off-diagonal edge and its k highest-
    scored neighbours (ties by gene index); rows with fewer than k neighbours are padded and marked invalid."""
    off = sp.csr_matrix(adjacency - sp.diags(adjacency.diagonal()))
    off.eliminate_zeros()
    counts = np.diff(off.indptr)
    rows = np.flatnonzero(counts > 0)
    row_of = np.repeat(np.arange(off.shape[0]), counts)
    order = np.lexsort((off.indices, -off.data, row_of))  # by row, then highest score, then index
    rank = np.arange(len(order)) - np.repeat(off.indptr[:-1], counts)
    take = rank < k
    neighbours = np.repeat(rows[:, None], k, axis=1)  # padding points at the gene itself, masked out
    valid = np.zeros((len(rows), k), dtype=bool)
    slot = np.searchsorted(rows, row_of[order][take])
    neighbours[slot, rank[take]] = off.indices[order][take]
    valid[slot, rank[take]] = True
    return rows, neighbours, valid


def graph_structure(adjacency: sp.csr_matrix | None, n_features: int, *, graph_diagonal: int, graph_norm: str,
                    input_genes: str, individual_k: int) -> dict[str, torch.Tensor]:
    """The fixed tensors of a model: its input genes (`keep`), the graph over them and its transpose, and the
    graph genes (`rows`) with their top-k `neighbours` and `valid` slots for the individual graph.

    Plain tensors, not buffers: fixed by the config and rebuilt from the graph at every build, so checkpoints
    hold learned weights only and distributed wrappers do not broadcast them.
    """
    if adjacency is None:  # no prior: the diagonal alone
        adjacency = sp.identity(n_features, format="csr", dtype=np.float32) * float(graph_diagonal)
    keep = np.arange(n_features)
    if input_genes == "graph":
        connected = np.flatnonzero(np.diff(sp.csr_matrix(adjacency - sp.diags(adjacency.diagonal())).indptr))
        keep = connected if len(connected) else keep
    adjacency = sp.csr_matrix(adjacency[keep][:, keep], dtype=np.float32)
    if graph_norm == "row":
        sums = np.asarray(adjacency.sum(axis=1)).ravel()
        adjacency = sp.csr_matrix(sp.diags(np.divide(1.0, sums, out=np.zeros_like(sums), where=sums > 0)) @ adjacency)
    structure = {
        "keep": torch.from_numpy(keep.astype(np.int64)),
        "adjacency": _csr_tensor(adjacency),
        "adjacency_t": _csr_tensor(adjacency.T.tocsr()),
    }
    rows, neighbours, valid = top_neighbours(adjacency, individual_k) if individual_k else ([], None, None)
    structure["rows"] = torch.as_tensor(np.asarray(rows, dtype=np.int64))
    if neighbours is not None and len(rows):
        structure["neighbours"] = torch.from_numpy(neighbours.astype(np.int64))
        structure["valid"] = torch.from_numpy(valid)
    return structure


class GeneGraphSmoother(nn.Module):
    def __init__(self, n_features: int, n_classes: int, *, adjacency: sp.csr_matrix | None = None,
                 graph_diagonal: int = 0, graph_norm: str = "max", input_genes: str = "all", gene_dim: int = 4,
                 individual_k: int = 4, key_dim: int = 4, hidden: tuple[int, ...] = (512, 128), dropout: float = 0.0):
        super().__init__()
        if input_genes not in INPUT_GENES:
            raise ConfigError(f"gcn_smooth: input_genes={input_genes!r}; use one of {', '.join(INPUT_GENES)}")
        if graph_norm not in GRAPH_NORMS:
            raise ConfigError(f"gcn_smooth: graph_norm={graph_norm!r}; use one of {', '.join(GRAPH_NORMS)}")
        if int(graph_diagonal) not in (0, 1):
            raise ConfigError(f"gcn_smooth: graph_diagonal must be 0 or 1, got {graph_diagonal!r}")
        if int(gene_dim) < 1 or int(key_dim) < 1 or int(individual_k) < 0:
            raise ConfigError("gcn_smooth: gene_dim and key_dim must be >= 1 and individual_k >= 0")
        self._graph = graph_structure(adjacency, n_features, graph_diagonal=int(graph_diagonal),
                                      graph_norm=graph_norm, input_genes=input_genes, individual_k=int(individual_k))
        n_genes, d = len(self._graph["keep"]), int(gene_dim)
        self.n_genes, self.key_dim, self.all_inputs = n_genes, int(key_dim), n_genes == n_features
        self.value = nn.Parameter(torch.ones(d))
        self.value_bias = nn.Parameter(torch.zeros(d))
        self.gene_embedding = nn.Parameter(0.1 * torch.randn(n_genes, d))
        self.theta, self.phi = nn.Linear(d, self.key_dim), nn.Linear(d, self.key_dim)
        self.gcn = nn.Linear(d, d, bias=False)  # W of Z = ReLU(G Z W)
        self.readout = nn.Linear(d, 1)
        # zero-initialised (as residual branches in ReZero / Fixup): training starts from the FC on the input and
        # grows the smoothing in, so summed hub neighbourhoods (graph_norm: max) cannot swamp the input at first
        nn.init.zeros_(self.readout.weight)
        nn.init.zeros_(self.readout.bias)
        layers: list[nn.Module] = []
        size = n_genes
        for width in map(int, hidden):
            layers += [nn.Linear(size, width), nn.ReLU(), nn.Dropout(float(dropout))]
            size = width
        layers.append(nn.Linear(size, n_classes))
        self.classifier = nn.Sequential(*layers)

    def _structure(self, device: torch.device) -> dict[str, torch.Tensor]:
        if self._graph["keep"].device != device:
            self._graph = {key: value.to(device) for key, value in self._graph.items()}
        return self._graph

    # gene-major layout [genes, cells, gene_dim] throughout: the sparse product and the neighbour gathers then
    # index the first dimension, several times faster on CPU than gathering along a middle dimension

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        """The model's input genes of x [cells, genes]: all, or the graph genes (input_genes: graph)."""
        return x if self.all_inputs else x.index_select(1, self._structure(x.device)["keep"])

    def gene_features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-gene features h [genes, cells, gene_dim] of the model's input genes."""
        return self._inputs(x).t().unsqueeze(-1) * self.value + self.value_bias + self.gene_embedding.unsqueeze(1)

    def global_smoothing(self, h: torch.Tensor) -> torch.Tensor:
        """G h for every cell: one sparse product over [genes, cells * gene_dim]."""
        graph = self._structure(h.device)
        genes, cells, d = h.shape
        adjacency, adjacency_t = graph["adjacency"], graph["adjacency_t"]
        if adjacency.dtype != h.dtype:  # mixed precision (DeepSpeed fp16/bf16): the graph follows the features
            adjacency, adjacency_t = adjacency.to(h.dtype), adjacency_t.to(h.dtype)
        out = _GraphMatmul.apply(adjacency, adjacency_t, h.reshape(genes, cells * d))
        return out.reshape(genes, cells, d)

    def individual_graph(self, h: torch.Tensor) -> torch.Tensor | None:
        """Softmax weights [graph genes, k, cells] of each graph gene over its top-k neighbours (None: off)."""
        graph = self._structure(h.device)
        if "neighbours" not in graph:
            return None
        rows, k = graph["neighbours"].shape
        query = self.theta(h.index_select(0, graph["rows"]))  # [rows, cells, key_dim]
        keys = self.phi(h).index_select(0, graph["neighbours"].reshape(-1)).reshape(rows, k, *query.shape[1:])
        logits = (query.unsqueeze(1) * keys).sum(-1) / math.sqrt(self.key_dim)  # [rows, k, cells]
        return torch.softmax(logits.masked_fill(~graph["valid"].unsqueeze(-1), float("-inf")), dim=1)

    def individual_smoothing(self, h: torch.Tensor) -> torch.Tensor | None:
        weights = self.individual_graph(h)
        if weights is None:
            return None
        graph = self._structure(h.device)
        rows, k = graph["neighbours"].shape
        neighbours = h.index_select(0, graph["neighbours"].reshape(-1)).reshape(rows, k, *h.shape[1:])
        messages = (weights.unsqueeze(-1) * neighbours).sum(1)  # [rows, cells, gene_dim]
        return torch.zeros_like(h).index_copy(0, graph["rows"], messages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # cells are independent (no batch statistics), so large batches (evaluation uses 1,024) run in chunks:
        # memory stays CELLS_PER_CHUNK x genes x (gene_dim + k x (gene_dim + key_dim)) floats whatever the batch
        if len(x) > CELLS_PER_CHUNK:
            return torch.cat([self._forward_cells(part) for part in x.split(CELLS_PER_CHUNK)])
        return self._forward_cells(x)

    def _forward_cells(self, x: torch.Tensor) -> torch.Tensor:
        h = self.gene_features(x)
        aggregated = self.global_smoothing(h)
        individual = self.individual_smoothing(h)
        if individual is not None:
            aggregated = aggregated + individual
        smoothed = self.readout(torch.relu(self.gcn(aggregated))).squeeze(-1).t()  # one value per gene
        return self.classifier(self._inputs(x) + smoothed)  # residual fusion: the input itself plus its smoothing


_GRAPHS = PriorCache(kept=2)  # aligned graphs per process (a STRING graph on 20k genes is tens of MB)


def _graph_key(config: dict[str, Any], task: Task) -> tuple | None:
    location = graph_location(config)
    if location is None:
        return None
    if len(task.genes) != task.n_features:
        raise ConfigError(
            f"gcn_smooth: graph={location} needs the dataset's gene names to align it "
            f"(the task has {len(task.genes)} names for {task.n_features} features)"
        )
    from pathlib import Path

    return str(Path(location).expanduser().resolve()), int(config.get("graph_diagonal", 0)), tuple(task.genes)


def _read_graph(config: dict[str, Any], task: Task, key: tuple):
    from omicsweep.datasets.graphs import load_gene_graph

    graph = load_gene_graph(graph_location(config), task.genes, diagonal=key[1],
                            expect_sha256=config.get("graph_sha256"))
    return _GRAPHS.put(key, graph)


def load_priors(config: dict[str, Any], task: Task) -> dict[str, Any]:
    """{"graph": the aligned GeneGraph, or None}: the one read `prepare` made in this process, else read once
    (a trial's worker process); a cached graph of another content than the pinned `graph_sha256` is read again."""
    key = _graph_key(config, task)
    if key is None:
        return {"graph": None}
    cached = _GRAPHS.get(key)
    pinned = config.get("graph_sha256")
    if cached is not None and (pinned is None or cached.sha256 == pinned):
        return {"graph": cached}
    return {"graph": _read_graph(config, task, key)}


def hidden_sizes(config: dict[str, Any]) -> tuple[int, ...]:
    n_layers = int(config.get("n_layers", 2))
    if not 1 <= n_layers <= MAX_LAYERS:
        raise ConfigError(f"gcn_smooth: n_layers must be between 1 and {MAX_LAYERS}, got {n_layers}")
    return tuple(int(config[f"size_{i}"]) for i in range(1, n_layers + 1))


def build(config: dict[str, Any], task: Task) -> nn.Module:
    """The model over `task.priors["graph"]` (load_priors); opens no file."""
    if graph_location(config) is not None and "graph" not in task.priors:
        raise ConfigError(f"gcn_smooth: graph={graph_location(config)} is not loaded; build through the registry "
                          "(get_model('gcn_smooth').build), which runs load_priors")
    graph = task.priors.get("graph")
    return GeneGraphSmoother(
        task.n_features, task.n_classes, adjacency=None if graph is None else graph.adjacency,
        graph_diagonal=int(config.get("graph_diagonal", 0)), graph_norm=str(config.get("graph_norm", "max")),
        input_genes=str(config.get("input_genes", "all")), gene_dim=int(config.get("gene_dim", 4)),
        individual_k=int(config.get("individual_k", 4)), key_dim=int(config.get("key_dim", 4)),
        hidden=hidden_sizes(config), dropout=float(config.get("dropout", 0.0)),
    )


def prepare(config: dict[str, Any], task: Task) -> tuple[dict[str, Any], list[str]]:
    """Before a sweep: read the graph once (kept for this process's builds), check it against the dataset's
    genes, pin its absolute path and content hash."""
    key = _graph_key(config, task)
    graph = None if key is None else _read_graph(config, task, key)
    if graph is None:
        return {}, ["gcn_smooth: no gene graph configured (graph: null), so no prior graph is used; "
                    "pass --set graph=EDGE_LIST (.tsv[.gz] or a folder holding one) to smooth over one"]
    return {"graph": str(graph.path), "graph_sha256": graph.sha256}, [graph.coverage.describe(graph.path)]


register(
    ModelEntry(
        name="gcn_smooth",
        family="torch",
        build=build,
        prepare=prepare,
        load_priors=load_priors,
        description="per-gene GCN smoothing over a gene graph (global + per-cell top-k), residual, FC (study 002)",
    )
)
