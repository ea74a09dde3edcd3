"""Reading the files under infra/ and the `imf` commands they (and the code blocks of README.md and docs/) run."""

import contextlib
import io
import shlex
from pathlib import Path

import tomllib
import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
IMAGE_ROOT = "/opt/imf/"  # where infra/docker/Dockerfile puts the checkout


def yaml_docs(path: Path) -> list:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def rayjobs() -> dict[str, list[dict]]:
    return {p.name: yaml_docs(p) for p in sorted((INFRA / "k8s").glob("rayjob-*.yaml"))}


def requirement(name: str) -> Requirement:
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    if name == "python":
        return Requirement(f"python{meta['requires-python']}")
    found = [Requirement(r) for r in meta["dependencies"] if Requirement(r).name == name]
    assert found, f"pyproject.toml declares no {name}"
    return found[0]


def project_version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    assert not pending, f"{path} ends inside a continued line"
    out = []
    for line in lines:
        instruction, _, args = line.partition(" ")
        out.append((instruction.upper(), args.strip()))
    return out


def locked_version(package: str) -> str:
    """The version constraints.txt pins a package to."""
    pins = dict(line.split("==", 1) for line in (REPO / "constraints.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    return pins[package]


def docker_args(path: Path) -> dict[str, str]:
    return dict(a.split("=", 1) for i, a in dockerfile(path) if i == "ARG" and "=" in a)


def shell_commands(block: str) -> list[str]:
    """The commands of a code block's body, continuation lines joined."""
    commands, pending = [], ""
    for line in block.splitlines():
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        commands.append((pending + line).strip())
        pending = ""
    return commands


def documented_commands() -> list[tuple[str, str]]:
    """(page, command) of every `imf` command in a code block of README.md or docs/, run by the tests or not."""
    from tests.doc_blocks import fences, pages

    return [(page, command) for page in pages() for _, body in fences(page) for command in shell_commands(body)
            if imf_argv(command) is not None]


def imf_argv(command: str) -> list[str] | None:
    """The arguments after `imf` / `python -m pipelines.cli`, or None for another program."""
    if not command.startswith(("imf ", "python -m pipelines.cli ")):
        return None
    words = shlex.split(command, comments=True)
    if words[:1] == ["imf"]:
        return words[1:]
    if words[:3] == ["python", "-m", "pipelines.cli"]:
        return words[3:]
    return None


def parse_error(argv: list[str]) -> str | None:
    """What the real `imf` parser says about argv (None: accepted), with `imf submit`'s STEP ARGS too."""
    from pipelines.cli import build_parser

    def attempt(words):
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                return build_parser().parse_args(words), None
        except SystemExit:
            return None, err.getvalue().strip().splitlines()[-1]

    parsed, error = attempt(argv)
    if error is None and parsed.command == "submit":
        _, error = attempt([parsed.step, *parsed.args])
    return error


def repo_file_problems(argv: list[str]) -> list[str]:
    """Files of this repository that a command names (configs, search spaces) and that do not exist."""
    problems = []
    for flag, value in zip(argv, argv[1:]):
        if value.startswith(IMAGE_ROOT):
            path = REPO / value.removeprefix(IMAGE_ROOT)
        elif not value.startswith(("/", "-")) and value.endswith((".yaml", ".yml")):
            path = REPO / value
        elif flag == "--space" and "/" not in value:
            path = REPO / "tune" / "spaces" / f"{value}.yaml"
        else:
            continue
        if not path.is_file():
            problems.append(f"{flag} {value}: no {path.relative_to(REPO)} in the repository")
    return problems
