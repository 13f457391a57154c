"""Distributed pretraining: DeepSpeed config checks, checkpoints under every strategy, kill and resume.

The DeepSpeed file is checked against DeepSpeed's own pydantic schema where it has one (zero_optimization, bf16,
fp16) and a curated set of the top-level keys DeepSpeed reads, before any worker starts.
"""

from __future__ import annotations

import json

import pytest

from conftest import assert_one_line_error
from omicsweep.benchmark.strategies import load_deepspeed_config
from omicsweep.errors import ConfigError


@pytest.mark.parametrize("settings, needles", [
    ({"zero_optimisation": {"stage": 2}}, ["zero_optimisation", "unknown top-level key"]),
    ({"zero_optimization": {"stage": 2, "overlap_com": True}}, ["zero_optimization.overlap_com", "unknown key"]),
    ({"bf16": {"enabled": True, "enable": True}}, ["bf16.enable", "unknown key"]),
    ({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu", "pin": True}}},
     ["zero_optimization.offload_optimizer.pin", "unknown key"]),
])
def test_deepspeed_file_with_unknown_keys_is_refused(tmp_path, settings, needles):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(settings))
    with pytest.raises(ConfigError) as info:
        load_deepspeed_config(str(path))
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    for needle in needles:
        assert needle in message, (needle, message)


def test_documented_deepspeed_settings_are_accepted(tmp_path):
    settings = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2, "bf16": {"enabled": True},
                "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 10,
                                      "offload_optimizer": {"device": "none"}, "overlap_comm": False},
                "zero_force_ds_cpu_optimizer": False, "gradient_clipping": 1.0, "steps_per_print": 100,
                "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}}
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(settings))
    assert load_deepspeed_config(str(path)) == settings  # the file as written: DeepSpeed reads it itself


def test_sweep_with_unknown_deepspeed_key_exits_2_naming_file_and_key(cli, tmp_path, pbmc_store):
    bad = tmp_path / "ds.json"
    bad.write_text(json.dumps({"zero_optimization": {"stage": 2, "contiguous_gradient": True}}))
    assert_one_line_error(*cli("sweep", "--model", "mlp", "--deepspeed", bad, "--runs", tmp_path / "runs"),
                          "ds.json", "zero_optimization.contiguous_gradient")
    assert not (tmp_path / "runs").exists()


def test_allowed_top_level_keys_are_keys_deepspeed_reads():
    import pathlib
    import re

    import deepspeed

    from omicsweep.benchmark.strategies import DEEPSPEED_TOP_LEVEL_KEYS

    sources = "\n".join(p.read_text(errors="ignore") for p in pathlib.Path(deepspeed.__file__).parent.rglob("*.py"))
    missing = [key for key in sorted(DEEPSPEED_TOP_LEVEL_KEYS) if not re.search(rf"[\"']{key}[\"']", sources)]
    assert not missing, missing
