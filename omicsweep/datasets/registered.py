"""User-registered datasets: short names for stores, kept as name -> absolute path (or store URL) in
`<cache>/datasets.json`.

`omicsweep datasets register NAME STORE` adds one; `--dataset NAME` (sweep, datasets show) resolves it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from omicsweep.atomic import atomic_write_text
from omicsweep.errors import ConfigError, InputError

REGISTRY_FILE = "datasets.json"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def registry_path() -> Path:
    from omicsweep.datasets.builtin import cache_dir

    return cache_dir() / REGISTRY_FILE


def registered_datasets() -> dict[str, str]:
    """name -> store path, sorted by name; an absent file means none."""
    path = registry_path()
    if not path.exists():
        return {}
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read the dataset registry ({exc}); fix or delete the file") from None
    if not isinstance(entries, dict) or not all(isinstance(v, str) for v in entries.values()):
        raise InputError(f"{path}: the dataset registry must be a JSON object of name -> store path")
    return dict(sorted(entries.items()))


def _write(entries: dict[str, str]) -> None:
    atomic_write_text(registry_path(), json.dumps(dict(sorted(entries.items())), indent=2) + "\n")


def register_dataset(name: str, store: Path | str, *, overwrite: bool = False) -> Path | str:
    """Record `name` -> the store's absolute path (or its URL), after checking the store opens. Returns it."""
    from omicsweep.datasets.builtin import BUILTIN
    from omicsweep.datasets.remote import canonical_location, is_url
    from omicsweep.datasets.open import open_store

    if not NAME_PATTERN.match(name):
        raise ConfigError(f"dataset name {name!r}: use letters, digits, '.', '_' or '-' (no paths), up to 100 characters")
    if name in BUILTIN:
        raise ConfigError(f"dataset name {name!r} is a built-in dataset; choose another name")
    path = canonical_location(store) if is_url(store) else Path(store).expanduser().resolve()
    open_store(path)  # not a store: InputError naming the path
    entries = registered_datasets()
    if name in entries and entries[name] != str(path) and not overwrite:
        raise ConfigError(f"dataset {name!r} is already registered to {entries[name]}; pass --overwrite to replace it")
    entries[name] = str(path)
    _write(entries)
    return path


def unregister_dataset(name: str) -> str:
    """Forget `name` (the store itself is left alone). Returns the path it pointed to."""
    entries = registered_datasets()
    if name not in entries:
        from omicsweep.errors import UnknownNameError

        raise UnknownNameError("registered dataset", name, list(entries))
    path = entries.pop(name)
    _write(entries)
    return path
