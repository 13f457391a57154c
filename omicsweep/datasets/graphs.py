"""Gene graphs: a scored edge list aligned to a store's genes by symbol, as a sparse normalised adjacency.

Input: an edge-list file (TSV, optionally .gz, with a header) or a folder holding exactly one such file (e.g.
`../shared/data/string_v12_human_ppi`). Columns, first match wins:
    genes   symbol_a / symbol_b, gene_a / gene_b, entrez_a / entrez_b (mapped to symbols through a `nodes.tsv`
            beside the file with columns entrez, symbol), else the first two columns
    score   combined_score, score, weight, else the third column when numeric, else 1 for every edge
Edges are undirected: the matrix is symmetric (a pair listed twice keeps its highest score); self-loops in the
file are dropped and the diagonal is set to 0 or 1 by the caller. Scores are divided by the file's maximum
score (study 002), so they lie in (0, 1] whatever subset of genes a store has. Symbols match case-insensitively.

Parsed files are cached per process by content hash: Ray reuses a worker for many trials of one sweep.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import scipy.sparse as sp

from omicsweep.errors import InputError

GENE_COLUMNS = (("symbol_a", "symbol_b"), ("gene_a", "gene_b"), ("entrez_a", "entrez_b"))
SCORE_COLUMNS = ("combined_score", "score", "weight")
NODES_FILE = "nodes.tsv"
EDGE_SUFFIXES = (".tsv", ".tsv.gz", ".txt", ".txt.gz")


@dataclass(frozen=True)
class EdgeList:
    """A parsed edge-list file: upper-case symbols per end, raw scores, where it came from."""

    path: Path
    sha256: str
    gene_a: np.ndarray  # object arrays of upper-case symbols
    gene_b: np.ndarray
    score: np.ndarray  # float64, > 0


@dataclass(frozen=True)
class GraphCoverage:
    """How much of a store's gene list a graph covers."""

    n_genes: int  # store genes
    genes_in_graph: int  # store genes that are a node of the graph
    genes_connected: int  # store genes with at least one kept edge (the "graph genes")
    edges_kept: int  # undirected edges with both ends among the store's genes
    edges_total: int  # undirected edges in the file (self-loops excluded)
    graph_nodes: int

    def describe(self, path: Path | str) -> str:
        share = self.genes_in_graph / max(1, self.n_genes)
        return (
            f"graph {path}: {self.genes_in_graph:,} of {self.n_genes:,} genes ({share:.1%}) in the graph, "
            f"{self.genes_connected:,} with an edge; {self.edges_kept:,} of {self.edges_total:,} edges kept "
            f"({self.graph_nodes:,} graph nodes)"
        )


@dataclass(frozen=True)
class GeneGraph:
    """A symmetric adjacency over a store's genes (store order), scores / max, diagonal 0 or 1."""

    adjacency: sp.csr_matrix  # float32, n_genes x n_genes
    coverage: GraphCoverage
    sha256: str
    path: Path
    connected: np.ndarray  # genes with at least one edge to another gene (002's "graph genes"), ascending


def resolve_graph_file(location: str | Path) -> Path:
    """The edge-list file named by `location`: the file itself, or the single edge list inside a folder."""
    path = Path(location).expanduser()
    if path.is_file():
        return path.resolve()
    if not path.is_dir():
        raise InputError(f"{path}: gene graph not found (expected an edge-list .tsv[.gz] file or a folder holding one)")
    candidates = sorted(
        p for p in path.iterdir()
        if p.is_file() and p.name != NODES_FILE and p.name.lower().endswith(EDGE_SUFFIXES)
    )
    if len(candidates) != 1:
        found = ", ".join(p.name for p in candidates) or "none"
        raise InputError(f"{path}: expected exactly one edge-list .tsv[.gz] file in the folder (found {found}); "
                         "pass the file itself")
    return candidates[0].resolve()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def read_edge_list(location: str | Path) -> EdgeList:
    """Parse an edge list (cached per process by the file's content hash)."""
    path = resolve_graph_file(location)
    return _read_cached(str(path), file_sha256(path))


@functools.lru_cache(maxsize=4)
def _read_cached(path_text: str, sha256: str) -> EdgeList:
    import pandas as pd

    path = Path(path_text)
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt") as fh:
            table = pd.read_csv(fh, sep="\t", dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, EOFError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise InputError(f"{path}: not a readable tab-separated edge list ({type(exc).__name__}: {exc})") from None
    if table.shape[1] < 2 or len(table) == 0:
        raise InputError(f"{path}: an edge list needs a header and rows of at least two tab-separated gene columns")
    col_a, col_b = _gene_columns(table.columns)
    gene_a, gene_b = _symbols(table[col_a], table[col_b], col_a, path)
    score = _scores(table, path)
    keep = (gene_a != gene_b) & (gene_a != "") & (gene_b != "")  # self-loops: the diagonal is the caller's choice
    return EdgeList(path=path, sha256=sha256, gene_a=gene_a[keep], gene_b=gene_b[keep], score=score[keep])


def _gene_columns(columns) -> tuple[str, str]:
    lowered = {str(c).lower(): str(c) for c in columns}
    for a, b in GENE_COLUMNS:
        if a in lowered and b in lowered:
            return lowered[a], lowered[b]
    return str(columns[0]), str(columns[1])


def _symbols(col_a, col_b, name_a: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Upper-case symbols of both ends; entrez ids go through nodes.tsv beside the file when it exists."""
    a = col_a.str.strip().to_numpy(dtype=object)
    b = col_b.str.strip().to_numpy(dtype=object)
    nodes = path.parent / NODES_FILE
    if name_a.lower() == "entrez_a" and nodes.is_file():
        import pandas as pd

        mapping = pd.read_csv(nodes, sep="\t", dtype=str, keep_default_na=False)
        if not {"entrez", "symbol"} <= set(mapping.columns):
            raise InputError(f"{nodes}: expected columns entrez and symbol to map the edge list's entrez ids")
        symbol_of = dict(zip(mapping["entrez"].str.strip(), mapping["symbol"].str.strip()))
        a = np.array([symbol_of.get(x, "") for x in a], dtype=object)
        b = np.array([symbol_of.get(x, "") for x in b], dtype=object)
    upper = np.vectorize(str.upper, otypes=[object])
    return upper(a), upper(b)


def _scores(table, path: Path) -> np.ndarray:
    lowered = {str(c).lower(): str(c) for c in table.columns}
    column = next((lowered[c] for c in SCORE_COLUMNS if c in lowered), None)
    if column is None and table.shape[1] >= 3:
        third = str(table.columns[2])
        if _numeric(table[third]) is not None:
            column = third
    if column is None:
        return np.ones(len(table))
    values = _numeric(table[column])
    if values is None:
        raise InputError(f"{path}: score column {column!r} holds non-numeric values")
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise InputError(f"{path}: score column {column!r} must hold finite positive numbers")
    return values


def _numeric(column) -> np.ndarray | None:
    import pandas as pd

    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64)
    return None if np.isnan(values).any() else values


def align_graph(edges: EdgeList, genes: Sequence[str], *, diagonal: float = 0.0) -> GeneGraph:
    """The edge list as an n_genes x n_genes symmetric matrix in `genes` order (case-insensitive symbols).

    A store gene name that occurs twice (ignoring case) takes the graph's edges at its first occurrence.
    """
    if diagonal not in (0, 1):
        raise InputError(f"graph diagonal must be 0 or 1, got {diagonal!r}")
    position: dict[str, int] = {}
    for i, gene in enumerate(genes):
        position.setdefault(str(gene).upper(), i)
    rows = np.array([position.get(g, -1) for g in edges.gene_a], dtype=np.int64)
    cols = np.array([position.get(g, -1) for g in edges.gene_b], dtype=np.int64)
    kept = (rows >= 0) & (cols >= 0)
    n = len(genes)
    scale = float(edges.score.max()) if len(edges.score) else 1.0
    values = edges.score[kept] / scale
    both = _max_per_entry(rows[kept], cols[kept], values, n)  # undirected; a pair listed twice keeps its max
    adjacency = (both + float(diagonal) * sp.identity(n, format="csr")).astype(np.float32).tocsr()
    adjacency.sort_indices()
    graph_nodes = set(edges.gene_a) | set(edges.gene_b)  # a set: np.isin on object arrays is quadratic
    connected = np.flatnonzero(np.diff(both.indptr) > 0)
    coverage = GraphCoverage(
        n_genes=n,
        genes_in_graph=sum(str(g).upper() in graph_nodes for g in genes),
        genes_connected=len(connected),
        edges_kept=int(sp.triu(both, k=1).nnz),
        edges_total=_undirected_count(edges),
        graph_nodes=len(graph_nodes),
    )
    return GeneGraph(adjacency=adjacency, coverage=coverage, sha256=edges.sha256, path=edges.path,
                     connected=connected)


def _max_per_entry(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, n: int) -> sp.csr_matrix:
    """Symmetric CSR with the highest score of each unordered pair (sum_duplicates would add them)."""
    lo, hi = np.minimum(rows, cols), np.maximum(rows, cols)
    order = np.lexsort((-values, hi, lo))  # per pair, highest score first
    lo, hi, values = lo[order], hi[order], values[order]
    first = np.ones(len(lo), dtype=bool)
    first[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    lo, hi, values = lo[first], hi[first], values[first]
    return sp.coo_matrix(
        (np.concatenate([values, values]), (np.concatenate([lo, hi]), np.concatenate([hi, lo]))), shape=(n, n)
    ).tocsr()


def _undirected_count(edges: EdgeList) -> int:
    return len({(a, b) if a < b else (b, a) for a, b in zip(edges.gene_a, edges.gene_b)})


@functools.lru_cache(maxsize=4)
def _aligned_cached(path_text: str, sha256: str, genes: tuple[str, ...], diagonal: float) -> GeneGraph:
    return align_graph(_read_cached(path_text, sha256), genes, diagonal=diagonal)


def load_gene_graph(
    location: str | Path, genes: Sequence[str], *, diagonal: float = 0.0, expect_sha256: str | None = None
) -> GeneGraph:
    """Read, align and normalise a graph for `genes`; refuse a file whose content is not `expect_sha256`
    (a run record pins it) and a graph that shares no gene with the list."""
    path = resolve_graph_file(location)
    sha = file_sha256(path)
    if expect_sha256 is not None and sha != expect_sha256:
        raise InputError(f"{path}: the gene graph changed (content {sha}, the run recorded {expect_sha256}); "
                         "restore the original file")
    graph = _aligned_cached(str(path), sha, tuple(map(str, genes)), float(diagonal))
    if graph.coverage.edges_kept == 0:
        raise InputError(
            f"{path}: no edge of the gene graph joins two of the dataset's {len(genes):,} genes "
            f"({graph.coverage.genes_in_graph} genes matched by symbol); check that both use gene symbols"
        )
    return graph
