"""`felix-nat64 render`: what a Felix stream means, without touching the kernel."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from typing import Any, BinaryIO

from felix_nat64 import logs
from felix_nat64.cli import exitcodes
from felix_nat64.cli.errors import CliError
from felix_nat64.dataplane.fold import fold_stream
from felix_nat64.dataplane.managers import FelixView
from felix_nat64.drivers.plan import program
from felix_nat64.model.jsonview import to_jsonable


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "render",
        help="show what a recorded Felix stream would program (no root, no kernel changes)",
        description="Reads framed felix.ToDataplane messages (8-byte little-endian length + "
                    "protobuf) and prints, as JSON, the settings understood (with errors), the "
                    "IP pools and hosts, the desired state and the nftables, routing and Jool "
                    "configuration felix-nat64 would program.",
    )
    p.add_argument("stream", help="stream file, or - for standard input")
    p.add_argument("--hostname", help="this node's name when the stream does not set FelixHostname "
                   "(default: this machine's hostname)")
    p.add_argument("--section", choices=["settings", "desired", "program", "stream"],
                   help="print only one section")
    p.set_defaults(func=run)


def _read_chunks(handle: BinaryIO) -> Iterator[bytes]:
    while True:
        chunk = handle.read(1 << 20)
        if not chunk:
            return
        yield chunk


def render_stream(handle: BinaryIO, hostname: str | None = None) -> tuple[dict[str, Any], bool]:
    """Folds a stream as the driver would; returns the report and whether input was valid."""
    folded = fold_stream(_read_chunks(handle), hostname)
    view, counters, undecodable, framing_error = (folded.view, folded.counters, folded.undecodable,
                                                  folded.framing_error)
    result = view.settings.last_result
    desired_json: Any = None
    program_json: Any = None
    desired_error = ""
    if view.settings.in_force is not None:
        desired, desired_error = folded.desired()
        if desired is not None:
            desired_json = to_jsonable(desired)
            program_json = program(desired)
    report: dict[str, Any] = {
        "stream": {
            "frames": counters.frames,
            "bytes": counters.bytes,
            "by_payload": dict(sorted(counters.by_payload.items())),
            "undecodable": undecodable,
            "framing_error": framing_error,
            "config_update_seen": view.config_seen,
            "in_sync": view.in_sync,
        },
        "settings": {
            "ok": None if result is None else result.ok,
            "errors": [] if result is None else [to_jsonable(e) for e in result.errors],
            "warnings": [] if result is None else list(result.warnings),
            "in_force": to_jsonable(view.settings.in_force),
            "origins": {} if result is None else to_jsonable(result.origins),
        },
        "pools": to_jsonable(sorted(view.pools.pools.values(), key=lambda p: p.pool_id)),
        "hosts": to_jsonable(sorted(view.hosts.hosts.values(), key=lambda h: h.hostname)),
        "desired": desired_json,
        "desired_error": desired_error,
        "program": program_json,
        "notes": _notes(view, result is not None and result.ok),
    }
    valid = not framing_error and not undecodable and (result is None or result.ok) and not desired_error
    return report, valid


def _notes(view: FelixView, settings_ok: bool) -> list[str]:
    notes = []
    if not view.config_seen:
        notes.append("no ConfigUpdate in the stream: Felix always sends one first")
    if not view.in_sync:
        notes.append("no InSync in the stream: the driver programs nothing until Felix sends it")
    if view.config_seen and not settings_ok and view.settings.in_force is None:
        notes.append("settings were rejected and none were good before: the driver would leave "
                     "the kernel untouched")
    return notes


def run(args: argparse.Namespace) -> int:
    logs.configure(level="critical")  # every problem is in the JSON report
    if args.stream == "-":
        report, valid = render_stream(sys.stdin.buffer, args.hostname)
    else:
        try:
            with open(args.stream, "rb") as handle:
                report, valid = render_stream(handle, args.hostname)
        except OSError as exc:
            raise CliError(f"cannot read stream {args.stream}: {exc.strerror}") from None
    out = report[args.section] if args.section else report
    json.dump(out, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")
    return exitcodes.OK if valid else exitcodes.INVALID_INPUT
