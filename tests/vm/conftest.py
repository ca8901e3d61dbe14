"""Fixtures for tests that need the real Jool kernel module.

They run as root inside the test VM (testbed.vm), which boots a
kernel that has jool.ko. Anywhere else the whole run stops with an error
saying how to run them: these tests are never skipped.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from testbed.vm import in_vm

if TYPE_CHECKING:
    from tests.vm.dataplane_fixtures import RunningDriver

HERE = Path(__file__).resolve().parent
NOT_IN_VM_EXIT = 3
NOT_IN_VM = (
    "tests/vm need the real Jool kernel module and root, so they only run inside the test VM:\n"
    "    .venv/bin/python -m testbed.vm .venv/bin/pytest -q tests/vm\n"
    "(FELIX_NAT64_IN_VM=1 is not set here.)"
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if in_vm():
        return
    if any(Path(str(item.path)).resolve().is_relative_to(HERE) for item in items):
        pytest.exit(NOT_IN_VM, returncode=NOT_IN_VM_EXIT)


def _ip(*argv: str) -> None:
    done = subprocess.run(["ip", *argv], capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, f"ip {' '.join(argv)} failed: {done.stderr}"


@pytest.fixture
def make_netns() -> Iterator[Callable[[], str]]:
    """Creates throwaway named namespaces (loopback up); deletes them afterwards,
    which also destroys any Jool instance inside."""
    created: list[str] = []

    def make() -> str:
        name = f"jooltest-{uuid.uuid4().hex[:8]}"
        _ip("netns", "add", name)
        created.append(name)
        _ip("-n", name, "link", "set", "lo", "up")
        return name

    yield make
    for name in reversed(created):
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


@pytest.fixture
def netns(make_netns: Callable[[], str]) -> str:
    return make_netns()


@pytest.fixture
def exclusive(driver: RunningDriver) -> None:
    """Stops the module's `driver` fixture: the test runs drivers of its own."""
    driver.stop()
