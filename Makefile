# Shadowcar: `make demo` runs the demo, `make test` runs the tests, `make check` runs lint, the
# type check and the tests (as CI does), `make test-fast` the unit-level tests (under a minute).
# All create .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast check lint typecheck protos bench clean

# Unit-level tests: no sidecar process, browser or interop environment (make test runs all).
FAST_TESTS := tests/analysis tests/codecs tests/config/test_config.py \
	tests/config/test_config_errors.py tests/config/test_oip_models.py tests/assignment \
	tests/contracts/test_contracts.py tests/resilience/test_breaker.py \
	tests/server/test_metadata_rules.py tests/test_errors.py tests/test_generated_protos.py \
	tests/test_provenance.py tests/test_layers.py
FAST_SKIP := --ignore=tests/analysis/test_cli_report.py \
	-m "not slow and not subprocess and not browser and not interop"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/sidecar demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q $(FAST_SKIP) $(FAST_TESTS)

check: lint typecheck test

lint: $(STAMP)
	$(BIN)/ruff check sidecar analysis tests bench scripts

typecheck: $(STAMP)
	$(BIN)/mypy

protos: $(STAMP)
	$(BIN)/python scripts/gen_protos.py

bench: $(STAMP)
	$(BIN)/python bench/proxy_bench.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache .mypy_cache .ruff_cache
