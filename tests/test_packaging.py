"""The constraints files pin versions inside the ranges pyproject.toml declares: constraints.txt the measured
versions, constraints-lowest.txt each range's lower bound."""

import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from conftest import REPO_ROOT


def _declared(extra: str | None = None) -> dict[str, Requirement]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    lines = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    return {canonicalize_name(r.name): r for r in map(Requirement, lines)}


def _pins(file_name: str) -> dict[str, str]:
    """name -> version of each `name==version` line (other constraints, such as `numpy<2`, are skipped)."""
    pins = {}
    for line in (REPO_ROOT / file_name).read_text().splitlines():
        line = line.split("#")[0].strip()
        pinned = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", line)
        if pinned:
            pins[canonicalize_name(pinned[1])] = pinned[2]
    return pins


def _lower_bound(requirement: Requirement) -> Version:
    (bound,) = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
    return bound


def test_constraints_pin_every_core_dependency_inside_its_declared_range():
    declared, pins = _declared(), _pins("constraints.txt")
    assert set(declared) <= set(pins), set(declared) - set(pins)
    for name, requirement in declared.items():
        assert requirement.specifier.contains(pins[name]), (name, pins[name], str(requirement.specifier))


def test_lowest_constraints_pin_each_declared_lower_bound():
    """constraints-lowest.txt installs the oldest release of every range, which the README says the whole
    suite passes with; torch is left at the CI build (its lower bound is tested with the newest of the rest)."""
    declared = {**_declared(), **{name: r for name, r in _declared("dev").items() if name == "lm-eval"}}
    pins = _pins("constraints-lowest.txt")
    assert "torch" not in pins
    for name, requirement in declared.items():
        if name == "torch":
            continue
        assert name in pins and Version(pins[name]) == _lower_bound(requirement), (name, pins.get(name), str(requirement))
