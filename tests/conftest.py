"""Fixtures shared by the suites that run in the test VM.

The simulated node uses this VM's own namespace and fixed interface names,
so one node serves a whole run of tests/vm and tests/vm/reliability.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.vm.dataplane_fixtures import Node


@pytest.fixture(scope="session")
def node() -> Iterator[Node]:
    """The simulated Calico node (this VM) with its servers, shared by the session."""
    from tests.vm.dataplane_fixtures import simulated_node  # noqa: PLC0415 (VM-only imports)

    with simulated_node() as built:
        yield built
