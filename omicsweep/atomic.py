"""Atomic writes: a reader finds the old file (or folder) or the new one, never a half-written one.

Every writer of the project goes through here:
- `atomic_write_text` / `atomic_write_bytes`: a hidden temporary sibling in the same folder, flushed and
  fsynced, then `os.replace`d onto the target (one atomic rename on POSIX and Windows);
- `atomic_file(path)`: the same for writers that need a path (polars `write_csv`, `np.savez`, h5ad writers):
  it yields the temporary sibling's path, renames it into place when the block ends, removes it on an error;
- `replace_folder(tmp, out)`: swaps a completely written folder (a zarr store) into place.

What `replace_folder` guarantees, for one writer at a time:
- on Linux filesystems with `renameat2(RENAME_EXCHANGE)` (ext4, xfs, btrfs, tmpfs, overlayfs; called through
  ctypes) the old and the new folder are exchanged in one atomic step, then the old one is deleted: at every
  instant `out` is the complete old or the complete new folder;
- elsewhere (macOS, NFS, Windows, old C libraries) `out` is first renamed to a hidden backup sibling
  (`.NAME.replaced-XXXXXXXX`) and the new folder renamed to `out`, then the backup is deleted. An error between
  the two renames puts the backup back at once; a process killed between them leaves no `out` but the complete
  old folder at the backup, and `recover_folder(out)`, which every `replace_folder` runs first, renames it back.
Either way a crash while the old folder is deleted leaves only a stale hidden sibling, removed by the next
`recover_folder` (fallback) or by hand (`.NAME.partial-*`, after an exchange).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Iterator

TEMP_TAG = "partial"  # .NAME.partial-XXXXXXXX: being written
BACKUP_TAG = "replaced"  # .NAME.replaced-XXXXXXXX: the old folder while replace_folder swaps

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV}


def temp_sibling(path: str | os.PathLike, tag: str = TEMP_TAG) -> Path:
    """A fresh hidden name next to `path`, ending in the same suffix (np.savez appends '.npz' otherwise)."""
    path = Path(path)
    return path.parent / f".{path.name}.{tag}-{uuid.uuid4().hex[:8]}{path.suffix}"


def _fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (the folder is created if missing). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        with open(tmp, "xb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically. Returns the path."""
    return atomic_write_bytes(path, text.encode(encoding))


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path to write to; renamed onto `path` when the block ends without error.

        with atomic_file(folder / "leaderboard.csv") as tmp:
            table.write_csv(tmp)

    On an error (or if nothing was written there) the temporary file is removed and `path` keeps what it held.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(errno.ENOENT, f"the writer left no file to move to {path}", str(tmp))
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    _fsync_folder(path.parent)


def _load_renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28, musl >= 1.2.2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_RENAMEAT2 = _load_renameat2()


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step; False where the system or filesystem cannot."""
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in _UNSUPPORTED:
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def _backups(out: Path) -> list[Path]:
    prefix = f".{out.name}.{BACKUP_TAG}-"
    if not out.parent.is_dir():
        return []
    return sorted((p for p in out.parent.iterdir() if p.name.startswith(prefix)), key=lambda p: p.stat().st_mtime)


def recover_folder(out: str | os.PathLike) -> bool:
    """Finish what a `replace_folder` killed midway left: put the old folder back if `out` is missing, else
    delete stale backups. True when a folder was restored."""
    out = Path(out)
    backups = _backups(out)
    restored = False
    if backups and not os.path.lexists(out):
        os.replace(backups.pop(), out)  # the newest: a complete folder, renamed aside as a whole
        _fsync_folder(out.parent)
        restored = True
    for stale in backups:
        shutil.rmtree(stale, ignore_errors=True)
    return restored


def replace_folder(tmp: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Move the completely written folder `tmp` (a sibling of `out`, same filesystem) to `out`, replacing what
    is there; see the module's docstring for what a reader can see meanwhile. Returns `out`."""
    tmp, out = Path(tmp), Path(out)
    recover_folder(out)
    if not os.path.lexists(out):
        os.replace(tmp, out)
    elif _exchange(tmp, out):
        _fsync_folder(out.parent)
        _remove(tmp)  # it holds the old folder (or link) now
        return out
    else:
        backup = temp_sibling(out, BACKUP_TAG)
        os.replace(out, backup)
        try:
            os.replace(tmp, out)
        except BaseException:
            os.replace(backup, out)
            raise
        _fsync_folder(out.parent)
        _remove(backup)
    _fsync_folder(out.parent)
    return out
