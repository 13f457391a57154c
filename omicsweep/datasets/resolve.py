"""Dataset names to stores: a built-in name (ingested on first use), a registered name, a store path or URL."""

from __future__ import annotations

import os
from pathlib import Path

from omicsweep.datasets.builtin import BUILTIN, cache_dir
from omicsweep.datasets.registered import registered_datasets
from omicsweep.errors import InputError, UnknownNameError


def available_datasets() -> list[str]:
    """Built-in and user-registered dataset names."""
    return sorted(set(BUILTIN) | set(registered_datasets()))


def resolve_dataset(name_or_path: str, *, seed: int = 0) -> tuple[str, Path | str]:
    """A built-in name (ingested on first use), a registered name, a store path or a store URL -> (dataset name,
    store path, or the URL as a string).

    A registered store keeps its own split: `seed` only chooses the split of built-in datasets. A URL is opened
    once here (with $OMICSWEEP_STORAGE_OPTIONS), so a missing or unreadable remote store fails early.
    """
    from omicsweep.datasets.ingest import ingest_anndata
    from omicsweep.datasets.remote import as_location, is_url, store_name
    from omicsweep.datasets.store import Store

    if name_or_path in BUILTIN:
        spec = BUILTIN[name_or_path]
        store = cache_dir() / f"{spec.name}-seed{seed}.zarr"
        if not store.exists():
            try:
                ingest_anndata(
                    spec.load(),
                    label_col=spec.label_col,
                    out=store,
                    source=f"builtin:{spec.name}",
                    use_raw=spec.use_raw,
                    seed=seed,
                    extra_provenance={"builtin": spec.name, "description": spec.description},
                )
            except InputError:
                if not store.exists():  # another process may have won the race to write it
                    raise
        return spec.name, store
    if is_url(name_or_path):
        url = as_location(name_or_path)
        Store(url)  # InputError naming the URL when there is no store
        return store_name(url), url
    registered = registered_datasets()
    if name_or_path in registered:
        store = as_location(registered[name_or_path])
        if is_url(store):
            Store(store)
            return name_or_path, store
        if not store.exists():
            raise InputError(
                f"dataset {name_or_path!r} is registered to {store}, which no longer exists; register it again "
                f"(`omicsweep datasets register {name_or_path} STORE --overwrite`)"
            )
        return name_or_path, store
    path = Path(name_or_path)
    if path.exists():
        if not (path / "zarr.json").exists():
            raise InputError(f"{path}: not a zarr store; ingest it first with `omicsweep ingest`")
        return path.name.removesuffix(".zarr"), path
    if os.sep in name_or_path or name_or_path.endswith(".zarr"):
        raise InputError(f"{path}: store not found")
    raise UnknownNameError("dataset", name_or_path, available_datasets())
