"""Frozen dataclasses for felix-nat64's inputs and desired dataplane state."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from felix_nat64.model.ownership import (
    DEFAULT_FIREWALL_MARK,
    DEFAULT_POOL4_CIDR,
    DEFAULT_ROUTING_TABLE,
    DEFAULT_RULE_PRIORITY,
    LINK_PREFIXLEN,
    NS_LINK_NAME,
    namespace_name,
    node_link_name,
    translator_id,
)
from felix_nat64.model.settings import Settings
from felix_nat64.model.values import PortRange

IPv4Net = ipaddress.IPv4Network
IPv6Net = ipaddress.IPv6Network

@dataclass(frozen=True)
class Pool:
    """A Calico IP pool as Felix reports it."""

    pool_id: str
    cidr: IPv4Net | IPv6Net
    masquerade: bool
    allowed_uses: tuple[str, ...] = ()

    @property
    def for_workloads(self) -> bool:
        # allowed_uses only exists from Calico v3.32; before, every pool is for workloads.
        return not self.allowed_uses or "Workload" in self.allowed_uses


@dataclass(frozen=True)
class Host:
    """A Calico node's addresses as Felix reports them."""

    hostname: str
    ipv4: ipaddress.IPv4Address | None = None
    ipv6: ipaddress.IPv6Address | None = None


@dataclass(frozen=True, order=True)
class TunnelAddress:
    """An IPv4 address a Calico node uses for a tunnel (Felix's VTEP and
    WireGuard endpoint updates)."""

    hostname: str
    kind: str  # "vxlan" | "wireguard"
    address: ipaddress.IPv4Address


@dataclass(frozen=True)
class Inputs:
    """Everything the desired state is computed from."""

    settings: Settings
    pools: tuple[Pool, ...] = ()
    hosts: tuple[Host, ...] = ()
    # Translator blocks already in use, kept so a change elsewhere never
    # renumbers a live translator (which would cut its sessions).
    previous_blocks: Mapping[IPv6Net, IPv4Net] = field(default_factory=lambda: MappingProxyType({}))
    tunnels: tuple[TunnelAddress, ...] = ()
    service_cidrs: tuple[IPv4Net | IPv6Net, ...] = ()
    # (translator /96, protocol) whose pool4 Jool reports exhausted: new flows
    # are rejected at the node (dataplane/pool4watch.py).
    exhausted: frozenset[tuple[IPv6Net, str]] = frozenset()


@dataclass(frozen=True)
class Translator:
    """One Jool instance in its own namespace, serving one /96 parent."""

    parent: IPv6Net
    prefixes: tuple[IPv6Net, ...]  # the configured prefixes inside `parent`
    block: IPv4Net  # a /28 of NAT64Pool4CIDR

    @property
    def tid(self) -> str:
        return translator_id(self.parent)

    @property
    def namespace(self) -> str:
        return namespace_name(self.tid)

    @property
    def node_link(self) -> str:
        return node_link_name(self.tid)

    @property
    def ns_link(self) -> str:
        return NS_LINK_NAME

    @property
    def link_node_addr(self) -> ipaddress.IPv4Interface:
        return ipaddress.IPv4Interface((int(self.block.network_address) + 1, LINK_PREFIXLEN))

    @property
    def link_ns_addr(self) -> ipaddress.IPv4Interface:
        return ipaddress.IPv4Interface((int(self.block.network_address) + 2, LINK_PREFIXLEN))

    @property
    def link_ns_addr6(self) -> ipaddress.IPv6Interface:
        """The translator's own routable IPv6 address: its IPv4 link address
        embedded in its /96 (RFC 6052), the identity an IPv4 hop has when seen
        through this NAT64. Jool's own ICMPv6 errors (hop limit exceeded,
        ...) take it as their source; with only link-local addresses they
        would leave with a link-local source, which the node may not forward
        to a pod (RFC 4291 section 2.5.6)."""
        base = int(self.parent.network_address) | int(self.link_ns_addr.ip)
        return ipaddress.IPv6Interface((base, 128))

    @property
    def pool4(self) -> IPv4Net:
        # The upper half of the block: 8 addresses' worth of ports per protocol.
        return list(self.block.subnets(prefixlen_diff=1))[1]


@dataclass(frozen=True)
class RefusedDestination:
    """IPv6 destinations inside a NAT64 prefix that are rejected, and why."""

    network: IPv6Net
    ipv4: IPv4Net
    reason: str


@dataclass(frozen=True)
class Timeouts:
    """Jool session timeouts, in seconds."""

    tcp_established: float
    tcp_transitory: float
    udp: float
    icmp: float


@dataclass(frozen=True)
class Snat:
    """How the IPv4 leg leaves the node."""

    address: ipaddress.IPv4Address | None  # None: masquerade
    port_range: PortRange | None


@dataclass(frozen=True)
class DesiredState:
    """What the kernel should hold. No translators means: nothing of ours."""

    translators: tuple[Translator, ...] = ()
    sources: tuple[IPv6Net, ...] = ()
    refused: tuple[RefusedDestination, ...] = ()
    snat: Snat = Snat(None, None)
    mtu: int | None = None
    timeouts: Timeouts = Timeouts(0, 0, 0, 0)
    pool4_cidr: IPv4Net = DEFAULT_POOL4_CIDR
    pool4_ports: PortRange = PortRange(1024, 65535)
    workload_iface_prefixes: tuple[str, ...] = ("cali",)
    firewall_mark: int = DEFAULT_FIREWALL_MARK
    routing_table: int = DEFAULT_ROUTING_TABLE
    rule_priority: int = DEFAULT_RULE_PRIORITY
    exhausted: tuple[tuple[IPv6Net, str], ...] = ()  # (translator /96, protocol)
    warnings: tuple[str, ...] = ()

    @property
    def active(self) -> bool:
        return bool(self.translators)

    @property
    def steered(self) -> tuple[IPv6Net, ...]:
        return tuple(p for t in self.translators for p in t.prefixes)

    def exhausted_prefixes(self, proto: str) -> tuple[IPv6Net, ...]:
        """The steered prefixes whose translator has no pool4 room for `proto`."""
        parents = {parent for parent, p in self.exhausted if p == proto}
        return tuple(p for t in self.translators if t.parent in parents for p in t.prefixes)

    @property
    def blocks(self) -> Mapping[IPv6Net, IPv4Net]:
        return MappingProxyType({t.parent: t.block for t in self.translators})
