"""Seed re-runs: after a sweep, its best configuration trained again with fresh seeds.

The leaderboard reports test metrics as mean +/- sd over these runs and pairs them by seed across models for a
significance test. The seeds are the same for every model of a sweep seed, so the pairs line up. Re-runs go to
Ray as tasks when a Ray session is up (they run side by side), otherwise in this process.
"""

from __future__ import annotations

from typing import Any

from omicsweep.benchmark.trial import TrialContext, execute_trial, with_resources

RERUN_ROLE = "seed-rerun"
RERUN_OF_TAG = "omicsweep.rerun_of"  # the Ray trial id of the configuration re-run


def rerun_seeds(sweep_seed: int, n: int) -> list[int]:
    """n fresh training seeds, distinct from the sweep seed and identical for every model of that sweep."""
    return [sweep_seed + 1000 * (i + 1) for i in range(n)]


def _train(context: TrialContext, config: dict[str, Any]) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    execute_trial(context, config, with_resources(lambda metrics, files: results.append(dict(metrics))))
    return results


def run_seed_reruns(
    context: TrialContext, config: dict[str, Any], seeds: list[int], *, cpus: float = 1.0
) -> list[tuple[int, list[dict[str, Any]] | None, str | None]]:
    """Train `config` once per seed; (seed, per-epoch results or None, error or None) in seed order."""
    import dataclasses

    contexts = [dataclasses.replace(context, seed=seed) for seed in seeds]
    config = {k: v for k, v in config.items() if k != "seed"}
    outcomes: list[tuple[int, list | None, str | None]] = []
    try:
        import ray

        use_ray = ray.is_initialized()
    except ImportError:  # pragma: no cover - ray is a dependency
        use_ray = False
    if use_ray:
        task = ray.remote(num_cpus=cpus, max_retries=0)(_train)
        refs = [task.remote(c, config) for c in contexts]
        for seed, ref in zip(seeds, refs):
            try:
                outcomes.append((seed, ray.get(ref), None))
            except Exception as exc:  # a failed re-run is recorded, the others still count
                outcomes.append((seed, None, _last_line(exc)))
        return outcomes
    for seed, ctx in zip(seeds, contexts):
        try:
            outcomes.append((seed, _train(ctx, config), None))
        except Exception as exc:
            outcomes.append((seed, None, _last_line(exc)))
    return outcomes


def _last_line(exc: Exception) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__
