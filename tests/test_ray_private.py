"""Private Ray code that must stay (the Train controller override in benchmark/distributed.py) refuses, in one
line, a Ray version it was not written for, instead of failing deep inside Ray Train."""

from __future__ import annotations

import pytest
import ray

from omicsweep.benchmark.distributed import check_ray_version
from omicsweep.errors import ConfigError


def test_the_installed_ray_is_the_one_the_override_was_written_for():
    check_ray_version(ray.__version__)


@pytest.mark.parametrize("version", ["2.61.0", "2.59.2", "3.0.0", "2.60.0rc1"])
def test_another_ray_version_is_a_one_line_error_naming_it(version):
    with pytest.raises(ConfigError) as raised:
        check_ray_version(version)
    message = str(raised.value)
    assert version in message and "2.60" in message and "\n" not in message


def test_patch_releases_of_the_written_for_version_pass():
    check_ray_version("2.60.1")
