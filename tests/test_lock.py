"""The lower bounds pyproject.toml gives are tested stacks: requirements/lock.txt pins them (all but torch, which is
the local CPU wheel constraints.txt pins), and requirements/lerobot-stack.txt (LeRobot 0.6.1's stack, the third CI
leg) holds torch's lower bound and the transformers one."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _pins(path: Path) -> dict[str, Version]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = Version(version)
    return pins


def _direct_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    extras = project["optional-dependencies"]
    # the extras "all" names are installed and locked; an opt-in extra outside it (quant) is not
    in_all = {e.strip() for r in extras["all"] for e in Requirement(r).extras}
    reqs += [Requirement(r) for name, extra in extras.items() if name in in_all for r in extra]
    return [r for r in reqs if canonicalize_name(r.name) != "vlaccel"]


def test_every_lower_bound_is_the_locked_version():
    lock = _pins(ROOT / "requirements" / "lock.txt")
    for req in _direct_requirements():
        if canonicalize_name(req.name) == "torch":  # the lock holds the CPU wheel; see the LeRobot-stack test
            continue
        lower = [Version(s.version) for s in req.specifier if s.operator == ">="]
        assert len(lower) == 1, f"{req}: give exactly one '>=' lower bound (the oldest version tested)"
        locked = lock[canonicalize_name(req.name)]
        assert Version(locked.public) == lower[0], (
            f"{req.name}: pyproject.toml's lower bound {lower[0]} is not the locked {locked}; run bash scripts/lock.sh")
        assert locked in req.specifier or Version(locked.public) in req.specifier


def test_the_lock_holds_the_cpu_torch_that_constraints_pin():
    lock = _pins(ROOT / "requirements" / "lock.txt")
    pinned = _pins(ROOT / "constraints.txt")["torch"]
    assert lock["torch"] == Version(f"{pinned}+cpu")
    assert not [name for name in lock if name.startswith("nvidia-")]  # no CUDA wheels


def _lerobot_stack() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "requirements" / "lerobot-stack.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"requirements/lerobot-stack.txt: pin {line} exactly (==)"
            pins[canonicalize_name(req.name)] = Version(spec.version)
    return pins


def test_lerobot_stack_holds_the_torch_and_transformers_lower_bounds():
    stack = _lerobot_stack()
    lower = {canonicalize_name(r.name): Version(s.version) for r in _direct_requirements() for s in r.specifier
             if s.operator == ">="}
    assert stack["torch"] == lower["torch"], "torch's lower bound must be the torch the LeRobot leg tests"
    assert stack["transformers"] == lower["transformers"]
    assert stack["lerobot"] == Version("0.6.1")
