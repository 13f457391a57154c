"""Stores at fsspec URLs (s3://, gs://, az://, file://, ...): open them, and publish a local store to one atomically.

Storage options (credentials, endpoint, ...) are fsspec's keyword arguments for the URL's filesystem, e.g.
`{"endpoint_url": "http://127.0.0.1:9000"}` or `{"anon": true}` for s3fs. They come from, in order: the caller
(`Store(url, storage_options=...)`, `omicsweep ingest --storage-options JSON`), else the environment variable
OMICSWEEP_STORAGE_OPTIONS (a JSON object; Ray workers of a local cluster inherit it), else none, and the
filesystem's own configuration applies (for S3: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, ...).

Publishing (`upload_store`): every file of the local store except the root `zarr.json` is uploaded first and
the root `zarr.json` last, so a reader sees either no store or the complete one; on a failure what was uploaded
is removed again.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from omicsweep.errors import ConfigError, InputError

STORAGE_OPTIONS_ENV = "OMICSWEEP_STORAGE_OPTIONS"
ROOT_METADATA = "zarr.json"
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
UPLOAD_BATCH = 64  # files per fsspec put call (each runs its files concurrently on async filesystems)


def is_url(location: Any) -> bool:
    """True for 'scheme://...' strings (a pathlib.Path never is one: it would have collapsed the '//')."""
    return isinstance(location, str) and bool(_URL.match(location))


def as_location(text: str | os.PathLike) -> str | Path:
    """A URL stays a string (without a trailing '/'); anything else becomes a Path."""
    if is_url(text):
        return str(text).rstrip("/")
    return Path(text).expanduser()


def canonical_location(location: str | os.PathLike) -> str:
    """What to record for a store so another process finds it: the URL as given, or the absolute local path."""
    where = as_location(location)
    return where if isinstance(where, str) else str(where.resolve())


def store_name(location: str | os.PathLike) -> str:
    """The dataset name a store's location implies: its last component without '.zarr'."""
    return str(location).rstrip("/").rsplit("/", 1)[-1].removesuffix(".zarr")


def parse_storage_options(text: str | None, *, where: str = "--storage-options") -> dict[str, Any] | None:
    """A JSON object of fsspec keyword arguments, or None for empty/absent text."""
    if text is None or not text.strip():
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{where}: not valid JSON ({exc}); e.g. '{{\"endpoint_url\": \"http://127.0.0.1:9000\"}}'") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a JSON object of fsspec options, got {type(value).__name__}")
    return value


def storage_options_for(storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """The caller's options, else those in OMICSWEEP_STORAGE_OPTIONS, else {}."""
    if storage_options is not None:
        return dict(storage_options)
    return parse_storage_options(os.environ.get(STORAGE_OPTIONS_ENV), where=STORAGE_OPTIONS_ENV) or {}


def filesystem(url: str, storage_options: dict[str, Any] | None = None):
    """(fsspec filesystem, path within it) for a URL; a missing fsspec implementation is a ConfigError."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(url, **storage_options_for(storage_options))
    except ImportError as exc:
        raise ConfigError(f"{url}: no filesystem for this URL is installed ({exc}); e.g. pip install s3fs") from None
    except ValueError as exc:  # unknown protocol
        raise ConfigError(f"{url}: {exc}") from None


def open_remote_group(url: str, storage_options: dict[str, Any] | None = None):
    """zarr.open_group(url, mode='r') with the resolved storage options (zarr 3 builds an FsspecStore)."""
    import zarr

    return zarr.open_group(url, mode="r", storage_options=storage_options_for(storage_options))


def store_exists(location: str | os.PathLike, storage_options: dict[str, Any] | None = None) -> bool:
    """Whether anything is at the location (a local path, or any object under the URL's prefix)."""
    if not is_url(location):
        return Path(location).exists()
    fs, root = filesystem(str(location), storage_options)
    fs.invalidate_cache(root)  # another process may have written or removed it since this filesystem last looked
    try:
        return bool(fs.exists(f"{root}/{ROOT_METADATA}") or fs.exists(root))
    except FileNotFoundError:
        return False


def _put_files(fs, pairs: list[tuple[str, str]]) -> None:
    """Upload (local file, remote path) pairs, a batch at a time."""
    from fsspec.implementations.local import LocalFileSystem

    for start in range(0, len(pairs), UPLOAD_BATCH):
        batch = pairs[start : start + UPLOAD_BATCH]
        if isinstance(fs, LocalFileSystem):  # file:// URLs: folders must exist (object stores have none)
            for parent in sorted({remote.rsplit("/", 1)[0] for _, remote in batch}):
                fs.makedirs(parent, exist_ok=True)
        fs.put([local for local, _ in batch], [remote for _, remote in batch])


def _remove(fs, paths: list[str]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError, OSError):
            fs.rm_file(path)


def upload_store(local: Path, url: str, *, storage_options: dict[str, Any] | None = None, overwrite: bool = False) -> None:
    """Copy a finished local store to `url`, root `zarr.json` last; on failure remove what was uploaded.

    Anything already at `url` is refused unless `overwrite`, which first removes the root `zarr.json` (so
    readers stop seeing the old store) and then everything else under the prefix. Object stores cannot rename a
    prefix, so unlike a local store (omicsweep.atomic.replace_folder) an overwrite is not atomic: the new store
    is complete locally before the old one is removed, but a failed upload leaves no store at `url`.
    """
    local = Path(local)
    fs, root = filesystem(url, storage_options)
    if store_exists(url, storage_options):
        if not overwrite:
            raise InputError(f"{url}: already exists; pass --overwrite to replace it")
        _remove(fs, [f"{root}/{ROOT_METADATA}"])
        fs.rm(root, recursive=True)
    files = sorted(p for p in local.rglob("*") if p.is_file())
    pairs = [(str(p), f"{root}/{p.relative_to(local).as_posix()}") for p in files]
    head = [pair for pair in pairs if pair[1] == f"{root}/{ROOT_METADATA}"]
    if not head:
        raise InputError(f"{local}: not a zarr store ({ROOT_METADATA} missing); nothing uploaded to {url}")
    body = [pair for pair in pairs if pair not in head]
    try:
        _put_files(fs, body)
        _put_files(fs, head)  # the store becomes visible only now, complete
    except BaseException as exc:
        _remove(fs, [remote for _, remote in head + body])  # root metadata first: invisible before half-removed
        with contextlib.suppress(FileNotFoundError, OSError):
            fs.rm(root, recursive=True)  # empty folders of a file:// URL; the prefix held nothing before
        if isinstance(exc, Exception):
            raise InputError(f"{url}: upload failed ({type(exc).__name__}: {exc}); removed what was uploaded") from exc
        raise


@contextlib.contextmanager
def staged_store(url: str, *, storage_options: dict[str, Any] | None = None, overwrite: bool = False) -> Iterator[Path]:
    """Yield a local path to write a store to; when the block ends without error, upload it to `url`.

    The local copy lives in a temporary folder that is removed either way (set TMPDIR for a roomier disk).
    """
    if store_exists(url, storage_options) and not overwrite:
        raise InputError(f"{url}: already exists; pass --overwrite to replace it")
    folder = Path(tempfile.mkdtemp(prefix="omicsweep-upload-"))
    try:
        local = folder / (store_name(url) + ".zarr")
        yield local
        upload_store(local, url, storage_options=storage_options, overwrite=overwrite)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
