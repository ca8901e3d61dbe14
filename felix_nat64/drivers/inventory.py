"""What felix-nat64 objects exist on this node, read from the kernel."""

from __future__ import annotations

import socket
from typing import Any

from pyroute2 import IPRoute

from felix_nat64.drivers.netns.links import ROUTE_PROTO, discover
from felix_nat64.drivers.nft.table import Nft


def inventory() -> dict[str, Any]:
    """Every kernel object felix-nat64 owns, by kind, plus a flat list."""
    objects: list[str] = []
    table = Nft().list_table()
    if table is not None:
        objects.append("nftables table inet felix-nat64")
    rules: list[str] = []
    routes: list[str] = []
    with IPRoute() as ipr:
        for r in ipr.rule("dump", family=socket.AF_INET6):
            if r.get("FRA_PROTOCOL") == ROUTE_PROTO:
                rules.append(f"ipv6 rule priority {r.get('priority')} fwmark {r.get('fwmark'):#x} "
                             f"table {r.get('FRA_TABLE')}")
        for family in (socket.AF_INET, socket.AF_INET6):
            for r in ipr.route("dump", family=family):
                if r["proto"] == ROUTE_PROTO:
                    routes.append(f"route {r.get('dst')}/{r['dst_len']} table {r.get('table')}")
    objects += rules + routes
    translators = []
    for t in discover():
        if t.namespace:
            objects.append(f"namespace {t.namespace} (with its Jool instance)")
        if t.node_link:
            objects.append(f"link {t.node_link}")
        translators.append({"id": t.tid, "namespace": t.namespace, "node_link": t.node_link,
                            "parent": str(t.parent) if t.parent else None,
                            "block": str(t.block) if t.block else None})
    return {"nftables_table": table is not None, "rules": rules, "routes": routes,
            "translators": translators, "objects": objects}
