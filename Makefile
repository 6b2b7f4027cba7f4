# Two commands matter: `make demo` runs the storefront mesh, `make test` runs every test.
# Both create .venv and install what they need on first use.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo native test lint typecheck unit integration e2e soak clean

$(STAMP): pyproject.toml
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  echo "python3 venv support missing; installing python3-venv with apt-get"; \
	  apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null && \
	  rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

# The native parts (gossamer/native.py: the HTTP/2 header collector and the HTTP/1.1 scanner;
# C, no library headers needed), the JSON line encoder (gossamer/json_lines: a CPython
# extension) and the compiled data plane (gossamer/compiled.py: the proxy's per-request
# modules through mypyc; these two need the Python headers): built when a compiler
# exists, and only what changed; without them everything still works, on slower Python code.
.PHONY: native
native: $(STAMP)
	-$(BIN)/python -m gossamer.build_native

demo: native
	$(BIN)/gossamer up -f examples/storefront/mesh.yaml

# scripts/ensure-node-clients (in test:) installs node, npm and tests/clients/node: real peers
# from another ecosystem, a gRPC client (@grpc/grpc-js) and an OpenID provider (oidc-provider).

# Debian packages the tests use as real peers: PostgreSQL (the database story), nghttp2 (the
# HTTP/2 codec and h2load), HAProxy, nginx and wrk (the benchmark smoke run), tcpdump (mTLS on
# the wire, story 2); gcc and the Python headers build the native parts.
TEST_PACKAGES := libnghttp2-14 libnghttp2-dev nghttp2-client postgresql haproxy nginx wrk gcc \
	python3-dev tcpdump prometheus

# Two sessions (tests/conftest.py): the unit tests import the source, which their test doubles
# need; the rest import the compiled data plane (gossamer.compiled), as sidecars run it.
test: $(STAMP) lint typecheck
	./scripts/ensure-debian-packages $(TEST_PACKAGES)
	./scripts/ensure-node-clients
	$(BIN)/python -m gossamer.build_native
	$(BIN)/pytest -q tests/unit
	$(BIN)/pytest -q --ignore=tests/unit

lint: $(STAMP)
	$(BIN)/ruff check src tests examples

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

integration: $(STAMP)
	$(BIN)/pytest -q tests/integration

e2e: $(STAMP)
	$(BIN)/pytest -q tests/e2e

# Long soak and benchmark runs, on demand only.
soak: $(STAMP)
	$(BIN)/pytest -q -m slow

# Coverage-guided fuzzing (issue 11, docs/fuzzing.md; libFuzzer through atheris), on demand
# only: slow, FUZZ_SECONDS (default an hour) per target, one after another. The targets (fuzz/):
# the HTTP/1.1 scanners and request parser, the HTTP/2 binding, the config loader. Corpus,
# crashes and logs under FUZZ_OUT, one line per target in FUZZ_OUT/summary.tsv. `make test`
# runs each for a few seconds (tests/unit/test_fuzz_smoke.py).
.PHONY: fuzz
FUZZ_SECONDS ?= 3600
FUZZ_OUT ?= build/fuzz
FUZZ_TARGETS ?=

fuzz: native
	$(BIN)/python -c 'import atheris' 2>/dev/null || $(BIN)/pip install -q -e '.[dev,fuzz]'
	$(BIN)/python -m fuzz.run --seconds $(FUZZ_SECONDS) --out $(FUZZ_OUT) $(FUZZ_TARGETS)

# The benchmark suite (issue 3, bench/README.md): installs haproxy, nginx, wrk, h2load and
# py-spy when missing, writes bench/RESULTS.md. bench-smoke: tiny loads (make test runs it too).
.PHONY: bench bench-smoke
BENCH_PACKAGES := haproxy nginx wrk nghttp2-client gcc python3-dev

bench: native
	./scripts/ensure-debian-packages $(BENCH_PACKAGES)
	$(BIN)/python -m compileall -q src  # as installed: sidecars load bytecode, not source
	test -x $(BIN)/py-spy || $(BIN)/pip install -q py-spy
	$(BIN)/python -m bench
	$(BIN)/python -m bench.routing
	$(BIN)/python -m bench.stages
	$(BIN)/python -m bench.tracing
	$(BIN)/python -m bench.observe

bench-smoke: $(STAMP)
	./scripts/ensure-debian-packages $(BENCH_PACKAGES)
	$(BIN)/python -m bench --smoke

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
