"""Turns Jool's silent pool4 exhaustion into an immediate ICMPv6 error.

When pool4 has no transport address left for a new pod transport address,
Jool 4.1 drops the packet without an ICMP error (drivers/jool/occupancy.py),
so a pod's TCP connect hangs for minutes where RFC 6146 (sections 3.5.1,
3.5.2.2 and 3.5.3) asks for ICMPv6 Destination Unreachable, code 3 (Address
Unreachable). The watch reads Jool's allocation-failure counters every
second; when they rise and a protocol's pool4 is (nearly) full, it tells the
loop, whose next desired state makes the node reject new flows of that
protocol into that translator with exactly that error. The rejection holds
for `hold` seconds after the last failure seen, then new flows reach Jool
again: if pool4 is still full, the next failure brings the rejection back
within a second.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from felix_nat64.logs import EventLogger

IPv6Net = ipaddress.IPv6Network
# Jool's automatic iteration limit starts failing allocations at about 91%
# utilisation (src/mod/common/db/pool4/db.c, compute_max_iterations).
FULL = 0.9


@dataclass(frozen=True)
class Pool4Pressure:
    """The (translator /96, protocol) pairs whose pool4 is exhausted now."""

    exhausted: frozenset[tuple[IPv6Net, str]]


class Pool4Watch(threading.Thread):
    """Polls each translator's Jool for allocation failures (read-only)."""

    def __init__(self, translators: Callable[[], Mapping[IPv6Net, str]],
                 post: Callable[[Pool4Pressure], None],
                 failures: Callable[[str], Mapping[str, int]],
                 fill: Callable[[str], Mapping[str, float]],
                 failure_counters: Mapping[str, str], *,
                 interval: float = 1.0, hold: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(name="pool4-watch", daemon=True)
        self._translators = translators
        self._post = post
        self._failures = failures
        self._fill = fill
        self._counters = failure_counters
        self._interval = interval
        self._hold = hold
        self._clock = clock
        self._last: dict[IPv6Net, Mapping[str, int]] = {}
        self._until: dict[tuple[IPv6Net, str], float] = {}
        self._published: frozenset[tuple[IPv6Net, str]] = frozenset()
        self._stopping = threading.Event()
        self._log = EventLogger("pool4watch")

    def run(self) -> None:
        while not self._stopping.wait(self._interval):
            try:
                self.check()
            except Exception as exc:  # a failed round must not end the watch
                self._log.warning("pool4 watch round failed", error=str(exc))

    def stop(self) -> None:
        self._stopping.set()

    def check(self) -> None:
        """One round: read the counters, update the holds, post any change."""
        now = self._clock()
        translators = dict(self._translators())
        for parent, namespace in translators.items():
            try:
                counts = self._failures(namespace)
            except Exception as exc:  # a translator being built or removed
                self._log.debug("jool counters unreadable", namespace=namespace, error=str(exc))
                continue
            last = self._last.get(parent)
            self._last[parent] = counts
            if last is None:
                continue
            risen = {name for name, value in counts.items() if value > last.get(name, value)}
            suspects = tuple(p for p, name in self._counters.items() if name in risen)
            if suspects:
                full = self._fill(namespace)
                for proto in suspects:
                    if full.get(proto, 0.0) >= FULL:
                        self._until[(parent, proto)] = now + self._hold
        for key in [k for k, until in self._until.items() if until <= now or k[0] not in translators]:
            del self._until[key]
        for parent in [p for p in self._last if p not in translators]:
            del self._last[parent]
        current = frozenset(self._until)
        if current != self._published:
            for parent, proto in sorted(current - self._published):
                self._log.warning("pool4 exhausted: new flows rejected with ICMPv6 address unreachable",
                                  parent=parent, proto=proto, hold=self._hold)
            for parent, proto in sorted(self._published - current):
                self._log.info("pool4 rejection lifted", parent=parent, proto=proto)
            self._published = current
            self._post(Pool4Pressure(current))
