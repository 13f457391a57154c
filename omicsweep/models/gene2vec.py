"""gene2vec (Du et al. 2019): gene embeddings from co-expressed gene pairs, and reading a user's gene2vec file.

Training, as gene2vec did: gensim Word2Vec, skip-gram, window 1, min_count 1, on one co-expressed pair per
"sentence". The published pairs came from 984 GEO data sets with unpublished thresholds; ours come from the corpus:

    co-expression = Pearson correlation of log-normalised expression (log1p of counts scaled to 1e4 per cell)
                    over the corpus's training cells, among the `max_genes` genes detected in the most cells
                    (at least `min_cells`), accumulated block by block (only one row block is ever dense);
    a pair        = two genes whose correlation exceeds `threshold` (the strongest `max_pairs` if more).

Everything chosen is written to a JSON sidecar next to the embeddings (`<out>.json`). Genes in no pair get no
vector; `read_gene2vec` reports the coverage and leaves them at zero.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from omicsweep.atomic import atomic_file, atomic_write_text
from omicsweep.errors import ConfigError, InputError

TARGET_SUM = 1e4
DEFAULT_THRESHOLD = 0.2


def _stable_hash(text: str) -> int:
    """Word2Vec seeds each word's initial vector from hash(word + seed); Python's str hash changes per process."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "little")


def _train_blocks(store):
    """Log-normalised CSR blocks of the training rows, one row chunk at a time."""
    train = store.split_indices("train")
    for chunk in range(store.n_chunks):
        start, stop = store.chunk_bounds(chunk)
        local = train[(train >= start) & (train < stop)] - start
        if len(local) == 0:
            continue
        block = store.read_rows(start, stop)[local]
        totals = np.asarray(block.sum(axis=1)).ravel()
        totals[totals == 0] = 1
        block = sp.csr_matrix(sp.diags(TARGET_SUM / totals) @ block, dtype=np.float32)
        np.log1p(block.data, out=block.data)
        yield block


def coexpression(store, *, max_genes: int = 4096, min_cells: int = 10) -> tuple[np.ndarray, np.ndarray, int]:
    """(gene indices, their Pearson correlation matrix, training cells) streamed over the training split."""
    detected = np.zeros(store.n_genes, dtype=np.int64)
    for block in _train_blocks(store):
        detected += np.bincount(block.indices, minlength=store.n_genes)
    candidates = np.flatnonzero(detected >= min_cells)
    genes = np.sort(candidates[np.argsort(-detected[candidates], kind="stable")[:max_genes]])
    if len(genes) < 2:
        raise InputError(f"{store.path}: fewer than 2 genes are detected in {min_cells}+ training cells; "
                         "lower min_cells or use a larger corpus")
    gram = np.zeros((len(genes), len(genes)), dtype=np.float64)
    total = np.zeros(len(genes), dtype=np.float64)
    n = 0
    for block in _train_blocks(store):
        dense = block[:, genes].toarray()  # one row block of the selected genes
        gram += dense.T @ dense
        total += dense.sum(axis=0)
        n += dense.shape[0]
    mean = total / n
    cov = gram / n - np.outer(mean, mean)
    sd = np.sqrt(np.clip(np.diag(cov), 0, None))
    sd[sd == 0] = np.inf  # a constant gene correlates with nothing
    return genes, cov / np.outer(sd, sd), n


def coexpressed_pairs(corr: np.ndarray, *, threshold: float, max_pairs: int) -> np.ndarray:
    """(k, 2) index pairs i < j with corr > threshold, strongest first, at most max_pairs."""
    i, j = np.triu_indices(len(corr), k=1)
    values = corr[i, j]
    keep = np.flatnonzero(values > threshold)
    keep = keep[np.argsort(-values[keep], kind="stable")[:max_pairs]]
    return np.stack([i[keep], j[keep]], axis=1)


def train_gene2vec(corpus_store, out_txt, *, dim: int = 200, threshold: float = DEFAULT_THRESHOLD, seed: int = 0,
                   max_genes: int = 4096, min_cells: int = 10, max_pairs: int = 2_000_000, epochs: int = 30,
                   workers: int = 1) -> dict[str, Any]:
    """Train gene2vec embeddings on the corpus and write them (word2vec text format) and `<out_txt>.json`.

    Returns the sidecar's content. workers=1 keeps training reproducible for a seed (gensim's threads race).
    """
    from gensim.models import Word2Vec

    from omicsweep.datasets.open import open_store

    if not -1 <= threshold < 1:
        raise ConfigError(f"threshold={threshold!r}: a correlation threshold must be in [-1, 1)")
    if dim < 1 or epochs < 1:
        raise ConfigError(f"dim={dim}, epochs={epochs}: both must be positive")
    store = open_store(corpus_store)
    names = store.genes()
    genes, corr, n_cells = coexpression(store, max_genes=max_genes, min_cells=min_cells)
    pairs = coexpressed_pairs(corr, threshold=threshold, max_pairs=max_pairs)
    if len(pairs) == 0:
        raise InputError(f"{corpus_store}: no gene pair correlates above {threshold}; lower --threshold")
    order = np.random.default_rng(seed).permutation(len(pairs))  # gene2vec shuffled its pairs
    sentences = [[str(names[genes[a]]), str(names[genes[b]])] for a, b in pairs[order]]
    model = Word2Vec(sentences, vector_size=dim, window=1, sg=1, min_count=1, seed=seed, workers=workers,
                     epochs=epochs, hashfxn=_stable_hash)
    out_txt = Path(out_txt)
    with atomic_file(out_txt) as tmp:
        model.wv.save_word2vec_format(str(tmp), binary=False)
    upper = corr[np.triu_indices(len(corr), k=1)]
    sidecar = {
        "method": "gensim Word2Vec skip-gram on co-expressed gene pairs (Du et al. 2019)",
        "corpus": str(corpus_store), "corpus_fingerprint": store.fingerprint, "train_cells": n_cells,
        "coexpression": "Pearson correlation of log1p(counts scaled to 1e4 per cell) over the training cells",
        "threshold": threshold, "max_genes": max_genes, "min_cells": min_cells, "genes_considered": len(genes),
        "pairs": len(pairs), "max_pairs": max_pairs, "genes_embedded": len(model.wv),
        "correlation_quantiles": dict(zip(["50%", "90%", "99%", "99.9%"],
                                          np.quantile(upper, [0.5, 0.9, 0.99, 0.999]).round(4).tolist())),
        "word2vec": {"vector_size": dim, "window": 1, "sg": 1, "min_count": 1, "epochs": epochs, "seed": seed,
                     "workers": workers, "gensim": __import__("gensim").__version__},
    }
    atomic_write_text(Path(f"{out_txt}.json"), json.dumps(sidecar, indent=2) + "\n")
    return sidecar


def _parse_vectors(path: Path, dim: int | None) -> dict[str, np.ndarray]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or "\x00" in text:
        raise InputError(f"{path}: is binary (word2vec's binary format?); expected word2vec text format, "
                         "'<gene> <v1> ... <vN>' a line (gensim: save_word2vec_format(..., binary=False))")
    lines = text.splitlines()
    start = 0
    if lines and len(lines[0].split()) == 2 and all(p.isdigit() for p in lines[0].split()):
        start = 1  # word2vec text header "<genes> <dim>"
        dim = dim if dim is not None else int(lines[0].split()[1])
    vectors: dict[str, np.ndarray] = {}
    for number, line in enumerate(lines[start:], start=start + 1):
        parts = line.split()
        if not parts:
            continue
        if dim is None:
            dim = len(parts) - 1
        if len(parts) - 1 != dim:
            raise InputError(f"{path}: line {number} has {len(parts) - 1} values, expected {dim} "
                             "(word2vec text format: '<gene> <v1> ... <v{dim}>')")
        try:
            vectors[parts[0]] = np.asarray(parts[1:], dtype=np.float32)
        except ValueError:
            raise InputError(f"{path}: line {number} is not '<gene> <numbers>'; expected word2vec text format") from None
    if not vectors:
        raise InputError(f"{path}: no gene vectors; expected word2vec text format")
    return vectors


def read_gene2vec(path, vocab, *, dim: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """A gene2vec text file (with or without the word2vec header) aligned to `vocab` (gene symbols in model
    order): ([len(vocab) + 1, dim] float32, coverage). Genes match by exact symbol, then case-insensitively;
    vocabulary genes without a vector and the appended last position (scBERT's) are zero rows.

    dim: the dimension the model expects (scBERT: 200); a file of another dimension is an InputError.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: gene2vec file not found")
    vectors = _parse_vectors(path, None)
    found_dim = len(next(iter(vectors.values())))
    if dim is not None and found_dim != dim:
        raise InputError(f"{path}: gene2vec vectors have {found_dim} dimensions; the model's dim is {dim}")
    folded: dict[str, np.ndarray] = {}
    for gene, vector in vectors.items():
        folded.setdefault(gene.casefold(), vector)
    vocab = [str(g) for g in vocab]
    matrix = np.zeros((len(vocab) + 1, found_dim), dtype=np.float32)
    covered = 0
    for row, gene in enumerate(vocab):
        vector = vectors.get(gene, folded.get(gene.casefold()))
        if vector is not None:
            matrix[row] = vector
            covered += 1
    if covered == 0:
        raise InputError(f"{path}: none of its {len(vectors)} genes is in the vocabulary; check the gene symbols")
    coverage = {"file": str(path), "file_genes": len(vectors), "dim": found_dim, "vocab_genes": len(vocab),
                "covered": covered, "fraction": covered / len(vocab)}
    return matrix, coverage


def nearest_genes(path, gene: str, *, k: int = 5) -> list[tuple[str, float]]:
    """The k genes with the most similar vectors (cosine) in a gene2vec text file."""
    vectors = _parse_vectors(Path(path), None)
    names = list(vectors)
    lookup = {g.casefold(): g for g in reversed(names)}
    target = gene if gene in vectors else lookup.get(gene.casefold())
    if target is None:
        raise InputError(f"{path}: gene {gene!r} has no vector")
    matrix = np.stack([vectors[g] for g in names])
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True).clip(1e-12)
    sims = matrix @ matrix[names.index(target)]
    order = [i for i in np.argsort(-sims) if names[i] != target][:k]
    return [(names[i], float(sims[i])) for i in order]
