"""Gradient-boosted trees baseline: xgboost's `hist` method (Open Problems and scTab both list it).

`XGBoostClassifier` is a small scikit-learn-style classifier over `xgboost.train`: it trains on a
`QuantileDMatrix` built straight from the CSR training split (quantised to `max_bin` bins per gene, about one
byte per stored value, no dense copy), on the GPU when the trial has one and the installed xgboost was built with
CUDA (`device: auto`), else on the CPU. Zeros are xgboost's missing values, in training (CSR: not stored) and in
prediction (dense rows: missing=0), so a dense and a sparse copy of the same rows predict the same.

Labels are the classes present in the training split (xgboost wants 0..k-1; a fold may lack a class); `classes_`
maps them back. The state is xgboost's own UBJSON model (`save_state` / `load_state`), with classes_ and the
constructor's parameters as booster attributes: no pickle, no skops.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from omicsweep.errors import InputError
from omicsweep.models.base import ModelEntry, Task, register
from omicsweep.schema import XGBOOST_FILE

PARAMS = ("n_estimators", "max_depth", "learning_rate", "subsample", "colsample_bytree", "min_child_weight",
          "reg_lambda", "max_bin", "device", "n_jobs", "seed")


def resolve_device(device: str) -> str:
    """'auto': cuda when a GPU is visible to this process and xgboost was built with CUDA, else cpu."""
    if device != "auto":
        return device
    import xgboost

    if not xgboost.build_info().get("USE_CUDA"):
        return "cpu"  # the xgboost-cpu wheel: install the `xgboost` wheel on GPU hosts
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


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
        train = xgboost.QuantileDMatrix(x, label=codes, missing=0.0, max_bin=int(self.max_bin),
                                        nthread=int(self.n_jobs))
        self.booster = xgboost.train(self._train_params(), train, num_boost_round=int(self.n_estimators))
        return self

    def predict_proba(self, x) -> np.ndarray:
        import xgboost

        if self.booster is None:
            raise ValueError("XGBoostClassifier is not fitted")
        rows = xgboost.DMatrix(x, missing=0.0, nthread=int(self.n_jobs))
        proba = self.booster.predict(rows).reshape(rows.num_row(), -1)
        return proba[:, : len(self.classes_)] if len(self.classes_) > 1 else np.ones((rows.num_row(), 1))

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
