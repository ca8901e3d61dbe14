"""Samples what the kernel knows: nftables counters, Jool tables and stats.

Sampling walks netlink dumps that can be large (one row per session), so it
runs on its own thread at an interval; /metrics and `status` read the last
sample and never wait on the kernel.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from felix_nat64.logs import EventLogger

PROTOCOLS = ("tcp", "udp", "icmp")


@dataclass(frozen=True)
class TranslatorStats:
    """One translator's Jool instance, as sampled."""

    namespace: str
    parent: str
    instance: bool  # the Jool instance exists
    sessions: Mapping[str, int] = field(default_factory=dict)  # protocol -> sessions
    bib: Mapping[str, int] = field(default_factory=dict)  # protocol -> BIB entries
    pool4_ports: Mapping[str, int] = field(default_factory=dict)  # protocol -> transport addresses
    jool: Mapping[str, int] = field(default_factory=dict)  # Jool stat name -> value
    error: str = ""


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
