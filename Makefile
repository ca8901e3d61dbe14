# felix-nat64 — `make demo` runs the end-to-end demo, `make test` runs every test.
# Both install what they need (Debian packages and a virtualenv) first.

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: all deps venv proto lint unit chart host vm demo-check image image-check test demo bench bench-frontend bench-image render-example clean

all: test

deps:
	./scripts/install-system-deps.sh

# python3-nftables is only packaged by Debian: the venv sees system site-packages.
$(STAMP): setup.cfg pyproject.toml testbed/pyproject.toml | deps
	test -x $(PY) || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]' -e ./testbed
	touch $@

venv: deps $(STAMP)

proto:
	$(PY) -m grpc_tools.protoc -Iproto --python_out=felix_nat64/wire --pyi_out=felix_nat64/wire proto/felixbackend.proto

lint: venv
	$(BIN)/ruff check felix_nat64 testbed tests benchmarks scripts
	$(BIN)/mypy felix_nat64 testbed tests/fakes.py
	$(BIN)/lint-imports
	shellcheck image/*

# Pure tests, the fuzz and bad-settings suites among them: no root, no kernel.
unit: venv
	$(BIN)/pytest -q tests/unit

# The Helm chart, the static manifest, the image's scripts and the monitoring
# rules, rendered and run here (Helm's engine through helm-python-sdk, and
# promtool; no root).
chart: venv
	$(BIN)/pytest -q tests/chart

# Host-kernel tests in throwaway network namespaces (root).
host: venv
	$(BIN)/pytest -q tests/host

# Tests that need the real Jool module run inside the VM.
vm: venv
	$(PY) -m testbed.vm $(BIN)/pytest -q tests/vm

# The README's demo, end to end, in the VM.
demo-check: venv
	$(PY) -m testbed.vm $(BIN)/felix-nat64 demo --here

# The container image, built by buildah on a Debian base made by mmdebstrap
# and a TEST STAND-IN calico/node (testbed/image.py); cached under out/image.
image: venv
	$(PY) -m testbed.image build

# The image checked on the host (build secrets, a broken driver failing the
# build), then its userland run against the real Jool module in the VM.
image-check: image
	$(BIN)/pytest -q tests/image --ignore=tests/image/vm
	rootfs=$$($(PY) -m testbed.image rootfs) && $(PY) -m testbed.vm --disk "$$rootfs" $(BIN)/pytest -q tests/image/vm

test: venv
	$(MAKE) lint
	$(MAKE) unit
	$(MAKE) chart
	$(MAKE) host
	$(MAKE) image-check
	$(MAKE) vm
	$(MAKE) demo-check

demo: venv
	$(BIN)/felix-nat64 demo

render-example: venv
	$(BIN)/felix-nat64 render examples/two-prefixes.stream

bench-frontend: venv
	$(PY) -m benchmarks.frontend

# BENCH_ARGS: extra arguments of benchmarks.datapath, e.g. --levers or --rounds 3.
# The report (table, plot, figures in docs/performance.md) is written even when
# a part of the run failed; make then fails with the run's status.
bench: venv
	$(PY) -m benchmarks.frontend
	$(PY) -m benchmarks.prepare
	status=0; $(PY) -m testbed.vm $(PY) -m benchmarks.datapath $(BENCH_ARGS) || status=$$?; \
	$(PY) -m testbed.vm $(PY) -m benchmarks.footprint || status=$$?; \
	$(PY) -m benchmarks.report && exit $$status

# The built image's driver under its calico-node stand-in, on this host
# (benchmarks.footprint --image; docs/bench/footprint-image.json).
bench-image: image
	$(PY) -m benchmarks.prepare
	$(PY) -m benchmarks.footprint --image

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
