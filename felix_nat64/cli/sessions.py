"""`felix-nat64 sessions`: Jool's sessions (or BIB) on this node, filtered and paged."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
from typing import Any

from felix_nat64.cli import exitcodes
from felix_nat64.cli.errors import CliError
from felix_nat64.cli.tables import table


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "sessions",
        help="list NAT64 sessions (or BIB entries) with filters and paging",
        description="Lists the Jool sessions of every translator on this node (needs root). "
                    "Filters combine; --page and --limit page through large tables.",
    )
    p.add_argument("--bib", action="store_true", help="list BIB entries instead of sessions")
    p.add_argument("--proto", choices=["tcp", "udp", "icmp"], help="only this protocol")
    p.add_argument("--pod", metavar="ADDR", help="only this pod IPv6 address (or CIDR)")
    p.add_argument("--dest", metavar="ADDR", help="only this IPv4 destination (or CIDR; sessions only)")
    p.add_argument("--prefix", metavar="CIDR", help="only the translator for this /96 parent")
    p.add_argument("--limit", type=int, default=100, help="rows per page (default 100)")
    p.add_argument("--page", type=int, default=1, help="page number, from 1")
    p.add_argument("--json", action="store_true", help="machine-readable output (the selected page)")
    p.set_defaults(func=run)


def _net(text: str | None, version: int, what: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    if text is None:
        return None
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise CliError(f"{what} {text!r} is not an address or CIDR", exitcodes.USAGE) from None
    if net.version != version:
        raise CliError(f"{what} {text!r} must be IPv{version}", exitcodes.USAGE)
    return net


def run(args: argparse.Namespace) -> int:
    if args.limit < 1 or args.page < 1:
        raise CliError("--limit and --page start at 1", exitcodes.USAGE)
    pod = _net(args.pod, 6, "--pod")
    dest = _net(args.dest, 4, "--dest")
    parent = _net(args.prefix, 6, "--prefix")
    if os.geteuid() != 0:
        raise CliError("listing sessions needs root (CAP_NET_ADMIN): run it with sudo or in the "
                       "felix-nat64 container")
    from felix_nat64.drivers.jool.client import JoolClient  # noqa: PLC0415
    from felix_nat64.drivers.jool.errors import JoolError  # noqa: PLC0415
    from felix_nat64.drivers.netns.links import discover  # noqa: PLC0415
    from felix_nat64.model.state import JOOL_INSTANCE  # noqa: PLC0415

    rows: list[dict[str, Any]] = []
    translators = [t for t in discover() if t.namespace and (parent is None or t.parent == parent)]
    if not translators:
        raise CliError("no felix-nat64 translator on this node" + (f" for {parent}" if parent else "")
                       + ": is NAT64 enabled? (felix-nat64 status)", exitcodes.FAILURE)
    for t in translators:
        assert t.namespace is not None
        try:
            with JoolClient.open(t.namespace) as jool:
                if args.bib:
                    entries: Any = jool.bib_list(JOOL_INSTANCE, args.proto)
                else:
                    entries = jool.session_list(JOOL_INSTANCE, args.proto)
        except JoolError as exc:
            raise CliError(f"reading Jool in {t.namespace}: {exc}") from None
        for e in entries:
            row = _row(e, str(t.parent), args.bib)
            if pod is not None and ipaddress.ip_address(row["pod"]) not in pod:
                continue
            if dest is not None and (args.bib or ipaddress.ip_address(row["destination"]) not in dest):
                continue
            rows.append(row)
    total = len(rows)
    start = (args.page - 1) * args.limit
    page = rows[start:start + args.limit]
    if args.json:
        print(json.dumps({"total": total, "page": args.page, "limit": args.limit, "rows": page}, indent=2))
        return exitcodes.OK
    if args.bib:
        print(table(["pool6", "proto", "pod", "port", "pool4 address", "port", "static"],
                    [(r["prefix"], r["proto"], r["pod"], r["pod_port"], r["pool4"], r["pool4_port"],
                      r["static"]) for r in page]))
    else:
        print(table(["pool6", "proto", "pod", "port", "destination", "port", "pool4 address", "port",
                     "state", "expires in"],
                    [(r["prefix"], r["proto"], r["pod"], r["pod_port"], r["destination"], r["dest_port"],
                      r["pool4"], r["pool4_port"], r["state"], f"{r['expires_ms'] / 1000:.0f}s")
                     for r in page]))
    shown = f"{start + 1}-{start + len(page)}" if page else "none"
    more = f"; --page {args.page + 1} for more" if start + len(page) < total else ""
    print(f"{shown} of {total} {'BIB entries' if args.bib else 'sessions'}{more}")
    return exitcodes.OK


def _row(entry: Any, prefix: str, bib: bool) -> dict[str, Any]:
    if bib:
        return {"prefix": prefix, "proto": entry.proto, "pod": str(entry.ipv6.address),
                "pod_port": entry.ipv6.port, "pool4": str(entry.ipv4.address),
                "pool4_port": entry.ipv4.port, "static": entry.static}
    return {"prefix": prefix, "proto": entry.proto, "pod": str(entry.src6.address),
            "pod_port": entry.src6.port,
            "destination": str(entry.dst4.address), "dest_port": entry.dst4.port,
            "destination6": str(entry.dst6.address), "pool4": str(entry.src4.address),
            "pool4_port": entry.src4.port, "state": entry.state.name, "expires_ms": entry.expiration_ms}
