"""A recorder whose per-trial writes happen on a writer thread, off the Tune driver's event loop.

Tune calls the tracking callback inline: every trial start, result and end waits for the tracking store (an SQLite
transaction, or an HTTP round trip to an MLflow server) before the driver processes the next event, so with many
short trials the driver's loop, not the cluster, sets the pace. `QueuedRecorder` takes those calls (start_trial,
log_result, end_trial, log_artifacts) into a queue and returns at once; one writer thread runs them in order, and
the results of one trial that queued up behind each other go to the store as one write (`log_results`, one MLflow
log_batch) instead of one per epoch. Anything else (start_sweep, end_sweep, resume_sweep, reading attributes)
first waits until the queue is empty, so what follows sees every earlier write. A write that fails is raised by the
next call into the recorder (the sweep stops as it would have without the queue).
"""

from __future__ import annotations

import queue
import threading
from typing import Any

QUEUED = ("start_trial", "log_result", "end_trial", "log_artifacts")


class QueuedRecorder:
    def __init__(self, inner) -> None:
        self._inner = inner
        self._queue: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._write, name="tracking-writer", daemon=True)
        self._thread.start()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        self.flush()
        return getattr(self._inner, name)

    def _put(self, name: str, args: tuple, kwargs: dict) -> None:
        self._raise()
        self._queue.put((name, args, kwargs))

    def start_trial(self, *args, **kwargs) -> None:
        self._put("start_trial", args, kwargs)

    def log_result(self, trial_id: str, metrics: dict[str, Any], *, step: int) -> None:
        self._put("log_result", (trial_id, dict(metrics)), {"step": step})

    def end_trial(self, *args, **kwargs) -> None:
        self._put("end_trial", args, kwargs)

    def log_artifacts(self, *args, **kwargs) -> None:
        self._put("log_artifacts", args, kwargs)

    def flush(self) -> None:
        """Wait until every queued write is in the store; raise the first write that failed."""
        self._queue.join()
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _write(self) -> None:
        while True:
            batch = [self._queue.get()]
            while True:  # whatever queued up meanwhile: consecutive results of one trial become one write
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                for name, args, kwargs in _coalesce(batch):
                    if self._error is None:
                        self._call(name, args, kwargs)
            except BaseException as exc:  # noqa: BLE001 - handed to the driver thread's next call
                self._error = exc
            finally:
                for _ in batch:
                    self._queue.task_done()


    def _call(self, name: str, args: tuple, kwargs: dict) -> None:
        if name == "log_results" and not hasattr(self._inner, "log_results"):  # a recorder without batches
            for metrics, step in args[1]:
                self._inner.log_result(args[0], metrics, step=step)
            return
        getattr(self._inner, name)(*args, **kwargs)


def _coalesce(batch: list[tuple[str, tuple, dict]]) -> list[tuple[str, tuple, dict]]:
    """Runs of log_result calls for the same trial as one log_results call (in order); the rest as they are."""
    out: list[tuple[str, tuple, dict]] = []
    for name, args, kwargs in batch:
        if name == "log_result":
            trial_id, metrics = args
            last = out[-1] if out else None
            if last and last[0] == "log_results" and last[1][0] == trial_id:
                last[1][1].append((metrics, kwargs["step"]))
                continue
            out.append(("log_results", (trial_id, [(metrics, kwargs["step"])]), {}))
        else:
            out.append((name, args, kwargs))
    return out
