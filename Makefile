# llmesh: `make up` starts the whole mesh on embedded defaults; `make test` runs the tests.
# One workspace, one lock file (uv.lock): `make setup` builds .venv from it with uv, which it
# installs first into .tools/ when missing (docs/adr/0008-workspace-and-images.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV_VERSION := 0.13.9
UV := .tools/bin/uv
MANIFESTS := uv.lock pyproject.toml $(wildcard libs/*/pyproject.toml services/*/pyproject.toml tools/*/pyproject.toml)
# llama.cpp's CPU kernels, as in the inference image (services/inference/Dockerfile): x86-64-v3, never
# the build machine's own CPU, whose AMX kernels crash on Sapphire Rapids machines (docs/adr/0036).
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF
BUILD_KEY := $(shell (cat $(MANIFESTS); echo '$(LLAMA_CMAKE_ARGS)') | sha1sum | cut -c1-12)
STAMP := $(VENV)/.setup-$(BUILD_KEY)
TRITON_VENV := .venv-triton
TRITON_REQUIREMENTS := deploy/triton/cpu/requirements.txt
LLAMA_CPP_VERSION := $(shell sed -n 's/^llama-cpp-python==//p' $(TRITON_REQUIREMENTS))
LLAMA_KEY := $(shell echo '$(LLAMA_CMAKE_ARGS)' | sha1sum | cut -c1-8)
WHEELHOUSE := $(HOME)/.cache/llmesh/wheels/$(LLAMA_KEY)
TRITON_STAMP := $(TRITON_VENV)/.ready-$(LLAMA_KEY)
TS_DIR := clients/typescript
TS_STAMP := $(TS_DIR)/node_modules/.llmesh-ready
BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.ready
LITELLM_REQUIREMENT := litellm[proxy]==1.77.7
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Five services share two cores: no library may spin-wait on both (docs/adr/0003).
export OMP_NUM_THREADS ?= 1
export OPENBLAS_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
# uv's cache and the checkout may sit on different file systems.
export UV_LINK_MODE ?= copy
# Debian packages the tests and the launcher start (servers on free ports, never the machine's own).
# prometheus and prometheus-alertmanager: promtool, amtool and prometheus for deploy/prometheus tests.
APT_PACKAGES := nats-server redis-server kubectl prometheus prometheus-alertmanager
APT_COMMANDS := nats-server redis-server kubectl promtool amtool

.PHONY: setup triton-env ts-env bench-env up test e2e-backends gen lint format breaking bench fuzz chaos soak docs dashboards images-report image-context images clean

setup: $(STAMP) $(TRITON_STAMP) $(TS_STAMP)

# The TypeScript client's packages (clients/typescript): exactly its package-lock.json (npm ci), among
# them protoc-gen-es, which `make gen` runs through buf.
ts-env: $(TS_STAMP)

$(TS_STAMP): $(TS_DIR)/package-lock.json $(TS_DIR)/package.json
	cd $(TS_DIR) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# The benchmarks' peer (bench/litellm_baseline.py): LiteLLM's proxy in an environment of its own,
# never in the workspace lock.
bench-env: $(BENCH_STAMP)

$(BENCH_STAMP): | $(UV)
	rm -rf $(BENCH_VENV)
	$(UV) venv -q --python $(PYTHON) $(BENCH_VENV)
	$(UV) pip install -q --python $(BENCH_VENV)/bin/python '$(LITELLM_REQUIREMENT)'
	@touch $@

# Triton's own Python environment (deploy/triton/README.md): the tritonserver binary and Python
# backend from nvidia-pytriton, and what the Python-backend model imports (numpy<2, llama.cpp).
# Apart from .venv: the backend stub crashes with numpy 2. uv reuses its cached llama.cpp build.
triton-env: $(TRITON_STAMP)

$(TRITON_STAMP): $(TRITON_REQUIREMENTS) | $(UV)
	rm -rf $(TRITON_VENV)
	$(UV) venv -q --python $(PYTHON) $(TRITON_VENV)
	@# llama-cpp-python compiles from source; uv does not reuse that build outside a lock, so the
	@# wheel is built once per machine and build flags into a wheelhouse outside the checkout and
	@# installed from there (pip's own cache is bypassed: it keys built wheels by version only).
	@ls $(WHEELHOUSE)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1 || \
		CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" .tools/bin/pip wheel -q --no-deps --no-cache-dir -w $(WHEELHOUSE) \
			'llama-cpp-python==$(LLAMA_CPP_VERSION)'
	$(UV) pip install -q --python $(TRITON_VENV)/bin/python --find-links $(WHEELHOUSE) -r $(TRITON_REQUIREMENTS)
	@site=$$($(TRITON_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	pyver=$$($(TRITON_VENV)/bin/python -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")'); \
	mkdir -p $(TRITON_VENV)/backends && cp -r $$site/pytriton/tritonserver/backends/python $(TRITON_VENV)/backends/ && \
	cp $$site/pytriton/tritonserver/python_backend_stubs/$$pyver/triton_python_backend_stub $(TRITON_VENV)/backends/python/
	$(TRITON_VENV)/bin/python scripts/llama_build.py
	@touch $@

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install -q 'uv==$(UV_VERSION)'

$(STAMP): $(MANIFESTS) | $(UV)
	@missing=""; for c in $(APT_COMMANDS); do command -v $$c >/dev/null || [ -x /usr/sbin/$$c ] || missing="$$missing $$c"; done; \
	if [ -n "$$missing" ]; then $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $(APT_PACKAGES); fi
	@# Tenancy's tests start their own PostgreSQL from these binaries (initdb, pg_ctl).
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || \
		{ $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq postgresql-15; }
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(UV) sync --frozen --python $(PYTHON)
	@# uv reuses a llama.cpp wheel from its cache whatever CMAKE_ARGS say: a native one is rebuilt.
	@$(PY) scripts/llama_build.py || { $(UV) cache clean llama-cpp-python && \
		CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(UV) sync --frozen --python $(PYTHON) --reinstall-package llama-cpp-python && \
		$(PY) scripts/llama_build.py; }
	$(PY) -m llmesh.services.inference.model_files
	$(PY) -m llmesh.services.cache.semantic.onnx_model
	@rm -f $(VENV)/.setup-* && touch $@

up: setup
	$(VENV)/bin/llmesh up

test: setup
	$(PY) -m pytest -q

# `llmesh up` with Triton and the API stand-in, as issue 9 checks it (the Triton-kill test is slow).
e2e-backends: setup
	$(PY) -m pytest -q -m "" tests/e2e/test_launcher_backends.py

gen: setup
	$(PY) scripts/gen_protos.py

lint: setup
	$(VENV)/bin/buf lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) scripts/gen_protos.py --check
	$(PY) scripts/gen_protos.py --breaking

format: setup
	$(VENV)/bin/ruff check --select I --fix .
	$(VENV)/bin/ruff format .

# Compares the protos with those where this branch left main (on main itself: with HEAD); works in
# a worktree and in a fresh clone (scripts/gen_protos.py --breaking; tests/test_contracts.py runs it).
breaking: setup
	$(PY) scripts/gen_protos.py --breaking

# Slow suites, then every benchmark (each writes its report to bench/results/).
bench: setup bench-env
	$(PY) -m pytest -q -m slow
	@for script in bench/*_bench.py; do echo "== $$script"; $(PY) $$script || exit 1; done

# Every RPC of every service with generated requests (tests/fuzz); the table goes to bench/results/fuzz.md
# (rows merged per RPC: LLMESH_FUZZ_RPCS='cache.*' or LLMESH_FUZZ_SHARD=2/3 runs a part; LLMESH_FUZZ_JOBS
# worker processes generate the requests, 2 by default).
fuzz: setup
	LLMESH_FUZZ_EXAMPLES=$${LLMESH_FUZZ_EXAMPLES:-10000} LLMESH_FUZZ_REPORT=bench/results/fuzz.md $(PY) -m pytest -q tests/fuzz

# The CI-sized kill test (tests/chaos, also in make test), then faults under load against a private `llmesh up` (bench/chaos.py): the table goes to bench/results/chaos.md
# and docs/reports/reliability.md; then the router and inference kills again with two replicas of each
# (docs/adr/0034; bench/results/chaos-kill-router-kill-inference-replicas-*.md). CHAOS_ARGS="--only
# kill-cache,nats" runs a subset (and skips the replica run).
chaos: setup
	$(PY) -m pytest -q tests/chaos
	$(PY) bench/chaos.py $(CHAOS_ARGS)
	@[ -n "$(CHAOS_ARGS)" ] || $(PY) bench/chaos.py --only kill-router,kill-inference

# A steady mixed load for SOAK_MINUTES (30) with RSS/fd/p99 verdicts (bench/soak.py, bench/results/soak.md).
SOAK_MINUTES ?= 30
soak: setup
	$(PY) bench/soak.py --minutes $(SOAK_MINUTES)

docs: setup
	$(PY) scripts/config_tables.py

# Grafana dashboards as code (deploy/grafana/dashboards.py) rendered to deploy/grafana/dashboards/*.json.
dashboards: setup
	$(PY) deploy/grafana/dashboards.py

# Installs each service alone from the lock file into a fresh environment and writes
# docs/reports/images.md (installed size, packages, budget check).
images-report: setup
	$(PY) scripts/service_envs.py --report docs/reports/images.md

# Generated files the images COPY, put under build/ (git-ignored): the cache's exported MiniLM
# (build/cache-onnx/). Run before `docker build` (deploy/README.md).
image-context: setup
	$(PY) scripts/image_context.py

# Builds every service's image from the repository root (needs a container engine; deploy/README.md).
IMAGE_REGISTRY ?= llmesh
IMAGE_TAG ?= 0.1.0
images: image-context
	@for svc in tenancy classifier cache router inference edge; do \
		docker build -f services/$$svc/Dockerfile -t $(IMAGE_REGISTRY)/$$svc:$(IMAGE_TAG) . || exit 1; \
	done
	docker build -f services/inference/Dockerfile --target with-model -t $(IMAGE_REGISTRY)/inference:$(IMAGE_TAG)-gemma .

clean:
	rm -rf $(VENV) $(TRITON_VENV) $(BENCH_VENV) .tools .pytest_cache build $(TS_DIR)/node_modules $(TS_DIR)/dist
