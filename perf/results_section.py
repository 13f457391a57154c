"""One section of perf/RESULTS.md: the perf scripts each own a `## ` section and replace only theirs."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from omicsweep.atomic import atomic_write_text  # noqa: E402


def replace_section(results: Path, heading: str, lines: list[str]) -> None:
    """Replace `heading`'s section of `results` (from the heading to the next `## `) with `lines`, which start
    with the heading, keeping every other section; appended when the file has none. Written atomically."""
    old = results.read_text().splitlines() if results.exists() else []
    if heading in old:
        start = old.index(heading)
        end = next((i for i in range(start + 1, len(old)) if old[i].startswith("## ")), len(old))
        new = old[:start] + lines + old[end:]
    else:
        new = (old or ["# Benchmark results", ""]) + [""] + lines
    atomic_write_text(results, "\n".join(new).rstrip() + "\n")
