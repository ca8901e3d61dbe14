# felix-nat64 — `make demo` runs the end-to-end demo, `make test` runs every test.
# Both install what they need (Debian packages and a virtualenv) first.

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: all deps venv lint proto-check unit host vm test demo bench bench-frontend render-example clean

all: test

deps:
	./scripts/install-system-deps.sh

# python3-nftables is only packaged by Debian: the venv sees system site-packages.
$(STAMP): setup.cfg pyproject.toml | deps
	test -x $(PY) || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: deps $(STAMP)

proto:
	$(PY) -m grpc_tools.protoc -Iproto --python_out=felix_nat64/wire --pyi_out=felix_nat64/wire proto/felixbackend.proto

lint: venv
	$(BIN)/ruff check felix_nat64 tests benchmarks
	$(BIN)/mypy felix_nat64

unit: venv
	$(BIN)/pytest -q tests/unit

host: venv
	$(BIN)/pytest -q tests/host

vm: venv
	$(PY) -m felix_nat64.testing.vm pytest -q tests/vm

test: venv
	$(MAKE) lint
	$(BIN)/pytest -q tests/unit tests/host
	$(PY) -m felix_nat64.testing.vm pytest -q tests/vm

demo: venv
	$(BIN)/felix-nat64 demo

render-example: venv
	$(BIN)/felix-nat64 render examples/two-prefixes.stream

bench-frontend: venv
	$(PY) -m benchmarks.frontend

bench: venv
	$(PY) -m benchmarks.frontend
	$(PY) -m felix_nat64.testing.vm $(PY) -m benchmarks.datapath

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
