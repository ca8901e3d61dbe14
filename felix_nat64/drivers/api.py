"""What the loop needs from a dataplane, and what a dataplane reports back.

The driver-facing types live beside the drivers, not in the loop: drivers
implement this contract and the loop depends on it, never the other way.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from felix_nat64.model.state import DesiredState


@dataclass(frozen=True)
class ApplyOutcome:
    """What an apply changed in the kernel (0 when it was already right), and
    what the kernel could not do as wished (shown in status and logs)."""

    changes: int = 0
    warnings: tuple[str, ...] = ()


class DataplaneError(Exception):
    """The kernel could not be brought to the desired state (retryable)."""


class Dataplane(Protocol):
    """The kernel side: the only place that mutates the node."""

    def adopt(self) -> Mapping[ipaddress.IPv6Network, ipaddress.IPv4Network]:
        """Finds translators a previous driver left, keyed by /96 parent."""
        ...

    def apply(self, desired: DesiredState) -> ApplyOutcome:
        """Makes the kernel match `desired`; raises DataplaneError on failure.

        Every call reads the kernel afresh, so a periodic apply also repairs
        drift made by others.
        """
        ...
