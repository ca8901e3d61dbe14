"""The session census: who uses NAT64, counted from Jool's session tables
(the walk itself is `felix_nat64.observe.sampler.take_census`).

Jool counts its tables only as a whole. Sessions per protocol, BIB entries
per protocol and sessions per pod namespace need every session read, which
costs in proportion to the table: about 26 sessions per netlink reply, each
read down to its pod address and pool4 transport address only. So the census
is not part of a metrics sample. It runs on a thread of its own, rarely:
every ten resync intervals (5 minutes by default), and never more than a
twentieth of the time (after a census that took T seconds the next waits at
least 20 T), so at any table size it keeps under 5% of one CPU. Its figures
are as old as its last run, which `calico_nat64_census_timestamp_seconds`
and `status` say.

BIB entries are counted as the session walk goes: Jool lists sessions
grouped by their BIB entry (`bib_foreach_session` in its bib/db.c walks the
BIB tree, then each entry's sessions), and a dynamic BIB entry lives exactly
as long as it has a session, so each change of pool4 transport address
starts a new entry. Static BIB entries without sessions, which felix-nat64
never creates, are not counted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from felix_nat64.logs import EventLogger
from felix_nat64.model.protocol import Protocol
from felix_nat64.model.workloads import WorkloadIndex

# Namespaces with their own series; the rest are summed under OTHER, so the
# metric has at most TOP_NAMESPACES + 2 series whatever runs on the node.
TOP_NAMESPACES = 20
# Label values no Kubernetes namespace can take (namespaces are DNS labels).
OTHER = "_other"  # sessions of namespaces past the top ones
UNKNOWN = "_unknown"  # sessions from an address no known endpoint holds
INTERVAL_RESYNCS = 10  # a census every this many resync intervals...
MAX_DUTY = 0.05  # ...but never busy more than this share of the time


@dataclass(frozen=True)
class TranslatorCensus:
    """One translator's tables, split by protocol."""

    namespace: str
    parent: str
    sessions: Mapping[Protocol, int] = field(default_factory=dict)
    bib_entries: Mapping[Protocol, int] = field(default_factory=dict)
    error: str = ""


@dataclass(frozen=True)
class Census:
    """Sessions by protocol and by pod namespace, as of `at`."""

    at: float
    duration: float
    translators: tuple[TranslatorCensus, ...] = ()
    # (namespace, sessions), most sessions first: at most TOP_NAMESPACES
    # namespaces, then OTHER and UNKNOWN when they have any.
    namespaces: tuple[tuple[str, int], ...] = ()
    error: str = ""

    @property
    def sessions(self) -> int:
        return sum(sum(t.sessions.values()) for t in self.translators)


def rank_namespaces(counts: Mapping[str, int], top: int = TOP_NAMESPACES) -> tuple[tuple[str, int], ...]:
    """The `top` namespaces with most sessions, then OTHER (the rest, and pods
    of an orchestrator without namespaces) and UNKNOWN."""
    unknown = counts.get(UNKNOWN, 0)
    named = sorted(((ns, n) for ns, n in counts.items() if ns not in (UNKNOWN, "") and n),
                   key=lambda x: (-x[1], x[0]))
    ranked = named[:top]
    other = sum(n for _, n in named[top:]) + counts.get("", 0)
    return tuple(ranked + ([(OTHER, other)] if other else []) + ([(UNKNOWN, unknown)] if unknown else []))


class CensusTaker(threading.Thread):
    """Takes a census now and then (see the module's docstring for how often)."""

    def __init__(self, take: Callable[[WorkloadIndex], Census], workloads: Callable[[], WorkloadIndex],
                 resync_interval: float, on_census: Callable[[Census], None] = lambda census: None) -> None:
        super().__init__(name="session-census", daemon=True)
        self._workloads = workloads
        self._base = INTERVAL_RESYNCS * resync_interval
        self._first = resync_interval
        self._on_census = on_census
        self._take = take
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._latest: Census | None = None
        self._log = EventLogger("census")

    @property
    def latest(self) -> Census | None:
        with self._lock:
            return self._latest

    def next_wait(self, last: Census | None) -> float:
        """How long to wait after `last` before the next census."""
        return max(self._base, last.duration / MAX_DUTY) if last is not None else self._first

    def census_now(self) -> Census:
        try:
            census = self._take(self._workloads())
        except Exception as exc:  # a failed census must not end the thread
            self._log.warning("session census failed", error=str(exc))
            census = Census(time.time(), 0.0, error=str(exc))
        else:
            self._log.debug("session census", sessions=census.sessions, duration=round(census.duration, 3))
        with self._lock:
            self._latest = census
        self._on_census(census)
        return census

    def run(self) -> None:
        last: Census | None = None
        while not self._stopping.wait(self.next_wait(last)):
            last = self.census_now()

    def stop(self) -> None:
        self._stopping.set()
