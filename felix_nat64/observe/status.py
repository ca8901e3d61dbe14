"""The driver's view of itself, shared by the loop, health, metrics and CLI.

The loop is the only writer; the HTTP server and status file read
snapshots under a lock, so observing never blocks the Felix reader.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any

from felix_nat64.wire.transport import StreamCounters


@dataclass(frozen=True)
class ApplyRecord:
    """The outcome of one attempt to program the kernel."""

    at: float
    duration: float
    ok: bool
    error: str = ""
    changes: int = 0
    resync: bool = False


class StatusBoard:
    """Thread-safe holder of the driver's current status."""

    def __init__(self, clock: Any = time.time) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self.stream = StreamCounters()
        self._data: dict[str, Any] = {
            "started_at": clock(),
            "in_sync": False,
            "in_sync_at": None,
            "settings_ok": None,
            "settings_errors": [],
            "settings_warnings": [],
            "settings": None,
            "origins": {},
            "desired": None,
            "desired_error": "",
            "unsupported_dataplane": "",
            "warnings": [],
            "last_apply": None,
            "last_success_at": None,
            "last_error": "",
            "applies": 0,
            "apply_failures": 0,
            "consecutive_failures": 0,
            "drift_repairs": 0,
            "settings_rejections": 0,
            "first_apply_after_sync": None,
        }

    def update(self, **values: Any) -> None:
        with self._lock:
            self._data.update(values)

    def record_apply(self, record: ApplyRecord) -> None:
        with self._lock:
            d = self._data
            d["last_apply"] = record
            d["applies"] += 1
            if record.ok:
                d["last_success_at"] = record.at
                d["consecutive_failures"] = 0
                d["last_error"] = ""
                if d["in_sync"] and d["first_apply_after_sync"] is None:
                    d["first_apply_after_sync"] = record.at
            else:
                d["apply_failures"] += 1
                d["consecutive_failures"] += 1
                d["last_error"] = record.error

    def increment(self, key: str, by: int = 1) -> None:
        with self._lock:
            self._data[key] += by

    def get(self, key: str) -> Any:
        with self._lock:
            return self._data[key]

    def readiness(self) -> tuple[bool, list[str]]:
        """Ready once NAT64 state is applied after InSync and nothing is wrong."""
        with self._lock:
            d = dict(self._data)
        reasons: list[str] = []
        if not d["in_sync"]:
            reasons.append("waiting for Felix's initial snapshot (InSync)")
        if d["settings_ok"] is False:
            reasons.append("invalid settings: " + "; ".join(d["settings_errors"]))
        if d["desired_error"]:
            reasons.append(d["desired_error"])
        if d["unsupported_dataplane"]:
            reasons.append(d["unsupported_dataplane"])
        if d["in_sync"] and d["first_apply_after_sync"] is None and not d["desired_error"] \
                and not d["unsupported_dataplane"] and d["settings_ok"] is not False:
            reasons.append("dataplane not yet applied")
        last = d["last_apply"]
        if last is not None and not last.ok:
            reasons.append(f"dataplane apply failing: {last.error}")
        if self.stream.undecodable_used:
            reasons.append(
                f"{self.stream.undecodable_used} Felix message(s) we need could not be decoded "
                f"(last: {self.stream.last_undecodable}); our view of Felix may be incomplete: "
                "restart felix-nat64"
            )
        return (not reasons, reasons)

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready copy of everything."""
        with self._lock:
            d = dict(self._data)
        ready, reasons = self.readiness()
        last = d.pop("last_apply")
        d["last_apply"] = None if last is None else {
            "at": last.at, "duration_seconds": round(last.duration, 6), "ok": last.ok,
            "error": last.error, "changes": last.changes, "resync": last.resync,
        }
        d["ready"] = ready
        d["not_ready_reasons"] = reasons
        d["stream"] = {
            "frames": self.stream.frames,
            "bytes": self.stream.bytes,
            "by_payload": dict(self.stream.by_payload),
            "undecodable_used": self.stream.undecodable_used,
            "undecodable_other": self.stream.undecodable_other,
        }
        d["pid"] = os.getpid()
        d["written_at"] = self._clock()
        return d


def write_status_file(path: str, snapshot: dict[str, Any]) -> None:
    """Atomically replaces the status file read by `felix-nat64 status`."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o755, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".status-", dir=directory)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(snapshot, handle, indent=2, sort_keys=True, default=str)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
