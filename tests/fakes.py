"""Stand-ins for the kernel and for time, for tests of the loop and the CLI.

`RecordingDataplane` is the `Dataplane` the loop drives when no kernel may be
touched: it records every desired state it is given. `ManualClock` and
`ClockedQueue` let a test drive the loop's timing (coalescing, back-off,
resync) by advancing a number instead of sleeping.
"""

from __future__ import annotations

import ipaddress
import queue
import threading
from collections.abc import Callable, Mapping
from typing import TypeVar

from felix_nat64.drivers.api import ApplyOutcome, DataplaneError
from felix_nat64.model.state import DesiredState

T = TypeVar("T")
INJECTED = "injected failure"


class RecordingDataplane:
    """A `Dataplane` that records what it is asked to apply.

    `existing` is what `adopt()` reports. `failures` makes the next so many
    applies fail; `fail_after` makes every apply fail once that many have
    succeeded. `on_apply` callbacks see each desired state as it is applied;
    `attempts` holds the `clock` time of every apply, failed ones included.
    """

    def __init__(self, *, existing: Mapping[ipaddress.IPv6Network, ipaddress.IPv4Network] | None = None,
                 failures: int = 0, fail_after: int | None = None, changes: int = 1,
                 clock: Callable[[], float] = lambda: 0.0) -> None:
        self.applied: list[DesiredState] = []
        self.existing = dict(existing or {})
        self.failures = failures
        self.fail_after = fail_after
        self.changes = changes
        self.clock = clock
        self.attempts: list[float] = []
        self.adopt_calls = 0
        self.applied_event = threading.Event()
        self.on_apply: list[Callable[[DesiredState], None]] = []

    def adopt(self) -> Mapping[ipaddress.IPv6Network, ipaddress.IPv4Network]:
        self.adopt_calls += 1
        return self.existing

    def apply(self, desired: DesiredState) -> ApplyOutcome:
        self.attempts.append(self.clock())
        if self.failures:
            self.failures -= 1
            raise DataplaneError(INJECTED)
        if self.fail_after is not None and len(self.applied) >= self.fail_after:
            raise DataplaneError(INJECTED)
        for callback in self.on_apply:
            callback(desired)
        self.applied.append(desired)
        self.applied_event.set()
        return ApplyOutcome(self.changes)


class ManualClock:
    """A monotonic clock that only moves when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class ClockedQueue(queue.Queue[T]):
    """A queue whose waits pass on a ManualClock instead of in real time.

    Items put normally are there at once; `put_at()` schedules one to arrive
    at a clock time. A get() on an empty queue moves the clock to the next
    scheduled arrival if it comes within the timeout, else by the whole
    timeout, and returns at once either way (raising queue.Empty when nothing
    arrived), as a real queue would after that long.
    """

    def __init__(self, clock: ManualClock) -> None:
        super().__init__()
        self.clock = clock
        self._later: list[tuple[float, int, T]] = []

    def put_at(self, when: float, item: T) -> None:
        self._later.append((when, len(self._later), item))
        self._later.sort(key=lambda entry: entry[:2])

    def get(self, block: bool = True, timeout: float | None = None) -> T:
        try:
            return super().get(block=False)
        except queue.Empty:
            if not block:
                raise
        if self._later and (timeout is None or self._later[0][0] <= self.clock.now + timeout):
            when, _, item = self._later.pop(0)
            self.clock.now = max(self.clock.now, when)
            return item
        if timeout is None:
            raise AssertionError("a wait without a timeout on an empty ClockedQueue would never end")
        self.clock.advance(timeout)
        raise queue.Empty
