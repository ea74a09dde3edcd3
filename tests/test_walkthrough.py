"""The pipeline walkthrough (docs/quickstart.md) works as written, in a fresh folder (tests/doc_blocks.py runs it
once per session)."""

import re

import pytest

from tests.doc_blocks import blocks

# The project's own console lines: progress lines, announcements, results.
OWN = re.compile(r"^(imf |encode: |train: |training |sample: |sweep: |tune: |trial |sweep |running up to |best |run |"
                 r"latest checkpoint|MLflow run|open the MLflow UI|registered |stored on |plot: |recorded on |"
                 r"reference |\s+rejected |[a-z0-9_]+ -?[0-9.e+-]+$|\S+ version \d|  [a-z]+ +\S)")
LONG_STEPS = ("encode", "train", "sample", "tune")


def test_the_walkthrough_page_has_the_whole_pipeline():
    commands = [text.split()[1] for kind, text in blocks() if kind == "console"]
    assert commands[:8] == ["data", "encode", "train", "models", "evaluate", "sample", "evaluate", "tune"]
    assert sum(kind == "python" for kind, _ in blocks()) >= 2


@pytest.mark.timeout(1500)
def test_every_walkthrough_block_works_as_written_in_a_fresh_folder(walkthrough):
    folder, runs = walkthrough
    for run in runs:
        assert run.returncode == 0, f"{run.where}\nexit {run.returncode}\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}"
        assert "Traceback" not in run.stderr, f"{run.where}\n{run.stderr[-3000:]}"
        if run.step in LONG_STEPS:  # its own progress lines (with an ETA) are at least half of what it prints
            lines = [line for line in (run.stdout + run.stderr).splitlines() if line.strip()]
            own = [line for line in lines if OWN.match(line)]
            assert len(own) >= len(lines) / 2, f"{run.text}: {len(own)} of {len(lines)} lines are ours:\n" + "\n".join(
                line for line in lines if not OWN.match(line))[-3000:]
            assert any(line.startswith(f"{run.step}: ") and " ETA " in line for line in lines), f"{run.text}: no ETA"
    assert len(runs) == len(blocks())
    assert (folder / "grid.png").stat().st_size > 0 and (folder / "samples" / "samples.npz").is_file()
    assert not (folder / "mlflow.db").exists()  # every step used ./mlruns, not MLflow's own default
