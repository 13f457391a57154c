"""cgs_query: the vectorised enrichment score against a direct running-sum walk, WTCS, MODZ, speed."""

from __future__ import annotations

import time

import numpy as np
import pytest

from omicsweep.models.cgs_query import (
    ConnectivityQueryClassifier,
    enrichment_scores,
    modz_weights,
    TIE,
    query_sets,
    signature_rankings,
    weighted_connectivity,
)


def reference_es(signature: np.ndarray, gene_set: np.ndarray, weight: float) -> float:
    """Walk the signature's ranking gene by gene (Subramanian et al. 2017): hits add |r|^p / N_R, misses subtract."""
    order = np.argsort(-signature, kind="stable")
    in_set = np.isin(order, gene_set)
    hit_weight = np.abs(signature[order]) ** weight
    n_r = hit_weight[in_set].sum()
    running, highest, lowest = 0.0, 0.0, 0.0
    for j in range(len(order)):
        running += hit_weight[j] / n_r if in_set[j] else -1.0 / (len(order) - len(gene_set))
        highest, lowest = max(highest, running), min(lowest, running)
    return highest if highest >= -lowest - TIE else lowest  # the larger deviation; a tie goes to the positive one


@pytest.mark.parametrize("weight", [0.0, 1.0, 2.0])
@pytest.mark.parametrize("n_genes, k", [(30, 5), (60, 12), (100, 1)])
def test_enrichment_score_matches_running_sum_walk(n_genes, k, weight):
    rng = np.random.default_rng(n_genes + k)
    signatures = rng.normal(size=(7, n_genes))
    gene_sets = np.stack([rng.choice(n_genes, size=k, replace=False) for _ in range(9)])
    position, sorted_weight = signature_rankings(signatures, weight)
    fast = enrichment_scores(gene_sets, position, sorted_weight, chunk=4)
    slow = np.array([[reference_es(s, g, weight) for s in signatures] for g in gene_sets])
    np.testing.assert_allclose(fast, slow, atol=1e-12)
    assert (fast > 0).any() and (fast < 0).any()


def test_a_signature_queried_with_its_own_extremes_scores_one():
    rng = np.random.default_rng(0)
    signatures = rng.normal(size=(5, 80))
    up, down = query_sets(signatures, 10)
    position, sorted_weight = signature_rankings(signatures, 1.0)
    es_up = enrichment_scores(up, position, sorted_weight)
    es_down = enrichment_scores(down, position, sorted_weight)
    assert np.diag(es_up) == pytest.approx(np.ones(5)) and np.diag(es_down) == pytest.approx(-np.ones(5))
    wtcs = weighted_connectivity(es_up, es_down)
    assert np.diag(wtcs) == pytest.approx(np.ones(5)) and (wtcs.argmax(axis=1) == np.arange(5)).all()
    # reversed profiles connect negatively
    es_up, es_down = (enrichment_scores(s, position, sorted_weight) for s in query_sets(-signatures, 10))
    assert np.diag(weighted_connectivity(es_up, es_down)) == pytest.approx(-np.ones(5))


def test_wtcs_is_zero_when_the_signs_agree():
    es_up, es_down = np.array([0.6, 0.6, -0.4, -0.2]), np.array([-0.2, 0.3, -0.1, 0.5])
    assert weighted_connectivity(es_up, es_down).tolist() == pytest.approx([0.4, 0.0, 0.0, -0.35])


def test_modz_weights_match_pairwise_spearman():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(1)
    base = rng.normal(size=40)
    profiles = np.stack([base + s * rng.normal(size=40) for s in (0.2, 0.5, 1.0, 3.0, 10.0)])
    corr = spearmanr(profiles, axis=1).statistic
    expected = np.maximum((corr.sum(axis=1) - 1) / 4, 0.01)
    np.testing.assert_allclose(modz_weights(profiles), expected / expected.sum(), atol=1e-12)
    assert modz_weights(profiles[:1]).tolist() == [1.0] and modz_weights(profiles[:2]).tolist() == [0.5, 0.5]


def test_class_score_is_the_max_over_that_classes_signatures():
    rng = np.random.default_rng(2)
    centres = 3 * rng.normal(size=(4, 50))  # (class, cell line) prototypes: classes 0 and 1, lines a and b
    y = np.repeat([0, 0, 1, 1], 10)
    lines = np.tile(np.repeat(["a", "b"], 10), 2)
    X = np.repeat(centres, 10, axis=0) + 0.3 * rng.normal(size=(40, 50))
    model = ConnectivityQueryClassifier(n_set=8, standardize=False).fit(X, y, groups=lines)
    assert len(model.signatures_) == 4 and model.signature_class_.tolist() == [0, 0, 1, 1]
    queries = centres + 0.3 * rng.normal(size=(4, 50))
    wtcs, scores = model.connectivity(queries), model.decision_function(queries)
    np.testing.assert_allclose(scores, np.c_[wtcs[:, :2].max(axis=1), wtcs[:, 2:].max(axis=1)])
    assert model.predict(queries).tolist() == [0, 0, 1, 1]
    proba = model.predict_proba(queries)
    assert proba.shape == (4, 2) and np.allclose(proba.sum(axis=1), 1.0)
    hotter = ConnectivityQueryClassifier(n_set=8, standardize=False, temperature=50.0).fit(X, y, groups=lines)
    assert (hotter.predict_proba(queries).max(axis=1) > proba.max(axis=1)).all()


@pytest.mark.slow
def test_scoring_1000_queries_against_1000_signatures_takes_seconds():
    """Benchmark-style: prints the time; no assertion (shared machines vary)."""
    rng = np.random.default_rng(3)
    model = ConnectivityQueryClassifier().fit(rng.normal(size=(1000, 978)), np.arange(1000))
    queries = rng.normal(size=(1000, 978))
    started = time.perf_counter()
    scores = model.decision_function(queries)
    elapsed = time.perf_counter() - started
    print(f"\ncgs_query: 1,000 queries x 1,000 signatures x 978 genes (up + down sets of 50) in {elapsed:.2f} s")
    assert scores.shape == (1000, 1000)
