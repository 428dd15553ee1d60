"""requirements.lock (the pinned releases every install uses) agrees with pyproject.toml (the ranges kept for
installs into other environments), and this environment runs what it pins."""

from __future__ import annotations

import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def read_lock(path: Path = ROOT / "requirements.lock") -> dict[str, Version]:
    """``{canonical name: pinned version}``; every line that is not a comment must be ``name==version``."""
    pins: dict[str, Version] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        requirement = Requirement(line)
        specifiers = list(requirement.specifier)
        assert len(specifiers) == 1 and specifiers[0].operator == "==", f"line {number} is not a pin: {raw!r}"
        name = canonicalize_name(requirement.name)
        assert name not in pins, f"line {number}: {name} pinned twice"
        pins[name] = Version(specifiers[0].version)
    return pins


def declared_requirements(path: Path = ROOT / "pyproject.toml") -> list[Requirement]:
    """The build requirements, the dependencies and every optional group's, as pyproject.toml declares them."""
    project = tomllib.loads(path.read_text())
    groups = project["project"].get("optional-dependencies", {}).values()
    lines = [*project["build-system"]["requires"], *project["project"]["dependencies"], *(r for g in groups for r in g)]
    return [Requirement(line) for line in lines]


def disagreements(pyproject: Path = ROOT / "pyproject.toml", lock: Path = ROOT / "requirements.lock") -> list[str]:
    """One line per declared requirement that the lock does not pin, or pins outside its range."""
    pins = read_lock(lock)
    problems = []
    for requirement in declared_requirements(pyproject):
        name = canonicalize_name(requirement.name)
        if name not in pins:
            problems.append(f"{requirement} is not in requirements.lock: run make lock")
        elif not requirement.specifier.contains(pins[name], prereleases=True):
            problems.append(f"requirements.lock pins {name}=={pins[name]}, outside pyproject.toml's {requirement}")
    return problems


def test_every_declared_requirement_is_pinned_within_its_range() -> None:
    assert disagreements() == []


def test_the_build_tools_are_pinned() -> None:
    assert {"pip", "setuptools", "wheel"} <= set(read_lock())


def test_this_environment_runs_the_pinned_releases() -> None:
    """make dev, make test and CI install with -c requirements.lock: what runs is what is pinned."""
    wrong = {}
    for name, pinned in read_lock().items():
        try:
            installed = Version(version(name))
        except PackageNotFoundError:
            continue  # a pin of another platform's or extra's package
        if installed != pinned:
            wrong[name] = f"{installed} installed, {pinned} pinned"
    assert not wrong, wrong


def test_a_disagreement_is_found(tmp_path: Path) -> None:
    """A range the pin falls outside of, a requirement with no pin, and a lock line that is not a pin."""
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[build-system]\nrequires = ["setuptools>=68"]\n'
                         '[project]\nname = "x"\ndependencies = ["rq>=3.1", "redis>=5"]\n')
    lock = tmp_path / "requirements.lock"
    lock.write_text("# comment\nrq==3.0.0\nsetuptools==84.2.1\n")
    assert disagreements(pyproject, lock) == [
        "requirements.lock pins rq==3.0.0, outside pyproject.toml's rq>=3.1",
        "redis>=5 is not in requirements.lock: run make lock",
    ]
    lock.write_text("rq>=3.0\n")
    try:
        read_lock(lock)
    except AssertionError as exc:
        assert "not a pin" in str(exc)
    else:
        raise AssertionError("a range in the lock was accepted")
