"""scBERT's expression tokens, made per batch from CSR rows, and its masked-expression-modelling masks.

Binning (scBERT `pretrain.py`): normalise each cell to 1e4 total counts, log2(1 + x), cap at 5, truncate to an
integer: tokens 0..5; token 6 is mask / pad. One position is appended (sequence n_genes + 1) holding token 0,
as scBERT appended a 0. Only the batch is ever dense: (batch, n_genes + 1) int64.

Masking (scBERT's `data_mask` / `get_mask_subset_with_prob`): in each cell, ceil(0.15 x its non-zero tokens)
positions are drawn uniformly among the non-zero ones (zeros and pad are never masked); 90% of those become the
mask token, the other 10% stay unchanged (scBERT had no random-token replacement). Labels hold the original token
at the drawn positions and IGNORE_INDEX (-100) elsewhere (scBERT used 6 with ignore_index=6: the same loss).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from omicsweep.errors import InputError

MAX_BIN = 5
MASK_TOKEN = 6
PAD_TOKEN = 6
TARGET_SUM = 1e4
IGNORE_INDEX = -100
MASK_PROB = 0.15
REPLACE_PROB = 0.9


def expression_tokens(rows, *, append_position: bool = True) -> torch.Tensor:
    """(b, n_genes + 1) int64 tokens from a CSR batch of counts (scipy sparse; the loader's output='csr' batch).

    Computed as scanpy's normalize_total(target_sum=1e4) and log1p(base=2) do in float32, so tokens match
    scBERT's preprocessing bin for bin. A cell without counts is all zeros.
    """
    csr = sp.csr_matrix(rows)
    if csr.nnz and csr.data.min() < 0:
        raise InputError("expression tokens need counts; the batch has negative values")
    n_rows, n_genes = csr.shape
    data = csr.data.astype(np.float32)
    per_row = np.diff(csr.indptr)
    row_of = np.repeat(np.arange(n_rows), per_row)
    totals = np.bincount(row_of, weights=data, minlength=n_rows).astype(np.float32)
    totals[totals == 0] = 1  # a cell of explicit zeros stays zero
    scale = (totals / np.float32(TARGET_SUM))[row_of]  # scanpy divides by (total / target_sum)
    values = np.log1p(data / scale) / np.float32(np.log(2))
    bins = np.minimum(values, MAX_BIN).astype(np.int64)  # non-negative: the cast floors, as scBERT's .long()
    tokens = torch.zeros((n_rows, n_genes + int(append_position)), dtype=torch.long)
    tokens[torch.from_numpy(row_of), torch.from_numpy(csr.indices.astype(np.int64))] = torch.from_numpy(bins)
    return tokens


def mask_tokens(tokens: torch.Tensor, *, generator: torch.Generator, mask_prob: float = MASK_PROB,
                replace_prob: float = REPLACE_PROB) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked input, labels) as scBERT masks: see the module docstring. Seeded by `generator` alone."""
    maskable = (tokens != 0) & (tokens != PAD_TOKEN)
    # ceil(count x prob) computed as scBERT's (num_tokens * prob).ceil(), in float32
    budget = (maskable.sum(dim=-1, keepdim=True) * mask_prob).ceil()
    scores = torch.rand(tokens.shape, generator=generator).masked_fill(~maskable, 2.0)  # unmaskable rank last
    rank = scores.argsort(dim=-1).argsort(dim=-1)
    chosen = (rank < budget) & maskable
    replace = torch.rand(tokens.shape, generator=generator) < replace_prob
    masked = tokens.masked_fill(chosen & replace, MASK_TOKEN)
    labels = tokens.masked_fill(~chosen, IGNORE_INDEX)
    return masked, labels


def most_common_nonzero_bin(masked: torch.Tensor) -> torch.Tensor:
    """(b,) each cell's most frequent visible bin among 1..5 (ties: the lower bin; a cell with none: 1)."""
    counts = torch.stack([(masked == b).sum(dim=-1) for b in range(1, MAX_BIN + 1)], dim=-1)
    return counts.argmax(dim=-1) + 1


def mlm_baseline_counts(masked: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """(correct, masked positions) when every masked position is predicted as its cell's most common
    non-zero bin among the tokens the model sees: the trivial baseline scBERT's re-evaluation found it matched."""
    target = labels != IGNORE_INDEX
    guess = most_common_nonzero_bin(masked)[:, None].expand_as(labels)
    return int((guess[target] == labels[target]).sum()), int(target.sum())


def mlm_baseline_accuracy(masked: torch.Tensor, labels: torch.Tensor) -> float:
    """Accuracy of `mlm_baseline_counts` (nan when nothing is masked); sum the counts to pool batches."""
    correct, total = mlm_baseline_counts(masked, labels)
    return correct / total if total else float("nan")
