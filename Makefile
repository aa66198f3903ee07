# llmesh: `make up` starts the whole mesh on embedded defaults; `make test` runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Five services share two cores: no library may spin-wait on both (docs/adr/0003).
export OMP_NUM_THREADS ?= 1
export OPENBLAS_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup up test gen lint breaking bench docs clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || \
		{ $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq nats-server; }
	@command -v redis-server >/dev/null || \
		{ $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq redis-server; }
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m llmesh.services.inference.model_files
	@rm -f $(VENV)/.setup-* && touch $@

up: setup
	$(VENV)/bin/llmesh up

test: setup
	$(PY) -m pytest -q

gen: setup
	$(PY) scripts/gen_protos.py

lint: setup
	$(VENV)/bin/buf lint
	$(VENV)/bin/ruff check src tests scripts bench
	$(PY) scripts/gen_protos.py --check

# Compares the protos with those on main (run on a branch).
breaking: setup
	$(VENV)/bin/buf breaking --against '.git#branch=main'

# Slow suites, then every benchmark (each writes its report to bench/results/).
bench: setup
	$(PY) -m pytest -q -m slow
	@for script in bench/*_bench.py; do echo "== $$script"; $(PY) $$script || exit 1; done

docs: setup
	$(PY) scripts/config_tables.py

clean:
	rm -rf $(VENV) .pytest_cache
