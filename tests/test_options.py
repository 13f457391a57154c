"""The shared training options (benchmark/options.py): one typed declaration, validated once before any trial."""

from __future__ import annotations

from dataclasses import replace

import pytest

from omicsweep.benchmark.space import load_space
from omicsweep.errors import ConfigError
from omicsweep.models import Task, get_model

TASK = Task(n_features=7, n_classes=3)


def _defaults(name: str) -> dict:
    entry = get_model(name)
    space = load_space(entry.space_file)
    return {**space.defaults, **space.tiny}


def test_every_bad_key_is_named_with_its_value_the_allowed_values_and_the_file():
    from omicsweep.benchmark.training import check_config

    entry = get_model("mlp")
    config = {**_defaults("mlp"), "loss": "hinge", "scaling": "sideways", "ensemble": 0, "schedule_unit": "hour"}
    with pytest.raises(ConfigError) as caught:
        check_config(entry, config, TASK, where="mlp.yaml", sources={"loss": "--set"})
    message = str(caught.value)
    assert "\n" not in message  # the CLI prints it as one line
    assert "--set: config loss='hinge' is not supported; use one of ce, weighted_ce, focal" in message
    assert "mlp.yaml: config scaling='sideways' is not supported; use one of minmax, zscore, none" in message
    assert "mlp.yaml: config ensemble=0: expected a whole number of members >= 1" in message
    assert "mlp.yaml: config schedule_unit='hour' is not supported; use one of epoch, step" in message


def test_the_file_defaults_to_the_model_search_space():
    from omicsweep.benchmark.training import check_config

    entry = get_model("mlp")
    with pytest.raises(ConfigError, match=rf"^{entry.space_file}: config optimizer='lbfgs'"):
        check_config(entry, {**_defaults("mlp"), "optimizer": "lbfgs"}, TASK)


def test_defaults_and_case_are_those_of_the_trial():
    from omicsweep.benchmark.options import TrainingOptions, validate_options

    options = validate_options({**_defaults("mlp"), "loss": "FOCAL", "schedule": None, "lr": "1e-3"})
    assert isinstance(options, TrainingOptions)
    assert (options.loss, options.schedule, options.lr, options.optimizer) == ("focal", "none", 1e-3, "adam")
    assert (options.warmup_steps, options.schedule_unit, options.precision) == (0, "epoch", "fp32")
    assert (options.scaling, options.resample, options.ensemble, options.step_size) == ("minmax", "none", 1, 5)


def test_estimators_are_checked_for_the_trial_keys_only():
    from omicsweep.benchmark.training import check_config, config_keys

    entry = get_model("logreg")
    check_config(entry, {**_defaults("logreg"), "loss": "anything"}, TASK)  # not a key of estimators
    with pytest.raises(ConfigError, match="resample='sometimes' is not supported; use one of none, over, under, smote"):
        check_config(entry, {**_defaults("logreg"), "resample": "sometimes"}, TASK)
    assert "loss" not in config_keys("estimator") and {"loss", "warmup_steps", "precision"} <= set(config_keys("torch"))


def test_a_space_with_a_bad_shared_choice_fails_before_any_trial():
    from omicsweep.benchmark.options import check_space_options
    from omicsweep.benchmark.space import Dimension

    space = load_space(get_model("mlp").space_file)
    check_space_options(space, family="torch")
    dims = tuple(Dimension("loss", "choice", ("ce", "bogus")) if d.name == "loss" else d for d in space.dimensions)
    bad = replace(space, dimensions=dims)
    with pytest.raises(ConfigError, match=rf"{space.path}: space.loss: config loss='bogus' is not supported"):
        check_space_options(bad, family="torch")


def test_a_bad_set_value_of_a_shared_option_names_set_the_key_and_the_allowed_values():
    from omicsweep.benchmark.space import parse_overrides
    from omicsweep.benchmark.training import config_keys

    space = load_space(get_model("mlp").space_file)
    with pytest.raises(ConfigError, match=r"--set warmup_steps: config warmup_steps=-1: expected a whole number"):
        parse_overrides(["warmup_steps=-1"], space, shared_keys=config_keys("torch"))
    with pytest.raises(ConfigError, match=r"--set precision: config precision='fp8' is not supported; use one of fp32, bf16"):
        parse_overrides(["precision=fp8"], space, shared_keys=config_keys("torch"))
    assert parse_overrides(["schedule_unit=step"], space, shared_keys=config_keys("torch")) == {"schedule_unit": "step"}


def test_sweep_and_train_check_the_spaces_shared_options_before_any_trial(pbmc_store, tmp_path):
    from omicsweep.benchmark.space import prepared_spaces
    from omicsweep.datasets import open_store

    yaml_file = tmp_path / "bad_mlp.yaml"
    text = get_model("mlp").space_file.read_text().replace("schedule: none", "schedule: linear", 1)
    yaml_file.write_text(text)
    space = load_space(yaml_file)
    with pytest.raises(ConfigError, match=rf"^{yaml_file}: config schedule='linear' is not supported; use one of none"):
        prepared_spaces([get_model("mlp")], {"mlp": space}, open_store(pbmc_store))
