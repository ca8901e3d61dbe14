"""`felix-nat64 status`: the driver's view and the kernel's, side by side.

Collect, then render: `collect()` reads the driver's status file into a
typed `DriverView` and samples the kernel (the same sample the metrics use,
whose cost does not depend on the number of sessions); `render_text()` and
`render_json()` only format what was collected.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from felix_nat64.cli import exitcodes
from felix_nat64.cli.driver import DEFAULT_STATUS_FILE
from felix_nat64.cli.tables import table
from felix_nat64.model.protocol import PROTOCOLS

if TYPE_CHECKING:  # the kernel libraries load only when the kernel is read
    from felix_nat64.observe.kernel_stats import KernelStats, TranslatorStats


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


# ---------------------------------------------------------------- collect


@dataclass(frozen=True)
class LastApply:
    at: float
    duration_seconds: float
    ok: bool
    error: str
    changes: int


@dataclass(frozen=True)
class CensusView:
    """The last session census, as the status file carries it."""

    at: float
    duration_seconds: float
    by_protocol: tuple[tuple[str, int], ...]  # sessions, all translators
    namespaces: tuple[tuple[str, int], ...]  # busiest first
    error: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CensusView:
        totals = {p.value: 0 for p in PROTOCOLS}
        for t in data.get("translators") or ():
            for proto, count in (t.get("sessions") or {}).items():
                totals[proto] = totals.get(proto, 0) + int(count)
        return cls(float(data["at"]), float(data.get("duration_seconds") or 0), tuple(totals.items()),
                   tuple((str(n["namespace"]), int(n["sessions"])) for n in data.get("namespaces") or ()),
                   str(data.get("error") or ""))


@dataclass(frozen=True)
class DriverView:
    """What the status file says, typed. Fields an older driver did not write
    read as their empty value."""

    raw: Mapping[str, Any]  # the file as written, for --json
    pid: int | None
    ready: bool
    not_ready_reasons: tuple[str, ...]
    in_sync: bool
    in_sync_at: float | None
    frames: int
    undecodable: int
    last_apply: LastApply | None
    applies: int
    apply_failures: int
    drift_repairs: int
    last_error: str
    settings_in_force: bool
    nat64_active: bool
    prefixes: tuple[str, ...]
    origins: tuple[tuple[str, str, str], ...]  # (setting, value, source), by setting
    settings_errors: tuple[str, ...]
    warnings: tuple[str, ...]  # the desired state's, then the settings'
    sources: tuple[str, ...]  # the pod CIDRs allowed to use NAT64
    endpoints: int  # pods known by name
    endpoints_dropped: int
    census: CensusView | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DriverView:
        stream = data.get("stream") or {}
        last = data.get("last_apply")
        settings = data.get("settings") or {}
        origins = data.get("origins") or {}
        return cls(
            raw=data, pid=int(data["pid"]) if data.get("pid") else None, ready=bool(data.get("ready")),
            not_ready_reasons=tuple(data.get("not_ready_reasons") or ()), in_sync=bool(data.get("in_sync")),
            in_sync_at=data.get("in_sync_at"), frames=int(stream.get("frames", 0)),
            undecodable=int(stream.get("undecodable_used", 0)),
            last_apply=LastApply(last["at"], last["duration_seconds"], last["ok"], last["error"],
                                 last["changes"]) if last else None,
            applies=int(data.get("applies") or 0), apply_failures=int(data.get("apply_failures") or 0),
            drift_repairs=int(data.get("drift_repairs") or 0), last_error=data.get("last_error") or "",
            settings_in_force=bool(settings), nat64_active=bool(settings.get("active")),
            prefixes=tuple(settings.get("prefixes") or ()),
            origins=tuple((key, str(o.get("value", "")), str(o.get("source", "")))
                          for key, o in sorted(origins.items())),
            settings_errors=tuple(data.get("settings_errors") or ()),
            warnings=tuple(data.get("warnings") or ()) + tuple(data.get("settings_warnings") or ()),
            sources=tuple((data.get("desired") or {}).get("sources") or ()),
            endpoints=int(data.get("endpoints") or 0),
            endpoints_dropped=int(data.get("endpoints_dropped") or 0),
            census=CensusView.from_json(data["census"]) if data.get("census") else None,
        )


@dataclass(frozen=True)
class StatusReport:
    """Everything `status` shows."""

    driver: DriverView | None  # None: no readable status file
    driver_error: str  # why the driver is not running, or its file cannot be read
    kernel: KernelStats | None  # None: not read (no root, --no-kernel, or it failed)
    objects: Mapping[str, Any] | None  # the kernel objects felix-nat64 owns
    kernel_error: str

    @property
    def exit_code(self) -> int:
        if self.driver is None or self.driver_error:
            return exitcodes.NOT_RUNNING
        return exitcodes.OK if self.driver.ready else exitcodes.NOT_READY


def read_driver(path: str) -> tuple[DriverView | None, str]:
    """The driver's status file, and why the driver is down ("" when it runs)."""
    try:
        with open(path) as handle:
            data: dict[str, Any] = json.load(handle)
        view = DriverView.from_json(data)
    except FileNotFoundError:
        return None, f"no status file at {path}: the driver is not running on this node (or uses " \
                     "another --status-file)"
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        return None, f"cannot read {path}: {exc}"
    if view.pid:
        try:
            os.kill(view.pid, 0)
        except ProcessLookupError:
            return view, f"the driver (pid {view.pid}) that wrote {path} is no longer running"
        except PermissionError:
            pass
    return view, ""


def read_kernel() -> tuple[KernelStats | None, Mapping[str, Any] | None, str]:
    # Kernel libraries load here, so --no-kernel works without them.
    from felix_nat64.drivers.discovery import discover  # noqa: PLC0415
    from felix_nat64.observe.sampler import sample_kernel  # noqa: PLC0415

    try:
        stats = sample_kernel()
        return stats, discover().to_json(), stats.error
    except Exception as exc:  # status must report, never crash
        return None, None, f"reading kernel state failed: {exc}"


def collect(status_file: str, kernel: bool) -> StatusReport:
    driver, down = read_driver(status_file)
    if not kernel:
        return StatusReport(driver, down, None, None, "")
    if os.geteuid() != 0:
        return StatusReport(driver, down, None, None,
                            "kernel state needs root (run with sudo, or pass --no-kernel)")
    return StatusReport(driver, down, *read_kernel())


def run(args: argparse.Namespace) -> int:
    report = collect(args.status_file, kernel=not args.no_kernel)
    print(render_json(report) if args.json else render_text(report))
    return report.exit_code


# ---------------------------------------------------------------- render


def render_json(report: StatusReport) -> str:
    from felix_nat64.model.jsonview import to_jsonable  # noqa: PLC0415

    kernel = None
    if report.kernel is not None:
        kernel = {"objects": report.objects, "stats": to_jsonable(report.kernel)}
    elif report.objects is not None:
        kernel = {"objects": report.objects}
    return json.dumps({"driver": dict(report.driver.raw) if report.driver else None,
                       "driver_error": report.driver_error, "kernel": kernel,
                       "kernel_error": report.kernel_error}, indent=2, sort_keys=True, default=str)


def render_text(report: StatusReport) -> str:
    out = _driver_lines(report.driver, report.driver_error)
    out.append("")
    out += _kernel_lines(report.kernel, report.kernel_error)
    return "\n".join(out)


def _ago(ts: float | None) -> str:
    if not ts:
        return "never"
    secs = max(0, int(time.time() - ts))
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
    return f"{stamp} ({secs}s ago)"


def _driver_lines(d: DriverView | None, down: str) -> list[str]:
    if d is None:
        return [f"driver: not running — {down}"]
    state = "READY" if d.ready and not down else "NOT READY"
    out = [f"driver: pid {d.pid}, {state}" + (f" — {down}" if down else "")]
    out += [f"  not ready: {reason}" for reason in d.not_ready_reasons]
    synced = f"since {_ago(d.in_sync_at)}" if d.in_sync else "NO"
    out.append(f"felix: in sync {synced}; {d.frames} messages, {d.undecodable} undecodable")
    if d.last_apply is not None:
        last = d.last_apply
        outcome = "ok" if last.ok else f"FAILED: {last.error}"
        out.append(f"last apply: {_ago(last.at)}, {outcome}, {last.changes} changes, "
                   f"{last.duration_seconds * 1000:.0f} ms; applies {d.applies}, "
                   f"failures {d.apply_failures}, drift repairs {d.drift_repairs}")
    if d.last_error:
        out.append(f"last error: {d.last_error}")
    return out + _naming_lines(d) + _settings_lines(d)


CENSUS_NAMESPACES_SHOWN = 5


def _naming_lines(d: DriverView) -> list[str]:
    dropped = f", {d.endpoints_dropped} more not kept (limit reached)" if d.endpoints_dropped else ""
    out = [f"pods: {d.endpoints} workload endpoints known by name{dropped}"]
    c = d.census
    if c is not None:
        protocols = ", ".join(f"{proto} {count:,}" for proto, count in c.by_protocol)
        busiest = ", ".join(f"{ns} {count:,}" for ns, count in c.namespaces[:CENSUS_NAMESPACES_SHOWN])
        out.append(f"session census: {_ago(c.at)}, took {c.duration_seconds:.1f} s: {protocols}"
                   + (f"; by namespace: {busiest}" if busiest else "")
                   + (f"; errors: {c.error}" if c.error else ""))
    return out


def _settings_lines(d: DriverView) -> list[str]:
    out: list[str] = []
    if d.settings_in_force:
        out += ["", "settings in force:",
                table(["setting", "value", "source"], d.origins) if d.origins else "  (all defaults)",
                f"NAT64 {'ON' if d.nat64_active else 'OFF'}: prefixes {', '.join(d.prefixes) or 'none'}"]
    out += [f"setting error: {err}" for err in d.settings_errors]
    out += [f"warning: {warning}" for warning in d.warnings]
    if d.sources:
        out.append(f"pod sources: {', '.join(d.sources)}")
    return out


def _translator_row(t: TranslatorStats) -> tuple[str, ...]:
    capacities = [t.pool4_ports.get(p, 0) for p in PROTOCOLS]
    bound = max((t.pool4_use_bound(p) for p in PROTOCOLS if t.pool4_ports.get(p)), default=None)
    return (t.namespace, t.parent, "up" if t.instance else "MISSING", f"{t.sessions:,}", f"{t.bib_entries:,}",
            "/".join(f"{c:,}" for c in capacities), f"<= {bound:.2%}" if bound is not None else "-")


def _kernel_lines(stats: KernelStats | None, error: str) -> list[str]:
    if stats is None:
        return [f"kernel: {error or 'not read'}"]
    out: list[str] = []
    if stats.translators:
        out.append(table(["translator namespace", "pool6", "jool", "sessions", "BIB entries",
                          "pool4 tcp/udp/icmp", "pool4 used"],
                         [_translator_row(t) for t in stats.translators]))
    else:
        out.append("translators: none")
    if stats.nft:
        counters = sorted(stats.nft.items())
        out.append("nftables counters: " + ", ".join(f"{name} {pkts} pkts" for name, (pkts, _) in counters))
    else:
        out.append("nftables: no felix-nat64 table")
    if error:
        out.append(f"kernel read errors: {error}")
    return out
