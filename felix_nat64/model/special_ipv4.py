"""IPv4 destinations that NAT64 must never reach.

Behind the Well-Known Prefix 64:ff9b::/96, RFC 6052 section 3.1 forbids every
IPv4 address that is not globally reachable; the list below is the IANA IPv4
Special-Purpose Address Registry (RFC 6890 and updates) entries whose
"Globally Reachable" column is False, plus multicast. Behind any prefix,
network-specific ones included, addresses that only make sense on the node
itself or its link are refused: translating to them would let a pod reach the
node's loopback, link-local services such as cloud metadata endpoints at
169.254.169.254, or broadcast and multicast groups.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

IPv4Net = ipaddress.IPv4Network
WELL_KNOWN_PREFIX = ipaddress.IPv6Network("64:ff9b::/96")


@dataclass(frozen=True)
class RefusedRange:
    """An IPv4 range that must not be translated to, and why."""

    network: IPv4Net
    reason: str


def _ranges(*pairs: tuple[str, str]) -> tuple[RefusedRange, ...]:
    return tuple(RefusedRange(IPv4Net(net), reason) for net, reason in pairs)


# Refused behind every prefix.
ALWAYS_REFUSED = _ranges(
    ("0.0.0.0/8", "this network (RFC 791)"),
    ("127.0.0.0/8", "loopback (RFC 1122)"),
    ("169.254.0.0/16", "link-local, incl. cloud metadata 169.254.169.254 (RFC 3927)"),
    ("224.0.0.0/4", "multicast (RFC 5771)"),
    ("255.255.255.255/32", "limited broadcast (RFC 919)"),
)


def _ietf_protocol_assignments() -> tuple[RefusedRange, ...]:
    # 192.0.0.0/24 is not global, except two anycast services registered as
    # globally reachable: PCP (192.0.0.9) and TURN (192.0.0.10).
    block = IPv4Net("192.0.0.0/24")
    parts = [block]
    for hole in (IPv4Net("192.0.0.9/32"), IPv4Net("192.0.0.10/32")):
        nxt: list[IPv4Net] = []
        for part in parts:
            if hole.subnet_of(part):
                nxt.extend(part.address_exclude(hole))
            else:
                nxt.append(part)
        parts = nxt
    return tuple(RefusedRange(p, "IETF protocol assignments (RFC 6890)") for p in sorted(parts))


# Refused behind the Well-Known Prefix only (RFC 6052 section 3.1).
NON_GLOBAL = (
    _ranges(
        ("10.0.0.0/8", "private-use (RFC 1918)"),
        ("100.64.0.0/10", "shared address space (RFC 6598)"),
        ("172.16.0.0/12", "private-use (RFC 1918)"),
    )
    + _ietf_protocol_assignments()
    + _ranges(
        ("192.0.2.0/24", "documentation TEST-NET-1 (RFC 5737)"),
        ("192.88.99.0/24", "deprecated 6to4 relay anycast (RFC 7526)"),
        ("192.168.0.0/16", "private-use (RFC 1918)"),
        ("198.18.0.0/15", "benchmarking (RFC 2544)"),
        ("198.51.100.0/24", "documentation TEST-NET-2 (RFC 5737)"),
        ("203.0.113.0/24", "documentation TEST-NET-3 (RFC 5737)"),
        ("240.0.0.0/4", "reserved (RFC 1112)"),
    )
)


def is_well_known(prefix: ipaddress.IPv6Network) -> bool:
    """True for the Well-Known Prefix and any part of it."""
    return prefix.subnet_of(WELL_KNOWN_PREFIX)


def reachable_behind(prefix: ipaddress.IPv6Network) -> list[IPv4Net]:
    """The IPv4 destinations of a /96-or-longer prefix that no fixed refusal
    covers (empty: the prefix could reach nothing)."""
    low32 = int(prefix.network_address) & 0xFFFFFFFF
    left = [IPv4Net((low32, prefix.prefixlen - 96))]
    for rng in refused_for(prefix):
        nxt: list[IPv4Net] = []
        for part in left:
            if part.subnet_of(rng.network):
                continue
            nxt.extend(part.address_exclude(rng.network) if rng.network.subnet_of(part) else [part])
        left = nxt
    return left


def refused_for(prefix: ipaddress.IPv6Network) -> tuple[RefusedRange, ...]:
    """The fixed refusals behind one NAT64 prefix (node addresses aside)."""
    if is_well_known(prefix):
        return ALWAYS_REFUSED + NON_GLOBAL
    return ALWAYS_REFUSED
