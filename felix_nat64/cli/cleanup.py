"""`felix-nat64 cleanup`: removes everything felix-nat64 created on this node."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from felix_nat64 import logs
from felix_nat64.cli import exitcodes
from felix_nat64.cli.errors import CliError
from felix_nat64.model.state import DesiredState


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "cleanup",
        help="remove every felix-nat64 object from this node (needs --force)",
        description="Lists the nftables table, routing rule and routes, translator namespaces and "
                    "Jool instances felix-nat64 created on this node; with --force removes them. "
                    "Idempotent. Stop the driver first, or it re-creates them: in Kubernetes set "
                    "the chart's cleanupOnly=true (see docs/install.md).",
    )
    p.add_argument("--force", action="store_true", help="really remove (default: only list)")
    p.add_argument("--json", action="store_true", help="print the inventory as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise CliError("cleanup needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN): run it with sudo or in "
                       "the felix-nat64 container")
    # Kernel libraries load here, so read-only commands work without them.
    from felix_nat64.cli.driver import build_dataplane  # noqa: PLC0415
    from felix_nat64.drivers.api import DataplaneError  # noqa: PLC0415
    from felix_nat64.drivers.discovery import discover  # noqa: PLC0415

    logs.configure(level="info" if args.force else "warning")
    before = discover().to_json()
    if not args.force:
        _print(before, args.json, "would remove" if before["objects"] else "nothing to remove")
        if before["objects"]:
            print("run 'felix-nat64 cleanup --force' to remove them", file=sys.stderr)
        return exitcodes.OK
    try:
        outcome = build_dataplane(None).apply(DesiredState())
    except DataplaneError as exc:
        raise CliError(f"cleanup failed: {exc}; fix the cause and run it again (it is idempotent)") \
            from None
    after = discover()
    _print(before, args.json, f"removed ({outcome.changes} kernel changes)")
    if after.objects:
        raise CliError("some objects are still present: " + ", ".join(after.objects))
    return exitcodes.OK


def _print(inv: dict[str, Any], as_json: bool, verdict: str) -> None:
    if as_json:
        print(json.dumps({**inv, "result": verdict}, indent=2))
        return
    for obj in inv["objects"]:
        print(f"  {obj}")
    print(verdict)
