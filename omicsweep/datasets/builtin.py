"""Built-in datasets (ingested on first use into the cache folder, by datasets/resolve.py) and that cache folder.

Imports no other dataset module: the registry (datasets/registered.py) and name resolution build on it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class BuiltinDataset:
    name: str
    description: str
    label_col: str
    use_raw: bool
    load: Callable[[], object]  # returns an AnnData; must not touch the network


def _pbmc68k_reduced():
    import scanpy as sc

    return sc.datasets.pbmc68k_reduced()  # shipped inside the scanpy wheel: no download


BUILTIN: dict[str, BuiltinDataset] = {
    "pbmc68k": BuiltinDataset(
        name="pbmc68k",
        description="700 PBMCs x 765 genes shipped with scanpy (pbmc68k_reduced), log-normalized .raw, bulk_labels",
        label_col="bulk_labels",
        use_raw=True,
        load=_pbmc68k_reduced,
    ),
}


def cache_dir() -> Path:
    return Path(os.environ.get("OMICSWEEP_CACHE", Path.home() / ".cache" / "omicsweep"))
