"""Recorders whose per-trial writes happen on one writer thread, off the Tune driver's event loop.

Tune calls the tracking callback inline: every trial start, result and end waits for the tracking store (an SQLite
transaction, or an HTTP round trip to an MLflow server) before the driver processes the next event, so with many
short trials the driver's loop, not the cluster, sets the pace. `QueuedRecorder` takes those calls (start_trial,
log_result, end_trial, log_artifacts) into a queue and returns at once; a `TrackingWriter` thread runs them in
order, and the results of one trial that queued up behind each other go to the store as one write
(`log_results`, one MLflow log_batch) instead of one per epoch. All the recorders of a grid share one writer, so
an SQLite store still sees one writer at a time. log_artifacts copies the folder first (the caller may delete it
as soon as the call returns: a re-run's predictions live in a temporary folder). Anything else (start_sweep,
end_sweep, resume_sweep, reading attributes) first waits until the queue is empty, so what follows sees every
earlier write. A write that fails is raised by the next call into any of the writer's recorders (the sweep stops
as it would have without the queue); later queued writes are dropped.
"""

from __future__ import annotations

import queue
import shutil
import tempfile
import threading
from typing import Any

QUEUED = ("start_trial", "log_result", "end_trial", "log_artifacts")
_STOP = object()


class TrackingWriter:
    """One thread writing, in order, what its recorders queued (item: recorder, method name, args, kwargs)."""

    def __init__(self) -> None:
        self._queue: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._write, name="tracking-writer", daemon=True)
        self._thread.start()

    def put(self, inner, name: str, args: tuple, kwargs: dict) -> None:
        self.raise_error()
        self._queue.put((inner, name, args, kwargs))

    def flush(self) -> None:
        """Wait until every queued write is in the store; raise the first write that failed."""
        self._queue.join()
        self.raise_error()

    def close(self) -> None:
        """Flush, then end the thread (a closed writer takes no more writes)."""
        try:
            self.flush()
        finally:
            self._queue.put(_STOP)
            self._thread.join()

    def raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _write(self) -> None:
        while True:
            batch = [self._queue.get()]
            while batch[-1] is not _STOP:  # whatever queued up meanwhile: a trial's consecutive results, one write
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = batch[-1] is _STOP
            items = batch[:-1] if stop else batch
            for inner, name, args, kwargs in _coalesce(items):
                try:
                    if self._error is None:
                        _call(inner, name, args, kwargs)
                except BaseException as exc:  # noqa: BLE001 - handed to the driver thread's next call
                    self._error = exc
                finally:
                    if name == "log_artifacts":  # the staged copy (QueuedRecorder.log_artifacts)
                        shutil.rmtree(args[1], ignore_errors=True)
            for _ in batch:
                self._queue.task_done()
            if stop:
                return


class QueuedRecorder:
    """A recorder whose per-trial writes go through a `TrackingWriter` (its own, or one shared with others)."""

    def __init__(self, inner, writer: TrackingWriter | None = None) -> None:
        self._inner = inner
        self._writer = writer or TrackingWriter()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        self.flush()
        return getattr(self._inner, name)

    def start_trial(self, *args, **kwargs) -> None:
        self._writer.put(self._inner, "start_trial", args, kwargs)

    def log_result(self, trial_id: str, metrics: dict[str, Any], *, step: int) -> None:
        self._writer.put(self._inner, "log_result", (trial_id, dict(metrics)), {"step": step})

    def end_trial(self, *args, **kwargs) -> None:
        self._writer.put(self._inner, "end_trial", args, kwargs)

    def log_artifacts(self, trial_id: str, folder: str, *, artifact_path: str) -> None:
        self._writer.raise_error()
        staged = tempfile.mkdtemp(prefix="omicsweep-artifacts-")
        try:
            shutil.copytree(folder, staged, dirs_exist_ok=True)
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        self._writer.put(self._inner, "log_artifacts", (trial_id, staged), {"artifact_path": artifact_path})

    def flush(self) -> None:
        self._writer.flush()


def _call(inner, name: str, args: tuple, kwargs: dict) -> None:
    if name == "log_results" and not hasattr(inner, "log_results"):  # a recorder without batches
        for metrics, step in args[1]:
            inner.log_result(args[0], metrics, step=step)
        return
    getattr(inner, name)(*args, **kwargs)


def _coalesce(batch: list[tuple]) -> list[tuple]:
    """Runs of log_result calls for the same recorder and trial as one log_results call (in order); the rest as
    they are."""
    out: list[tuple] = []
    for inner, name, args, kwargs in batch:
        if name == "log_result":
            trial_id, metrics = args
            last = out[-1] if out else None
            if last and last[0] is inner and last[1] == "log_results" and last[2][0] == trial_id:
                last[2][1].append((metrics, kwargs["step"]))
                continue
            out.append((inner, "log_results", (trial_id, [(metrics, kwargs["step"])]), {}))
        else:
            out.append((inner, name, args, kwargs))
    return out
