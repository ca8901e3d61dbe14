"""`felix-nat64 sessions`: Jool's sessions (or BIB) on this node, filtered and paged.

Three steps: the arguments become a query, the query reads one page from the
kernel (`felix_nat64.observe.session_table`, which reads no more of Jool's
tables than the page needs), and the page is printed as a table or JSON.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
from typing import TYPE_CHECKING, Any

from felix_nat64.cli import exitcodes
from felix_nat64.cli.driver import DEFAULT_STATUS_FILE
from felix_nat64.cli.errors import CliError
from felix_nat64.cli.tables import table
from felix_nat64.model.protocol import Protocol
from felix_nat64.model.workloads import WorkloadIndex
from felix_nat64.observe.status import workloads_file

if TYPE_CHECKING:  # the kernel libraries load only when a page is read
    from felix_nat64.observe.session_table import TablePage, TableQuery, TableRow


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "sessions",
        help="list NAT64 sessions (or BIB entries) with filters and paging",
        description="Lists the Jool sessions of every translator on this node (needs root). "
                    "Filters combine; --page and --limit page through large tables, reading only "
                    "as much of Jool's tables as the page needs.",
    )
    p.add_argument("--bib", action="store_true", help="list BIB entries instead of sessions")
    p.add_argument("--proto", choices=[p.value for p in Protocol], help="only this protocol")
    p.add_argument("--pod", metavar="ADDR", help="only this pod IPv6 address (or CIDR)")
    p.add_argument("--dest", metavar="ADDR", help="only this IPv4 destination (or CIDR; sessions only)")
    p.add_argument("--namespace", metavar="NS", help="only pods of this Kubernetes namespace")
    p.add_argument("--prefix", metavar="CIDR", help="only the translator for this /96 parent")
    p.add_argument("--limit", type=int, default=100, help="rows per page (default 100)")
    p.add_argument("--page", type=int, default=1, help="page number, from 1")
    p.add_argument("--json", action="store_true", help="machine-readable output (the selected page)")
    p.add_argument("--status-file", default=os.environ.get("FELIX_NAT64_STATUS_FILE", DEFAULT_STATUS_FILE),
                   help="the driver's status file; the pods' names come from the workloads file "
                        f"next to it (default {DEFAULT_STATUS_FILE})")
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
    from felix_nat64.observe.session_table import TableQuery  # noqa: PLC0415

    if args.limit < 1 or args.page < 1:
        raise CliError("--limit and --page start at 1", exitcodes.USAGE)
    pod = _net(args.pod, 6, "--pod")
    dest = _net(args.dest, 4, "--dest")
    parent = _net(args.prefix, 6, "--prefix")
    assert pod is None or isinstance(pod, ipaddress.IPv6Network)
    assert dest is None or isinstance(dest, ipaddress.IPv4Network)
    if dest is not None and args.bib:
        raise CliError("--dest filters sessions; BIB entries have no destination", exitcodes.USAGE)
    query = TableQuery(bib=args.bib, proto=Protocol(args.proto) if args.proto else None, pod=pod,
                       dest=dest, namespace=args.namespace, limit=args.limit, page=args.page)
    if os.geteuid() != 0:
        raise CliError("listing sessions needs root (CAP_NET_ADMIN): run it with sudo or in the "
                       "felix-nat64 container")
    workloads, note = read_workloads(workloads_file(args.status_file))
    if note and args.namespace is not None:
        raise CliError(f"--namespace needs the pods' names: {note}")
    page = collect(query, parent, workloads)
    print(render_json(page) if args.json else render_text(page, note))
    return exitcodes.OK


def read_workloads(path: str) -> tuple[WorkloadIndex, str]:
    """The pods by address the driver published, and a note when there are none to read."""
    try:
        with open(path) as handle:
            return WorkloadIndex.from_json(json.load(handle)), ""
    except FileNotFoundError:
        return WorkloadIndex(), f"no workloads file at {path}: is the driver running (or using another " \
                                "--status-file)?"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return WorkloadIndex(), f"cannot read {path}: {exc}"


def collect(query: TableQuery, parent: ipaddress.IPv4Network | ipaddress.IPv6Network | None,
            workloads: WorkloadIndex) -> TablePage:
    """The page `query` selects, from the translators on this node."""
    # Kernel libraries load here, so `--help` and bad arguments need none.
    from felix_nat64.drivers.discovery import translators as discover  # noqa: PLC0415
    from felix_nat64.drivers.jool.errors import JoolError  # noqa: PLC0415
    from felix_nat64.observe.session_table import read_page  # noqa: PLC0415

    translators = [t for t in discover() if t.namespace and (parent is None or t.parent == parent)]
    if not translators:
        raise CliError("no felix-nat64 translator on this node" + (f" for {parent}" if parent else "")
                       + ": is NAT64 enabled? (felix-nat64 status)", exitcodes.FAILURE)
    try:
        return read_page(translators, query, workloads)
    except (JoolError, OSError) as exc:
        raise CliError(f"reading Jool's tables: {exc}") from None


def row_json(row: TableRow) -> dict[str, Any]:
    """One row as the JSON output (and `render_text`) names its fields."""
    from felix_nat64.drivers.jool.entries import BibEntry  # noqa: PLC0415

    e = row.entry
    prefix = str(row.parent) if row.parent is not None else ""
    named = {"namespace": row.workload.namespace if row.workload else "",
             "pod_name": row.workload.name if row.workload else ""}
    if isinstance(e, BibEntry):
        return {"prefix": prefix, "proto": str(e.proto), "pod": str(e.ipv6.address), "pod_port": e.ipv6.port,
                **named, "pool4": str(e.ipv4.address), "pool4_port": e.ipv4.port, "static": e.static}
    return {"prefix": prefix, "proto": str(e.proto), "pod": str(e.src6.address), "pod_port": e.src6.port,
            **named,
            "destination": str(e.dst4.address), "dest_port": e.dst4.port,
            "destination6": str(e.dst6.address), "pool4": str(e.src4.address),
            "pool4_port": e.src4.port, "state": e.state.name, "expires_ms": e.expiration_ms}


def render_json(page: TablePage) -> str:
    q = page.query
    return json.dumps({"total": page.total, "more": page.more, "page": q.page, "limit": q.limit,
                       "rows": [row_json(r) for r in page.rows]}, indent=2)


SESSION_COLUMNS = ("pool6", "proto", "namespace/pod", "pod address", "port", "destination", "port",
                   "pool4 address", "port", "state", "expires in")
BIB_COLUMNS = ("pool6", "proto", "namespace/pod", "pod address", "port", "pool4 address", "port", "static")


def _cells(row: TableRow) -> tuple[object, ...]:
    r = row_json(row)
    head = (r["prefix"], r["proto"], str(row.workload) if row.workload else "-", r["pod"], r["pod_port"])
    if "static" in r:
        return (*head, r["pool4"], r["pool4_port"], r["static"])
    return (*head, r["destination"], r["dest_port"], r["pool4"], r["pool4_port"], r["state"],
            f"{r['expires_ms'] / 1000:.0f}s")


def render_text(page: TablePage, note: str = "") -> str:
    out = table(BIB_COLUMNS if page.query.bib else SESSION_COLUMNS, [_cells(r) for r in page.rows])
    if note:
        out += f"\npods not named: {note}"
    rows = page.rows
    what = "BIB entries" if page.query.bib else "sessions"
    shown = f"{page.first}-{page.first + len(rows) - 1}" if rows else "none"
    of = f"{page.total:,}" if page.total is not None else f"more than {page.first + len(rows) - 1:,}"
    more = f"; --page {page.query.page + 1} for more" if page.more else ""
    return f"{out}\n{shown} of {of} {what}{more}"
