"""Typed rows of Jool's tables as the client returns them.

pool4 rows are `felix_nat64.drivers.plan.Pool4Entry`, the type the desired
state is written in, so a diff compares like with like.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from felix_nat64.drivers.jool.constants import SessionTimer, TcpState
from felix_nat64.model.protocol import Protocol


@dataclass(frozen=True, order=True)
class Taddr6:
    """An IPv6 transport address: address plus port (or ICMP identifier)."""

    address: ipaddress.IPv6Address
    port: int

    def __str__(self) -> str:
        return f"{self.address}#{self.port}"


@dataclass(frozen=True, order=True)
class Taddr4:
    """An IPv4 transport address: address plus port (or ICMP identifier)."""

    address: ipaddress.IPv4Address
    port: int

    def __str__(self) -> str:
        return f"{self.address}#{self.port}"


@dataclass(frozen=True)
class InstanceInfo:
    """One Jool instance, from any namespace (Jool lists them all)."""

    name: str
    framework: str  # "netfilter" | "iptables"
    # Low 32 bits of the kernel's struct net pointer: only good for telling
    # namespaces apart, and only while they live.
    namespace_id: int


@dataclass(frozen=True, order=True)
class BibEntry:
    """A BIB row: the IPv6 transport address and the pool4 one it is bound to."""

    proto: Protocol
    ipv6: Taddr6
    ipv4: Taddr4
    static: bool = False


@dataclass(frozen=True)
class SessionEntry:
    """A session row, named as Jool names the four transport addresses."""

    proto: Protocol
    src6: Taddr6  # the IPv6 node
    dst6: Taddr6  # the IPv4 node as the IPv6 side sees it (pool6 + IPv4)
    src4: Taddr4  # the pool4 transport address used for this flow
    dst4: Taddr4  # the IPv4 node
    state: TcpState  # TCP state machine; ESTABLISHED for UDP and ICMP
    timer: SessionTimer
    expiration_ms: int  # milliseconds until the session expires
