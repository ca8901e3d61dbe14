"""Restarts without loss: established NAT64 flows carry on while the driver
is restarted, crashes, or sees Felix restart and resend its whole snapshot.

Long-lived TCP connections (an echo exchange every 200 ms) and UDP sessions
(a datagram every 100 ms from a fixed source port) run from both pods through
both translators during the whole sequence. Every restart must leave them
untouched: no connection fails, no UDP reply goes missing, the server keeps
seeing the same source address and port for each UDP session (the same Jool
BIB entry and the same conntrack entry), and each new driver adopts the
kernel without changing anything.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from testbed.traffic import HeldConnection, HoldReport
from tests.vm.dataplane_fixtures import NSP, WKP, Node, RunningDriver, nat64, node_stream, stream_frames
from tests.vm.reliability.conftest import SOAK, DriverPool, UdpReport, UdpStream, pod, record

pytestmark = pytest.mark.reliability

STREAM = node_stream()
THIRD_PREFIX = "2001:db8:65::/96"
# One IPv4-only server per translator (the documentation range is refused
# behind the well-known prefix).
TARGETS = ((NSP, "198.51.100.10"), (WKP, "192.0.0.10"))
PER_PATH = 8 if SOAK else 2  # held TCP connections per pod and translator
SETTLE = 10.0 if SOAK else 2.0  # seconds of traffic between two disruptions





class Traffic:
    """The flows kept running through every disruption."""

    def __init__(self, node: Node) -> None:
        self.held: list[tuple[str, HeldConnection]] = []
        self.udp: list[tuple[str, UdpStream]] = []
        port = 40000
        for i in (0, 1):
            for prefix, server in TARGETS:
                path = f"pod{i}->{server}"
                for _ in range(PER_PATH):
                    self.held.append((path, HeldConnection(pod(node, i), nat64(prefix, server),
                                                           interval=0.2, reply_timeout=5.0)))
                self.udp.append((path, UdpStream(pod(node, i), nat64(prefix, server), source_port=port,
                                                reply_timeout=5.0)))
                port += 1
        self.started = 0.0

    def start(self) -> Traffic:
        self.started = time.monotonic()
        for _, held in self.held:
            held.start()
        for _, stream in self.udp:
            stream.start()
        return self

    def exchanges(self) -> int:
        return sum(held.report().exchanges for _, held in self.held)

    def stop(self) -> tuple[list[tuple[str, HoldReport]], list[tuple[str, UdpReport]]]:
        return ([(path, held.stop()) for path, held in self.held],
                [(path, stream.stop()) for path, stream in self.udp])


@dataclass(frozen=True)
class Disruption:
    name: str
    run: Callable[[DriverPool, RunningDriver], RunningDriver]


def driver_restart(pool: DriverPool, old: RunningDriver) -> RunningDriver:
    """SIGTERM (as Kubernetes or Felix stop it), then a new driver, same stream."""
    assert old.stop() == 0
    return pool.start(STREAM)


def driver_crash(pool: DriverPool, old: RunningDriver) -> RunningDriver:
    """SIGKILL: no chance to do anything on the way out."""
    old.felix.kill()
    return pool.start(STREAM)


def felix_restart(pool: DriverPool, old: RunningDriver) -> RunningDriver:
    """EOF on fd 3 as when Felix exits; the new Felix sends its whole snapshot
    again, in another order (pools before hosts, pools reversed)."""
    old.felix.end_stream()
    assert old.felix.wait(60) == 0, old.felix.output
    parts = stream_frames(STREAM)
    config, hosts, pools, in_sync = parts[0], parts[1:3], parts[3:-1], parts[-1]
    return pool.start(b"".join([config, *reversed(pools), *hosts, in_sync]))


def felix_restart_slow_snapshot(pool: DriverPool, old: RunningDriver) -> RunningDriver:
    """Felix restarts and takes seconds to reach InSync: the new driver has
    no view at all meanwhile, and must leave the kernel alone."""
    old.felix.end_stream()
    assert old.felix.wait(60) == 0, old.felix.output
    parts = stream_frames(STREAM)
    new = pool.start(b"".join(parts[:-1]))
    time.sleep(SETTLE + 1.0)
    assert not new.status().get("in_sync")
    new.felix.send(parts[-1])
    return new


def settings_change(pool: DriverPool, old: RunningDriver) -> RunningDriver:
    """Not a restart: a third prefix arrives, so a third translator is built
    next to the live ones and its elements join the nftables sets, which
    must not disturb the other prefixes' lookups (tests/vm/test_set_updates.py)."""
    update = stream_frames(node_stream(prefixes=f"{WKP},{NSP},{THIRD_PREFIX}"))[0]
    old.felix.send(update)
    return old


DISRUPTIONS = [
    Disruption("driver restart (SIGTERM)", driver_restart),
    Disruption("Felix restart (EOF, full snapshot again, reordered)", felix_restart),
    Disruption("driver crash (SIGKILL)", driver_crash),
    Disruption("Felix restart with a slow snapshot", felix_restart_slow_snapshot),
    Disruption("settings change (third prefix)", settings_change),
]


def test_flows_survive_restarts_crashes_and_resyncs(node: Node, drivers: DriverPool) -> None:
    driver = drivers.start(STREAM)
    driver.wait_ready()
    traffic = Traffic(node).start()
    phases: list[dict[str, Any]] = []
    try:
        time.sleep(SETTLE)
        for disruption in DISRUPTIONS:
            exchanges = traffic.exchanges()
            began = time.monotonic()
            since = time.time()
            driver = disruption.run(drivers, driver)
            status = driver.wait_ready(since=since)
            ready = time.monotonic()
            time.sleep(SETTLE)
            phase = {"name": disruption.name, "from": round(began - traffic.started, 2),
                     "ready_after": round(ready - began, 2), "changes": status["last_apply"]["changes"],
                     "exchanges_during": traffic.exchanges() - exchanges}
            phases.append(phase)
            if disruption.run is not settings_change:
                assert status["last_apply"]["changes"] == 0, f"{disruption.name}: the new driver changed " \
                    f"the kernel: {status['last_apply']}"
            assert status["apply_failures"] == 0, status["last_error"]
    finally:
        held, udp = traffic.stop()
    failures = [(path, r.failures) for path, r in held if not r.ok]
    lost = [(path, r.lost) for path, r in udp if r.lost]
    record("restarts", "phases", phases)
    record("restarts", "tcp_connections", {"held": len(held), "kept": len(held) - len(failures),
                                           "exchanges": sum(r.exchanges for _, r in held),
                                           "max_rtt_seconds": round(max(r.max_rtt for _, r in held), 3)})
    record("restarts", "udp_sessions", {"sessions": len(udp), "sent": sum(r.sent for _, r in udp),
                                        "replies_lost": sum(r.lost_count for _, r in udp),
                                        "lost_at_seconds": lost})
    assert not failures, failures
    assert all(r.exchanges > 0 for _, r in held)
    assert not lost, f"UDP replies lost (send time in seconds since the start): {lost}; phases: {phases}"
    assert all(not r.send_errors for _, r in udp), [r.send_errors for _, r in udp]
    # One source seen by the server per UDP session: BIB and conntrack entries kept.
    assert all(len(r.seen) == 1 for _, r in udp), [(path, r.seen) for path, r in udp]
    assert all(phase["exchanges_during"] > 0 for phase in phases), phases
