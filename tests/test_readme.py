"""The README's runnable blocks, as written: every `console` block line and every `python` block, in order, each
in a fresh process, in one new empty folder (so later blocks see what earlier ones made, and nothing set in this
test process leaks into them). Blocks fenced as `text` are for a cluster and are not run here."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```(console|python)\n(.*?)^```", re.S | re.M)
# The project's own console lines: progress lines, announcements, results.
OWN = re.compile(r"^(imf |encode: |train: |training |sample: |sweep: |tune: |trial |sweep |running up to |best |run |"
                 r"latest checkpoint|MLflow run|open the MLflow UI|registered |stored on |plot: |recorded on |"
                 r"reference |\s+rejected |[a-z0-9_]+ -?[0-9.e+-]+$|\S+ version \d|  [a-z]+ +\S)")
LONG_STEPS = ("encode", "train", "sample", "tune")


def blocks():
    found = []
    for kind, body in BLOCK.findall((ROOT / "README.md").read_text()):
        if kind == "python":
            found.append(("python", body))
        else:
            found += [("console", line) for line in body.replace("\\\n", " ").splitlines() if line.strip()]
    return found


def test_the_readme_has_the_pipeline_walkthrough():
    commands = [text.split()[1] for kind, text in blocks() if kind == "console"]
    assert commands[:8] == ["data", "encode", "train", "models", "evaluate", "sample", "evaluate", "tune"]
    assert sum(kind == "python" for kind, _ in blocks()) >= 2


@pytest.mark.timeout(1500)
def test_every_runnable_readme_block_works_as_written_in_a_fresh_folder(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the venv's `imf`
    for kind, text in blocks():
        argv = [sys.executable, "-c", text] if kind == "python" else shlex.split(text)
        run = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        where = text if kind == "console" else "the python block:\n" + text
        assert run.returncode == 0, f"{where}\nexit {run.returncode}\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}"
        assert "Traceback" not in run.stderr, f"{where}\n{run.stderr[-3000:]}"
        step = text.split()[1] if kind == "console" else None
        if step in LONG_STEPS:  # its own progress lines (with an ETA) are at least half of what it prints
            lines = [line for line in (run.stdout + run.stderr).splitlines() if line.strip()]
            own = [line for line in lines if OWN.match(line)]
            assert len(own) >= len(lines) / 2, f"{text}: {len(own)} of {len(lines)} lines are ours:\n" + "\n".join(
                line for line in lines if not OWN.match(line))[-3000:]
            assert any(line.startswith(f"{step}: ") and " ETA " in line for line in lines), f"{text}: no ETA line"
    assert (tmp_path / "grid.png").stat().st_size > 0 and (tmp_path / "samples" / "samples.npz").is_file()
    assert not (tmp_path / "mlflow.db").exists()  # every step used ./mlruns, not MLflow's own default
