"""The pure calculation: inputs in, desired dataplane state out.

No I/O and no clock: the same inputs always give the same state, so it is
tested exhaustively without root and `felix-nat64 render` shows exactly what
the driver would program.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from felix_nat64.model import addressing, special_ipv4
from felix_nat64.model.ownership import BLOCK_PREFIXLEN
from felix_nat64.model.settings import Settings
from felix_nat64.model.state import (
    DesiredState,
    Inputs,
    Pool,
    RefusedDestination,
    Snat,
    Timeouts,
    Translator,
)

IPv4Net = ipaddress.IPv4Network
IPv6Net = ipaddress.IPv6Network


class DesiredStateError(ValueError):
    """The settings and what Felix reports cannot be programmed together."""


class CapacityError(DesiredStateError):
    """More /96 parents than NAT64Pool4CIDR has /28 blocks."""


class Pool4OverlapError(DesiredStateError):
    """NAT64Pool4CIDR overlaps addresses the cluster uses."""


def unsupported_dataplane(settings: Settings) -> str:
    """Why felix-nat64 cannot work on this node's Calico dataplane ("" if it can).

    In Calico's eBPF dataplane the tc program on a workload's veth routes pod
    egress itself: a FIB lookup, then bpf_redirect_neigh() to the uplink,
    bypassing the IP stack (felix/bpf-gpl/fib_co_re.h, "doing Linux FIB
    lookup"). No netfilter hook sees those packets, so the steering mark, the
    refusals and the SNAT of the IPv4 leg would never run.
    """
    if settings.felix_bpf_enabled:
        return ("Felix's configuration has BPFEnabled=true: Calico's eBPF dataplane routes pod "
                "traffic in its tc programs, past the netfilter hooks felix-nat64 steers with, "
                "so NAT64 cannot work on this node; felix-nat64 programs nothing (the eBPF "
                "dataplane is not supported)")
    return ""


def build_desired(inputs: Inputs) -> DesiredState:
    """Computes the desired state; raises DesiredStateError if it cannot exist."""
    s = inputs.settings
    if not s.active:
        return DesiredState()
    check_pool4(inputs)
    parents = sorted({addressing.parent96(p) for p in s.prefixes})
    blocks = allocate_blocks(parents, s.pool4_cidr, inputs.previous_blocks)
    translators = tuple(
        Translator(parent, tuple(p for p in s.prefixes if p.subnet_of(parent)), blocks[parent])
        for parent in parents
    )
    sources, warnings = _sources(inputs)
    refused = tuple(_refused(inputs, s.prefixes))
    return DesiredState(
        translators=translators,
        sources=sources,
        refused=refused,
        snat=Snat(s.snat_address, s.port_range),
        mtu=s.mtu,
        timeouts=Timeouts(s.tcp_established_timeout, s.tcp_transitory_timeout, s.udp_timeout,
                          s.icmp_timeout),
        pool4_cidr=s.pool4_cidr,
        pool4_ports=s.pool4_ports,
        workload_iface_prefixes=s.interface_prefixes,
        firewall_mark=s.firewall_mark,
        routing_table=s.routing_table,
        rule_priority=s.rule_priority,
        exhausted=tuple(sorted(e for e in inputs.exhausted if e[0] in blocks)),
        warnings=tuple(warnings),
    )


def check_pool4(inputs: Inputs) -> None:
    """Raises Pool4OverlapError when NAT64Pool4CIDR overlaps an IPv4 IP pool,
    a service CIDR or a node's address: the node routes all of it to its
    translators (or refuses it), which would cut the node off from those."""
    pool4 = inputs.settings.pool4_cidr
    taken: list[tuple[IPv4Net, str]] = []
    taken += [(p.cidr, f"Calico IP pool {p.pool_id}") for p in inputs.pools if isinstance(p.cidr, IPv4Net)]
    taken += [(c, "service CIDR (BGPConfiguration)") for c in inputs.service_cidrs if isinstance(c, IPv4Net)]
    taken += [(IPv4Net(h.ipv4), f"address of Calico node {h.hostname}") for h in inputs.hosts
              if h.ipv4 is not None]
    taken += [(IPv4Net(t.address), f"{t.kind} tunnel address of Calico node {t.hostname}")
              for t in inputs.tunnels]
    for net, what in taken:
        if net.overlaps(pool4):
            raise Pool4OverlapError(
                f"NAT64Pool4CIDR {pool4} overlaps {net}, the {what}: the node routes NAT64Pool4CIDR to its "
                "translators; choose a range nothing in the cluster uses, e.g. one inside 169.254.0.0/16")


def allocate_blocks(parents: Iterable[IPv6Net], pool4_cidr: IPv4Net,
                    previous: Mapping[IPv6Net, IPv4Net]) -> dict[IPv6Net, IPv4Net]:
    """Gives each /96 parent a /28 of the pool4 range, keeping existing ones.

    A parent keeps its block while the block is still inside the range, so
    adding or removing another prefix never moves a live translator.
    """
    wanted = list(parents)
    shortfall = addressing.pool4_shortfall(wanted, pool4_cidr)
    if shortfall:
        raise CapacityError(f"NAT64Pool4CIDR {shortfall}")
    result: dict[IPv6Net, IPv4Net] = {}
    used: set[IPv4Net] = set()
    for parent in wanted:
        block = previous.get(parent)
        if block is not None and block.prefixlen == BLOCK_PREFIXLEN and block.subnet_of(pool4_cidr) \
                and block not in used:
            result[parent] = block
            used.add(block)
    # subnets() is lazy: only as many blocks as are needed are looked at.
    free = (b for b in pool4_cidr.subnets(new_prefix=BLOCK_PREFIXLEN) if b not in used)
    for parent in wanted:
        if parent in result:
            continue
        result[parent] = next(free)  # there are enough: checked above
    return result


def _sources(inputs: Inputs) -> tuple[tuple[IPv6Net, ...], list[str]]:
    s = inputs.settings
    warnings: list[str] = []
    v6_pools = [p for p in inputs.pools if isinstance(p.cidr, IPv6Net)]
    for prefix in s.prefixes:
        covering = [p for p in v6_pools if prefix.subnet_of(p.cidr)]  # type: ignore[arg-type]
        masquerading = [p for p in v6_pools if p.masquerade and not p.cidr.overlaps(prefix)]
        if masquerading and not covering:
            warnings.append(
                f"IPv6 pool {masquerading[0].cidr} has natOutgoing but no IP pool covers NAT64 "
                f"prefix {prefix}: Felix will masquerade that traffic before it is translated; "
                f"create a disabled IP pool with cidr {prefix}"
            )
        for pool in covering:
            if pool.cidr.prefixlen < 96 and pool.for_workloads:
                warnings.append(
                    f"IP pool {pool.cidr} contains NAT64 prefix {prefix}: it is treated as the "
                    "prefix's covering pool, not as a NAT64 source; list pod CIDRs in "
                    "NAT64SourceCIDRs if pods use it"
                )
    if s.source_cidrs is not None:
        return s.source_cidrs, warnings
    # Calico keeps pools disjoint, but the nftables interval set must never
    # receive overlapping elements whatever it is sent.
    sources = list(ipaddress.collapse_addresses(
        p.cidr for p in v6_pools
        if isinstance(p.cidr, IPv6Net) and p.for_workloads and not _overlaps_any(p, s.prefixes)
    ))
    if not sources:
        warnings.append("no IPv6 IP pool for workloads: no pod can use NAT64 yet")
    return tuple(sources), warnings


def _overlaps_any(pool: Pool, prefixes: Iterable[IPv6Net]) -> bool:
    return any(pool.cidr.overlaps(p) for p in prefixes)


def _refused(inputs: Inputs, prefixes: Iterable[IPv6Net]) -> Iterable[RefusedDestination]:
    s = inputs.settings
    node_ranges = [
        special_ipv4.RefusedRange(IPv4Net(h.ipv4), f"address of Calico node {h.hostname}")
        for h in sorted(inputs.hosts, key=lambda h: h.hostname) if h.ipv4 is not None
    ] + [
        special_ipv4.RefusedRange(IPv4Net(t.address), f"{t.kind} tunnel address of Calico node {t.hostname}")
        for t in inputs.tunnels
    ]
    own = [special_ipv4.RefusedRange(s.pool4_cidr, "felix-nat64's node-internal pool4 range")]
    own += [special_ipv4.RefusedRange(net, "listed in NAT64RefusedCIDRs") for net in s.refused_cidrs]
    for prefix in prefixes:
        parent = addressing.parent96(prefix)
        reachable = addressing.ipv4_range(prefix)
        found: dict[IPv4Net, str] = {}
        for rng in special_ipv4.refused_for(prefix) + tuple(own) + tuple(node_ranges):
            overlap = addressing.intersect4(rng.network, reachable)
            if overlap is not None and overlap not in found:
                found[overlap] = rng.reason
        # nftables interval sets reject overlapping elements: keep only the
        # widest. CIDRs nest or are disjoint, so one sorted sweep finds them.
        covered_to = -1
        for net in sorted(found, key=lambda n: (int(n.network_address), n.prefixlen)):
            if int(net.network_address) <= covered_to:
                continue
            covered_to = int(net.broadcast_address)
            yield RefusedDestination(addressing.embed(parent, net), net, found[net])
