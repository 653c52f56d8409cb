"""The constraints file pins versions inside the ranges pyproject.toml declares."""

import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from conftest import REPO_ROOT


def test_constraints_pin_every_core_dependency_inside_its_declared_range():
    declared = {canonicalize_name(r.name): r for r in map(Requirement, tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"])}
    pins = {}
    for line in (REPO_ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", line).groups()
            pins[canonicalize_name(name)] = version
    assert set(declared) <= set(pins), set(declared) - set(pins)
    for name, requirement in declared.items():
        assert requirement.specifier.contains(pins[name]), (name, pins[name], str(requirement.specifier))
