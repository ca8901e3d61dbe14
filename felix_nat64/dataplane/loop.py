"""The driver's main loop, shaped like Felix's internal dataplane loop.

Messages are folded into a FelixView as they arrive (no kernel work); once
Felix has said InSync, a burst of messages is coalesced into one
recalculation, and the dataplane is applied only when the desired state
changed, a retry is due after a failure, or the periodic resync is due.
"""

from __future__ import annotations

import ipaddress
import queue
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from felix_nat64.dataplane.managers import FelixView
from felix_nat64.dataplane.pool4watch import Pool4Pressure
from felix_nat64.drivers.api import Dataplane, DataplaneError
from felix_nat64.logs import EventLogger
from felix_nat64.model.desired import DesiredStateError, build_desired, unsupported_dataplane
from felix_nat64.model.state import DesiredState
from felix_nat64.observe.status import ApplyRecord, StatusBoard
from felix_nat64.wire import messages as m


@dataclass(frozen=True)
class StreamEnd:
    """The Felix stream ended: cleanly (error empty) or on a framing error."""

    error: str = ""


@dataclass(frozen=True)
class LoopOptions:
    coalesce_seconds: float = 0.05  # wait this long for more messages after one arrives
    max_coalesce_seconds: float = 0.5  # but never delay a recalculation longer
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    default_resync_interval: float = 30.0


Event = m.FelixMessage | m.Undecodable | StreamEnd | Pool4Pressure
MAX_IDLE_SECONDS = 10.0


class DataplaneLoop:
    """Folds events and keeps the kernel converged on the desired state."""

    def __init__(
        self,
        events: queue.Queue[Event],
        dataplane: Dataplane,
        status: StatusBoard,
        *,
        view: FelixView | None = None,
        options: LoopOptions = LoopOptions(),
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        publish: Callable[[], None] = lambda: None,
        on_iteration: Callable[[], None] = lambda: None,
        on_apply: Callable[[ApplyRecord], None] = lambda record: None,
    ) -> None:
        self._events = events
        self._dataplane = dataplane
        self._status = status
        self.view = view or FelixView()
        self._opt = options
        self._clock = clock
        self._wall = wall_clock
        self._publish = publish
        self._on_iteration = on_iteration
        self._on_apply = on_apply
        self._log = EventLogger("loop")
        self._dirty = False
        self._applied: DesiredState | None = None
        self._blocks: Mapping[ipaddress.IPv6Network, ipaddress.IPv4Network] | None = None
        self._retry_at: float | None = None
        self._backoff = options.backoff_initial
        self._resync_at: float | None = None
        self._warned: tuple[str, ...] = ()
        self._unsupported = ""
        self._kernel_warned: tuple[str, ...] = ()
        self._exhausted: frozenset[tuple[ipaddress.IPv6Network, str]] = frozenset()
        self.recalculations = 0

    # -- event handling -----------------------------------------------------

    def run(self) -> StreamEnd:
        """Runs until the stream ends; returns how it ended."""
        self.step()  # work left over from an earlier run
        while True:
            self._on_iteration()
            timeout = self._timeout()
            try:
                event = self._events.get(timeout=timeout)
            except queue.Empty:
                event = None
            if event is not None:
                end = self._fold_burst(event)
                if end is not None:
                    return end
            self.step()

    def _timeout(self) -> float:
        # Wake at least every few seconds so liveness sees the loop turning.
        deadlines = [d for d in (self._retry_at, self._resync_at) if d is not None]
        wait = min(deadlines) - self._clock() if deadlines else MAX_IDLE_SECONDS
        return min(max(0.0, wait), MAX_IDLE_SECONDS)

    def _fold_burst(self, first: Event) -> StreamEnd | None:
        """Folds `first` and whatever follows within the coalescing window."""
        start = self._clock()
        event: Event | None = first
        while event is not None:
            if isinstance(event, StreamEnd):
                return event
            self.handle(event)
            now = self._clock()
            wait = min(self._opt.coalesce_seconds, start + self._opt.max_coalesce_seconds - now)
            try:
                event = self._events.get_nowait() if wait <= 0 else self._events.get(timeout=wait)
            except queue.Empty:
                event = None
            if wait <= 0 and event is None:
                break
        return None

    def handle(self, event: m.FelixMessage | m.Undecodable | Pool4Pressure) -> None:
        """Folds one event into the view (no kernel work)."""
        if isinstance(event, m.Undecodable):
            return  # counted and logged by the reader
        if isinstance(event, Pool4Pressure):
            if event.exhausted != self._exhausted:
                self._exhausted = event.exhausted
                self._dirty = True
            return
        was_in_sync = self.view.in_sync
        if self.view.on_message(event):
            self._dirty = True
        if isinstance(event, m.ConfigUpdate):
            self._publish_settings()
        if self.view.in_sync and not was_in_sync:
            self._log.info("in sync with Felix", pools=len(self.view.pools.pools),
                           hosts=len(self.view.hosts.hosts))
            self._status.set_in_sync(self._wall())
            self._publish()

    def _publish_settings(self) -> None:
        result = self.view.settings.last_result
        if result is None:
            return
        self._status.set_settings(
            ok=result.ok, errors=tuple(str(e) for e in result.errors), warnings=result.warnings,
            in_force=self.view.settings.in_force, origins=result.origins,
            rejections=self.view.settings.rejections)
        self._publish()

    # -- applying -------------------------------------------------------------

    def step(self) -> None:
        """Recalculates and applies if anything calls for it."""
        if not self.view.in_sync:
            return
        now = self._clock()
        retry_due = self._retry_at is not None and now >= self._retry_at
        resync_due = self._resync_at is not None and now >= self._resync_at
        if not (self._dirty or retry_due or resync_due):
            return
        # Deadlines are consumed here; a success sets the next resync, a
        # failure the next retry (with back-off), so nothing spins.
        self._retry_at = None
        if resync_due:
            self._resync_at = None
        self._dirty = False
        desired = self._recalculate()
        if desired is None:
            return
        if desired == self._applied and not retry_due and not resync_due:
            return
        self._apply(desired, resync=resync_due)

    def _recalculate(self) -> DesiredState | None:
        settings = self.view.settings.in_force
        if settings is None:
            return None  # no good settings yet: leave the kernel as it is
        if self._refuse_unsupported(unsupported_dataplane(settings)):
            return None  # not even read: nothing of ours could work on this node
        inputs = self.view.inputs(self._known_blocks())
        assert inputs is not None
        inputs = replace(inputs, exhausted=self._exhausted)
        self.recalculations += 1
        try:
            desired = build_desired(inputs)
        except DesiredStateError as exc:
            self._log.error("desired state impossible", reason=str(exc))
            self._status.update(desired_error=str(exc))
            self._publish()
            return None
        if desired.warnings != self._warned:
            for warning in desired.warnings:
                if warning not in self._warned:
                    self._log.warning("configuration warning", detail=warning)
            self._warned = desired.warnings
        self._status.set_desired(desired)
        if self._kernel_warned:
            self._status.update(warnings=desired.warnings + self._kernel_warned)
        return desired

    def _refuse_unsupported(self, reason: str) -> bool:
        """Reports a change in whether this node's Calico dataplane is one we
        cannot work with; True while it is."""
        if reason != self._unsupported:
            if reason:
                self._log.error("unsupported Calico dataplane, programming nothing", reason=reason,
                                action="run felix-nat64 only on nodes with Calico's iptables or "
                                       "nftables dataplane")
            else:
                self._log.info("Calico dataplane supported again")
            self._unsupported = reason
            self._status.update(unsupported_dataplane=reason)
            self._publish()
        return bool(reason)

    def _known_blocks(self) -> Mapping[ipaddress.IPv6Network, ipaddress.IPv4Network]:
        if self._blocks is None:
            try:
                self._blocks = dict(self._dataplane.adopt())
            except DataplaneError as exc:
                self._log.warning("could not read existing translators", error=str(exc))
                return {}
            if self._blocks:
                self._log.info("adopting existing translators",
                               parents=",".join(str(p) for p in self._blocks))
        return self._blocks

    def _apply(self, desired: DesiredState, resync: bool) -> None:
        start = self._clock()
        try:
            outcome = self._dataplane.apply(desired)
        except DataplaneError as exc:
            duration = self._clock() - start
            self._retry_at = self._clock() + self._backoff
            self._log.warning("apply failed", error=str(exc), retry_in=round(self._backoff, 3))
            self._backoff = min(self._backoff * 2, self._opt.backoff_max)
            record = ApplyRecord(self._wall(), duration, False, str(exc), resync=resync)
            self._status.record_apply(record)
            self._on_apply(record)
            self._publish()
            return
        duration = self._clock() - start
        self._dataplane_warnings(desired, outcome.warnings)
        first = self._applied is None
        # Changes found by a resync of an unchanged desired state are drift:
        # somebody else altered our objects.
        drift = resync and not first and desired == self._applied and outcome.changes > 0
        self._applied = desired
        self._blocks = dict(desired.blocks)
        self._retry_at = None
        self._backoff = self._opt.backoff_initial
        interval = self.view.settings.in_force.resync_interval if self.view.settings.in_force \
            else self._opt.default_resync_interval
        self._resync_at = self._clock() + interval
        if drift:
            self._status.count_drift_repair()
            self._log.warning("repaired drift in kernel state", changes=outcome.changes)
        if first or outcome.changes:
            self._log.info("dataplane applied", translators=len(desired.translators),
                           changes=outcome.changes, duration=round(duration, 4))
        record = ApplyRecord(self._wall(), duration, True, "", outcome.changes, resync)
        self._status.record_apply(record)
        self._on_apply(record)
        self._publish()

    def _dataplane_warnings(self, desired: DesiredState, warnings: tuple[str, ...]) -> None:
        """Shows what the kernel could not do as wished beside the desired
        state's own warnings; each is logged once while it lasts."""
        for warning in warnings:
            if warning not in self._kernel_warned:
                self._log.warning("dataplane warning", detail=warning)
        self._kernel_warned = warnings
        self._status.update(warnings=desired.warnings + warnings)

    def new_session(self) -> None:
        """Forgets what the last Felix said; the kernel keeps its state until
        the next Felix's InSync (like a driver restart, without the restart)."""
        self.view = FelixView(self.view.settings.default_hostname)
        self._dirty = False
        self._retry_at = None
        self._resync_at = None
        self._status.set_in_sync(None)
        self._publish()

    def translators(self) -> dict[ipaddress.IPv6Network, str]:
        """/96 -> namespace of the translators last applied (read by other threads)."""
        applied = self._applied
        return {t.parent: t.namespace for t in applied.translators} if applied else {}

    @property
    def applied(self) -> DesiredState | None:
        """The last desired state the kernel was brought to."""
        return self._applied
