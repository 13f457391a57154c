"""Featurisers: what a model eats. A CSR batch of a store's rows (plus the store's feature names and the fitted
transform) becomes a dict of tensors, the keyword arguments of the model's forward.

A model entry names its featuriser (`ModelEntry.featuriser`); the training loop, evaluation, `predict`, the
MLflow pyfunc and the conformance tests all build a model's inputs through it, so a model that takes gene ids,
expression tokens and a padding mask (scBERT) fits the same loop as one that takes a dense vector.

    featuriser(batch_csr, genes, transform) -> {"x": tensor, ...}      model(**inputs) -> logits

(the default's lone "x" is passed positionally: `run_model`).

A plain function with that signature is a featuriser; a `Featuriser` subclass may also

- `view(store, config)`: the rows the loader reads, built from the store for this trial's settings (CNNC: the
  pair images at the trial's `bins` and `sigma`); storage itself takes no trial hyperparameters;
- `fit(store, config)`: a featuriser fitted on the store (the training split) for one trial, e.g. a vocabulary;
- `dense`: True when its only output is the transformed dense vector "x" (what SMOTE and estimators use).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Union

import numpy as np
import scipy.sparse as sp
import torch

DENSE_KEY = "x"  # the default featuriser's one input: [batch, n_features] float32, transformed


class Featuriser:
    """The default: today's dense scaled vector under key "x" (log1p and per-feature scaling of the store's
    fitted transform)."""

    dense = True

    def view(self, store, config: Mapping[str, Any]):
        """The store-like object (datasets.protocol.SampleStore) whose rows the loader reads for this trial."""
        return store

    def fit(self, store, config: Mapping[str, Any]) -> "Featuriser":
        """This featuriser fitted for one trial on `store` (its view); the default has nothing to fit."""
        return self

    def __call__(self, batch: sp.csr_matrix, genes, transform) -> dict[str, torch.Tensor]:
        dense = np.asarray(batch.toarray(), dtype=np.float32)
        if transform is not None:
            dense = transform(dense)
        return {DENSE_KEY: torch.from_numpy(dense)}


FeaturiseFn = Callable[[sp.csr_matrix, Any, Any], "dict[str, torch.Tensor]"]
FeaturiserLike = Union[Featuriser, FeaturiseFn]
DEFAULT_FEATURISER = Featuriser()


class _FunctionFeaturiser(Featuriser):
    """A plain `featurise(batch_csr, genes, transform)` function seen as a Featuriser (nothing to view or fit)."""

    dense = False

    def __init__(self, function: FeaturiseFn) -> None:
        self.function = function

    def __call__(self, batch, genes, transform):
        return self.function(batch, genes, transform)


def as_featuriser(featuriser: FeaturiserLike | None) -> Featuriser:
    """A Featuriser for whatever a model entry declares (None: the default dense vector)."""
    if featuriser is None:
        return DEFAULT_FEATURISER
    if isinstance(featuriser, Featuriser):
        return featuriser
    if callable(featuriser):
        return _FunctionFeaturiser(featuriser)
    raise TypeError(f"a featuriser is a callable (batch_csr, genes, transform) -> dict of tensors, not {featuriser!r}")


def as_inputs(x) -> dict[str, torch.Tensor]:
    """A batch's model inputs as a dict: a featuriser's dict as it is, a bare dense tensor as {"x": tensor}
    (in-memory batches such as SMOTE's are already featurised by the default)."""
    return dict(x) if isinstance(x, Mapping) else {DENSE_KEY: x}


def run_model(model, x) -> torch.Tensor:
    """The model's logits for a batch's inputs: a featuriser's dict goes in as keyword arguments, except the
    default's lone "x", which goes in positionally (so any module taking one tensor, e.g. nn.Sequential, fits)."""
    inputs = as_inputs(x)
    if set(inputs) == {DENSE_KEY}:
        return model(inputs[DENSE_KEY])
    return model(**inputs)
