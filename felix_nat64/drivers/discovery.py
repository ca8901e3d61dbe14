"""Finds felix-nat64's objects in the kernel, by their marks (model/ownership.py).

One reading serves everyone: the dataplane adopts and sweeps with it,
`status` and metrics sample the translators it finds, `cleanup` lists what
it removes, and the tests check that nothing is left. Only the node's
namespace is read here; what lives inside a translator namespace goes with
the namespace.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute

from felix_nat64.drivers.netns.namespaces import list_namespaces
from felix_nat64.drivers.nft.table import Nft
from felix_nat64.drivers.plan import MAIN_TABLE
from felix_nat64.model import ownership

Net = ipaddress.IPv4Network | ipaddress.IPv6Network

# rtnetlink route types (include/uapi/linux/rtnetlink.h).
RTN_UNICAST = 1
RTN_UNREACHABLE = 7


@dataclass(frozen=True)
class FoundTranslator:
    """A translator found in the kernel (possibly incomplete)."""

    tid: str
    namespace: str | None
    node_link: str | None
    parent: ipaddress.IPv6Network | None
    block: ipaddress.IPv4Network | None

    @property
    def adoptable(self) -> bool:
        """Complete enough for a new driver to keep it as it is."""
        return self.namespace is not None and self.parent is not None and self.block is not None


@dataclass(frozen=True)
class FoundRoute:
    """One of our routes in the node's namespace."""

    family: int
    table: int
    dst: Net
    kind: int  # rtnetlink route type: 1 unicast, 7 unreachable, ...
    gateway: str | None
    oif: int | None

    def __str__(self) -> str:
        kind = "unreachable " if self.kind == RTN_UNREACHABLE else ""
        return f"route {kind}{self.dst} table {self.table}"


@dataclass(frozen=True)
class FoundRule:
    """One of our IPv6 routing rules."""

    priority: int
    fwmark: int
    fwmask: int
    table: int

    def __str__(self) -> str:
        return f"ipv6 rule priority {self.priority} fwmark {self.fwmark:#x} table {self.table}"


@dataclass(frozen=True)
class Owned:
    """Everything of ours in the node's namespace."""

    nft_table: bool
    rules: tuple[FoundRule, ...]
    routes: tuple[FoundRoute, ...]
    translators: tuple[FoundTranslator, ...]

    @property
    def objects(self) -> list[str]:
        """One line per object, for `cleanup` and for tests that want none left."""
        lines = [f"nftables table {ownership.NFT_FAMILY} {ownership.NFT_TABLE}"] if self.nft_table else []
        lines += [str(r) for r in self.rules] + [str(r) for r in self.routes]
        for t in self.translators:
            if t.namespace:
                lines.append(f"namespace {t.namespace} (with its Jool instance)")
            if t.node_link:
                lines.append(f"link {t.node_link}")
        return lines

    def to_json(self) -> dict[str, Any]:
        return {
            "nftables_table": self.nft_table,
            "rules": [str(r) for r in self.rules],
            "routes": [str(r) for r in self.routes],
            "translators": [{"id": t.tid, "namespace": t.namespace, "node_link": t.node_link,
                             "parent": str(t.parent) if t.parent else None,
                             "block": str(t.block) if t.block else None} for t in self.translators],
            "objects": self.objects,
        }


def namespaces() -> list[str]:
    """Our translator namespaces (their /run/netns entries), sorted."""
    return [name for name in list_namespaces() if ownership.tid_of_namespace(name) is not None]


def translators(ipr: IPRoute | None = None) -> list[FoundTranslator]:
    """Every translator namespace and node link of ours, paired by id."""
    found: dict[str, dict[str, Any]] = {}
    for name in namespaces():
        found.setdefault(str(ownership.tid_of_namespace(name)), {})["namespace"] = name
    with contextlib.nullcontext(ipr) if ipr is not None else IPRoute() as node:
        ours: dict[int, dict[str, Any]] = {}
        for link in node.link("dump"):
            name = link.get("ifname") or ""
            tid = ownership.tid_of_node_link(name)
            if tid is None:
                continue
            entry = ours[link["index"]] = found.setdefault(tid, {})
            entry["node_link"] = name
            entry["parent"] = ownership.parent_of_alias(link.get("ifalias") or "")
        if ours:
            for addr in node.addr("dump", family=socket.AF_INET):
                entry = ours.get(addr["index"], {})
                if entry:
                    block = ownership.block_of_link_address(
                        ipaddress.IPv4Interface((addr.get("address"), addr["prefixlen"])))
                    if block is not None:
                        entry["block"] = block
    return [FoundTranslator(tid, e.get("namespace"), e.get("node_link"), e.get("parent"), e.get("block"))
            for tid, e in sorted(found.items())]


def routes(ipr: IPRoute) -> list[FoundRoute]:
    """Our routes, in every table, both families."""
    found = []
    for family in (socket.AF_INET, socket.AF_INET6):
        for r in ipr.route("dump", family=family):
            if not ownership.is_our_route(r["proto"]):
                continue
            default = "::" if family == socket.AF_INET6 else "0.0.0.0"  # noqa: S104
            dst = ipaddress.ip_network((r.get("dst") or default, r["dst_len"]))
            found.append(FoundRoute(family, r.get("table") or MAIN_TABLE, dst, r["type"], r.get("gateway"),
                                    r.get("oif")))
    return found


def rules(ipr: IPRoute) -> list[FoundRule]:
    """Our IPv6 rules (FRA_PROTOCOL, kernels 4.17 and later)."""
    return [FoundRule(int(r.get("priority") or 0), int(r.get("fwmark") or 0), int(r.get("fwmask") or 0),
                      int(r.get("FRA_TABLE") or r.get("table") or 0))
            for r in ipr.rule("dump", family=socket.AF_INET6)
            if ownership.is_our_route(r.get("FRA_PROTOCOL"))]


def discover() -> Owned:
    """Everything of ours in the node's namespace, read afresh."""
    table = Nft().list_table() is not None
    with IPRoute() as ipr:
        return Owned(table, tuple(rules(ipr)), tuple(routes(ipr)), tuple(translators(ipr)))

