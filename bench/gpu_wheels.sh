#!/usr/bin/env bash
# The wheels bench/run_gpu.sh needs that the device image lacks (it has torch, numpy, safetensors, pillow,
# huggingface-hub, regex, requests, filelock): diffusers, for the sampling row, and importlib_metadata, which
# diffusers imports. Run here, where PyPI is reachable; carry bench/wheels (git-ignored) with the device run.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d wheels \
  "diffusers==$(../.venv/bin/python -c 'import diffusers; print(diffusers.__version__)')" importlib_metadata
ls wheels
