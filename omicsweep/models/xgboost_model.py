"""Gradient-boosted trees baseline: xgboost's `hist` method (Open Problems and scTab both list it).

`XGBoostClassifier` is a small scikit-learn-style classifier over `xgboost.train`. Training data is fed to
xgboost in row blocks of the CSR training split (`CsrBlocks`, an `xgboost.DataIter`), never as one matrix: on the
CPU into an `ExtMemQuantileDMatrix` whose quantised pages live in a temporary folder on disk (removed after the
fit), on a GPU (`device: auto` when the trial has one and xgboost was built with CUDA) into a `QuantileDMatrix`
in device memory. The bin edges come from a seeded sample of `SKETCH_ROWS` rows (`ref=`), because xgboost's
quantile sketch over the whole split costs about 33 bytes a non-zero (4.6 GB peak on a 200k x 20k store at 140M
training non-zeros); with the sample and the pages on disk a fit's memory is the sample's sketch plus one page,
whatever the rows (perf/RESULTS.md, Baseline timings). Predictions are made in row blocks too. Zeros are
xgboost's missing values, in training (CSR: not stored) and in prediction (dense rows: missing=0), so a dense and
a sparse copy of the same rows predict the same.

Labels are the classes present in the training split (xgboost wants 0..k-1; a fold may lack a class); `classes_`
maps them back. The state is xgboost's own UBJSON model (`save_state` / `load_state`), with classes_ and the
constructor's parameters as booster attributes: no pickle, no skops.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from omicsweep.errors import InputError
from omicsweep.models.base import ModelEntry, Task, register
from omicsweep.schema import XGBOOST_FILE

PARAMS = ("n_estimators", "max_depth", "learning_rate", "subsample", "colsample_bytree", "min_child_weight",
          "reg_lambda", "max_bin", "device", "n_jobs", "seed")
SKETCH_ROWS = 4096  # rows whose values set the bin edges: about 200 MB of sketch at 1,000 non-zeros a row
BLOCK_ROWS = 8192  # rows handed to xgboost at a time, in training and prediction


def resolve_device(device: str) -> str:
    """'auto': cuda when a GPU is visible to this process and xgboost was built with CUDA, else cpu."""
    if device != "auto":
        return device
    import xgboost

    if not xgboost.build_info().get("USE_CUDA"):
        return "cpu"  # the xgboost-cpu wheel: install the `xgboost` wheel on GPU hosts
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _data_iter():
    import xgboost

    class CsrBlocks(xgboost.DataIter):
        """Row blocks of a CSR matrix (slices: views of its arrays plus a block's indptr) with their labels."""

        def __init__(self, x, labels, cache_prefix: str | None):
            self.x, self.labels, self.at = x, labels, 0
            super().__init__(cache_prefix=cache_prefix, release_data=True, on_host=False)

        def next(self, input_data) -> bool:
            if self.at >= self.x.shape[0]:
                return False
            stop = self.at + BLOCK_ROWS
            input_data(data=self.x[self.at : stop], label=self.labels[self.at : stop])
            self.at = stop
            return True

        def reset(self) -> None:
            self.at = 0

    return CsrBlocks


def _sketch_sample(x, seed: int):
    """SKETCH_ROWS rows drawn without replacement (sorted, so a label-sorted store's blocks are all sampled)."""
    if x.shape[0] <= SKETCH_ROWS:
        return x
    rows = np.sort(np.random.default_rng(seed).choice(x.shape[0], SKETCH_ROWS, replace=False))
    return x[rows]


class XGBoostClassifier:
    """Multi-class softprob boosting with scikit-learn's fit / predict_proba / predict / classes_ / get_params."""

    file_name = XGBOOST_FILE

    def __init__(self, *, n_estimators: int = 100, max_depth: int = 6, learning_rate: float = 0.3,
                 subsample: float = 1.0, colsample_bytree: float = 1.0, min_child_weight: float = 1.0,
                 reg_lambda: float = 1.0, max_bin: int = 256, device: str = "auto", n_jobs: int = 1, seed: int = 0):
        self.n_estimators, self.max_depth, self.learning_rate = n_estimators, max_depth, learning_rate
        self.subsample, self.colsample_bytree, self.min_child_weight = subsample, colsample_bytree, min_child_weight
        self.reg_lambda, self.max_bin, self.device, self.n_jobs, self.seed = reg_lambda, max_bin, device, n_jobs, seed
        self.booster = None
        self.classes_ = np.zeros(0, dtype=np.int64)

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {name: getattr(self, name) for name in PARAMS}

    def set_params(self, **params) -> "XGBoostClassifier":
        for name, value in params.items():
            if name not in PARAMS:
                raise ValueError(f"XGBoostClassifier has no parameter {name!r}")
            setattr(self, name, value)
        return self

    def _train_params(self) -> dict[str, Any]:
        return {
            "objective": "multi:softprob", "num_class": max(2, len(self.classes_)), "tree_method": "hist",
            "device": resolve_device(self.device), "max_depth": int(self.max_depth), "eta": float(self.learning_rate),
            "subsample": float(self.subsample), "colsample_bytree": float(self.colsample_bytree),
            "min_child_weight": float(self.min_child_weight), "lambda": float(self.reg_lambda),
            "max_bin": int(self.max_bin), "nthread": int(self.n_jobs), "seed": int(self.seed), "verbosity": 0,
        }

    def fit(self, x, y) -> "XGBoostClassifier":
        import xgboost

        y = np.asarray(y, dtype=np.int64)
        self.classes_ = np.unique(y)
        codes = np.searchsorted(self.classes_, y)
        params = self._train_params()
        options = {"missing": 0.0, "max_bin": int(self.max_bin), "nthread": int(self.n_jobs)}
        cuts = xgboost.QuantileDMatrix(_sketch_sample(x, int(self.seed)), **options)
        if params["device"] != "cpu":  # device memory: quantised pages in GPU memory, no disk cache
            train = xgboost.QuantileDMatrix(_data_iter()(x, codes, None), ref=cuts, **options)
            self.booster = xgboost.train(params, train, num_boost_round=int(self.n_estimators))
            return self
        with tempfile.TemporaryDirectory(prefix="omicsweep-xgboost-") as folder:
            train = xgboost.ExtMemQuantileDMatrix(_data_iter()(x, codes, f"{folder}/pages"), ref=cuts, **options)
            del cuts
            self.booster = xgboost.train(params, train, num_boost_round=int(self.n_estimators))
            del train  # its pages are files in `folder`
        return self

    def predict_proba(self, x) -> np.ndarray:
        import xgboost

        if self.booster is None:
            raise ValueError("XGBoostClassifier is not fitted")
        if len(self.classes_) < 2:
            return np.ones((x.shape[0], 1))
        blocks = [self.booster.predict(xgboost.DMatrix(x[at : at + BLOCK_ROWS], missing=0.0, nthread=int(self.n_jobs)))
                  for at in range(0, x.shape[0], BLOCK_ROWS)]
        proba = np.concatenate(blocks) if blocks else np.zeros((0, len(self.classes_)), dtype=np.float32)
        return proba.reshape(x.shape[0], -1)[:, : len(self.classes_)]

    def predict(self, x) -> np.ndarray:
        return self.classes_[self.predict_proba(x).argmax(axis=1)]

    def save_state(self, path: str | Path) -> None:
        """xgboost's UBJSON model with classes_ and the parameters as attributes, written atomically."""
        from omicsweep.atomic import atomic_write_bytes

        self.booster.set_attr(omicsweep_classes=json.dumps([int(c) for c in self.classes_]),
                              omicsweep_params=json.dumps(self.get_params()))
        atomic_write_bytes(path, bytes(self.booster.save_raw(raw_format="ubj")))

    @classmethod
    def load_state(cls, path: str | Path) -> "XGBoostClassifier":
        """The classifier in UBJSON file `path`; InputError for anything xgboost cannot load or we did not write."""
        import xgboost

        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: no such file; the checkpoint holds no xgboost model")
        try:
            booster = xgboost.Booster(model_file=bytearray(path.read_bytes()))
            classes, params = booster.attr("omicsweep_classes"), booster.attr("omicsweep_params")
            if classes is None or params is None:
                raise ValueError("no omicsweep_classes/omicsweep_params attributes")
            model = cls(**{k: v for k, v in json.loads(params).items() if k in PARAMS})
            model.classes_ = np.asarray(json.loads(classes), dtype=np.int64)
        except (xgboost.core.XGBoostError, ValueError, TypeError) as exc:
            raise InputError(f"{path}: not an xgboost model omicsweep wrote "
                             f"({' '.join(f'{type(exc).__name__}: {exc}'.split())[:200]})") from None
        model.booster = booster
        return model


def build(config: dict[str, Any], task: Task) -> XGBoostClassifier:
    return XGBoostClassifier(**{k: config[k] for k in PARAMS if k in config and k != "seed"},
                             seed=int(config.get("seed", 0)))


register(
    ModelEntry(
        name="xgboost",
        family="estimator",
        build=build,
        description="gradient-boosted trees (xgboost hist, CSR input, GPU when the trial has one)",
        role="baseline",
    )
)
