"""README.md and docs/: every block runs or is marked as shown only, each page's blocks work in a fresh folder, the
README stays a front page, and nothing in the repository cites a file outside it."""

import re
import subprocess

import pytest

from tests.doc_blocks import ROOT, RUN, SHOWN, WALKTHROUGH, blocks, fences, pages, run_blocks

# Files of the developers' own notes, which a clone of the repository does not have.
OUTSIDE = re.compile(r"(METHOD|DESIGN|ECOSYSTEM)\.md|\.\./shared/")
METHOD_SECTIONS = ["Notation", "The iMF objective", "Guidance as conditioning", "Time sampling", "Tangents", "Network",
                   "Latents", "Sampling", "Training recipe", "Per-step cost", "Parity with the authors' step",
                   "Original MeanFlow and flow matching"]
RUN_HERE = [page for page in pages() if page != WALKTHROUGH and blocks(page)]


@pytest.mark.parametrize("page", pages())
def test_every_code_block_is_run_or_marked_as_shown_only(page):
    unmarked = [body.splitlines()[0] if body else "" for lang, body in fences(page) if lang not in RUN + SHOWN]
    assert not unmarked, (f"{page}: blocks fenced without one of {RUN} (run by the tests) or {SHOWN} (shown only): "
                          f"{unmarked}")


@pytest.mark.parametrize("page", RUN_HERE)
def test_the_blocks_of_a_page_work_in_order_in_a_fresh_folder(page, tmp_path):
    runs = run_blocks(tmp_path, page)
    for run in runs:
        output = f"{run.stdout[-2000:]}\n{run.stderr[-3000:]}"
        assert run.returncode == 0, f"{page}: {run.where}\nexit {run.returncode}\n{output}"
        assert "Traceback" not in run.stderr, f"{page}: {run.where}\n{run.stderr[-3000:]}"
    assert len(runs) == len(blocks(page))


def test_the_method_page_and_the_configuration_page_run_examples():
    assert {"docs/method.md", "docs/configuration.md"} <= set(RUN_HERE)


def test_the_readme_is_a_front_page():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 150
    commands = [body for lang, body in fences("README.md") if lang == "text" and "make demo" in body]
    assert commands and "make test" in commands[0]
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert images and all((ROOT / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for image in images)
    for target in re.findall(r"\]\((?!https?://)([^)#]+)", text):
        assert (ROOT / target).is_file(), f"README.md links {target}, which is not in the repository"


def test_the_method_page_keeps_the_sections_other_files_link_to():
    headings = re.findall(r"^## (.+)$", (ROOT / "docs" / "method.md").read_text(), flags=re.M)
    assert headings == METHOD_SECTIONS


def test_no_file_cites_a_file_outside_the_repository():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    citing = set()
    for name in files:
        path = ROOT / name
        if path.is_file() and path.stat().st_size < 1_000_000:
            try:
                if OUTSIDE.search(path.read_text()):
                    citing.add(name)
            except UnicodeDecodeError:
                continue
    assert not citing, (f"these files cite notes that a clone does not have: {sorted(citing)}; cite docs/ or the paper "
                        "instead")
