"""Classical baselines from scikit-learn: k-nearest neighbours and random forest (Open Problems label projection).

Both are thin subclasses whose fitted state is plain arrays (see `estimator_state`), so a checkpoint reloads
without pickle: kNN keeps its training matrix and labels; the forest keeps every tree's node table.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.neighbors import KNeighborsClassifier

from omicsweep.models.base import ModelEntry, Task, register
from omicsweep.models.estimator_state import FittedArraysMixin


class StoredNeighbours(FittedArraysMixin, KNeighborsClassifier):
    """KNeighborsClassifier whose state is its training data; loading refits on it (fitting only stores it)."""

    def fit(self, X, y):
        super().fit(X, y)
        self.train_x_, self.train_y_ = np.asarray(X), np.asarray(y)
        return self

    def state_arrays(self) -> dict[str, np.ndarray]:
        return {"train_x_": self.train_x_, "train_y_": self.train_y_}

    def _after_load(self) -> None:
        self.fit(self.train_x_, self.train_y_)


class TabulatedForest(FittedArraysMixin, RandomForestClassifier):
    """RandomForestClassifier whose trees are saved as their node tables (scikit-learn's own Tree state)."""

    def state_arrays(self) -> dict[str, np.ndarray]:
        trees = [e.tree_.__getstate__() for e in self.estimators_]
        return {
            **super().state_arrays(),
            "tree_nodes_": np.concatenate([t["nodes"] for t in trees]),
            "tree_values_": np.concatenate([t["values"] for t in trees]),
            "tree_node_counts_": np.array([t["node_count"] for t in trees], dtype=np.int64),
            "tree_max_depths_": np.array([t["max_depth"] for t in trees], dtype=np.int64),
            "tree_max_features_": np.array([e.max_features_ for e in self.estimators_], dtype=np.int64),
        }

    def _after_load(self) -> None:
        from sklearn.tree._tree import Tree

        self._validate_estimator()
        bounds = np.r_[0, np.cumsum(self.tree_node_counts_)]
        n_classes = np.array([self.n_classes_], dtype=np.intp)
        self.estimators_ = []
        for i, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
            tree = Tree(int(self.n_features_in_), n_classes, int(self.n_outputs_))
            tree.__setstate__({
                "max_depth": int(self.tree_max_depths_[i]), "node_count": int(stop - start),
                "nodes": np.ascontiguousarray(self.tree_nodes_[start:stop]),
                "values": np.ascontiguousarray(self.tree_values_[start:stop]),
            })
            member = self._make_estimator(append=True)
            # the forest trains its trees on class indices 0..k-1 (floats), as scikit-learn does
            member.classes_ = np.arange(self.n_classes_, dtype=np.float64)
            member.n_classes_, member.n_outputs_ = int(self.n_classes_), int(self.n_outputs_)
            member.n_features_in_, member.max_features_ = int(self.n_features_in_), int(self.tree_max_features_[i])
            member.tree_ = tree


def build_knn(config: dict[str, Any], task: Task):
    return StoredNeighbours(n_neighbors=int(config["n_neighbors"]), weights=str(config["weights"]), n_jobs=1)


def build_random_forest(config: dict[str, Any], task: Task):
    max_depth = config.get("max_depth")
    return TabulatedForest(
        n_estimators=int(config["n_estimators"]),
        max_depth=None if max_depth in (None, 0, "none") else int(max_depth),  # 0 or none: grow until pure
        min_samples_leaf=int(config["min_samples_leaf"]),
        n_jobs=1,  # a trial gets one thread; the sweep runs trials side by side
        random_state=int(config.get("seed", 0)),
    )


register(
    ModelEntry(
        name="knn",
        family="estimator",
        build=build_knn,
        description="k-nearest neighbours (scikit-learn), n_neighbors and weights searchable",
        role="baseline",
    )
)

register(
    ModelEntry(
        name="random_forest",
        family="estimator",
        build=build_random_forest,
        description="random forest (scikit-learn), n_estimators, max_depth and min_samples_leaf searchable",
        role="baseline",
    )
)
