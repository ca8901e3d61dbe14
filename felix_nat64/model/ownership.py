"""Every mark felix-nat64 puts on a kernel object, and how it is recognised.

A driver that restarts, `felix-nat64 status`, `felix-nat64 cleanup` and the
tests all find felix-nat64's objects by these marks alone, and touch nothing
that does not carry one (docs/architecture.md, "What felix-nat64 owns in the
kernel"). The marks are plain values, so they live beside the model that
names the desired objects; the kernel is read in `drivers/discovery.py`.
"""

from __future__ import annotations

import hashlib
import ipaddress

# Named network namespaces (/run/netns/felix-nat64-<id>), one per translator.
NAMESPACE_PREFIX = "felix-nat64-"
# Node side of each translator's veth pair: fn64-<id>. Felix's InterfacePrefix
# must not cover it, and the nftables rules match it as "fn64-*".
LINK_PREFIX = "fn64-"
# Translator side of the pair, inside the translator's namespace.
NS_LINK_NAME = "fn64-node"
# The node link's alias records the /96 it serves, so a restart can adopt it.
ALIAS_PREFIX = "felix-nat64 parent="
# The one Jool instance in each translator namespace.
JOOL_INSTANCE = "felix-nat64"
# The one nftables table.
NFT_FAMILY = "inet"
NFT_TABLE = "felix-nat64"
# Routes and the fwmark rule carry this protocol number. The kernel does not
# interpret numbers above RTPROT_STATIC, and 164 is not one of the RTPROT_*
# values of include/uapi/linux/rtnetlink.h (Linux 6.1, lines 276-307).
ROUTE_PROTO = 164
# Defaults of the settings that name the routing table and rule priority.
DEFAULT_ROUTING_TABLE = 6464
DEFAULT_RULE_PRIORITY = 96
DEFAULT_FIREWALL_MARK = 0x1000
# Each translator gets one block of NAT64Pool4CIDR; its node link holds the
# block's first /30, which is how a restart reads the block back.
DEFAULT_POOL4_CIDR = ipaddress.IPv4Network("169.254.64.0/24")
BLOCK_PREFIXLEN = 28
LINK_PREFIXLEN = 30
# Link-local next hops on every translator link.
NODE_LINK_LL = ipaddress.IPv6Interface("fe80::1/64")
NS_LINK_LL = ipaddress.IPv6Interface("fe80::2/64")


def translator_id(parent: ipaddress.IPv6Network) -> str:
    """A short stable id for a /96 parent, used in kernel object names."""
    return hashlib.sha256(parent.network_address.packed).hexdigest()[:8]


def namespace_name(tid: str) -> str:
    return NAMESPACE_PREFIX + tid


def node_link_name(tid: str) -> str:
    return LINK_PREFIX + tid


def link_alias(parent: ipaddress.IPv6Network) -> str:
    """The alias of a translator's node link."""
    return ALIAS_PREFIX + str(parent)


def tid_of_namespace(name: str) -> str | None:
    """The translator id of one of our namespaces; None for anyone else's."""
    return name[len(NAMESPACE_PREFIX):] if name.startswith(NAMESPACE_PREFIX) else None


def tid_of_node_link(name: str) -> str | None:
    """The translator id of one of our node links; None for anyone else's."""
    return name[len(LINK_PREFIX):] if name.startswith(LINK_PREFIX) else None


def parent_of_alias(alias: str) -> ipaddress.IPv6Network | None:
    """The /96 a node link's alias records, or None if it is not our alias."""
    if not alias.startswith(ALIAS_PREFIX):
        return None
    try:
        return ipaddress.IPv6Network(alias[len(ALIAS_PREFIX):])
    except ValueError:
        return None


def block_of_link_address(iface: ipaddress.IPv4Interface) -> ipaddress.IPv4Network | None:
    """The translator block an address on a node link reveals: only the /30
    at the start of a block counts."""
    if iface.network.prefixlen != LINK_PREFIXLEN:
        return None
    return ipaddress.IPv4Network((int(iface.network.network_address), BLOCK_PREFIXLEN), strict=False)


def is_our_route(protocol: object) -> bool:
    """Whether a route (or, through FRA_PROTOCOL, a rule) with this protocol
    number is ours; iproute2's JSON gives it as a string."""
    return protocol in (ROUTE_PROTO, str(ROUTE_PROTO))
