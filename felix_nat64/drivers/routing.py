"""The node's routing for NAT64: one fwmark rule, routes into the translators.

Pod packets marked by the nftables steering rule look up our own table,
which routes each NAT64 prefix to its translator's link; each translator's
pool4 range is routed back to it in the main table, for replies that
conntrack has de-SNATed. Every route carries our route protocol number, so
stale ones are found and removed without touching anyone else's.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from pyroute2 import IPRoute

from felix_nat64.drivers.netns.links import ROUTE_PROTO
from felix_nat64.drivers.plan import MAIN_TABLE, Route
from felix_nat64.logs import EventLogger


@dataclass(frozen=True)
class RuleSpec:
    """The fwmark rule sending marked IPv6 packets to our table."""

    mark: int
    table: int
    priority: int


@dataclass(frozen=True)
class _RouteKey:
    family: int
    table: int
    dst: str


class NodeRouting:
    """Converges the node's NAT64 rule and routes."""

    def __init__(self) -> None:
        self._log = EventLogger("routing")

    def apply(self, rule: RuleSpec | None, routes: Iterable[Route]) -> int:
        """Makes the node's rule and routes match; ours are swept from every table."""
        with IPRoute() as ipr:
            changes = self._converge_routes(ipr, list(routes))
            changes += self._converge_rule(ipr, rule)
        return changes

    def _converge_routes(self, ipr: IPRoute, routes: list[Route]) -> int:
        wanted: dict[_RouteKey, Route] = {}
        for r in routes:
            family = socket.AF_INET6 if r.dst.version == 6 else socket.AF_INET
            wanted[_RouteKey(family, r.table, str(r.dst))] = r
        changes = 0
        seen: set[_RouteKey] = set()
        for family in (socket.AF_INET, socket.AF_INET6):
            for cur in ipr.route("dump", family=family):  # every table
                if cur["proto"] != ROUTE_PROTO:
                    continue
                default = "::" if family == socket.AF_INET6 else "0.0.0.0"  # noqa: S104
                dst = ipaddress.ip_network((cur.get("dst") or default, cur["dst_len"]))
                key = _RouteKey(family, cur.get("table") or MAIN_TABLE, str(dst))
                want = wanted.get(key)
                if want is not None and cur.get("gateway") == str(want.gateway) \
                        and cur.get("oif") in ipr.link_lookup(ifname=want.dev):
                    seen.add(key)
                    continue
                if want is None:
                    ipr.route("del", family=family, dst=str(dst.network_address),
                              dst_len=dst.prefixlen, table=key.table, proto=ROUTE_PROTO)
                    self._log.info("route removed", dst=dst, table=key.table)
                    changes += 1
        for key, r in wanted.items():
            if key in seen:
                continue
            oif = ipr.link_lookup(ifname=r.dev)
            if not oif:
                raise RuntimeError(f"link {r.dev} for route {r.dst} does not exist")
            ipr.route("replace", family=key.family, dst=str(r.dst.network_address), dst_len=r.dst.prefixlen,
                      gateway=str(r.gateway), oif=oif[0], table=r.table, proto=ROUTE_PROTO)
            changes += 1
        return changes

    def _converge_rule(self, ipr: IPRoute, rule: RuleSpec | None) -> int:
        changes = 0
        found = False
        for cur in ipr.rule("dump", family=socket.AF_INET6):
            if not _is_ours(cur):
                continue
            mine = rule is not None and cur.get("fwmark") == rule.mark and cur.get("fwmask") == rule.mark \
                and _table(cur) == rule.table and cur.get("priority") == rule.priority
            if mine and not found:
                found = True
                continue
            ipr.rule("del", family=socket.AF_INET6, priority=cur.get("priority"), table=_table(cur),
                     fwmark=cur.get("fwmark"), fwmask=cur.get("fwmask"))
            self._log.info("rule removed", priority=cur.get("priority"), table=_table(cur))
            changes += 1
        if rule is not None and not found:
            ipr.rule("add", family=socket.AF_INET6, fwmark=rule.mark, fwmask=rule.mark, table=rule.table,
                     priority=rule.priority, protocol=ROUTE_PROTO)
            changes += 1
        return changes


def _table(rule: object) -> int:
    get = rule.get  # type: ignore[attr-defined]
    return int(get("FRA_TABLE") or get("table") or 0)


def _is_ours(rule: object) -> bool:
    # FRA_PROTOCOL tags the rule as ours (kernel >= 4.17).
    return bool(rule.get("FRA_PROTOCOL") == ROUTE_PROTO)  # type: ignore[attr-defined]
