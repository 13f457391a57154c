"""What a run needs to record to be explained later: code version and package versions."""

from __future__ import annotations

import functools
import subprocess
from importlib import metadata
from pathlib import Path

import omicsweep

TRACKED_PACKAGES = (
    "torch", "ray", "optuna", "mlflow", "zarr", "anndata", "scanpy", "scikit-learn", "numpy", "scipy", "polars",
)


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """The commit of the checkout omicsweep runs from, with '+dirty' for uncommitted changes; 'unknown' if none."""
    root = Path(omicsweep.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


@functools.lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    versions = {"omicsweep": omicsweep.__version__}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
