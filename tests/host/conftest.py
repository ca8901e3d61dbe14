"""Fixtures for tests that run as root on this machine's kernel, inside throwaway namespaces.

The node is a named namespace too, so nothing here touches this machine's own
networking. These tests fail (never skip) when they cannot run: CI runs them.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator

import pytest

from testbed.topology import Topology, build_topology, cleanup_stale
from testbed.traffic import ServerProcess, start_server

HOST_PREFIX = "fn64h-"
# Namespace names under /run/netns are machine-wide: two runs from two
# checkouts would tear down each other's topologies and translators.
HOST_LOCK = "/run/lock/felix-nat64-host-tests.lock"


def require_root() -> None:
    """Fail with the reason when this machine cannot run the host-kernel tests."""
    if os.geteuid() != 0:
        pytest.fail(
            "tests/host need root (network namespaces, veths and nftables on this kernel): "
            "run them as root, e.g. sudo .venv/bin/pytest -q tests/host",
            pytrace=False,
        )
    missing = [tool for tool in ("nsenter", "nft") if shutil.which(tool) is None]
    if missing:
        pytest.fail(
            f"tests/host need {', '.join(missing)}: run scripts/install-system-deps.sh", pytrace=False
        )


@pytest.fixture(scope="session", autouse=True)
def one_run_at_a_time() -> Iterator[None]:
    require_root()
    with open(HOST_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@pytest.fixture(scope="session")
def root() -> None:
    require_root()


@pytest.fixture(scope="module")
def topo(root: None) -> Iterator[Topology]:
    """A topology with two pods and the far hop, its node a throwaway namespace."""
    cleanup_stale(HOST_PREFIX)
    topology = build_topology(HOST_PREFIX, pods=2, far=True)
    try:
        yield topology
    finally:
        topology.teardown()


@pytest.fixture(scope="module")
def inet4_server(topo: Topology) -> Iterator[ServerProcess]:
    """TCP and UDP servers on every inet4 server address."""
    with start_server(topo.inet4_netns, topo.inet4_server_addresses) as server:
        yield server


@pytest.fixture(scope="module")
def far_server(topo: Topology) -> Iterator[ServerProcess]:
    """TCP and UDP servers on the far hop's addresses."""
    assert topo.far_netns is not None
    with start_server(topo.far_netns, topo.far_server_addresses) as server:
        yield server
