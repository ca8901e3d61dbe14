"""`felix-nat64 status`: the driver's view and the kernel's, side by side."""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

from felix_nat64.cli import exitcodes
from felix_nat64.cli.driver import DEFAULT_STATUS_FILE
from felix_nat64.cli.tables import table


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "status",
        help="settings in force, translators, sessions, counters, last apply (exit 0 ready, 4 not, 5 down)",
        description="Shows the running driver's status (settings in force and where each came "
                    "from, InSync, last apply and error, warnings) and the node's NAT64 kernel "
                    "state (translator namespaces, Jool instances, pool4 use, sessions, nftables "
                    "counters). Exit code 0 when ready, 4 when running but not ready, 5 when no "
                    "driver is running.",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--status-file", default=os.environ.get("FELIX_NAT64_STATUS_FILE", DEFAULT_STATUS_FILE),
                   help=f"the driver's status file (default {DEFAULT_STATUS_FILE})")
    p.add_argument("--no-kernel", action="store_true",
                   help="only the driver's status file (no root needed)")
    p.set_defaults(func=run)


def _driver_status(path: str) -> tuple[dict[str, Any] | None, str]:
    try:
        with open(path) as handle:
            data: dict[str, Any] = json.load(handle)
    except FileNotFoundError:
        return None, f"no status file at {path}: the driver is not running on this node (or uses " \
                     "another --status-file)"
    except (OSError, ValueError) as exc:
        return None, f"cannot read {path}: {exc}"
    pid = data.get("pid")
    try:
        os.kill(int(pid or 0), 0) if pid else None
    except ProcessLookupError:
        return data, f"the driver (pid {pid}) that wrote {path} is no longer running"
    except PermissionError:
        pass
    return data, ""


def run(args: argparse.Namespace) -> int:
    driver, down = _driver_status(args.status_file)
    kernel: dict[str, Any] | None = None
    kernel_error = ""
    if not args.no_kernel:
        if os.geteuid() != 0:
            kernel_error = "kernel state needs root (run with sudo, or pass --no-kernel)"
        else:
            kernel, kernel_error = _kernel()
    if args.json:
        print(json.dumps({"driver": driver, "driver_error": down, "kernel": kernel,
                          "kernel_error": kernel_error}, indent=2, sort_keys=True, default=str))
    else:
        print(_human(driver, down, kernel, kernel_error))
    if driver is None or down:
        return exitcodes.NOT_RUNNING
    return exitcodes.OK if driver.get("ready") else exitcodes.NOT_READY


def _kernel() -> tuple[dict[str, Any], str]:
    # Kernel libraries load here, so --no-kernel works without them.
    from felix_nat64.drivers.inventory import inventory  # noqa: PLC0415
    from felix_nat64.model.jsonview import to_jsonable  # noqa: PLC0415
    from felix_nat64.observe.sampler import sample_kernel  # noqa: PLC0415

    try:
        stats = sample_kernel()
        return {"objects": inventory(), "stats": to_jsonable(stats)}, stats.error
    except Exception as exc:  # status must report, never crash
        return {}, f"reading kernel state failed: {exc}"


def _ago(ts: float | None) -> str:
    if not ts:
        return "never"
    secs = max(0, int(time.time() - ts))
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
    return f"{stamp} ({secs}s ago)"


def _human(driver: dict[str, Any] | None, down: str, kernel: dict[str, Any] | None, kerr: str) -> str:
    out: list[str] = []
    if driver is None:
        out.append(f"driver: not running — {down}")
    else:
        state = "READY" if driver.get("ready") and not down else "NOT READY"
        out.append(f"driver: pid {driver.get('pid')}, {state}" + (f" — {down}" if down else ""))
        for reason in driver.get("not_ready_reasons") or []:
            out.append(f"  not ready: {reason}")
        stream = driver.get("stream") or {}
        synced = f"since {_ago(driver.get('in_sync_at'))}" if driver.get("in_sync") else "NO"
        out.append(f"felix: in sync {synced}; {stream.get('frames', 0)} messages, "
                   f"{stream.get('undecodable_used', 0)} undecodable")
        last = driver.get("last_apply")
        if last:
            outcome = "ok" if last["ok"] else f"FAILED: {last['error']}"
            out.append(f"last apply: {_ago(last['at'])}, {outcome}, {last['changes']} changes, "
                       f"{last['duration_seconds'] * 1000:.0f} ms; applies {driver.get('applies')}, "
                       f"failures {driver.get('apply_failures')}, "
                       f"drift repairs {driver.get('drift_repairs')}")
        if driver.get("last_error"):
            out.append(f"last error: {driver['last_error']}")
        settings = driver.get("settings") or {}
        origins = driver.get("origins") or {}
        if settings:
            out.append("")
            out.append("settings in force:")
            rows = [(key, o.get("value", ""), o.get("source", "")) for key, o in sorted(origins.items())]
            out.append(table(["setting", "value", "source"], rows) if rows else "  (all defaults)")
            out.append(f"NAT64 {'ON' if settings.get('active') else 'OFF'}: prefixes "
                       f"{', '.join(settings.get('prefixes') or []) or 'none'}")
        for err in driver.get("settings_errors") or []:
            out.append(f"setting error: {err}")
        for warning in (driver.get("warnings") or []) + (driver.get("settings_warnings") or []):
            out.append(f"warning: {warning}")
        desired = driver.get("desired") or {}
        if desired.get("sources"):
            out.append(f"pod sources: {', '.join(desired['sources'])}")
    out.append("")
    if kernel is None or not kernel:
        out.append(f"kernel: {kerr or 'not read'}")
        return "\n".join(out)
    stats = kernel["stats"]
    trows: list[tuple[str, ...]] = []
    for t in stats["translators"]:
        caps = [t["pool4_ports"].get(p, 0) for p in ("tcp", "udp", "icmp")]
        smallest = min((c for c in caps if c), default=0)
        bib = t["bib_entries"]
        trows.append((t["namespace"], t["parent"], "up" if t["instance"] else "MISSING", f"{t['sessions']:,}",
                      f"{bib:,}", "/".join(f"{c:,}" for c in caps),
                      f"<= {min(1.0, bib / smallest):.2%}" if smallest else "-"))
    if trows:
        out.append(table(["translator namespace", "pool6", "jool", "sessions", "BIB entries",
                          "pool4 tcp/udp/icmp", "pool4 used"], trows))
    else:
        out.append("translators: none")
    counters = stats["nft"]
    if counters:
        out.append("nftables counters: " + ", ".join(f"{k} {v[0]} pkts" for k, v in sorted(counters.items())))
    else:
        out.append("nftables: no felix-nat64 table")
    if kerr:
        out.append(f"kernel read errors: {kerr}")
    return "\n".join(out)
