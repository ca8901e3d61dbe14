"""Renders the desired nftables table as libnftables JSON (pure).

Everything lives in one `inet felix-nat64` table, so the whole ruleset is
replaced in one transaction and nothing else on the node is touched (sets
that stay change element by element, see `Ruleset.element_updates`):

prerouting (filter, mangle priority)
    packets from workload interfaces whose source is an allowed pod CIDR and
    whose destination is in a NAT64 prefix get the NAT64 mark; the fwmark
    routing rule sends them to the translators.
forward (filter)
    marked packets to refused IPv4 destinations are rejected with ICMPv6
    administratively prohibited, and marked packets about to leave by
    anything but a translator link (their route is missing) with ICMPv6 no
    route, so a steered packet never leaves untranslated; IPv4 into a
    translator link is only let through for established flows (return
    traffic); only pool4 sources may leave a translator.
input (filter)
    a translator may not talk IPv4 to the node itself (its own addresses are
    never NAT64 destinations), and over IPv6 only ICMPv6; nothing but a
    translator may reach the node's pool4 addresses (the link ends).
steer-output (route, mangle priority) and output (filter)
    ICMPv6 errors the node sends towards a NAT64 destination get the NAT64
    mark, so they are routed into the translator (a Packet Too Big must
    reach the IPv4 sender as Fragmentation Needed); the node's own processes
    may not open connections into a translator (that would reach pods'
    sessions through pool4).
postrouting (nat, srcnat priority)
    the translated IPv4 leg is SNATed or masqueraded to the node's address,
    keeping the pool4 port wherever it is free (no random port selection),
    so that one pool4 transport address shows the same public port to every
    destination (RFC 4787 REQ-1, endpoint-independent mapping).
timeouts (filter, just after conntrack)
    new TCP and UDP conntrack entries of both legs of a NAT64 flow get a
    `ct timeout` object made from the NAT64*Timeout settings, so the node's
    mapping lives as long as Jool's session (RFC 4787 REQ-5) instead of
    conntrack's 30 s UDP default, and the pod's flow stays established for
    Felix's policy as long as the translator keeps it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from felix_nat64.model.ownership import LINK_PREFIX
from felix_nat64.model.ownership import NFT_FAMILY as FAMILY
from felix_nat64.model.ownership import NFT_TABLE as TABLE
from felix_nat64.model.state import DesiredState

# `ct timeout set` only acts on a conntrack entry that exists and is not yet
# confirmed (Linux v6.1.192 net/netfilter/nft_ct.c:901-902, in
# nft_ct_timeout_obj_eval), so it runs after conntrack's lookup (-200) on the
# flow's first packet.
PRIO_CT_TIMEOUT = -190
PRIO_MANGLE = -150
PRIO_FILTER = 0
PRIO_SRCNAT = 100

# Named counters: stable names that status and metrics read.
COUNTERS = {
    "steered": "pod packets steered into a translator",
    "refused": "pod packets to a refused IPv4 destination, rejected",
    "inbound_blocked": "packets towards a translator or its pool4 addresses that were not return traffic",
    "bad_source_blocked": "IPv4 packets leaving a translator from outside its pool4",
    "to_node_blocked": "packets from a translator to the node itself",
    "snat": "translated IPv4 packets source-NATed to the node",
    "unrouted": "steered pod packets that had no route into a translator, rejected instead of leaving "
                "untranslated",
    "errors_steered": "ICMPv6 errors the node sent towards a NAT64 destination, steered into a translator",
    "pool4_exhausted": "new pod flows rejected with ICMPv6 address unreachable while their translator's "
                       "pool4 had no transport address left",
}
EXHAUSTIBLE = {"tcp": "tcp", "udp": "udp", "icmp": "ipv6-icmp"}  # protocol -> l4proto name

# ICMPv6 errors the node itself may send about a packet that came out of a
# translator (packet too big on a smaller pod link, pod gone, hop limit):
# only the translator can turn them into ICMP errors for the IPv4 peer.
ICMPV6_ERRORS = ["destination-unreachable", "packet-too-big", "time-exceeded", "parameter-problem"]

JsonObj = dict[str, Any]


@dataclass(frozen=True)
class CtTimeout:
    """An nftables `ct timeout` object for both legs' conntrack entries of
    one L4 protocol.

    The name carries the timeouts, so a changed setting is a new object and
    the read-back comparison never has to trust a listed policy.
    """

    protocol: str  # "tcp" or "udp"
    policy: tuple[tuple[str, int], ...]  # (conntrack state, seconds)

    @property
    def name(self) -> str:
        # Distinct values in policy order: TCP's is established, transitory.
        seconds = dict.fromkeys(value for _, value in self.policy)
        return f"{self.protocol}-" + "-".join(str(value) for value in seconds)

    def text(self) -> str:
        """The object in nft's text syntax: libnftables 1.0.6 drops `policy`
        and `l3proto` from JSON input (its JSON output is complete)."""
        policy = ", ".join(f"{state} : {value}" for state, value in self.policy)
        return (f"add ct timeout {FAMILY} {TABLE} {self.name} {{ protocol {self.protocol}; "
                f"l3proto ip; policy = {{ {policy} }}; }}")


# conntrack's TCP states by the Jool timer that covers the same moment of a
# pod's connection (Jool v4.1.9 src/mod/common/steps/filtering_and_updating.c,
# lines 292-386): the IPv4 side's SYN makes Jool's session established, and a
# half-closed one (one FIN) stays on the established timer; the pod's lone
# SYN, both FINs and a reset put it on the transitory timer.
TCP_ESTABLISHED_STATES = ("established", "syn_recv", "fin_wait", "close_wait")
TCP_TRANSITORY_STATES = ("syn_sent", "last_ack", "time_wait", "close")


def ct_timeouts(desired: DesiredState) -> tuple[CtTimeout, ...]:
    """The conntrack timeouts of NAT64 flows, from the NAT64 session timeouts.

    conntrack forgets a UDP mapping 30 s after a single exchange and a TCP
    one 2 min after its close, 10 s after a reset or 1-2 min after a
    half close, while Jool keeps the session 5 minutes, 4 minutes or its
    established timeout. An established TCP entry gets Jool's established
    timeout, not conntrack's 5 days: beyond it the translator has forgotten
    the session anyway. ICMP has none: the nft 1.0.6 parser
    takes `ct timeout` objects for TCP and UDP only.
    """
    udp = int(desired.timeouts.udp)
    established = int(desired.timeouts.tcp_established)
    transitory = int(desired.timeouts.tcp_transitory)
    return (
        CtTimeout("tcp", (*((state, established) for state in TCP_ESTABLISHED_STATES),
                          *((state, transitory) for state in TCP_TRANSITORY_STATES))),
        CtTimeout("udp", (("unreplied", udp), ("replied", udp))),
    )


def _net_elem(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> Any:
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def element_key(elem: Any) -> Any:
    """A set element as a comparable value: the network of an address or
    prefix, the bounds of a range, the JSON text of anything else."""
    if isinstance(elem, str):
        return ipaddress.ip_network(elem)
    if isinstance(elem, dict) and "prefix" in elem:
        return ipaddress.ip_network((elem["prefix"]["addr"], elem["prefix"]["len"]))
    if isinstance(elem, dict) and "range" in elem:
        return tuple(ipaddress.ip_address(a) for a in elem["range"])
    return json.dumps(elem, sort_keys=True)


def _match(left: Any, right: Any, op: str = "==") -> JsonObj:
    return {"match": {"op": op, "left": left, "right": right}}


def _payload(proto: str, field: str) -> JsonObj:
    return {"payload": {"protocol": proto, "field": field}}


def _meta(key: str) -> JsonObj:
    return {"meta": {"key": key}}


def _counter(name: str) -> JsonObj:
    return {"counter": name}


class Ruleset:
    """The desired table: chains, sets, counters and tagged rules."""

    def __init__(self) -> None:
        self.chains: list[JsonObj] = []
        self.sets: list[JsonObj] = []
        self.elements: dict[str, list[Any]] = {}
        self.rules: list[JsonObj] = []
        self.ct_timeouts: tuple[CtTimeout, ...] = ()

    def chain(self, name: str, ctype: str, hook: str, prio: int) -> None:
        self.chains.append({"family": FAMILY, "table": TABLE, "name": name, "type": ctype,
                            "hook": hook, "prio": prio, "policy": "accept"})

    def set(self, name: str, stype: str, nets: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]
            ) -> None:
        self.sets.append({"family": FAMILY, "table": TABLE, "name": name, "type": stype,
                          "flags": ["interval"]})
        self.elements[name] = [_net_elem(n) for n in nets]

    def rule(self, chain: str, name: str, expr: Sequence[JsonObj]) -> None:
        # The comment tags each rule with its role and a hash of its content,
        # so a read-back can tell our rules apart and spot edited ones.
        digest = hashlib.sha256(json.dumps(expr, sort_keys=True).encode()).hexdigest()[:12]
        self.rules.append({"family": FAMILY, "table": TABLE, "chain": chain,
                           "comment": f"fn64:{name}:{digest}", "expr": list(expr)})

    def object_commands(self) -> str:
        """nft text that creates the table and its `ct timeout` objects; it
        runs before `commands()`, whose rules refer to the objects."""
        lines = [f"add table {FAMILY} {TABLE}", *(obj.text() for obj in self.ct_timeouts)]
        return "\n".join(lines)

    def commands(self, present: Mapping[str, Sequence[Any]] | None = None) -> list[JsonObj]:
        """Commands that create or refill the table (used inside one transaction).

        `present` holds, for each set that stays in the kernel, the elements
        it has now: such a set gets only the deletions and additions that
        make it equal, so an element kept is never removed and re-added (see
        `element_updates`). Any other set is flushed and filled.
        """
        present = present or {}
        cmds: list[JsonObj] = [{"add": {"table": {"family": FAMILY, "name": TABLE}}}]
        for name in COUNTERS:
            cmds.append({"add": {"counter": {"family": FAMILY, "table": TABLE, "name": name}}})
        for chain in self.chains:
            cmds.append({"add": {"chain": chain}})
            cmds.append({"flush": {"chain": {"family": FAMILY, "table": TABLE, "name": chain["name"]}}})
        for s in self.sets:
            cmds.append({"add": {"set": s}})
            if s["name"] in present:
                cmds += self.element_updates(s["name"], present[s["name"]])
                continue
            cmds.append({"flush": {"set": {"family": FAMILY, "table": TABLE, "name": s["name"]}}})
            elems = self.elements[s["name"]]
            if elems:
                cmds.append({"add": {"element": {"family": FAMILY, "table": TABLE, "name": s["name"],
                                                 "elem": elems}}})
        for rule in self.rules:
            cmds.append({"add": {"rule": rule}})
        return cmds

    def element_updates(self, name: str, present: Sequence[Any]) -> list[JsonObj]:
        """The deletions, then additions, that turn a set holding `present`
        into this one.

        Linux 6.1's rbtree set backend (the one interval sets use) can miss
        an element while a transaction that removes and re-adds it commits:
        its lookup keeps the closest lower element it walked past even when
        that copy is inactive, and then reports no match (v6.1.192
        net/netfilter/nft_set_rbtree.c lines 73-80 and 105-113). Flushing and
        refilling a set would let packets of live flows slip past it; only
        the elements that change are touched. Overlap checks skip elements
        deleted earlier in the same transaction (line 371), so a prefix can
        be replaced by one that overlaps it.
        """
        wanted = {element_key(e): e for e in self.elements[name]}
        have = {element_key(e): e for e in present}
        ref = {"family": FAMILY, "table": TABLE, "name": name}
        cmds: list[JsonObj] = []
        stale = [elem for key, elem in have.items() if key not in wanted]
        if stale:
            cmds.append({"delete": {"element": {**ref, "elem": stale}}})
        missing = [elem for key, elem in wanted.items() if key not in have]
        if missing:
            cmds.append({"add": {"element": {**ref, "elem": missing}}})
        return cmds

    def rule_tags(self) -> list[tuple[str, str]]:
        """(chain, comment) of every rule, in order."""
        return [(r["chain"], r["comment"]) for r in self.rules]


def render(desired: DesiredState, *, with_ct_timeouts: bool = True) -> Ruleset:
    """The table for a desired state (an active one: NAT64 off has no table).

    `with_ct_timeouts` False leaves out the conntrack timeout objects, for
    kernels without them (the IPv4 leg then keeps conntrack's defaults).
    """
    rs = Ruleset()
    mark = desired.firewall_mark
    trans_if = LINK_PREFIX + "*"
    new_flow = _match({"ct": {"key": "state"}}, "new")
    if with_ct_timeouts:
        rs.ct_timeouts = ct_timeouts(desired)
        rs.chain("timeouts", "filter", "prerouting", PRIO_CT_TIMEOUT)
        for obj in rs.ct_timeouts:
            # The IPv4 leg's entry is made by its first packet, which comes
            # out of a translator; the IPv6 leg's by the pod's first packet.
            # (The objects' l3proto does not restrict where they apply: only
            # the L4 protocol is checked, v6.1.192 nft_ct.c:898.)
            rs.rule("timeouts", f"ct-timeout-ipv4-{obj.protocol}", [
                new_flow,
                _match(_meta("iifname"), trans_if),
                _match(_meta("nfproto"), "ipv4"),
                _match(_meta("l4proto"), obj.protocol),
                {"ct timeout": obj.name},
            ])
            rs.rule("timeouts", f"ct-timeout-ipv6-{obj.protocol}", [
                new_flow,
                _match(_payload("ip6", "saddr"), "@sources6"),
                _match(_payload("ip6", "daddr"), "@prefixes6"),
                _match(_meta("l4proto"), obj.protocol),
                {"ct timeout": obj.name},
            ])
    rs.chain("prerouting", "filter", "prerouting", PRIO_MANGLE)
    rs.chain("forward", "filter", "forward", PRIO_FILTER)
    rs.chain("input", "filter", "input", PRIO_FILTER)
    rs.chain("steer-output", "route", "output", PRIO_MANGLE)
    rs.chain("output", "filter", "output", PRIO_FILTER)
    rs.chain("postrouting", "nat", "postrouting", PRIO_SRCNAT)

    rs.set("sources6", "ipv6_addr", desired.sources)
    rs.set("prefixes6", "ipv6_addr", desired.steered)
    rs.set("refused6", "ipv6_addr", [r.network for r in desired.refused])
    rs.set("pool4", "ipv4_addr", [desired.pool4_cidr])
    for proto in EXHAUSTIBLE:
        rs.set(f"exhausted_{proto}6", "ipv6_addr", desired.exhausted_prefixes(proto))

    marked = _match({"&": [_meta("mark"), mark]}, mark)
    for prefix in desired.workload_iface_prefixes:
        rs.rule("prerouting", f"steer-{prefix}", [
            _match(_meta("iifname"), prefix + "*"),
            _match(_payload("ip6", "saddr"), "@sources6"),
            _match(_payload("ip6", "daddr"), "@prefixes6"),
            {"mangle": {"key": _meta("mark"), "value": {"|": [_meta("mark"), mark]}}},
            _counter("steered"),
        ])

    rs.rule("forward", "refuse", [
        marked,
        _match(_payload("ip6", "daddr"), "@refused6"),
        _counter("refused"),
        {"reject": {"type": "icmpv6", "expr": "admin-prohibited"}},
    ])
    # Table NAT64RoutingTable ends in an unreachable default, so this only
    # catches a steered packet whose route lookup went elsewhere all the same
    # (the fwmark rule missing while the mark is set, say).
    rs.rule("forward", "unrouted-reject", [
        marked,
        _match(_meta("nfproto"), "ipv6"),
        _match(_meta("oifname"), trans_if, "!="),
        _counter("unrouted"),
        {"reject": {"type": "icmpv6", "expr": "no-route"}},
    ])
    # Jool drops what it cannot allocate pool4 for without a word; while it
    # reports pool4 exhausted, new flows get RFC 6146's address unreachable.
    for proto, l4proto in EXHAUSTIBLE.items():
        rs.rule("forward", f"pool4-exhausted-{proto}", [
            new_flow,
            marked,
            _match(_meta("l4proto"), l4proto),
            _match(_payload("ip6", "daddr"), f"@exhausted_{proto}6"),
            _counter("pool4_exhausted"),
            {"reject": {"type": "icmpv6", "expr": "addr-unreachable"}},
        ])
    rs.rule("forward", "inbound-return", [
        _match(_meta("oifname"), trans_if),
        _match(_meta("nfproto"), "ipv4"),
        _match({"ct": {"key": "state"}}, ["established", "related"], "in"),
        {"accept": None},
    ])
    rs.rule("forward", "inbound-block", [
        _match(_meta("oifname"), trans_if),
        _match(_meta("nfproto"), "ipv4"),
        _counter("inbound_blocked"),
        {"drop": None},
    ])
    rs.rule("forward", "unmarked-block", [
        _match(_meta("oifname"), trans_if),
        _match(_meta("nfproto"), "ipv6"),
        _match({"&": [_meta("mark"), mark]}, 0),
        _counter("inbound_blocked"),
        {"drop": None},
    ])
    rs.rule("forward", "source-check", [
        _match(_meta("iifname"), trans_if),
        _match(_meta("nfproto"), "ipv4"),
        _match(_payload("ip", "saddr"), "@pool4", "!="),
        _counter("bad_source_blocked"),
        {"drop": None},
    ])

    rs.rule("input", "node-v4-block", [
        _match(_meta("iifname"), trans_if),
        _match(_meta("nfproto"), "ipv4"),
        _counter("to_node_blocked"),
        {"drop": None},
    ])
    # The node ends of the translator links hold pool4 addresses: they exist
    # for the translators alone, so nothing else may reach them.
    rs.rule("input", "outside-to-pool4-block", [
        _match(_meta("iifname"), trans_if, "!="),
        _match(_meta("nfproto"), "ipv4"),
        _match(_payload("ip", "daddr"), "@pool4"),
        _counter("inbound_blocked"),
        {"drop": None},
    ])
    rs.rule("input", "node-v6-block", [
        _match(_meta("iifname"), trans_if),
        _match(_meta("nfproto"), "ipv6"),
        _match(_meta("l4proto"), "ipv6-icmp", "!="),
        _counter("to_node_blocked"),
        {"drop": None},
    ])

    rs.rule("steer-output", "steer-errors", [
        _match(_meta("l4proto"), "ipv6-icmp"),
        _match(_payload("icmpv6", "type"), {"set": ICMPV6_ERRORS}),
        _match(_payload("ip6", "daddr"), "@prefixes6"),
        {"mangle": {"key": _meta("mark"), "value": {"|": [_meta("mark"), mark]}}},
        _counter("errors_steered"),
    ])
    # Errors about the IPv4 leg (time exceeded, fragmentation needed) are
    # related to a flow and still pass.
    rs.rule("output", "node-to-translator-block", [
        _match(_meta("oifname"), trans_if),
        _match(_meta("nfproto"), "ipv4"),
        _match({"ct": {"key": "state"}}, ["new", "invalid", "untracked"], "in"),
        _counter("inbound_blocked"),
        {"drop": None},
    ])

    nat_match = [
        _match(_meta("nfproto"), "ipv4"),
        _match(_payload("ip", "saddr"), "@pool4"),
        _match(_meta("oifname"), trans_if, "!="),
    ]
    if desired.snat.port_range:
        # nftables maps ports only after a transport protocol match, so TCP
        # and UDP get the range and everything else (ICMP) its own rule.
        ports = {"port": {"range": [desired.snat.port_range.first, desired.snat.port_range.last]}}
        rs.rule("postrouting", "snat-ports", [
            *nat_match,
            _match(_meta("l4proto"), {"set": ["tcp", "udp"]}),
            _counter("snat"),
            _nat(desired, ports),
        ])
    rs.rule("postrouting", "snat", [*nat_match, _counter("snat"), _nat(desired, {})])
    return rs


def _nat(desired: DesiredState, ports: JsonObj) -> JsonObj:
    # No fully-random: the kernel keeps the source port whenever the
    # resulting tuple is free (nf_nat_core.c get_unique_tuple), so a pool4
    # transport address maps to the same public port for every destination.
    if desired.snat.address is not None:
        return {"snat": {"family": "ip", "addr": str(desired.snat.address), **ports}}
    return {"masquerade": ports} if ports else {"masquerade": None}
