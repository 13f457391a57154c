"""Controls: models that cannot learn from expression. Every leaderboard shows them beside the real models."""

from __future__ import annotations

from typing import Any

from sklearn.dummy import DummyClassifier

from omicsweep.models.base import ModelEntry, Task, register
from omicsweep.tasks import TASK_KINDS


def build_majority(config: dict[str, Any], task: Task):
    return DummyClassifier(strategy="most_frequent")


register(
    ModelEntry(
        name="majority",
        family="estimator",
        build=build_majority,
        description="predicts the most frequent training class (control)",
        role="control",
        tasks=TASK_KINDS,  # controls ignore the input: every leaderboard shows them
    )
)


def build_random(config: dict[str, Any], task: Task):
    return DummyClassifier(strategy="stratified", random_state=int(config.get("seed", 0)))


register(
    ModelEntry(
        name="random",
        family="estimator",
        build=build_random,
        description="random labels drawn with the training class frequencies (control)",
        role="control",
        tasks=TASK_KINDS,  # controls ignore the input: every leaderboard shows them
    )
)
