"""The Ray Tune trainable: one trial of a sweep (or one seed of a re-run) as a Tune function trainable.

`run_trial` is what `tune.with_parameters` binds; a single-process trial reports to Tune here (`tune_report`), a
distributed one hands over to Ray Train (benchmark/distributed.py). The trial itself, Ray-free, is
`benchmark.trial.execute_trial`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from omicsweep.benchmark.trial import TrialContext, checkpoint_folder, execute_trial, faulty, with_resources
from omicsweep.schema import RERUN_SEED_KEY


def tune_report(metrics: dict[str, Any], files: dict[str, Callable[[str], None]] | None) -> None:
    """Send one result to Ray Tune, with a checkpoint folder when the fitter provided files."""
    from ray import tune

    if not files:
        tune.report(metrics)
        return
    with checkpoint_folder(files) as folder:
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def restored_resume():
    """The resume state in the checkpoint Tune restores a retried trial from (torch_resume.load_resume), or None:
    a first attempt, a checkpoint without one (an estimator's, or --max-failures 0)."""
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    from omicsweep.benchmark.torch_resume import load_resume

    with checkpoint.as_directory() as folder:  # read whole here: Tune may delete it once a newer one is reported
        return load_resume(folder)


def run_trial(config: dict[str, Any], context: TrialContext) -> None:
    """Ray Tune function trainable (bind `context` with tune.with_parameters).

    A seed re-run (benchmark/reruns.py) passes its seed as `RERUN_SEED_KEY` in the config, so one Tune
    experiment trains every seed of the best configuration exactly the way its trial trained (never retried, so
    it writes no resume state). A retried single-process trial continues from its last checkpoint's epoch.
    """
    if RERUN_SEED_KEY in config:
        config = dict(config)
        context = dataclasses.replace(context, seed=int(config.pop(RERUN_SEED_KEY)), resume_checkpoints=False)
    if context.distributed:
        from omicsweep.benchmark.distributed import run_on_workers

        run_on_workers(config, context)
        return
    execute_trial(context, config, faulty(with_resources(tune_report), context, config), resume=restored_resume())
