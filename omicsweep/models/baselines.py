"""Classical baselines from scikit-learn: k-nearest neighbours and random forest (Open Problems label projection).

Plain scikit-learn estimators; a checkpoint is their skops file (see `estimator_state`), trees and all.
"""

from __future__ import annotations

from typing import Any

from sklearn.ensemble import RandomForestClassifier
from sklearn.neighbors import KNeighborsClassifier

from omicsweep.models.base import ModelEntry, Task, register


def build_knn(config: dict[str, Any], task: Task):
    return KNeighborsClassifier(n_neighbors=int(config["n_neighbors"]), weights=str(config["weights"]), n_jobs=1)


def build_random_forest(config: dict[str, Any], task: Task):
    max_depth = config.get("max_depth")
    return RandomForestClassifier(
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
