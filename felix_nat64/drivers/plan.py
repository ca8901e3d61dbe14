"""Desired state in kernel terms: what each driver programs (pure).

Shared by the drivers and by `felix-nat64 render`, so a dry run shows
exactly what the driver would do.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from felix_nat64.drivers.nft import ruleset
from felix_nat64.model.jsonview import to_jsonable
from felix_nat64.model.ownership import JOOL_INSTANCE, NODE_LINK_LL, NS_LINK_LL
from felix_nat64.model.protocol import PROTOCOLS, Protocol
from felix_nat64.model.state import DesiredState, Translator

DEFAULT_MTU = 1500
POOL4_ICMP_IDS = (0, 65535)
# Jool's lowest-ipv6-mtu: the size it cuts IPv4 packets without DF into.
# 1280, the IPv6 minimum MTU (RFC 7915 section 4's conservative choice and
# Jool's default, src/common/constants.h:80), fits every link a translated
# fragment crosses, the pod's included. Anything larger breaks fragments:
# Jool 4.1.9 reassembles IPv4 fragments and cuts them again only when the
# largest IPv4 fragment exceeds it (4to6.c:374 compares frag_max_size, an
# IPv4 size, with it, forgetting the 20 + 8 bytes the IPv6 and fragment
# headers add); otherwise it sends one oversized packet without its own
# fragmentation (4to6.c:740, ignore_df false at :451), which the kernel's
# ip6_fragment refuses (Ip6FragFails, JSTAT_DST_OUTPUT). Measured in the VM
# with 3000-byte UDP answers: 1500 loses those cut into 1500-byte IPv4
# fragments and those cut into 1400; 1472 (the link MTU minus 28) still
# loses the 1400-byte ones; 1280 carries both.
LOWEST_IPV6_MTU = 1280


@dataclass(frozen=True)
class Pool4Entry:
    """One Jool pool4 entry."""

    proto: Protocol
    prefix: ipaddress.IPv4Network
    port_min: int
    port_max: int
    mark: int = 0


@dataclass(frozen=True)
class JoolConfig:
    """A Jool NAT64 instance as felix-nat64 wants it."""

    instance: str
    pool6: ipaddress.IPv6Network
    pool4: tuple[Pool4Entry, ...]
    # Jool global names as its CLI spells them; timeouts in milliseconds.
    globals: Mapping[str, int | bool]


@dataclass(frozen=True)
class Route:
    """A route felix-nat64 owns: through a gateway, or `unreachable` (no
    gateway, no link) so that what would fall through is refused instead."""

    dst: ipaddress.IPv4Network | ipaddress.IPv6Network
    gateway: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    dev: str | None
    table: int  # 254 is main
    unreachable: bool = False


MAIN_TABLE = 254
ANY6 = ipaddress.IPv6Network("::/0")


def jool_config(t: Translator, desired: DesiredState) -> JoolConfig:
    """The Jool instance serving translator `t`."""
    ports = (desired.pool4_ports.first, desired.pool4_ports.last)
    pool4 = tuple(
        Pool4Entry(proto, t.pool4, *(POOL4_ICMP_IDS if proto is Protocol.ICMP else ports))
        for proto in PROTOCOLS
    )
    to = desired.timeouts
    return JoolConfig(
        instance=JOOL_INSTANCE,
        pool6=t.parent,
        pool4=pool4,
        globals={
            "tcp-est-timeout": int(to.tcp_established * 1000),
            "tcp-trans-timeout": int(to.tcp_transitory * 1000),
            "udp-timeout": int(to.udp * 1000),
            "icmp-timeout": int(to.icmp * 1000),
            "lowest-ipv6-mtu": LOWEST_IPV6_MTU,
        },
    )


def node_routes(desired: DesiredState) -> tuple[Route, ...]:
    """Routes in the node's namespace: NAT64 prefixes into the translators
    (policy table, reached by fwmark), and each pool4 back to its translator.

    Both end in an unreachable catch-all, so the path fails closed: a marked
    packet whose prefix route is missing is refused rather than falling
    through to the main table and leaving untranslated, and a reply
    de-NATed to a pool4 address no translator holds (any more) is refused
    rather than following the default route out of the node.
    """
    routes: list[Route] = [
        Route(ANY6, None, None, desired.routing_table, unreachable=True),
        Route(desired.pool4_cidr, None, None, MAIN_TABLE, unreachable=True),
    ]
    for t in desired.translators:
        for prefix in t.prefixes:
            routes.append(Route(prefix, NS_LINK_LL.ip, t.node_link, desired.routing_table))
        routes.append(Route(t.pool4, t.link_ns_addr.ip, t.node_link, MAIN_TABLE))
    return tuple(routes)


def translator_routes(t: Translator) -> tuple[Route, ...]:
    """Default routes inside a translator namespace, both back to the node."""
    return (
        Route(ipaddress.IPv6Network("::/0"), NODE_LINK_LL.ip, t.ns_link, MAIN_TABLE),
        Route(ipaddress.IPv4Network("0.0.0.0/0"), t.link_node_addr.ip, t.ns_link, MAIN_TABLE),
    )


def program(desired: DesiredState, mtu: int | None = None) -> dict[str, Any]:
    """Everything the drivers would program, as JSON."""
    if not desired.active:
        return {"nftables": None, "routing": None, "translators": [],
                "summary": "NAT64 off: every felix-nat64 object is removed"}
    effective_mtu = mtu or desired.mtu or DEFAULT_MTU
    rs = ruleset.render(desired)
    return {
        # nft text, run before the JSON transaction (see ruleset.CtTimeout)
        "nftables_objects": rs.object_commands().splitlines(),
        "nftables": {"nftables": rs.commands()},
        "routing": {
            "rule": {"fwmark": desired.firewall_mark, "mask": desired.firewall_mark,
                     "table": desired.routing_table, "priority": desired.rule_priority,
                     "family": "inet6"},
            "routes": to_jsonable(node_routes(desired)),
        },
        "translators": [
            {
                "namespace": t.namespace,
                "node_link": {"name": t.node_link, "addresses": [str(t.link_node_addr), str(NODE_LINK_LL)],
                              "mtu": effective_mtu, "gro": False},
                "ns_link": {"name": t.ns_link,
                            "addresses": [str(t.link_ns_addr), str(NS_LINK_LL), str(t.link_ns_addr6)],
                            "mtu": effective_mtu, "gro": False},
                "routes": to_jsonable(translator_routes(t)),
                "sysctls": {"net.ipv4.conf.all.forwarding": 1, "net.ipv6.conf.all.forwarding": 1},
                "jool": to_jsonable(jool_config(t, desired)),
            }
            for t in desired.translators
        ],
        "mtu": effective_mtu if mtu or desired.mtu else f"auto (pod network MTU, else {DEFAULT_MTU})",
    }
