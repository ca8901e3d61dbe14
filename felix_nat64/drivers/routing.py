"""The node's routing for NAT64: one fwmark rule, routes into the translators.

Pod packets marked by the nftables steering rule look up our own table,
which routes each NAT64 prefix to its translator's link; each translator's
pool4 range is routed back to it in the main table, for replies that
conntrack has de-SNATed. Both end in unreachable catch-alls (see
`plan.node_routes`). Every route carries our route protocol number, so
stale ones are found and removed without touching anyone else's.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from dataclasses import dataclass

from pyroute2 import IPRoute

from felix_nat64.drivers import discovery
from felix_nat64.drivers.discovery import RTN_UNICAST, RTN_UNREACHABLE
from felix_nat64.drivers.plan import Route
from felix_nat64.logs import EventLogger
from felix_nat64.model.ownership import ROUTE_PROTO


@dataclass(frozen=True)
class RuleSpec:
    """The fwmark rule sending marked IPv6 packets to our table."""

    mark: int
    table: int
    priority: int


class NodeRouting:
    """Converges the node's NAT64 rule and routes."""

    def __init__(self) -> None:
        self._log = EventLogger("routing")
        # The rule and routes an add-only pass has just converged and found
        # nothing of ours beyond: the pruning pass that follows it has nothing
        # to remove, and is spared reading every table again.
        self._nothing_stale: tuple[RuleSpec | None, tuple[Route, ...]] | None = None

    def apply(self, rule: RuleSpec | None, routes: Iterable[Route], *, prune: bool = True) -> int:
        """Makes the node's rule and routes match; ours are swept from every
        table. With `prune` false only what is missing or wrong is added or
        corrected, and what is no longer wanted stays for a later call: on
        the way up, traffic still steered to an old prefix keeps its route
        until the nftables table stops steering it."""
        wanted = (rule, tuple(routes))
        clean, self._nothing_stale = self._nothing_stale, None
        if prune and clean == wanted:
            return 0
        with IPRoute() as ipr:
            changes, stale = self._converge_routes(ipr, list(wanted[1]), prune)
            rule_changes, stale_rules = self._converge_rule(ipr, rule, prune)
        if not prune and not stale and not stale_rules:
            self._nothing_stale = wanted
        return changes + rule_changes

    def _converge_routes(self, ipr: IPRoute, routes: list[Route], prune: bool) -> tuple[int, int]:
        """Changes made, and stale routes left (none when pruning)."""
        wanted = {(_family(r), r.table, r.dst): r for r in routes}
        links = {link.get("ifname"): link["index"] for link in ipr.link("dump")}
        changes = stale = 0
        right: set[tuple[int, int, object]] = set()
        for cur in discovery.routes(ipr):
            key = (cur.family, cur.table, cur.dst)
            want = wanted.get(key)
            if want is not None:
                if _matches(cur, want, links):
                    right.add(key)
                continue  # replaced below
            if not prune:
                stale += 1
            else:
                ipr.route("del", family=cur.family, dst=str(cur.dst.network_address),
                          dst_len=cur.dst.prefixlen, table=cur.table, proto=ROUTE_PROTO)
                self._log.info("route removed", dst=cur.dst, table=cur.table)
                changes += 1
        for key, r in wanted.items():
            if key in right:
                continue
            where: dict[str, object] = {"type": RTN_UNREACHABLE}
            if not r.unreachable:
                oif = links.get(r.dev)
                if oif is None:
                    raise RuntimeError(f"link {r.dev} for route {r.dst} does not exist")
                where = {"type": RTN_UNICAST, "gateway": str(r.gateway), "oif": oif}
            ipr.route("replace", family=key[0], dst=str(r.dst.network_address), dst_len=r.dst.prefixlen,
                      table=r.table, proto=ROUTE_PROTO, **where)
            changes += 1
        return changes, stale

    def _converge_rule(self, ipr: IPRoute, rule: RuleSpec | None, prune: bool) -> tuple[int, int]:
        """Changes made, and stale rules left (none when pruning)."""
        changes = stale = 0
        found = False
        for cur in discovery.rules(ipr):
            mine = rule is not None and cur.fwmark == rule.mark and cur.fwmask == rule.mark \
                and cur.table == rule.table and cur.priority == rule.priority
            if mine and not found:
                found = True
                continue
            if not prune:
                stale += 1
                continue
            ipr.rule("del", family=socket.AF_INET6, priority=cur.priority, table=cur.table,
                     fwmark=cur.fwmark, fwmask=cur.fwmask)
            self._log.info("rule removed", priority=cur.priority, table=cur.table)
            changes += 1
        if rule is not None and not found:
            ipr.rule("add", family=socket.AF_INET6, fwmark=rule.mark, fwmask=rule.mark, table=rule.table,
                     priority=rule.priority, protocol=ROUTE_PROTO)
            changes += 1
        return changes, stale


def _matches(cur: discovery.FoundRoute, want: Route, links: dict[str, int]) -> bool:
    if want.unreachable:
        return cur.kind == RTN_UNREACHABLE
    return (cur.kind == RTN_UNICAST and cur.gateway == str(want.gateway)
            and cur.oif == links.get(str(want.dev)))


def _family(route: Route) -> int:
    return socket.AF_INET6 if route.dst.version == 6 else socket.AF_INET
