"""RFC 6052 address arithmetic for /96-and-longer NAT64 prefixes."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from felix_nat64.model.ownership import BLOCK_PREFIXLEN

IPv4Net = ipaddress.IPv4Network
IPv6Net = ipaddress.IPv6Network


def parent96(prefix: IPv6Net) -> IPv6Net:
    """The /96 that contains a /96-or-longer prefix (one Jool pool6)."""
    return prefix.supernet(new_prefix=96) if prefix.prefixlen > 96 else prefix


def ipv4_range(prefix: IPv6Net) -> IPv4Net:
    """The IPv4 destinations a /96-or-longer prefix stands for."""
    low32 = int(prefix.network_address) & 0xFFFFFFFF
    return IPv4Net((low32, prefix.prefixlen - 96))


def embed(parent: IPv6Net, net4: IPv4Net) -> IPv6Net:
    """The IPv6 range under a /96 parent that maps to an IPv4 range."""
    base = int(parent.network_address) | int(net4.network_address)
    return IPv6Net((base, 96 + net4.prefixlen))


def embed_address(parent: IPv6Net, addr: ipaddress.IPv4Address) -> ipaddress.IPv6Address:
    """The IPv6 address under a /96 parent that stands for an IPv4 address."""
    return ipaddress.IPv6Address(int(parent.network_address) | int(addr))


def intersect4(a: IPv4Net, b: IPv4Net) -> IPv4Net | None:
    """The overlap of two CIDRs (one contains the other, or they are disjoint)."""
    if a.subnet_of(b):
        return a
    if b.subnet_of(a):
        return b
    return None


def pool4_shortfall(prefixes: Iterable[IPv6Net], pool4_cidr: IPv4Net) -> str | None:
    """Why NAT64Pool4CIDR cannot give each translator (one per /96 parent of
    `prefixes`) a block of its own, or None when it can."""
    needed = len({parent96(p) for p in prefixes})
    blocks = 2 ** (BLOCK_PREFIXLEN - pool4_cidr.prefixlen) if pool4_cidr.prefixlen <= BLOCK_PREFIXLEN else 0
    if needed <= blocks:
        return None
    return (f"{pool4_cidr} holds {blocks} /{BLOCK_PREFIXLEN} blocks but the prefixes need {needed} "
            "translators (one per /96); use a larger range")
