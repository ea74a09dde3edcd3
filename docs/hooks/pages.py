"""MkDocs hook: pages made from files outside docs/ when the site is built. The home page is README.md, its
`docs/...` links made relative to the site; bench-results.md is bench/RESULTS.md as it stands; api.md gets one
mkdocstrings section per module of imf_core, so that a new module is documented without an edit here."""

from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
API_MARKER = "<!-- generated: one section per module of imf_core -->"


def on_files(files, config):
    readme = (ROOT / "README.md").read_text().replace("](docs/", "](")
    files.append(File.generated(config, "index.md", content=readme))
    files.append(File.generated(config, "bench-results.md", content=(ROOT / "bench" / "RESULTS.md").read_text()))
    return files


def on_page_markdown(markdown, page, **kwargs):
    if page.file.src_uri != "api.md":
        return markdown
    if API_MARKER not in markdown:
        raise ValueError(f"docs/api.md lost its marker line {API_MARKER!r}: put it back where the modules go")
    modules = sorted(p.stem for p in (ROOT / "imf_core").glob("*.py") if not p.stem.startswith("_"))
    return markdown.replace(API_MARKER, "\n\n".join(f"::: imf_core.{name}" for name in modules))
