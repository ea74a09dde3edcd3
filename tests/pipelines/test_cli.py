"""Issue 7: every pipeline step takes --address (auto, ray://HOST:10001, or none for a local instance) and
--tracking-uri, so that the same command runs on a laptop and on a cluster.

`imf data` (writes the embedded digits as PNG files, no Ray, no MLflow), `imf demo` (local by design)
and `imf submit` / `imf jobs` (their --address is the Jobs API) are not pipeline steps."""

import pytest

from pipelines.cli import build_parser

# The least each step needs to parse; the two flags go right after the step's name.
STEPS = {
    "encode": ["--images", "imgs", "--out", "out"],
    "train": ["--data", "latents", "--config", "c.yaml"],
    "tune": ["--data", "latents", "--space", "tiny", "--trials", "1", "--max-steps", "1"],
    "models": ["list"],
    "sample": ["--model", "models:/m@champion", "--num", "1", "--out", "out"],
    "evaluate": ["--samples", "s", "--reference", "r.npz"],
    "serve": ["--model", "models:/m@champion"],
}


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("flag,dest,value", [("--address", "address", "ray://head:10001"),
                                             ("--tracking-uri", "tracking_uri", "http://127.0.0.1:5000")])
def test_step_takes_cluster_flags(step, flag, dest, value):
    parser = build_parser()
    try:
        parsed = parser.parse_args([step, flag, value, *STEPS[step]])
    except SystemExit:
        pytest.fail(f"`imf {step}` does not accept {flag} (issue 7: every step takes --address and --tracking-uri)")
    assert getattr(parsed, dest) == value
    assert getattr(parser.parse_args([step, *STEPS[step]]), dest) is None  # default: local
