"""The installed packages are the locked ones (constraints.txt), and every third-party package the code imports is
declared in pyproject.toml: the product's in its dependencies, the tests', benchmarks' and docs' in their extras."""

import ast
import subprocess
import sys
from importlib.metadata import distributions, packages_distributions, version
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = {"imf_core", "pipelines", "tune", "tests", "common"}
NOT_LOCKED = {"imf", "pip", "setuptools", "wheel"}  # the project itself and the venv's own tools


def locked() -> dict[str, Requirement]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    return {canonicalize_name(r.name): r for r in (Requirement(line) for line in lines if line and line[0] != "#")}


def test_the_installed_packages_are_the_locked_ones():
    lock = locked()
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in distributions()}
    drift = [f"{name} {have} (locked: {lock[name].specifier})" for name, have in sorted(installed.items())
             if name in lock and not lock[name].specifier.contains(have, prereleases=True)]
    unlocked = sorted(set(installed) - set(lock) - NOT_LOCKED)
    missing = sorted(set(lock) - set(installed))
    assert not drift and not unlocked and not missing, (
        f"the environment is not constraints.txt's (regenerate it with `make lock`, or reinstall with `make install`):"
        f"\n  other versions: {drift}\n  installed, not locked: {unlocked}\n  locked, not installed: {missing}")
    assert version("torch").split("+")[0] == str(lock["torch"].specifier).removeprefix("==")


def declared() -> dict[str, set[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {"dependencies": project["dependencies"], **project["optional-dependencies"]}
    return {group: {canonicalize_name(Requirement(r).name) for r in reqs} for group, reqs in groups.items()}


def imported(folder: str) -> set[str]:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "--", f"{folder}/*.py"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    tops = set()
    for name in files:
        for node in ast.walk(ast.parse((ROOT / name).read_text())):
            if isinstance(node, ast.Import):
                tops |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                tops.add(node.module.split(".")[0])
    return {t for t in tops if t not in sys.stdlib_module_names and t not in FIRST_PARTY}


def test_every_imported_package_is_declared():
    by_module = packages_distributions()
    groups = declared()
    allowed = {"imf_core": groups["dependencies"], "pipelines": groups["dependencies"], "tune": groups["dependencies"],
               "tests": groups["dependencies"] | groups["test"] | groups["docs"],
               "bench": groups["dependencies"] | groups["test"], "docs": groups["dependencies"] | groups["docs"]}
    for folder, names in allowed.items():
        undeclared = {}
        for module in imported(folder):
            dists = {canonicalize_name(d) for d in by_module.get(module, [module])}
            if not dists & names:
                undeclared[module] = sorted(dists)
        assert not undeclared, f"{folder}/ imports packages pyproject.toml does not declare for it: {undeclared}"
