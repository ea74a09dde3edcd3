"""The code blocks of README.md and docs/*.md, and a runner that runs them as a user would.

A page's `console` blocks (one command per line, `\\` continues a line) and `python` blocks (a whole program) run
in order, in one new empty folder per page, each in a fresh process, so that later blocks see what earlier ones
made and nothing set in the test process leaks into them. Every other fence must name a language from SHOWN: it is
shown and never run (`text` for commands that need a cluster, GPUs or a server that keeps running; `yaml` for a
file's contents). docs/quickstart.md is the pipeline walkthrough, run once per test session (tests/conftest.py's
`walkthrough`): tests/test_walkthrough.py checks it and tests/tune/test_sweep.py reads what its `imf tune` left.
"""

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WALKTHROUGH = "docs/quickstart.md"
RUN = ("console", "python")
SHOWN = ("text", "yaml")
# A fence at any indentation (inside a list item too); the closing fence has the same indentation.
FENCE = re.compile(r"^(?P<indent>[ ]*)```(?P<lang>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ ]*$", re.S | re.M)


@dataclass
class BlockRun:
    kind: str  # "console" (one command line) or "python" (a whole block)
    text: str
    returncode: int
    stdout: str
    stderr: str

    @property
    def step(self) -> str | None:
        """The `imf` step of a console line (`train`, `tune`, ...)."""
        return self.text.split()[1] if self.kind == "console" else None

    @property
    def where(self) -> str:
        return self.text if self.kind == "console" else "the python block:\n" + self.text


def pages() -> list[str]:
    """README.md and every page of the documentation, as paths from the repository root."""
    return ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md"))]


def fences(page: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block of a page, the body's indentation removed."""
    found = []
    for match in FENCE.finditer((ROOT / page).read_text()):
        indent = len(match["indent"])
        body = "".join(line[indent:] for line in match["body"].splitlines(keepends=True))
        found.append((match["lang"].strip(), body))
    return found


def blocks(page: str = WALKTHROUGH) -> list[tuple[str, str]]:
    """The runnable blocks of a page in order: ("python", program) and ("console", one command line)."""
    found = []
    for lang, body in fences(page):
        if lang == "python":
            found.append(("python", body))
        elif lang == "console":
            found += [("console", line) for line in body.replace("\\\n", " ").splitlines() if line.strip()]
    return found


def run_blocks(folder: Path, page: str = WALKTHROUGH) -> list[BlockRun]:
    """Every runnable block of a page in order, in `folder`, up to and including the first that fails."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the venv's `imf`
    runs = []
    for kind, text in blocks(page):
        argv = [sys.executable, "-c", text] if kind == "python" else shlex.split(text)
        done = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True, timeout=900)
        runs.append(BlockRun(kind, text, done.returncode, done.stdout, done.stderr))
        if done.returncode != 0:
            break
    return runs
