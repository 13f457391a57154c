"""cluster.yaml: valid for Ray's cluster launcher, closed to the world but SSH, spot GPUs from zero, pinned installs."""

from __future__ import annotations

import copy
import json
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
COMMAND_LISTS = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                 "head_start_ray_commands", "worker_start_ray_commands")


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture(scope="module")
def dependencies() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {Requirement(d).name: Requirement(d) for d in project["dependencies"]}


def _commands(config: dict) -> list[str]:
    """Every shell command the launcher runs, node-type overrides included."""
    commands = [c for key in COMMAND_LISTS for c in config.get(key) or []]
    for node_type in config["available_node_types"].values():
        for key in ("initialization_commands", "worker_setup_commands"):
            commands += node_type.get(key) or []
    return commands


def command_in(commands: list[str], text: str) -> bool:
    return any(text in " ".join(shlex.split(c)) for c in commands)


def _worker_types(config: dict) -> dict[str, dict]:
    return {k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]}


def _pip_installs(config: dict) -> list[Requirement]:
    """The requirements named on `pip install` command lines (options and local paths left out)."""
    found = []
    for command in _commands(config):
        for part in command.split("&&"):
            words = shlex.split(part)
            if len(words) >= 2 and Path(words[0]).name in ("pip", "pip3") and words[1] == "install":
                for word in words[2:]:
                    if word.startswith("-") or "/" in word or word.startswith("~"):
                        continue
                    found.append(Requirement(word))
    return found


def test_valid_for_ray_cluster_launcher(config):
    """Ray's own checks, offline: the raw file against ray-schema.json, then defaults filled in and validated."""
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"
    assert config["head_node_type"] in config["available_node_types"]
    assert config["idle_timeout_minutes"] > 0
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert any("ray start" in c for c in config[key]), key


def test_every_worker_type_scales_from_zero(config):
    workers = _worker_types(config)
    assert workers, "no worker node types"
    for name, node_type in workers.items():
        assert node_type.get("min_workers") == 0, name  # explicit, not left to the default
        assert node_type.get("max_workers", 0) >= 1, name


def test_gpu_workers_are_spot_instances(config):
    gpu_types = {name: t for name, t in _worker_types(config).items()
                 if t["node_config"]["InstanceType"].split(".")[0].rstrip("0123456789dn") in ("g", "p")}
    assert {t["node_config"]["InstanceType"] for t in gpu_types.values()} >= {"g5.xlarge", "g5.12xlarge"}
    for name, node_type in gpu_types.items():
        assert node_type["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot", name


def test_head_is_a_cpu_node_that_runs_no_trials(config):
    head = config["available_node_types"][config["head_node_type"]]
    assert head["node_config"]["InstanceType"].split(".")[0][0] not in "gp"
    assert head["resources"].get("CPU") == 0
    assert "InstanceMarketOptions" not in head["node_config"]  # the driver must not be reclaimed


def test_no_ingress_but_ssh(config):
    rules = config["provider"]["security_group"]["IpPermissions"]
    assert rules
    for rule in rules:
        assert (rule["IpProtocol"].lower(), rule["FromPort"], rule["ToPort"]) == ("tcp", 22, 22), rule
    for name, node_type in config["available_node_types"].items():  # no extra groups smuggled in per node type
        assert "SecurityGroupIds" not in node_type["node_config"], name
        assert "NetworkInterfaces" not in node_type["node_config"], name
    start = [shlex.split(c) for c in config["head_start_ray_commands"] if "ray start" in c]
    assert any("--dashboard-host=127.0.0.1" in words for words in start)  # reached by `ray dashboard` (ssh -L)
    assert not any("0.0.0.0" in c for c in _commands(config))


def test_mlflow_server_binds_loopback_on_postgres_and_s3(config):
    servers = []
    for command in _commands(config):
        words = shlex.split(command)
        if "mlflow" in [Path(w).name for w in words] and "server" in words:
            servers.append(words)
    assert len(servers) == 1, servers
    (words,) = servers
    assert command_in(config["head_setup_commands"] + config["head_start_ray_commands"], "mlflow server")
    assert words[words.index("--host") + 1] == "127.0.0.1"
    assert words[words.index("--backend-store-uri") + 1].startswith("postgresql")
    artifact_flag = "--artifacts-destination" if "--artifacts-destination" in words else "--default-artifact-root"
    assert words[words.index(artifact_flag) + 1].startswith("s3://")


def test_setup_installs_torch_and_ray_in_the_project_ranges(config, dependencies):
    installs = {r.name: r for r in _pip_installs(config)}
    for name in ("torch", "ray"):
        assert name in installs, f"setup commands do not pip install {name}"
        assert installs[name].specifier == dependencies[name].specifier, (name, str(installs[name].specifier))
    assert SpecifierSet(str(installs["torch"].specifier)).contains("2.13.0")
    assert not SpecifierSet(str(installs["torch"].specifier)).contains("2.14.0")
    assert "default" in installs["ray"].extras  # dashboard + job server for `ray job submit`


def test_setup_installs_the_synced_repository(config):
    mounts = config["file_mounts"]
    remote = next(r for r, local in mounts.items() if (ROOT / local).resolve() == ROOT)
    forms = {remote, remote.replace("~", "$HOME", 1)}  # `~` does not expand inside quotes ("$HOME/x[extra]")
    editable = [words[words.index("-e") + 1] for c in config["setup_commands"]
                for words in [shlex.split(c)] if "install" in words and "-e" in words]
    assert any(path.split("[")[0] in forms for path in editable), editable
    assert ".venv" in config.get("rsync_exclude", [])
