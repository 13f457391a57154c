"""ASHA's rung records survive a resumed sweep: `asha-rungs.json` in the run folder.

Ray Tune's experiment checkpoint does not bring a scheduler's state back for us (ray #30838; and `sweep --resume`
builds a fresh Tuner from the tracking store, not from Tune's checkpoint), so a resumed sweep's ASHA would start
with empty rungs: the first trials after a resume are never cut, and every cut-off is computed from the resumed
trials alone. `RungLog` keeps, per pair (DATASET/MODEL), every trial's rung entries (bracket, milestone, the value
ASHA recorded: its metric times +1 for max, -1 for min), rewritten atomically whenever a trial enters a rung
(a few times per trial, not per result). On resume `seed_rungs` puts the entries of the trials that finished or
failed before the interruption back into the new ASHA's rungs; an interrupted trial's entries are dropped, since
its tracked run is deleted and its configuration runs again from the start (and enters the rungs again).

The entries are JSON (never a pickle of the scheduler, which is what ASHA's own `save` writes) and read through
ASHA's `_brackets[i]._rungs`, the one place Ray keeps them (ray 2.x `async_hyperband._Bracket`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from omicsweep.benchmark.resume import read_json, write_json_atomic

RUNGS_FILE = "asha-rungs.json"

Entries = list[list[float]]  # [[bracket index, milestone, recorded value], ...] of one trial


def _brackets(scheduler) -> list:
    return list(getattr(scheduler, "_brackets", None) or [])


def rung_entries(scheduler, trial_id: str) -> Entries:
    """Where `trial_id` stands in `scheduler`'s rungs (empty for a scheduler without rungs, e.g. FIFO)."""
    return [[index, float(milestone), float(recorded[trial_id])]
            for index, bracket in enumerate(_brackets(scheduler))
            for milestone, recorded in bracket._rungs if trial_id in recorded]


def rungs_of(scheduler) -> list[list[tuple[float, dict[str, float]]]]:
    """Every bracket's rungs as (milestone, {trial id: value}), for comparing two schedulers."""
    return [[(float(milestone), dict(recorded)) for milestone, recorded in bracket._rungs]
            for bracket in _brackets(scheduler)]


def seed_rungs(scheduler, records: dict[str, Entries], keep: set[str]) -> int:
    """Put the entries of the trials in `keep` back into `scheduler`'s rungs; returns how many were placed.
    An entry whose bracket or milestone the scheduler does not have (another max_t) is skipped."""
    placed = 0
    brackets = _brackets(scheduler)
    for trial_id, entries in records.items():
        if trial_id not in keep:
            continue
        for index, milestone, value in entries:
            if not 0 <= int(index) < len(brackets):
                continue
            for rung_milestone, recorded in brackets[int(index)]._rungs:
                if math.isclose(float(rung_milestone), milestone):
                    recorded[trial_id] = value
                    placed += 1
    return placed


class RungLog:
    """Each pair's ASHA rung entries, kept in `run_folder/asha-rungs.json` (see the module docstring)."""

    def __init__(self, run_folder: Path, records: dict[str, dict[str, Entries]] | None = None) -> None:
        self.path = Path(run_folder) / RUNGS_FILE
        self.records: dict[str, dict[str, Entries]] = records or {}

    @classmethod
    def resumed(cls, run_folder: Path, keep: dict[str, set[str]]) -> RungLog:
        """The log of a resumed sweep: the earlier entries of the trials in `keep` (pair -> trial ids that ended
        before the interruption), for every pair in `keep`; the other pairs' entries are kept as they were."""
        path = Path(run_folder) / RUNGS_FILE
        saved: dict[str, Any] = read_json(path, "ASHA rung records") if path.exists() else {}
        records = {key: ({t: e for t, e in value.items() if t in keep[key]} if key in keep else value)
                   for key, value in saved.items() if isinstance(value, dict)}
        return cls(run_folder, records)

    def note(self, key: str, scheduler, trial_id: str) -> None:
        """After `scheduler` saw a result of `trial_id`: write the file if the trial entered a rung."""
        entries = rung_entries(scheduler, trial_id)
        if entries and entries != self.records.get(key, {}).get(trial_id):
            self.records.setdefault(key, {})[trial_id] = entries
            write_json_atomic(self.path, self.records)

    def seed(self, key: str, scheduler) -> int:
        """Put pair `key`'s saved entries into its (new) scheduler."""
        records = self.records.get(key, {})
        return seed_rungs(scheduler, records, set(records))
