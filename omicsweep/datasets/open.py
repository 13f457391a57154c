"""`open_store`: the store at a location, whatever its task (a cell `Store` or a gene-pair `PairTaskStore`).

Apart from both store modules so that neither imports the other. A store takes no trial hyperparameters: what a
model reads from it (e.g. CNNC's images at a trial's `bins`) is its featuriser's view (`ModelEntry.featurised_store`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omicsweep.datasets.pair_store import PairTaskStore, is_pair_store
from omicsweep.datasets.store import Store


def open_store(location, *, fold: int | None = None, storage_options: dict[str, Any] | None = None):
    """The store at `location` (datasets.protocol.SampleStore); `fold`: a k-fold store's test fold."""
    from omicsweep.atomic import recover_folder

    if isinstance(location, (str, Path)) and "://" not in str(location) and not Path(location).exists():
        recover_folder(location)  # a writer killed between its two renames left the complete old store aside
    if is_pair_store(location):
        return PairTaskStore(location, fold=fold)
    return Store(location, fold=fold, storage_options=storage_options)
