"""An estimator's fitted state as a skops file (`estimator.skops`), scikit-learn's persistence format without pickle.

skops writes an object tree of known node types and, when loading, refuses every type that is neither trusted by
default (scikit-learn's estimators, numpy arrays, builtins) nor named by the caller. A checkpoint is a file a
user hands us, so loading trusts only what `skops.io.get_untrusted_types` reports that is also on our allow-list:
the class the model entry builds (e.g. `cgs_query`'s own classifier) and the scikit-learn internals a fitted
model holds (a forest's trees, a neighbour index). A file declaring anything else (a function such as os.system,
a foreign class) is refused before it is loaded, and the object loaded must be of the class the entry builds.

A class with its own safe format (xgboost's UBJSON: `file_name`, `save_state`, classmethod `load_state`) is saved
and loaded by those instead, under its own file name (`state_file`).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from omicsweep.errors import InputError
from omicsweep.schema import ESTIMATOR_FILE  # noqa: F401 - the skops file's name, re-exported
# scikit-learn objects inside fitted estimators that skops does not trust by default
FITTED_INTERNALS = (
    "sklearn.tree._tree.Tree",  # random_forest: each tree's node table
    "sklearn.neighbors._kd_tree.KDTree",  # knn on few features (15 or fewer): its neighbour index and metric
    "sklearn.neighbors._ball_tree.BallTree",
    "sklearn.metrics._dist_metrics.EuclideanDistance64",
    "sklearn.metrics._dist_metrics.EuclideanDistance32",
    "scipy.sparse._csr.csr_matrix",  # knn fitted on CSR keeps it; skops stores it as an npz (no pickle)
)


def qualified_name(kind: type) -> str:
    """A type's name as skops reports it: module.QualName."""
    return f"{kind.__module__}.{kind.__qualname__}"


def state_file(kind: type) -> str:
    """The checkpoint file name of a fitted `kind`: its own format's (`file_name`) or the skops file."""
    return getattr(kind, "file_name", ESTIMATOR_FILE)


def save_estimator(estimator, path: str | Path) -> None:
    """Write a fitted estimator as a skops file (deflated: kNN keeps its training matrix, mostly zeros), or in its
    own format when its class has one (`save_state`)."""
    import skops.io

    if callable(getattr(estimator, "save_state", None)):
        estimator.save_state(path)
        return

    skops.io.dump(estimator, path, compression=zipfile.ZIP_DEFLATED)


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def load_estimator(path: str | Path, expected: type) -> Any:
    """The estimator in skops file `path`, which must be an `expected` instance; InputError for anything else."""
    import skops.io

    if callable(getattr(expected, "load_state", None)):
        return expected.load_state(path)
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file; the checkpoint holds no estimator")
    try:
        untrusted = skops.io.get_untrusted_types(file=path)
    except Exception as exc:  # zipfile, json and key errors: not a file skops wrote
        raise InputError(f"{path}: not a valid skops file ({_one_line(exc)})") from None
    allowed = {qualified_name(expected), *FITTED_INTERNALS}
    refused = sorted(set(untrusted) - allowed)
    if refused:
        raise InputError(f"{path}: declares types a {expected.__name__} checkpoint never holds "
                         f"({', '.join(refused)}); refused without loading it")
    try:
        estimator = skops.io.load(path, trusted=untrusted)
    except Exception as exc:
        raise InputError(f"{path}: not a valid skops file ({_one_line(exc)})") from None
    if type(estimator) is not expected:
        raise InputError(f"{path}: holds a {qualified_name(type(estimator))}, not the {qualified_name(expected)} "
                         "this run's model builds")
    return estimator
