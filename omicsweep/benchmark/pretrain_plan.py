"""What `omicsweep pretrain` asks for, as a benchmark/plan.py Plan: one (corpus, scbert_pretrain) request.

One run of the search space's defaults (plus --set) by default, a sweep of `trials` with ASHA otherwise. ASHA and
Tune count results, and a pretraining trial reports once per step group (`eval_every` optimiser steps), so the
request's max_epochs is the number of step groups: ASHA's max_t and rungs are in units of eval_every steps. The
metric is val_mlm_loss (the trials report best_val = -lowest val_mlm_loss, maximised). No seed re-runs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from omicsweep.benchmark.plan import Plan, SweepOptions, _request
from omicsweep.errors import ConfigError, InputError
from omicsweep.schema import COMMAND_TAG, MLM_LOSS, PRETRAIN_COMMAND, VAL_PREFIX

PRETRAIN_MODEL = "scbert_pretrain"
PRETRAIN_METRIC = MLM_LOSS.removeprefix(VAL_PREFIX)  # METRIC_TAG: val_mlm_loss (lower is better)


def pretrain_options(*, corpus, runs, trials: int | None, max_steps: int | None, eval_every: int | None,
                     settings: list[str], **kwargs: Any) -> SweepOptions:
    """The SweepOptions of a pretraining run: --max-steps/--eval-every become --set values (so `--resume` reads
    them back from sweep.json), nothing is re-run with other seeds."""
    extra = [f"max_steps={max_steps}"] * (max_steps is not None) + [f"eval_every={eval_every}"] * (eval_every is not None)
    concurrency = kwargs.pop("concurrency", 1) if trials else kwargs.pop("concurrency", 1) and 1
    return SweepOptions(dataset=str(corpus), model=PRETRAIN_MODEL, runs=runs, trials=trials or 1,
                        fixed=trials is None, reruns=0, metric=PRETRAIN_METRIC, settings=[*settings, *extra],
                        concurrency=concurrency, **kwargs)


def build_pretrain_plan(options: SweepOptions, *, resuming: bool = False) -> Plan:
    """Validate (nothing is written) and return the plan of one pretraining sweep or run."""
    from omicsweep.benchmark.pretrain import PretrainSettings
    from omicsweep.benchmark.resume import load_state, sweep_key
    from omicsweep.benchmark.searchers import check_scheduler, check_searcher
    from omicsweep.benchmark.space import fixed_space, load_space, parse_overrides, with_fixed
    from omicsweep.benchmark.strategies import load_deepspeed_config
    from omicsweep.benchmark.training import config_keys
    from omicsweep.datasets.open import open_store
    from omicsweep.models import get_model

    searcher = check_searcher(options.searcher).name
    check_scheduler(options.scheduler)
    deepspeed = load_deepspeed_config(str(options.deepspeed)) if options.deepspeed else None
    store = open_store(options.dataset)
    if not len(store.split_indices("val")) or not len(store.split_indices("train")):
        raise InputError(f"{options.dataset}: a pretraining corpus needs train and val cells (omicsweep corpus "
                         "build, or datasets synth --vocab)")
    entry = get_model(PRETRAIN_MODEL)
    base = load_space(options.space or entry.space_file)
    overrides = parse_overrides(options.settings, base, shared_keys=config_keys(entry.family))
    space = fixed_space(base, overrides) if options.fixed else with_fixed(base, overrides)
    space, notes = _prepared(entry, space, store)
    settings = PretrainSettings.of({**space.defaults, "max_epochs": None})
    if deepspeed is not None and settings.accumulation != 1:
        raise ConfigError(f"--set accumulation={settings.accumulation} with --deepspeed {options.deepspeed}: set "
                          "gradient_accumulation_steps in the DeepSpeed file instead (DeepSpeed accumulates itself)")
    groups = -(-settings.max_steps // settings.eval_every)
    space = with_fixed(space, {"max_epochs": groups})
    key = sweep_key(_name(options.dataset), PRETRAIN_MODEL)
    previous = (load_state(options.runs) if resuming else {}).get(key, {})
    plan = Plan(options=dataclasses.replace(options, max_epochs=groups), requests=[], resuming=resuming,
                notes=notes, tags={COMMAND_TAG: PRETRAIN_COMMAND}, overrides=", ".join(f"{k}={v}" for k, v in overrides.items()) or "none")
    if previous.get("status") == "finished":
        plan.kept.append(key)
        return plan
    request = _request(plan.options, _name(options.dataset), options.dataset, store.fingerprint, PRETRAIN_MODEL,
                       space, PRETRAIN_METRIC, previous.get("parent_run_id"), searcher, deepspeed)
    plan.requests.append(request)
    return plan


def _name(corpus: str) -> str:
    from pathlib import Path

    return Path(str(corpus).rstrip("/")).name.removesuffix(".zarr") or str(corpus)


def _prepared(entry, space, store):
    """The shared options checked, gene2vec read once, the defaults built once on the corpus's genes."""
    from omicsweep.benchmark.options import check_space_options
    from omicsweep.models import Task
    from omicsweep.models.performer import NUM_TOKENS
    from omicsweep.tasks import MASKED_EXPRESSION

    check_space_options(space, family=entry.family)
    task = Task(n_features=store.n_genes, n_classes=NUM_TOKENS, kind=MASKED_EXPRESSION,
                genes=tuple(map(str, store.genes())))
    additions, notes = entry.prepared(dict(space.defaults), task)
    try:
        entry.build({**space.defaults, **additions}, task)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"model {entry.name}: configuration rejected ({type(exc).__name__}: {exc})") from None
    from omicsweep.benchmark.space import with_fixed

    return with_fixed(space, additions), notes
