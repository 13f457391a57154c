"""Class imbalance: per-epoch over/undersampling in the stream, SMOTE in memory, class weights; train split only."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import scipy.sparse as sp

from omicsweep.datasets import CellBatches, Store, fit_transform_on_train, ingest_anndata
from omicsweep.datasets.loader import ArrayBatches, training_batches
from omicsweep.datasets.resample import (
    apply_class_weight,
    check_resample_config,
    repeat_counts,
    resample_arrays,
    smote_resample,
)
from omicsweep.errors import ConfigError

from conftest import SHARED_DATA

PROPORTIONS = {"major": 0.70, "mid": 0.20, "minor": 0.08, "rare": 0.02}


@pytest.fixture(scope="module")
def imbalanced(tmp_path_factory):
    """3,000 cells over several row chunks, 70/20/8/2% classes; each row's gene 0 holds its id + 1."""
    import anndata as ad
    import pandas as pd

    rng = np.random.default_rng(4)
    n_cells, n_genes = 3000, 20
    dense = rng.poisson(0.5, size=(n_cells, n_genes)).astype(np.float32)
    dense[:, 0] = np.arange(n_cells) + 1
    labels = rng.choice(list(PROPORTIONS), size=n_cells, p=list(PROPORTIONS.values()))
    adata = ad.AnnData(
        X=sp.csr_matrix(dense),
        obs=pd.DataFrame({"cell_type": labels}, index=[f"c{i}" for i in range(n_cells)]),
        var=pd.DataFrame(index=[f"g{i}" for i in range(n_genes)]),
    )
    out = tmp_path_factory.mktemp("imbalanced") / "s.zarr"
    ingest_anndata(adata, label_col="cell_type", out=out, source="synthetic")
    store = Store(out)
    assert store.n_chunks >= 3
    return store


def _epoch(batches) -> tuple[list[int], list[int]]:
    """(row ids, labels) of one pass, from CSR batches (gene 0 = row id + 1)."""
    ids, labels = [], []
    for x, y in batches:
        ids.extend(np.asarray(x[:, 0].todense()).ravel().astype(int) - 1)
        labels.extend(y.tolist())
    return ids, labels


def _csr_batches(store, **kwargs) -> CellBatches:
    options = dict(batch_size=64, transform=None, output="csr", shuffle=True, seed=11, buffer_chunks=1)
    return CellBatches(store, "train", **{**options, **kwargs})


def _train_counts(store) -> np.ndarray:
    return np.bincount(store.labels()[store.split_indices("train")], minlength=len(store.classes))


def test_oversampling_balances_every_epoch_and_replicates_minority_rows(imbalanced):
    store = imbalanced
    counts = _train_counts(store)
    batches = _csr_batches(store, resample="over")
    ids, labels = _epoch(batches)
    assert set(Counter(labels).values()) == {counts.max()}  # every class at the majority count
    assert len(ids) == counts.max() * len(counts)
    train_ids = set(np.array([int(c[1:]) for c in store.cell_ids()])[store.split_indices("train")].tolist())
    assert set(ids) == train_ids  # nobody dropped: minority rows repeated, majority rows once
    rare = store.classes.index("rare")
    base = counts.max() // counts[rare]
    rare_copies = Counter(i for i, label in zip(ids, labels) if label == rare)
    assert set(rare_copies.values()) <= {base, base + 1}
    batches.set_epoch(1)
    ids1, labels1 = _epoch(batches)
    assert Counter(labels1) == Counter(labels) and ids1 != ids  # balanced again, new order and draw


def test_undersampling_draws_a_fresh_balanced_subset_each_epoch(imbalanced):
    store = imbalanced
    counts = _train_counts(store)
    batches = _csr_batches(store, resample="under")
    ids, labels = _epoch(batches)
    assert set(Counter(labels).values()) == {counts.min()} and len(set(ids)) == len(ids)
    batches.set_epoch(1)
    ids1, labels1 = _epoch(batches)
    assert set(Counter(labels1).values()) == {counts.min()} and set(ids1) != set(ids)
    target = _csr_batches(store, resample="under", resample_target=100)
    _, labels = _epoch(target)
    assert [Counter(labels)[c] for c in range(len(counts))] == np.minimum(counts, 100).tolist()


def test_same_seed_same_selection_and_ranks_split_its_copies(imbalanced):
    store = imbalanced
    first, second = _epoch(_csr_batches(store, resample="over")), _epoch(_csr_batches(store, resample="over"))
    assert first == second
    other_seed = _epoch(_csr_batches(store, resample="over", seed=12))
    assert sorted(other_seed[0]) != sorted(first[0])  # another seed draws other extra copies
    shards = [_epoch(_csr_batches(store, resample="over", rank=r, world_size=2)) for r in range(2)]
    # the same epoch selection, each copy on one rank (a row's copies may straddle the chunk two ranks share)
    assert shards[0][0] and shards[1][0] and Counter(shards[0][0] + shards[1][0]) == Counter(first[0])
    assert abs(len(shards[0][0]) - len(shards[1][0])) <= 1
    unshuffled = _epoch(_csr_batches(store, resample="over", shuffle=False, prefetch=False))
    assert Counter(unshuffled[0]) == Counter(first[0])


def test_plain_stream_is_unchanged_by_the_resample_machinery(imbalanced):
    plain = _epoch(_csr_batches(imbalanced))
    explicit = _epoch(_csr_batches(imbalanced, resample="none"))
    assert plain == explicit and len(plain[0]) == len(set(plain[0])) == _train_counts(imbalanced).sum()


def test_validation_and_test_are_never_resampled(imbalanced):
    for split in ("val", "test"):
        with pytest.raises(ValueError, match="only the training split"):
            CellBatches(imbalanced, split, batch_size=64, transform=None, output="csr", shuffle=False, resample="over")
    with pytest.raises(ValueError, match="in memory"):
        _csr_batches(imbalanced, resample="smote")
    val = CellBatches(imbalanced, "val", batch_size=64, transform=None, output="csr", shuffle=False)
    _, labels = _epoch(val)
    expected = imbalanced.labels()[imbalanced.split_indices("val")]
    assert labels == expected.tolist()


def test_training_batches_follow_the_config(imbalanced):
    transform = fit_transform_on_train(imbalanced)
    counts = _train_counts(imbalanced)
    common = dict(batch_size=128, seed=3, min_batch=2)
    assert training_batches(imbalanced, transform, {}, **common).resample == "none"
    under = training_batches(imbalanced, transform, {"resample": "under"}, **common)
    assert set(Counter(np.concatenate([y.numpy() for _, y in under])).values()) == {counts.min()}
    smote = training_batches(imbalanced, transform, {"resample": "SMOTE"}, **common)
    assert isinstance(smote, ArrayBatches) and smote.n_cells == counts.max() * len(counts)
    epoch0 = [y.numpy() for _, y in smote]
    assert set(Counter(np.concatenate(epoch0)).values()) == {counts.max()}
    assert all(len(y) >= 2 for y in epoch0)
    smote.set_epoch(1)
    assert not all(np.array_equal(a, b) for a, b in zip(epoch0, (y.numpy() for _, y in smote)))


def test_smote_balances_and_interpolates_within_each_class():
    rng = np.random.default_rng(0)
    sizes = {0: 60, 1: 12, 2: 3, 3: 1}
    y = np.concatenate([np.full(n, c) for c, n in sizes.items()])
    x = (rng.normal(size=(len(y), 4)) + 10 * y[:, None]).astype(np.float32)
    xs, ys = smote_resample(x, y, seed=5)
    assert np.bincount(ys).tolist() == [60] * 4 and xs.dtype == np.float32
    np.testing.assert_array_equal(xs[: len(x)], x)  # the real cells come first, unchanged
    for c in sizes:  # synthetic cells lie between cells of their own class
        own = x[y == c]
        new = xs[len(x) :][ys[len(y) :] == c]
        assert (new >= own.min(axis=0) - 1e-5).all() and (new <= own.max(axis=0) + 1e-5).all()
    again, _ = smote_resample(x, y, seed=5)
    np.testing.assert_array_equal(again, xs)


def test_in_memory_over_and_under_for_estimators():
    y = np.array([0] * 30 + [1] * 6 + [2] * 2)
    x = np.arange(len(y), dtype=np.float32)[:, None]
    xo, yo = resample_arrays(x, y, {"resample": "over"}, seed=0)
    assert np.bincount(yo).tolist() == [30, 30, 30] and set(xo[yo == 2, 0]) == {36.0, 37.0}
    xu, yu = resample_arrays(x, y, {"resample": "under"}, seed=0)
    assert np.bincount(yu).tolist() == [2, 2, 2] and len(set(xu[:, 0])) == 6
    _, yt = resample_arrays(x, y, {"resample": "over", "resample_target": 10}, seed=0)
    assert np.bincount(yt).tolist() == [30, 10, 10]
    assert resample_arrays(x, y, {"resample": None}, seed=0)[1] is y
    counts = repeat_counts(y, "under", np.random.default_rng(1))
    assert counts.sum() == 6 and set(counts.tolist()) <= {0, 1}


def test_class_weight_is_set_only_where_the_estimator_accepts_it():
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    logreg, knn = LogisticRegression(), KNeighborsClassifier()
    assert apply_class_weight(logreg, {"class_weight": "balanced"}) and logreg.class_weight == "balanced"
    assert not apply_class_weight(knn, {"class_weight": "balanced"})
    assert not apply_class_weight(LogisticRegression(), {}) and LogisticRegression().class_weight is None


@pytest.mark.parametrize(
    "config, message",
    [
        ({"resample": "bootstrap"}, "resample='bootstrap'"),
        ({"resample": "under", "resample_target": 0}, "resample_target"),
        ({"resample_target": "many"}, "resample_target"),
        ({"class_weight": "inverse"}, "class_weight"),
    ],
)
def test_bad_imbalance_options_are_config_errors(config, message):
    with pytest.raises(ConfigError, match=message):
        check_resample_config(config)


def test_class_weight_for_torch_models_points_to_weighted_ce():
    with pytest.raises(ConfigError, match="weighted_ce"):
        check_resample_config({"class_weight": "balanced"}, family="torch")


# ---- real trials on a small, very imbalanced real dataset (13 classes, 343 down to 2 cells) --------------------

BARON = SHARED_DATA / "baron_mouse1_pancreas" / "baron_mouse1.h5ad"


@pytest.fixture(scope="module")
def baron_store(tmp_path_factory):
    if not BARON.exists():
        pytest.skip(f"{BARON} not present")
    from omicsweep.datasets import IngestOptions, ingest_file

    out = tmp_path_factory.mktemp("baron") / "baron.zarr"
    ingest_file(BARON, label_col="cell_type", out=out, options=IngestOptions(preprocess="normalize_log1p,hvg:300"))
    return out


def _trial(store_path, model: str, options: dict) -> tuple[list[dict], dict]:
    """Run one trial in process with the model's tiny settings; (per-epoch metrics, last checkpoint's files)."""
    from omicsweep.benchmark.space import load_space
    from omicsweep.benchmark.trial import TrialContext, execute_trial
    from omicsweep.models import get_model

    space = load_space(get_model(model).space_file)
    context = TrialContext(
        store_path=str(store_path), fingerprint=Store(store_path).fingerprint, model=model,
        defaults={**space.defaults, **space.tiny, "max_epochs": 2}, seed=0, metric="macro_f1",
    )
    results, files = [], {}
    execute_trial(context, options, lambda metrics, ckpt: (results.append(metrics), files.update(ckpt or {})))
    return results, files


@pytest.mark.parametrize("model", ["mlp", "logreg"])
@pytest.mark.parametrize(
    "options",
    [{"resample": "none"}, {"resample": "over"}, {"resample": "under"}, {"resample": "smote"},
     {"resample": "over", "resample_target": 40}, {"class_weight": "balanced"}],
    ids=["none", "over", "under", "smote", "over-target", "class-weight"],
)
@pytest.mark.shared_data
def test_real_trial_finishes_with_each_imbalance_option(baron_store, model, options, tmp_path):
    if model == "mlp" and "class_weight" in options:
        options = {"loss": "weighted_ce"}  # torch models' class weights
    results, files = _trial(baron_store, model, options)
    last = results[-1]
    for key in ("val_accuracy", "val_macro_f1", "test_macro_f1", "train_loss" if model == "mlp" else "best_val"):
        assert np.isfinite(last[key]), key
    files["test_predictions.npz"](str(tmp_path / "p.npz"))  # the test split is scored whole, never resampled
    store = Store(baron_store)
    expected = store.labels()[store.split_indices("test")]
    np.testing.assert_array_equal(np.load(tmp_path / "p.npz")["y_true"], expected)


@pytest.mark.slow
@pytest.mark.shared_data
def test_train_command_runs_a_resampled_trial_through_ray(ray_session, baron_store, cli, tmp_path):
    out = tmp_path / "run"
    code, stdout, stderr = cli("train", "--dataset", baron_store, "--model", "logreg", "--set", "resample=smote",
                               "--set", "class_weight=balanced", "--set", "max_iter=200", "--runs", out)
    assert code == 0, stdout + stderr
    assert "resample=smote" in stderr and "class_weight=balanced" in stderr


@pytest.mark.parametrize("args, says", [(["--set", "resample=bootstrap"], "resample"),
                                        (["--set", "class_weight=balanced"], "weighted_ce"),
                                        (["--set", "resample_target=-3"], "resample_target")])
def test_bad_imbalance_options_on_the_command_line(args, says, cli, pbmc_store, tmp_path):
    code, _, stderr = cli("train", "--dataset", "pbmc68k", "--model", "mlp", *args, "--runs", tmp_path / "run")
    assert code == 2 and says in stderr and len(stderr.strip().splitlines()) == 1, stderr
