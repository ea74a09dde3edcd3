# make demo: set everything up and run the pipeline on the embedded dataset.
# make test: set everything up and run the test suite.
# make docs: set everything up and build the documentation site into site/ (every link and anchor checked).
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.imf-installed
TEST_WORKERS ?= 2
DEMO_DIR ?= demo_out

.PHONY: install test demo docs lock lint bench-cpu clean

# Every install takes the locked set of versions, constraints.txt (`make lock` regenerates it from pyproject's ranges).
PIP := $(PY) -m pip install -q --disable-pip-version-check -c constraints.txt

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	@# Without a GPU, take the CPU build of torch first: an unpinned torch pulls a multi-GB CUDA build.
	@if command -v nvidia-smi >/dev/null 2>&1; then echo "GPU found: the CUDA build of the locked torch"; \
	else $(PIP) torch==2.13.0; fi
	$(PIP) -e ".[test,docs]"
	@# torch-fidelity declares torchvision, whose PyPI wheels do not load beside this torch; its Inception-v3 needs none of it.
	$(PIP) --no-deps torch-fidelity
	touch $(STAMP)

# constraints.txt: a fresh venv installed from pyproject.toml's ranges (as above, without the lock), frozen. Run it
# after a change of a range or an extra, then `make test`.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install -q torch==2.13.0
	.lock-venv/bin/pip install -q -e ".[test,docs]"
	.lock-venv/bin/pip install -q --no-deps "torch-fidelity==0.4.0"
	{ echo "# The versions make install, .ci/run and infra/docker/Dockerfile install. Regenerate: make lock"; \
	  echo "# (pip freeze of a fresh venv installed from pyproject.toml's ranges; torch without its +cpu label)."; \
	  .lock-venv/bin/pip freeze --exclude-editable | sed 's/^torch==\([^+]*\)+.*/torch==\1/'; } > constraints.txt
	rm -rf .lock-venv

# The playground test drives Debian's chromium through its chromedriver (tests/pipelines/serve/test_clients.py).
CHROMEDRIVER := /usr/bin/chromedriver
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

$(CHROMEDRIVER):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver

install: $(STAMP) $(CHROMEDRIVER)

test: $(STAMP) $(CHROMEDRIVER)
	@# One thread per process: Ray workers and the test process share 2 cores, and spinning OpenMP threads stall them.
	@# Two pytest-xdist workers, each with its own local Ray: tests/conftest.py schedules them by file, longest first.
	OMP_NUM_THREADS=1 $(PY) -m pytest -n $(TEST_WORKERS) --no-loadscope-reorder

demo: $(STAMP)
	@# One OpenMP thread per process here too: the two training workers (and later the sampling actors) share the cores.
	OMP_NUM_THREADS=1 $(VENV)/bin/imf demo --out $(DEMO_DIR)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

bench-cpu: $(STAMP)
	$(PY) bench/toy_objectives.py --steps 300

clean:
	rm -rf $(VENV) $(DEMO_DIR) site
