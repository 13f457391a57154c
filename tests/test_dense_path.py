"""The host dense path: transformed batches equal the transform of the densified CSR batch, and reused output
arrays never change under a consumer that still holds a batch (or a view of one)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from omicsweep.datasets import CellBatches, Store, fit_transform_on_train
from omicsweep.datasets.batch_gather import HostDensifier
from omicsweep.datasets.synth import write_synthetic

COMMON = dict(batch_size=100, shuffle=True, seed=4, buffer_chunks=1, block_rows=64)  # batches span buffers


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory) -> Store:
    path = tmp_path_factory.mktemp("dense") / "s.zarr"
    write_synthetic(path, cells=2500, genes=200, nnz_per_cell=25, n_types=4, seed=1)
    return Store(path)


def _expected(store, transform, epoch=0) -> list[np.ndarray]:
    batches = CellBatches(store, "train", transform=None, output="csr", prefetch=False, **COMMON)
    batches.set_epoch(epoch)
    return [transform(m.toarray().astype(np.float32)) for m, _ in batches]


@pytest.mark.parametrize("scaling,log1p", [("minmax", True), ("zscore", True), ("none", True), ("zscore", False)])
def test_dense_batches_equal_the_transform_of_the_csr_batches(tiny_store, monkeypatch, scaling, log1p):
    monkeypatch.setattr(HostDensifier, "TILE_BYTES", 4 * tiny_store.n_genes * 7)  # 7-row tiles: several a batch
    transform = dataclasses.replace(fit_transform_on_train(tiny_store, scaling), log1p=log1p)
    if scaling == "zscore":  # a non-constant zero-row transform: the template is copied, not filled
        assert len(np.unique((0 - transform.mean) / np.where(transform.std == 0, 1, transform.std))) > 1
    expected = _expected(tiny_store, transform)
    kept = list(CellBatches(tiny_store, "train", transform=transform, **COMMON))  # all held: none may be reused
    assert len(kept) == len(expected) > 10
    for (x, _), want in zip(kept, expected):
        assert x.dtype == torch.float32
        np.testing.assert_allclose(x.numpy(), want, rtol=1e-6, atol=1e-6)


def test_reused_arrays_are_never_those_of_a_batch_still_held(tiny_store):
    transform = fit_transform_on_train(tiny_store, "zscore")
    batches = CellBatches(tiny_store, "train", transform=transform, **COMMON)
    batches.set_epoch(1)
    expected = _expected(tiny_store, transform, epoch=1)
    previous, views, pointers = None, [], set()
    for i, (x, _) in enumerate(batches):  # a training loop: holds batch i while batch i + 1 is drawn
        if previous is not None:
            np.testing.assert_allclose(previous.numpy(), expected[i - 1], rtol=1e-6, atol=1e-6)
        if i in (2, 3):
            views.append((i, x[:, 3:9]))  # a view keeps its batch's memory from reuse, as the batch itself does
        pointers.add(x.data_ptr())
        previous = x
    assert len(pointers) <= 5 < len(expected)  # reused: the loop's two, the two viewed, the last (smaller) batch's
    for i, view in views:
        np.testing.assert_allclose(view.numpy(), expected[i][:, 3:9], rtol=1e-6, atol=1e-6)


def test_csr_output_is_untransformed_even_with_a_transform(tiny_store):
    transform = fit_transform_on_train(tiny_store, "zscore")
    given = CellBatches(tiny_store, "train", transform=transform, output="csr", **COMMON)
    for (m, _), (raw, _) in zip(given, CellBatches(tiny_store, "train", transform=None, output="csr", **COMMON)):
        assert (m != raw).nnz == 0
