"""The driver's view of itself, shared by the loop, health, metrics and CLI.

The loop is the only writer. What it publishes is one frozen `DriverStatus`,
replaced whole under a lock at each change; the HTTP server, the metrics and
the status file read a `StatusSnapshot` (that value, the stream counters and
the readiness verdict), so observing never blocks the Felix reader and never
sees half an update.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from felix_nat64.model.jsonview import to_jsonable
from felix_nat64.model.settings import SettingOrigin, Settings
from felix_nat64.model.state import DesiredState
from felix_nat64.observe.census import Census
from felix_nat64.wire.transport import StreamCounters, StreamSnapshot

# What the status file says of a setting Felix resolved without naming a source.
RESOLVED_BY_FELIX = "felix (resolved)"
WORKLOADS_FILE_NAME = "workloads.json"


@dataclass(frozen=True)
class ApplyRecord:
    """The outcome of one attempt to program the kernel."""

    at: float
    duration: float
    ok: bool
    error: str = ""
    changes: int = 0
    resync: bool = False


@dataclass(frozen=True)
class DriverStatus:
    """Everything the loop has published, as of one moment."""

    started_at: float
    in_sync: bool = False
    in_sync_at: float | None = None
    settings_ok: bool | None = None  # None until Felix's first ConfigUpdate
    settings_errors: tuple[str, ...] = ()
    settings_warnings: tuple[str, ...] = ()
    settings: Settings | None = None  # the settings in force
    origins: Mapping[str, SettingOrigin] = field(default_factory=lambda: MappingProxyType({}))
    settings_rejections: int = 0
    desired: DesiredState | None = None
    desired_error: str = ""
    unsupported_dataplane: str = ""  # why this node's Calico dataplane cannot be served
    warnings: tuple[str, ...] = ()  # the desired state's configuration warnings
    last_apply: ApplyRecord | None = None
    last_success_at: float | None = None
    last_error: str = ""
    applies: int = 0
    apply_failures: int = 0
    consecutive_failures: int = 0
    drift_repairs: int = 0
    first_apply_after_sync: float | None = None
    endpoints: int = 0  # this node's workload endpoints known by name
    endpoints_dropped: int = 0  # endpoints not kept: past MAX_ENDPOINTS
    census: Census | None = None  # the last session census

    def after_apply(self, record: ApplyRecord) -> DriverStatus:
        """This status once `record` is counted."""
        if not record.ok:
            return dataclasses.replace(self, last_apply=record, applies=self.applies + 1,
                                       apply_failures=self.apply_failures + 1,
                                       consecutive_failures=self.consecutive_failures + 1,
                                       last_error=record.error)
        first = self.first_apply_after_sync
        if self.in_sync and first is None:
            first = record.at
        return dataclasses.replace(self, last_apply=record, applies=self.applies + 1,
                                   last_success_at=record.at, consecutive_failures=0, last_error="",
                                   first_apply_after_sync=first)

    def not_ready_reasons(self, stream: StreamSnapshot) -> tuple[str, ...]:
        """Why the driver is not ready; empty once NAT64 state is applied after
        InSync and nothing is wrong."""
        reasons: list[str] = []
        if not self.in_sync:
            reasons.append("waiting for Felix's initial snapshot (InSync)")
        if self.settings_ok is False:
            reasons.append("invalid settings: " + "; ".join(self.settings_errors))
        if self.desired_error:
            reasons.append(self.desired_error)
        if self.unsupported_dataplane:
            reasons.append(self.unsupported_dataplane)
        if self.in_sync and self.first_apply_after_sync is None and not self.desired_error \
                and not self.unsupported_dataplane and self.settings_ok is not False:
            reasons.append("dataplane not yet applied")
        if self.last_apply is not None and not self.last_apply.ok:
            reasons.append(f"dataplane apply failing: {self.last_apply.error}")
        if stream.undecodable_used:
            reasons.append(
                f"{stream.undecodable_used} Felix message(s) we need could not be decoded "
                f"(last: {stream.last_undecodable}); our view of Felix may be incomplete: "
                "restart felix-nat64"
            )
        return tuple(reasons)


@dataclass(frozen=True)
class StatusSnapshot:
    """What `status`, `/readiness` and `/metrics` show: the driver's status,
    the stream counters and the verdict on readiness, taken together."""

    driver: DriverStatus
    stream: StreamSnapshot
    not_ready_reasons: tuple[str, ...]
    pid: int
    written_at: float

    @property
    def ready(self) -> bool:
        return not self.not_ready_reasons

    def to_json(self) -> dict[str, Any]:
        """The status file's JSON: one flat object, the fields `felix-nat64
        status` and other tools read (docs/operations.md)."""
        d = self.driver
        last = d.last_apply
        return {
            "started_at": d.started_at, "in_sync": d.in_sync, "in_sync_at": d.in_sync_at,
            "settings_ok": d.settings_ok, "settings_errors": list(d.settings_errors),
            "settings_warnings": list(d.settings_warnings), "settings": to_jsonable(d.settings),
            "origins": {key: {"source": o.source or RESOLVED_BY_FELIX, "raw_key": o.raw_key, "value": o.value}
                        for key, o in d.origins.items()},
            "settings_rejections": d.settings_rejections,
            "desired": to_jsonable(d.desired), "desired_error": d.desired_error,
            "unsupported_dataplane": d.unsupported_dataplane, "warnings": list(d.warnings),
            "last_apply": None if last is None else {
                "at": last.at, "duration_seconds": round(last.duration, 6), "ok": last.ok,
                "error": last.error, "changes": last.changes, "resync": last.resync},
            "last_success_at": d.last_success_at, "last_error": d.last_error, "applies": d.applies,
            "apply_failures": d.apply_failures, "consecutive_failures": d.consecutive_failures,
            "drift_repairs": d.drift_repairs, "first_apply_after_sync": d.first_apply_after_sync,
            "endpoints": d.endpoints, "endpoints_dropped": d.endpoints_dropped,
            "census": census_json(d.census),
            "ready": self.ready, "not_ready_reasons": list(self.not_ready_reasons),
            "stream": {"frames": self.stream.frames, "bytes": self.stream.bytes,
                       "by_payload": dict(self.stream.by_payload),
                       "undecodable_used": self.stream.undecodable_used,
                       "undecodable_other": self.stream.undecodable_other},
            "pid": self.pid, "written_at": self.written_at,
        }


def census_json(census: Census | None) -> dict[str, Any] | None:
    """The census as the status file carries it."""
    if census is None:
        return None
    return {
        "at": census.at, "duration_seconds": round(census.duration, 6), "sessions": census.sessions,
        "error": census.error,
        "translators": [{"namespace": t.namespace, "parent": t.parent, "error": t.error,
                         "sessions": {str(p): n for p, n in t.sessions.items()},
                         "bib_entries": {str(p): n for p, n in t.bib_entries.items()}}
                        for t in census.translators],
        "namespaces": [{"namespace": ns, "sessions": n} for ns, n in census.namespaces],
    }


class StatusBoard:
    """Thread-safe holder of the driver's current status."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self.stream = StreamCounters()
        self._status = DriverStatus(started_at=clock())

    @property
    def status(self) -> DriverStatus:
        """The status as last published."""
        with self._lock:
            return self._status

    def update(self, **changes: Any) -> None:
        """Replaces the named fields of DriverStatus (TypeError for a name it lacks)."""
        with self._lock:
            self._status = dataclasses.replace(self._status, **changes)

    def set_in_sync(self, at: float | None) -> None:
        """InSync arrived at `at`; None: a new Felix connection, not yet in sync."""
        self.update(in_sync=at is not None, in_sync_at=at,
                    **({} if at is not None else {"first_apply_after_sync": None}))

    def set_settings(self, *, ok: bool, errors: tuple[str, ...], warnings: tuple[str, ...],
                     in_force: Settings | None, origins: Mapping[str, SettingOrigin],
                     rejections: int) -> None:
        """The outcome of Felix's last ConfigUpdate, and the settings now in force."""
        self.update(settings_ok=ok, settings_errors=errors, settings_warnings=warnings, settings=in_force,
                    origins=MappingProxyType(dict(origins)), settings_rejections=rejections)

    def set_desired(self, desired: DesiredState) -> None:
        self.update(desired=desired, desired_error="", warnings=desired.warnings)

    def record_apply(self, record: ApplyRecord) -> None:
        with self._lock:
            self._status = self._status.after_apply(record)

    def count_drift_repair(self) -> None:
        with self._lock:
            self._status = dataclasses.replace(self._status, drift_repairs=self._status.drift_repairs + 1)

    def readiness(self) -> tuple[bool, list[str]]:
        """Ready once NAT64 state is applied after InSync and nothing is wrong."""
        reasons = self.status.not_ready_reasons(self.stream.snapshot())
        return (not reasons, list(reasons))

    def snapshot(self) -> StatusSnapshot:
        stream = self.stream.snapshot()
        status = self.status
        return StatusSnapshot(status, stream, status.not_ready_reasons(stream), os.getpid(), self._clock())


def workloads_file(status_file: str) -> str:
    """Where the driver publishes its pods by address: next to its status file."""
    return os.path.join(os.path.dirname(status_file) or ".", WORKLOADS_FILE_NAME)


def write_status_file(path: str, snapshot: StatusSnapshot) -> None:
    """Atomically replaces the status file read by `felix-nat64 status`."""
    write_json_file(path, snapshot.to_json())


def write_json_file(path: str, data: Any) -> None:
    """Atomically replaces a world-readable JSON file (readers never see half of one)."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o755, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".status-", dir=directory)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2, sort_keys=True, default=str)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
