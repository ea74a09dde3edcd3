"""The two clients `imf serve` is made for, against the real application: a person with a browser (Debian's
chromium, driven by selenium) on the playground page, and a program that knows only /openapi.json (schemathesis
generating requests from it)."""

import base64
import json
import re
import shlex
import time
from pathlib import Path

import numpy as np
import pytest

from tests.pipelines.serve.served import CLASSES, NAME, call, npz_images, png_pixels, sample

pytestmark = pytest.mark.timeout(600)
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
FUZZED = 500  # generated requests, at least


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: `make install` installs them (apt-get install -y chromium "
                    "chromium-driver)")
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in [*FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(120)
    yield driver
    driver.quit()


def page_state(driver, *states, timeout=120) -> str:
    """Wait until the page's form is in one of `states` (ready, busy, done, error)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    form = driver.find_element(By.ID, "request")
    WebDriverWait(driver, timeout).until(lambda _: form.get_attribute("data-state") in states)
    return form.get_attribute("data-state")


def fill_and_generate(driver, **fields) -> str:
    from selenium.webdriver.common.by import By

    for name, value in fields.items():
        box = driver.find_element(By.ID, name)
        box.clear()
        box.send_keys(str(value))
    driver.find_element(By.ID, "generate").click()
    return page_state(driver, "done", "error")


def shown_png(driver) -> bytes:
    from selenium.webdriver.common.by import By

    src = driver.find_element(By.ID, "grid").get_attribute("src")
    assert src.startswith("data:image/png;base64,"), src[:40]
    return base64.b64decode(src.split(",", 1)[1])


def test_the_playground_page_shows_the_image_the_api_and_imf_sample_make(server, store, browser):
    from selenium.webdriver.common.by import By

    text = lambda element_id: browser.find_element(By.ID, element_id).text  # noqa: E731
    browser.get(server.url)
    assert page_state(browser, "ready") == "ready" and text("model").startswith(f"{NAME}/1: 4 classes")
    loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(url.startswith(server.url) for url in loaded), loaded  # nothing from elsewhere

    assert fill_and_generate(browser, **{"class": "c", "omega": 1.5, "seed": 7, "count": 1}) == "done"
    shown = shown_png(browser)
    assert text("made-by") == f"{NAME}/1"
    status, head, api = call(server.port, {"class": "c", "seed": 7, "count": 1, "omega": 1.5})
    assert status == 200 and head["X-IMF-Model-Version"] == f"{NAME}/1" and api == shown
    by_imf_sample = sample(store, store.tmp / "sampled_omega", 7, [2], 1, omega=1.5)["arr_0"]
    assert np.array_equal(png_pixels(shown), by_imf_sample[0])

    url, body = re.fullmatch(r"curl -s (\S+) -H 'Content-Type: application/json' -d (.+) -o images.png",
                             text("curl")).groups()
    sent = json.loads(shlex.split(body)[0])  # what the page asked for: the version's stored interval and steps
    assert sent == {"class": "c", "omega": 1.5, "seed": 7, "count": 1, "t_min": 0.1, "t_max": 0.9, "steps": 1}
    assert url == server.url and call(server.port, sent)[2] == shown

    assert fill_and_generate(browser, **{"class": "2", "count": 4}) == "done"  # by index: a grid of four
    assert shown_png(browser) == call(server.port, {"class": 2, "seed": 7, "count": 4, "omega": 1.5})[2]
    assert fill_and_generate(browser, **{"class": "zebra"}) == "error"
    assert "'zebra': not a class of this model" in text("error")


def test_requests_generated_from_the_openapi_document_get_answers_it_declares(server, sampled):
    """Positive (schema-valid) and negative requests for POST /: no 5xx, each answer's status, media type,
    headers and JSON as documented, a negative one refused with a 4xx, every 4xx a JSON error, and a valid one
    refused only for a rule JSON Schema cannot say (the request's description lists them)."""
    import requests
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        negative_data_rejection,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
              response_schema_conformance, negative_data_rejection]
    not_in_the_schema = re.compile(r".* disagree on the number of images|class lists \d+ classes for \d+ image|t_min "
                                   r"\S+ is above t_max|guidance \{")  # and the version's stored t_min, t_max
    post = schemathesis.openapi.from_url(server.url + "openapi.json")["/"]["POST"]
    session, statuses = requests.Session(), []

    @settings(max_examples=FUZZED, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(st.one_of(post.as_strategy(schemathesis.GenerationMode.POSITIVE),
                     post.as_strategy(schemathesis.GenerationMode.NEGATIVE)))
    def fuzz(case):
        response = case.call(base_url=server.url.rstrip("/"), session=session, timeout=60)
        statuses.append(response.status_code)
        case.validate_response(response, checks=checks)
        if 400 <= response.status_code < 500:
            error = response.json()["error"]
            assert error and "Traceback" not in error, error
            if case.meta.generation.mode.is_positive:
                assert not_in_the_schema.match(error), (case.body, error)

    started = time.perf_counter()
    fuzz()
    print(f"{len(statuses)} requests in {time.perf_counter() - started:.1f} s: "
          f"{ {s: statuses.count(s) for s in sorted(set(statuses))} }")
    assert len(statuses) >= FUZZED and {200, 400} <= set(statuses)
    status, _, body = call(server.port, {"class": CLASSES, "seed": 7, "count": 8, "format": "npz"})
    assert status == 200 and np.array_equal(npz_images(body)["arr_0"], sampled["arr_0"])
