"""The documentation site (mkdocs.yml, `make docs`) builds with every link and anchor checked, opens from disk with
nothing fetched from elsewhere, and its generated pages follow the code: every key of the training config, every
public name of imf_core."""

import os
import re
import subprocess
import sys

import pytest

from tests.doc_blocks import ROOT

# What a page would fetch when opened: scripts, stylesheets, fonts, images, frames.
FETCHED = re.compile(r"<(?:script|img|iframe|source)\b[^>]*\bsrc=\"([^\"]+)\"|<link\b[^>]*\bhref=\"([^\"]+)\"")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return out


def test_every_page_opens_from_disk_with_nothing_fetched_from_elsewhere(site):
    pages = sorted(p for p in site.rglob("*.html") if p.name != "404.html")  # 404.html: for a web server's root
    assert {"index.html", "method.html", "configuration.html", "api.html", "bench-results.html"} <= {
        p.name for p in pages}
    for page in pages:
        html = page.read_text()
        for src, href in FETCHED.findall(html):
            url = src or href
            assert not re.match(r"(https?:)?//", url), f"{page.name} fetches {url}"
            target = (page.parent / url.split("#")[0].split("?")[0]).resolve()
            assert target.exists(), f"{page.name} loads {url}, which the site does not have"
        assert "fonts.googleapis" not in html and "fonts.gstatic" not in html, page.name
    index = (site / "search" / "search_index.js").read_text()
    assert index.startswith("var __index = ") and "Guidance as conditioning" in index  # search from file://
    assert 'src="img/demo_grid_1nfe.png"' in (site / "index.html").read_text()


def test_the_configuration_reference_lists_every_key_with_its_default(site):
    from pipelines.config import TrainConfig

    html = (site / "configuration.html").read_text()
    for key in TrainConfig().flat():
        assert f"<code>{key}</code>" in html, f"{key} is missing from the configuration reference"
    assert "<code>0.0001</code>" in html and "must be two numbers in [0, 1)" in html  # optim.lr, optim.betas
    assert "Shipped configs" in html and "<code>Tiny/2</code>" in html  # the demo's model


def test_the_api_reference_documents_every_public_name_of_imf_core(site):
    import imf_core

    html = (site / "api.html").read_text()
    for name in imf_core.__all__:  # an entry's anchor is its full name: imf_core.model.build_model
        assert re.search(rf'id="imf_core\.\w+\.{name}"', html), f"imf_core.{name} has no entry in the API reference"
