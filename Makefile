# Two commands matter: `make demo` runs the storefront mesh, `make test` runs every test.
# Both create .venv and install what they need on first use.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit integration e2e soak clean

$(STAMP): pyproject.toml
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  echo "python3 venv support missing; installing python3-venv with apt-get"; \
	  apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null && \
	  rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/gossamer up -f examples/storefront/mesh.yaml

test: $(STAMP) lint typecheck
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests

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

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
