"""Samples what the kernel knows: nftables counters, Jool's counters and pool4.

A sample costs the same whatever the number of sessions: table sizes come
from Jool's own counters, never from listing the tables. It still runs on its
own thread at an interval, so /metrics and `status` read the last sample and
never wait on the kernel.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from felix_nat64.logs import EventLogger
from felix_nat64.model.protocol import Protocol

# Jool's counters of its table sizes: gauges, kept apart from the event
# counters (src/mod/common/db/bib/db.c increments them as entries are added
# and decrements them as they go, in Jool 4.1.9 as in 4.1.15).
JSTAT_BIB_ENTRIES = "JSTAT_BIB_ENTRIES"
JSTAT_SESSIONS = "JSTAT_SESSIONS"
TABLE_SIZE_STATS = frozenset({JSTAT_BIB_ENTRIES, JSTAT_SESSIONS})


@dataclass(frozen=True)
class TranslatorStats:
    """One translator's Jool instance, as sampled."""

    namespace: str
    parent: str
    instance: bool  # the Jool instance exists
    # Sessions and BIB entries (pool4 transport addresses in use) of every
    # protocol: Jool counts its tables as a whole, not per protocol.
    sessions: int = 0
    bib_entries: int = 0
    pool4_ports: Mapping[Protocol, int] = field(default_factory=dict)  # protocol -> transport addresses
    jool: Mapping[str, int] = field(default_factory=dict)  # Jool event counter name -> value
    error: str = ""

    @classmethod
    def from_counters(cls, namespace: str, parent: str, pool4_ports: Mapping[Protocol, int],
                      counters: Mapping[str, int]) -> TranslatorStats:
        """A live instance's sample from its pool4 capacity and Jool's counters."""
        events = {k: v for k, v in counters.items() if k not in TABLE_SIZE_STATS}
        return cls(namespace, parent, True, counters.get(JSTAT_SESSIONS, 0),
                   counters.get(JSTAT_BIB_ENTRIES, 0), pool4_ports, events)

    def pool4_use_bound(self, proto: Protocol) -> float:
        """At most this share of `proto`'s pool4 is in use: every BIB entry
        counted against that protocol's capacity. It is exact when one
        protocol holds them all, and never less than the true share, so it is
        safe to alert on; the census gives the split."""
        capacity = self.pool4_ports.get(proto, 0)
        return min(1.0, self.bib_entries / capacity) if capacity else 0.0


@dataclass(frozen=True)
class KernelStats:
    """A sample of the node's NAT64 kernel state."""

    at: float
    nft: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # counter -> (packets, bytes)
    translators: tuple[TranslatorStats, ...] = ()
    error: str = ""


Sampler = Callable[[], KernelStats]


class StatsPoller(threading.Thread):
    """Keeps a fresh KernelStats sample, at most every `interval` seconds."""

    def __init__(self, sampler: Sampler, interval: float = 15.0) -> None:
        super().__init__(name="stats-poller", daemon=True)
        self._sampler = sampler
        self._interval = interval
        self._stopping = threading.Event()  # not _stop: Thread has one
        self._lock = threading.Lock()
        self._latest: KernelStats | None = None
        self._log = EventLogger("stats")
        self.failures = 0

    @property
    def latest(self) -> KernelStats | None:
        with self._lock:
            return self._latest

    def sample_now(self) -> KernelStats:
        try:
            sample = self._sampler()
        except Exception as exc:  # a failed sample must not kill the poller
            self.failures += 1
            self._log.warning("kernel stats sample failed", error=str(exc))
            sample = KernelStats(time.time(), error=str(exc))
        with self._lock:
            self._latest = sample
        return sample

    def run(self) -> None:
        while not self._stopping.is_set():
            self.sample_now()
            self._stopping.wait(self._interval)

    def stop(self) -> None:
        self._stopping.set()
