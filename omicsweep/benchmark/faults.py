"""Fault injection for chaos tests of a sweep: chosen trials raise, or their process is killed, mid-trial.

`omicsweep sweep --inject-faults raise:0.3` makes about 30% of trials raise after their first epoch;
`kill:0.3` kills the trial's worker process (SIGKILL) instead, as a lost node would. A trial is chosen by a hash
of the sweep seed and its configuration, so the same sweep fails the same trials. Append `:once` to fail only a
chosen trial's first attempt (a marker file in the run folder remembers it), so `--max-failures 1` recovers it.
Append `:epoch=N` to fail when epoch N's result is to be reported instead of the first (`raise:1:once:epoch=3`:
every trial fails once at epoch 3; a torch trial retried under --max-failures continues from epoch 3).
Only sweep trials see faults: `reproduce`, `train` and seed re-runs never do.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from omicsweep.errors import ConfigError

FAULT_KINDS = ("raise", "kill")


class InjectedFault(RuntimeError):
    """The failure a chosen trial raises (its message names the injection, so it is never mistaken)."""


@dataclass(frozen=True)
class FaultPlan:
    kind: str
    rate: float
    once: bool = False
    epoch: int | None = None  # fail at this epoch's report (None: at the first report)

    def spec(self) -> str:
        return f"{self.kind}:{self.rate}" + (":once" if self.once else "") + (
            f":epoch={self.epoch}" if self.epoch is not None else "")


def parse_faults(spec: str | None) -> FaultPlan | None:
    """'raise:0.3', 'kill:0.5:once', 'raise:1:once:epoch=3' -> FaultPlan; None or '' -> None; anything else is a
    ConfigError."""
    if not spec:
        return None
    parts = spec.split(":")
    usage = (f"--inject-faults {spec!r}: expected KIND:RATE[:once][:epoch=N] with KIND {' or '.join(FAULT_KINDS)}, "
             "RATE in [0, 1], N >= 1")
    options = parts[2:]
    epochs = [o for o in options if o.startswith("epoch=")]
    if (len(parts) < 2 or parts[0] not in FAULT_KINDS or len(epochs) > 1 or options.count("once") > 1
            or len(options) != options.count("once") + len(epochs)):
        raise ConfigError(usage)
    try:
        rate = float(parts[1])
        epoch = int(epochs[0].removeprefix("epoch=")) if epochs else None
    except ValueError:
        raise ConfigError(usage) from None
    if not 0.0 <= rate <= 1.0 or (epoch is not None and epoch < 1):
        raise ConfigError(usage)
    return FaultPlan(parts[0], rate, once="once" in options, epoch=epoch)


def trial_key(seed: int, config: dict[str, Any]) -> str:
    text = json.dumps({"seed": seed, "config": config}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def is_chosen(plan: FaultPlan, key: str) -> bool:
    return int(key, 16) / 16**16 < plan.rate


def with_faults(report: Callable, plan: FaultPlan | None, *, key: str, marker_dir: str | None) -> Callable:
    """`report` that, for a chosen trial, fails when the first result (or epoch `plan.epoch`'s) is to be reported."""
    if plan is None or not is_chosen(plan, key):
        return report
    marker = Path(marker_dir) / f"{key}.failed" if marker_dir else None
    if plan.once and marker is not None and marker.exists():
        return report

    def failing(metrics: dict[str, Any], files=None) -> None:
        if plan.epoch is not None and int(metrics.get("epoch", 1)) < plan.epoch:
            report(metrics, files)
            return
        # before the first result reaches Tune: ASHA could otherwise stop the trial first and hide the fault
        if marker is not None:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
        if plan.kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise InjectedFault(f"injected fault ({plan.spec()}) in trial {key}")

    return failing
