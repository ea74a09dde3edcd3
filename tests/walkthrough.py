"""The README's runnable blocks, as written: every `console` block line and every `python` block, in order, each
in a fresh process, in one new empty folder (so later blocks see what earlier ones made, and nothing set in this
test process leaks into them). Blocks fenced as `text` are for a cluster and are not run here.

It runs once per test session (the `readme_walkthrough` fixture): tests/test_readme.py checks every command, and
the tests that only read what a command made (tests/tune/test_sweep.py: the README's sweep) read its folder."""

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
class Ran:
    """One README block after it ran: console line or python block, and what its process did."""
    kind: str
    text: str
    returncode: int
    stdout: str
    stderr: str

    @property
    def step(self) -> str | None:
        return self.text.split()[1] if self.kind == "console" else None


def blocks() -> list[tuple[str, str]]:
    found = []
    for kind, body in BLOCK.findall((ROOT / "README.md").read_text()):
        if kind == "python":
            found.append(("python", body))
        else:
            found += [("console", line) for line in body.replace("\\\n", " ").splitlines() if line.strip()]
    return found


def run_walkthrough(folder: Path) -> list[Ran]:
    """Every block in `folder`, in order, up to the first that fails (the later ones need what it makes)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the venv's `imf`
    done = []
    for kind, text in blocks():
        argv = [sys.executable, "-c", text] if kind == "python" else shlex.split(text)
        run = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True, timeout=900)
        done.append(Ran(kind, text, run.returncode, run.stdout, run.stderr))
        if run.returncode != 0:
            break
    return done
