"""Study 004's connectivity-score query (CMap, Subramanian et al. 2017) as a prototype classifier.

fit: optionally standardise every gene over the training profiles (so a profile reads as differential
expression against the training population, as L1000 level-4 z-scores do against their plate), then one
consensus signature per class (mean, or MODZ: replicates weighted by their Spearman agreement).
predict: per query, its top-n and bottom-n genes are the up and down sets; each set's weighted running-sum
(Kolmogorov-Smirnov) enrichment score in each signature's ranking; WTCS = (ES_up - ES_down) / 2 when the two
signs differ, else 0; class score = max over that class's signatures; probabilities = softmax(temperature * score).

Enrichment is computed only at the hits: with the set's genes at signature positions p_1 < ... < p_k (0-based),
hit weights w_i = |r|^weight and W_i their running sum, the curve peaks at a hit and bottoms out just before one:
    F(p_i)     = W_i / W_k - (p_i + 1 - i) / (N - k)
    F(p_i - 1) = F(p_i) - w_i / W_k
so a (queries x signatures) block costs a sort of k positions per pair instead of a walk over all N genes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from omicsweep.errors import ConfigError
from omicsweep.models.base import ModelEntry, Task, register

CONSENSUS = ("mean", "modz")
TIE = 1e-9  # |max| and |min| of the running sum closer than this count as equal


# ---- consensus signatures ----------------------------------------------------------------------------------------


def modz_weights(profiles: np.ndarray, *, floor: float = 0.01) -> np.ndarray:
    """CMap's MODZ replicate weights: each profile's mean Spearman correlation with the others, floored, summing to 1.

    Uses sum_j corr(i, j) = z_i . sum_j z_j for unit-norm centred rank vectors z: O(n * genes), not O(n^2).
    """
    n = len(profiles)
    if n < 3:  # with two replicates both weights are equal; with one it is the profile itself
        return np.full(n, 1.0 / n)
    ranks = np.argsort(np.argsort(profiles, axis=1, kind="stable"), axis=1).astype(np.float64)
    ranks -= ranks.mean(axis=1, keepdims=True)
    ranks /= np.linalg.norm(ranks, axis=1, keepdims=True)
    mean_corr = (ranks @ ranks.sum(axis=0) - 1.0) / (n - 1)
    weights = np.maximum(mean_corr, floor)
    return weights / weights.sum()


def consensus_signature(profiles: np.ndarray, method: str = "mean") -> np.ndarray:
    if method == "modz":
        return modz_weights(profiles) @ profiles
    return profiles.mean(axis=0)


# ---- enrichment ----------------------------------------------------------------------------------------------------


def signature_rankings(signatures: np.ndarray, weight: float) -> tuple[np.ndarray, np.ndarray]:
    """Per signature: each gene's position in descending order, and the hit weight |r|^weight at each position."""
    order = np.argsort(-signatures, axis=1, kind="stable")
    position = np.empty_like(order)
    np.put_along_axis(position, order, np.arange(signatures.shape[1])[None, :], axis=1)
    sorted_weight = np.abs(np.take_along_axis(signatures, order, axis=1)) ** weight
    return position, sorted_weight


def enrichment_scores(
    gene_sets: np.ndarray, position: np.ndarray, sorted_weight: np.ndarray, *, chunk: int = 32
) -> np.ndarray:
    """Weighted KS enrichment score of each set (queries x k gene indices) in each signature: (queries, signatures).

    `position` and `sorted_weight` come from `signature_rankings`. ES is the signed maximum deviation of the
    running sum from zero; on a tie (within TIE, so rounding cannot flip the sign) the positive one.
    """
    n_queries, k = gene_sets.shape
    n_sigs, n_genes = position.shape
    position = position.astype(np.int32, copy=False)  # narrower ints sort and gather faster
    hits_before = np.arange(k, dtype=np.int32)  # hit i (0-based) has i hits before it
    miss_step = 1.0 / (n_genes - k)
    sig_rows = np.arange(n_sigs)[None, :, None]
    scores = np.empty((n_queries, n_sigs))
    for start in range(0, n_queries, chunk):
        sets = gene_sets[start : start + chunk]
        pos = np.sort(position[:, sets].transpose(1, 0, 2), axis=2)  # (chunk, signatures, k)
        w = sorted_weight[sig_rows, pos]
        curve = np.cumsum(w, axis=2)
        inv_total = 1.0 / np.maximum(curve[..., -1:], np.finfo(np.float64).tiny)
        pos -= hits_before  # misses before each hit
        curve *= inv_total
        curve -= pos * miss_step  # F at each hit
        top = np.maximum(curve.max(axis=2), 0.0)
        w *= inv_total
        curve -= w  # F just before each hit
        bottom = np.minimum(curve.min(axis=2), 0.0)
        scores[start : start + chunk] = np.where(top >= -bottom - TIE, top, bottom)
    return scores


def weighted_connectivity(es_up: np.ndarray, es_down: np.ndarray) -> np.ndarray:
    """WTCS: (ES_up - ES_down) / 2 where the two scores have different signs, else 0."""
    return np.where(np.sign(es_up) != np.sign(es_down), (es_up - es_down) / 2.0, 0.0)


def query_sets(profiles: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each profile's k highest and k lowest genes (indices, unordered)."""
    up = np.argpartition(-profiles, k - 1, axis=1)[:, :k]
    down = np.argpartition(profiles, k - 1, axis=1)[:, :k]
    return up, down


def softmax(scores: np.ndarray) -> np.ndarray:
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


# ---- the classifier ------------------------------------------------------------------------------------------------


def _dense(x) -> np.ndarray:
    """float64 rows; the estimator fitter hands CSR, a query block is densified here (fit: the training split)."""
    return np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float64)


class ConnectivityQueryClassifier:
    """Prototype classifier scoring queries against consensus signatures by WTCS (numpy only).

    Fitted state is numpy arrays ending in `_` (saved in its skops file, see `estimator_state`): classes_, mean_, scale_,
    signatures_ (signatures x genes) and signature_class_ (index into classes_ of each signature).
    """

    def __init__(self, *, n_set: int = 50, weight: float = 1.0, consensus: str = "mean", standardize: bool = True,
                 temperature: float = 1.0, chunk: int = 32):
        if consensus not in CONSENSUS:
            raise ConfigError(f"cgs_query: consensus={consensus!r}; use one of {', '.join(CONSENSUS)}")
        if int(n_set) < 1 or float(temperature) <= 0 or float(weight) < 0:
            raise ConfigError(
                f"cgs_query: need n_set >= 1, temperature > 0, weight >= 0; got {n_set}, {temperature}, {weight}"
            )
        self.n_set, self.weight, self.consensus = int(n_set), float(weight), consensus
        self.standardize, self.temperature, self.chunk = bool(standardize), float(temperature), int(chunk)

    def _standardized(self, x: np.ndarray) -> np.ndarray:
        return (_dense(x) - self.mean_) / self.scale_

    def fit(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None) -> "ConnectivityQueryClassifier":
        """One signature per class, or per (class, group) when `groups` (e.g. cell lines) is given."""
        X = _dense(X)  # signatures are dense z-scores (L1000's 978 landmark genes): a dense model, like the study's
        self.classes_, y_index = np.unique(np.asarray(y), return_inverse=True)
        self.n_features_in_ = X.shape[1]
        self.mean_ = X.mean(axis=0) if self.standardize else np.zeros(X.shape[1])
        scale = X.std(axis=0) if self.standardize else np.ones(X.shape[1])
        self.scale_ = np.where(scale > 0, scale, 1.0)
        z = self._standardized(X)
        keys = y_index
        if groups is not None:  # one key per (class, group) pair present
            group_index = np.unique(np.asarray(groups), return_inverse=True)[1]
            keys = np.unique(np.c_[y_index, group_index], axis=0, return_inverse=True)[1].ravel()
        signatures, owners = [], []
        for key in np.unique(keys):
            rows = keys == key
            signatures.append(consensus_signature(z[rows], self.consensus))
            owners.append(y_index[rows][0])
        order = np.argsort(owners, kind="stable")  # signatures grouped by class, for the per-class max
        self.signatures_ = np.asarray(signatures)[order]
        self.signature_class_ = np.asarray(owners, dtype=np.int64)[order]
        return self

    def set_size(self) -> int:
        """n_set, capped so the up and down sets are disjoint and misses exist (at most half the genes)."""
        return max(1, min(self.n_set, self.n_features_in_ // 2))

    def connectivity(self, X: np.ndarray, *, block: int = 2048) -> np.ndarray:
        """WTCS of every query against every signature: (queries, signatures), `block` queries at a time."""
        position, sorted_weight = signature_rankings(self.signatures_, self.weight)
        out = np.empty((X.shape[0], len(self.signatures_)))
        for start in range(0, X.shape[0], block):
            up, down = query_sets(self._standardized(X[start : start + block]), self.set_size())
            es_up = enrichment_scores(up, position, sorted_weight, chunk=self.chunk)
            es_down = enrichment_scores(down, position, sorted_weight, chunk=self.chunk)
            out[start : start + block] = weighted_connectivity(es_up, es_down)
        return out

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Class scores: the maximum WTCS over each class's signatures, (queries, classes)."""
        wtcs = self.connectivity(X)
        starts = np.r_[0, np.flatnonzero(np.diff(self.signature_class_)) + 1]
        return np.maximum.reduceat(wtcs, starts, axis=1)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return softmax(self.temperature * self.decision_function(X))

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[self.decision_function(X).argmax(axis=1)]


def build(config: dict[str, Any], task: Task) -> ConnectivityQueryClassifier:
    return ConnectivityQueryClassifier(
        n_set=config.get("n_set", 50), weight=config.get("weight", 1.0), consensus=str(config.get("consensus", "mean")),
        standardize=bool(config.get("standardize", True)), temperature=config.get("temperature", 1.0),
    )


register(
    ModelEntry(
        name="cgs_query",
        family="estimator",
        build=build,
        description="connectivity-score (WTCS) query against per-class consensus signatures (study 004)",
        role="baseline",
    )
)
