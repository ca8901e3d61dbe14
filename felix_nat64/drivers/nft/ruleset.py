"""Renders the desired nftables table as libnftables JSON (pure).

Everything lives in one `inet felix-nat64` table, so the whole ruleset is
replaced in one transaction and nothing else on the node is touched:

prerouting (filter, mangle priority)
    packets from workload interfaces whose source is an allowed pod CIDR and
    whose destination is in a NAT64 prefix get the NAT64 mark; the fwmark
    routing rule sends them to the translators.
forward (filter)
    marked packets to refused IPv4 destinations are rejected with ICMPv6
    administratively prohibited; IPv4 into a translator link is only let
    through for established flows (return traffic); only pool4 sources may
    leave a translator.
input (filter)
    a translator may not talk IPv4 to the node itself (its own addresses are
    never NAT64 destinations), and over IPv6 only ICMPv6; nothing but a
    translator may reach the node's pool4 addresses (the link ends).
postrouting (nat, srcnat priority)
    the translated IPv4 leg is SNATed or masqueraded to the node's address.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Iterable, Sequence
from typing import Any

from felix_nat64.model.ownership import LINK_PREFIX
from felix_nat64.model.ownership import NFT_FAMILY as FAMILY
from felix_nat64.model.ownership import NFT_TABLE as TABLE
from felix_nat64.model.state import DesiredState

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
}

JsonObj = dict[str, Any]


def _net_elem(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> Any:
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


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

    def commands(self) -> list[JsonObj]:
        """Commands that create or refill the table (used inside one transaction)."""
        cmds: list[JsonObj] = [{"add": {"table": {"family": FAMILY, "name": TABLE}}}]
        for name in COUNTERS:
            cmds.append({"add": {"counter": {"family": FAMILY, "table": TABLE, "name": name}}})
        for chain in self.chains:
            cmds.append({"add": {"chain": chain}})
            cmds.append({"flush": {"chain": {"family": FAMILY, "table": TABLE, "name": chain["name"]}}})
        for s in self.sets:
            cmds.append({"add": {"set": s}})
            cmds.append({"flush": {"set": {"family": FAMILY, "table": TABLE, "name": s["name"]}}})
            elems = self.elements[s["name"]]
            if elems:
                cmds.append({"add": {"element": {"family": FAMILY, "table": TABLE, "name": s["name"],
                                                 "elem": elems}}})
        for rule in self.rules:
            cmds.append({"add": {"rule": rule}})
        return cmds

    def rule_tags(self) -> list[tuple[str, str]]:
        """(chain, comment) of every rule, in order."""
        return [(r["chain"], r["comment"]) for r in self.rules]


def render(desired: DesiredState) -> Ruleset:
    """The table for a desired state (an active one: NAT64 off has no table)."""
    rs = Ruleset()
    mark = desired.firewall_mark
    trans_if = LINK_PREFIX + "*"
    rs.chain("prerouting", "filter", "prerouting", PRIO_MANGLE)
    rs.chain("forward", "filter", "forward", PRIO_FILTER)
    rs.chain("input", "filter", "input", PRIO_FILTER)
    rs.chain("postrouting", "nat", "postrouting", PRIO_SRCNAT)

    rs.set("sources6", "ipv6_addr", desired.sources)
    rs.set("prefixes6", "ipv6_addr", desired.steered)
    rs.set("refused6", "ipv6_addr", [r.network for r in desired.refused])
    rs.set("pool4", "ipv4_addr", [desired.pool4_cidr])

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
    if desired.snat.address is not None:
        return {"snat": {"family": "ip", "addr": str(desired.snat.address), **ports,
                         "flags": ["fully-random"]}}
    return {"masquerade": {**ports, "flags": ["fully-random"]}}
