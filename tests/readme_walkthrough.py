"""The README's runnable blocks, run once per test session as a user would: every `console` block line and every
`python` block, in order, each in a fresh process, in one new empty folder (so later blocks see what earlier ones
made, and nothing set in the test process leaks into them). Blocks fenced as `text` are for a cluster and are not
run here. test_readme.py checks every block; tests/tune/test_sweep.py reads what the README's `imf tune` left."""

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```(console|python)\n(.*?)^```", re.S | re.M)


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


def blocks() -> list[tuple[str, str]]:
    found = []
    for kind, body in BLOCK.findall((ROOT / "README.md").read_text()):
        if kind == "python":
            found.append(("python", body))
        else:
            found += [("console", line) for line in body.replace("\\\n", " ").splitlines() if line.strip()]
    return found


def run_walkthrough(folder: Path) -> list[BlockRun]:
    """Every block in order, up to and including the first that fails."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the venv's `imf`
    runs = []
    for kind, text in blocks():
        argv = [sys.executable, "-c", text] if kind == "python" else shlex.split(text)
        done = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True, timeout=900)
        runs.append(BlockRun(kind, text, done.returncode, done.stdout, done.stderr))
        if done.returncode != 0:
            break
    return runs
