"""scBERT's tokens and masks from CSR batches, checked against scBERT's own preprocessing on hand-made cells."""

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
import scipy.sparse as sp
import torch

from omicsweep.datasets.tokens import (
    IGNORE_INDEX,
    MASK_TOKEN,
    expression_tokens,
    mask_tokens,
    mlm_baseline_accuracy,
    mlm_baseline_counts,
    most_common_nonzero_bin,
)
from omicsweep.errors import InputError

# hand-made counts: bins at the edges (x = 1e4 total -> log2(2) = 1 exactly), a capped gene, an empty cell
COUNTS = np.array(
    [
        [1, 0, 3, 0, 9996, 0],  # 1e4 total: 1 -> bin 1, 3 -> bin 2, 9996 -> log2(9997) = 13.3 -> capped at 5
        [0, 0, 0, 0, 0, 0],  # no counts: all zeros
        [5, 5, 0, 10, 0, 80],  # 100 total: x100 -> 500, 500, 1000, 8000 -> 8, 8, 9, 12 -> 5 5 5 5
        [1, 2, 0, 0, 0, 0],  # 3 total: 3333, 6667 -> 11.7, 12.7 -> 5, 5
    ],
    dtype=np.float32,
)


def scbert_preprocessing(counts: np.ndarray) -> np.ndarray:
    """What scBERT's pretrain.py does to an AnnData before tokens: normalize_total, log1p base 2, cap, .long(),
    and a 0 appended to each cell."""
    adata = ad.AnnData(sp.csr_matrix(counts))
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata, base=2)
    dense = adata.X.toarray()
    dense[dense > 5] = 5
    full = torch.from_numpy(dense).long()
    return torch.cat([full, torch.zeros((len(full), 1), dtype=torch.long)], dim=1).numpy()


def scbert_mask_counts(tokens: torch.Tensor, prob: float = 0.15) -> torch.Tensor:
    """How many positions scBERT's get_mask_subset_with_prob masks per cell: ceil(non-zero count x prob)."""
    maskable = (tokens != 0) & (tokens != 6)
    return (maskable.sum(dim=-1, keepdim=True) * prob).ceil().long().squeeze(-1)


def test_tokens_match_scberts_preprocessing_on_hand_made_cells():
    tokens = expression_tokens(sp.csr_matrix(COUNTS))
    assert tokens.dtype == torch.long and tokens.shape == (4, 7)
    np.testing.assert_array_equal(tokens.numpy(), scbert_preprocessing(COUNTS))
    np.testing.assert_array_equal(tokens[0].numpy(), [1, 0, 2, 0, 5, 0, 0])
    rng = np.random.default_rng(0)
    counts = rng.negative_binomial(1, 0.3, size=(50, 300)).astype(np.float32) * (rng.random((50, 300)) < 0.2)
    np.testing.assert_array_equal(expression_tokens(sp.csr_matrix(counts)).numpy(), scbert_preprocessing(counts))


def test_tokens_need_counts():
    with pytest.raises(InputError, match="negative"):
        expression_tokens(sp.csr_matrix(-COUNTS))


def test_masking_draws_scberts_number_of_nonzero_positions():
    rng = np.random.default_rng(1)
    counts = rng.negative_binomial(1, 0.2, size=(200, 400)).astype(np.float32) * (rng.random((200, 400)) < 0.3)
    tokens = expression_tokens(sp.csr_matrix(counts))
    masked, labels = mask_tokens(tokens, generator=torch.Generator().manual_seed(0))
    chosen = labels != IGNORE_INDEX
    assert torch.equal(chosen.sum(-1), scbert_mask_counts(tokens))  # exactly ceil(15% of the non-zero tokens)
    assert (tokens[chosen] != 0).all()  # zeros (and the appended position) are never masked
    assert torch.equal(labels[chosen], tokens[chosen])
    assert torch.equal(masked[~chosen], tokens[~chosen])  # nothing else changes
    replaced = (masked[chosen] == MASK_TOKEN).float().mean().item()
    assert 0.85 < replaced < 0.95  # 90% -> mask token; the rest stay unchanged (no random tokens)
    assert set(masked[chosen & (masked != MASK_TOKEN)].tolist()) <= set(range(1, 6))
    again, again_labels = mask_tokens(tokens, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, masked) and torch.equal(again_labels, labels)  # seeded by the generator alone


def test_baseline_predicts_each_cells_most_common_visible_nonzero_bin():
    masked = torch.tensor([[1, 1, 2, MASK_TOKEN, 0, MASK_TOKEN], [3, 3, 2, 2, MASK_TOKEN, 0]])
    labels = torch.tensor([[-100, -100, -100, 1, -100, 2], [-100, -100, -100, -100, 2, -100]])
    assert most_common_nonzero_bin(masked).tolist() == [1, 2]  # ties go to the lower bin
    assert mlm_baseline_counts(masked, labels) == (2, 3)
    assert mlm_baseline_accuracy(masked, labels) == pytest.approx(2 / 3)
