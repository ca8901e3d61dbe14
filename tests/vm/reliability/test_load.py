"""Load and exhaustion: thousands of concurrent flows, session expiry, and a
pool4 too small for the flows asked of it.

Capacity is per translator and protocol: pool4 addresses (8) times the
ports of NAT64Pool4PortRange. Jool keeps a closed TCP session for its
transitory timeout (at least 4 minutes) and a UDP session for the UDP
timeout (at least 2 minutes), so those ports stay taken that long.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from felix_nat64.dataplane.fold import desired_from
from felix_nat64.drivers.nft.table import Nft
from testbed.netns_exec import socket_in_netns
from testbed.traffic import (
    BurstResult,
    HeldConnection,
    connection_burst,
    ping,
    tcp_request,
    udp_exchange,
)
from tests.vm.dataplane_fixtures import (
    NSP,
    WKP,
    Node,
    RunningDriver,
    metric,
    nat64,
    node_stream,
    scrape,
)
from tests.vm.reliability.conftest import (
    JOOL_INSTANCE,
    SOAK,
    jool_cli,
    jool_rows,
    jool_stats,
    pod,
    ready_driver,
    record,
    run,
    sessions_json,
    status_json,
    wait_for,
)

pytestmark = pytest.mark.reliability

DOC = "198.51.100.10"
GLOBAL = "192.0.0.10"
NODE_IPV4 = "192.0.2.1"
ICMP_TIMEOUT = 2.0
UDP_TIMEOUT = 120.0  # Jool's minimum
JOOL_GC_PERIOD = 2.0  # Jool looks for expired sessions every 2 s

FLOWS_PER_POD = 10000 if SOAK else 1000
CONCURRENCY_PER_POD = 2000 if SOAK else 500
HOLD_SECONDS = 20.0 if SOAK else 5.0

PORTS = "2000-2003"
CAPACITY = 8 * 4  # pool4 addresses x ports, per protocol


def nft_handles() -> list[tuple[str, int]]:
    """The handles of the node's felix-nat64 table and of everything in it."""
    items = Nft().list_table() or []
    return sorted((kind, int(body["handle"])) for item in items for kind, body in item.items()
                  if isinstance(body, dict) and "handle" in body)


def jool_sessions_of(namespace: str, proto: str, address: str) -> int:
    """How many of Jool's `proto` sessions belong to pod `address` (read in-process: fast)."""
    from felix_nat64.drivers.jool.client import JoolClient  # noqa: PLC0415

    with JoolClient.open(namespace) as jool:
        return sum(1 for s in jool.session_list(JOOL_INSTANCE, proto) if str(s.src6.address) == address)


def translator_namespace(stream: bytes, prefix: str) -> str:
    return next(t.namespace for t in desired_from(stream, {}).translators if str(t.parent) == prefix)


class PeakSampler(threading.Thread):
    """Samples Jool's session and BIB counts and the node's conntrack count."""

    def __init__(self, namespace: str, interval: float = 0.5) -> None:
        super().__init__(daemon=True, name="peak-sampler")
        self.namespace = namespace
        self.interval = interval
        self.peaks = {"jool_sessions": 0, "jool_bib_entries": 0, "conntrack_entries": 0}
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            stats = jool_stats(self.namespace)
            with open("/proc/sys/net/netfilter/nf_conntrack_count") as handle:
                conntrack = int(handle.read())
            for key, value in (("jool_sessions", stats.get("JSTAT_SESSIONS", 0)),
                               ("jool_bib_entries", stats.get("JSTAT_BIB_ENTRIES", 0)),
                               ("conntrack_entries", conntrack)):
                self.peaks[key] = max(self.peaks[key], value)

    def stop(self) -> dict[str, int]:
        self._halt.set()
        self.join(10)
        return self.peaks


# ---------------------------------------------------------------------------
# Many flows, and session expiry
# ---------------------------------------------------------------------------

LOAD_STREAM = node_stream(extra={"NAT64ICMPTimeout": f"{ICMP_TIMEOUT:.0f}s", "NAT64UDPTimeout": "2m"})


@pytest.fixture(scope="class")
def steady(node: Node) -> Iterator[RunningDriver]:
    """A driver with a 2 s ICMP timeout and the minimum UDP timeout, for one class."""
    with ready_driver(node, LOAD_STREAM) as driver:
        yield driver


class TestLoad:
    def test_thousands_of_concurrent_flows(self, node: Node, steady: RunningDriver) -> None:
        sampler = PeakSampler(translator_namespace(LOAD_STREAM, NSP))
        sampler.start()
        results: dict[int, BurstResult] = {}

        def burst(i: int) -> None:
            results[i] = connection_burst(pod(node, i), nat64(NSP, DOC), flows=FLOWS_PER_POD,
                                          concurrency=CONCURRENCY_PER_POD, time_limit=600.0,
                                          flow_timeout=HOLD_SECONDS + 60.0, hold=HOLD_SECONDS)

        threads = [threading.Thread(target=burst, args=(i,)) for i in (0, 1)]
        namespace = translator_namespace(LOAD_STREAM, NSP)
        jool_before = jool_stats(namespace)
        table_before = nft_handles()
        began = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - began
        peaks = sampler.stop()
        status = steady.status()
        _, text = scrape()
        record("load", "concurrent_flows", {
            "jool_stat_deltas": stat_deltas(jool_before, jool_stats(namespace)),
            "nft_pool4_exhausted": metric(text, "calico_nat64_nft_packets_total", rule="pool4_exhausted"),
            "nft_unrouted": metric(text, "calico_nat64_nft_packets_total", rule="unrouted"),
            "flows": sum(r.flows for r in results.values()),
            "succeeded": sum(r.succeeded for r in results.values()),
            "failed": sum(r.failed for r in results.values()),
            "errors": [r.errors for r in results.values() if r.errors],
            "max_concurrent": sum(r.max_concurrent for r in results.values()),
            "hold_seconds": HOLD_SECONDS, "elapsed_seconds": round(elapsed, 1), **peaks})
        # Nothing changed, so the table was never rewritten under the load
        # (a rewrite shows new handles; a delete and create in between hung
        # or failed connections).
        assert nft_handles() == table_before
        for r in results.values():
            assert r.succeeded == FLOWS_PER_POD and r.failed == 0 and r.not_started == 0, r
            assert r.max_concurrent == CONCURRENCY_PER_POD, r
            assert {str(a) for a in r.seen_sources} == {NODE_IPV4}, r.seen_sources
        assert peaks["jool_sessions"] >= 2 * CONCURRENCY_PER_POD, peaks
        assert status["ready"] and status["apply_failures"] == 0, status
        assert tcp_request(pod(node), nat64(NSP, DOC), timeout=20).ok

    def test_icmp_sessions_expire_after_the_icmp_timeout(self, node: Node, steady: RunningDriver) -> None:
        me = str(node.topo.pod(0).address)
        namespace = translator_namespace(LOAD_STREAM, NSP)
        # One echo identifier, so one Jool session, refreshed every 0.2 s
        # until `felix-nat64 sessions` (a Python start, slow in the VM) has
        # listed it.
        outcome: dict[str, Any] = {}
        listed_it = threading.Event()

        def pinger() -> None:
            outcome["result"] = ping(pod(node), nat64(NSP, DOC), count=1500, interval=0.2, reply_timeout=5,
                                     until=listed_it)
            outcome["last_reply"] = time.monotonic()

        thread = threading.Thread(target=pinger)
        thread.start()
        try:
            wait_for(lambda: jool_sessions_of(namespace, "icmp", me) > 0, timeout=10, what="an ICMP session")
            listed = [r for r in sessions_json("--proto", "icmp", "--prefix", NSP)["rows"] if r["pod"] == me]
        finally:
            listed_it.set()
            thread.join()
        assert outcome["result"].ok, outcome["result"].errors
        assert listed, "the ping's session is not listed by felix-nat64 sessions"
        assert all(0 < r["expires_ms"] <= ICMP_TIMEOUT * 1000 for r in listed), json.dumps(listed)
        wait_for(lambda: jool_sessions_of(namespace, "icmp", me) == 0,
                 timeout=ICMP_TIMEOUT + JOOL_GC_PERIOD + 10, interval=0.1, what="ICMP session expiry")
        gone_after = time.monotonic() - outcome["last_reply"]
        assert not [r for r in sessions_json("--proto", "icmp", "--prefix", NSP)["rows"] if r["pod"] == me]
        record("load", "icmp_session_expiry", {"timeout_seconds": ICMP_TIMEOUT,
                                               "gone_after_seconds": round(gone_after, 2)})
        assert ICMP_TIMEOUT - 0.5 <= gone_after <= ICMP_TIMEOUT + JOOL_GC_PERIOD + 1.5, gone_after

    def test_udp_and_tcp_sessions_carry_the_configured_timeouts(self, node: Node,
                                                                 steady: RunningDriver) -> None:
        me = str(node.topo.pod(1).address)
        namespace = translator_namespace(LOAD_STREAM, NSP)
        jool_globals = {r["Name"] if "Name" in r else next(iter(r.values())): r
                        for r in jool_rows(namespace, "-i", JOOL_INSTANCE, "global", "display")}
        began = time.monotonic()
        assert udp_exchange(pod(node, 1), nat64(NSP, DOC), reply_timeout=5).ok
        held = HeldConnection(pod(node, 1), nat64(NSP, DOC), interval=0.2).start()
        try:
            time.sleep(0.5)
            rows = sessions_json("--prefix", NSP, "--pod", me)["rows"]
            # What a session can have lost since it was last refreshed.
            aged_ms = (time.monotonic() - began) * 1000 + 1000
        finally:
            report = held.stop()
        assert report.ok, report.failures
        udp = [r for r in rows if r["proto"] == "udp"]
        tcp = [r for r in rows if r["proto"] == "tcp" and r["state"] == "ESTABLISHED"]
        assert udp and tcp, rows
        assert all(UDP_TIMEOUT * 1000 - aged_ms < r["expires_ms"] <= UDP_TIMEOUT * 1000 for r in udp), \
            ([r["expires_ms"] for r in udp], aged_ms)
        tcp_est = 2 * 3600 + 4 * 60
        assert all(tcp_est * 1000 - aged_ms < r["expires_ms"] <= tcp_est * 1000 for r in tcp), \
            ([r["expires_ms"] for r in tcp], aged_ms)
        # Closed by both ends: the session waits out the transitory timeout.
        time.sleep(1.0)
        closing = [r for r in sessions_json("--prefix", NSP, "--pod", me, "--proto", "tcp")["rows"]
                   if r["pod_port"] == tcp[0]["pod_port"]]
        assert closing and all(r["expires_ms"] <= 240000 for r in closing), closing
        figures: dict[str, Any] = {
            "udp_expires_in_seconds": max(r["expires_ms"] for r in udp) / 1000,
            "tcp_established_expires_in_seconds": max(r["expires_ms"] for r in tcp) / 1000,
            "tcp_closed_state": closing[0]["state"],
            "tcp_closed_expires_in_seconds": closing[0]["expires_ms"] / 1000,
            "jool_globals": {k: v for k, v in jool_globals.items() if "timeout" in k},
        }
        if SOAK:
            began = time.monotonic()
            wait_for(lambda: jool_sessions_of(namespace, "udp", me) == 0, timeout=UDP_TIMEOUT + 30,
                     interval=1.0, what="UDP expiry")
            figures["udp_gone_after_seconds"] = round(time.monotonic() - began, 1)
        record("load", "session_timeouts", figures)


# ---------------------------------------------------------------------------
# pool4 exhaustion
# ---------------------------------------------------------------------------

SMALL_STREAM = node_stream(extra={"NAT64Pool4PortRange": PORTS, "NAT64UDPTimeout": "2m"})


def udp_ask(sock: socket.socket, timeout: float) -> bool:
    """One datagram and its echo on an existing socket."""
    token = os.urandom(6).hex().encode()
    sock.settimeout(timeout)
    try:
        sock.send(token)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            if sock.recv(2048).endswith(b"\n" + token):
                return True
    except OSError:
        return False
    return False


def stat_deltas(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in sorted(after) if after[k] != before.get(k, 0)
            and k not in ("JSTAT_RECEIVED6", "JSTAT_RECEIVED4", "JSTAT_SUCCESS", "JSTAT_SESSIONS",
                          "JSTAT_BIB_ENTRIES")}


@pytest.fixture(scope="class")
def small(node: Node) -> Iterator[RunningDriver]:
    """A driver whose translators each have 32 TCP and 32 UDP transport addresses."""
    with ready_driver(node, SMALL_STREAM) as driver:
        yield driver


class TestPool4Exhaustion:
    def test_udp_beyond_capacity_fails_cleanly_and_is_counted(self, node: Node, small: RunningDriver) -> None:
        namespace = translator_namespace(SMALL_STREAM, NSP)
        # The capacity is Jool's own pool4, read with its tool: 8 addresses, ports 2000-2003.
        pool4 = jool_cli(namespace, "-i", JOOL_INSTANCE, "pool4", "display", "--udp", "--csv",
                         "--no-headers").splitlines()
        assert len(pool4) == 8 and all(",2000,2003" in row for row in pool4), pool4
        before = jool_stats(namespace)
        sockets = []
        try:
            for n in range(CAPACITY + 8):
                sock = socket_in_netns(pod(node), socket.AF_INET6, socket.SOCK_DGRAM)
                sock.bind(("::", 42000 + n))
                sock.connect((nat64(NSP, DOC), 8081))
                sockets.append(sock)
            admitted = [udp_ask(s, 5.0) for s in sockets[:CAPACITY]]
            refused = [udp_ask(s, 1.5) for s in sockets[CAPACITY:]]
            again = [udp_ask(s, 5.0) for s in sockets[:CAPACITY]]
        finally:
            for sock in sockets:
                sock.close()
        after = jool_stats(namespace)
        assert all(admitted), admitted
        assert not any(refused), refused
        assert all(again), "sessions that were admitted stopped working once pool4 was full"
        deltas = stat_deltas(before, after)
        # Jool drops a UDP (or ICMP) packet it cannot give a pool4 port as "no
        # BIB entry"; within a second of the first, the node rejects the rest
        # itself (dataplane/pool4watch.py), so they never reach Jool.
        assert deltas.get("JSTAT_BIB6_NOT_FOUND", 0) >= 1, deltas
        # The other translator has its own pool4.
        assert udp_exchange(pod(node), nat64(WKP, GLOBAL), reply_timeout=5).ok
        surfaced = self._surfaced(node, small, "udp")
        record("exhaustion", "udp", {"capacity": CAPACITY, "admitted": sum(admitted), "refused": len(refused),
                                     "admitted_still_working": sum(again), "jool_stat_deltas": deltas,
                                     **surfaced})

    def test_tcp_beyond_capacity_fails_cleanly_and_is_counted(self, node: Node, small: RunningDriver) -> None:
        namespace = translator_namespace(SMALL_STREAM, NSP)
        before = jool_stats(namespace)
        held = [HeldConnection(pod(node), nat64(NSP, DOC), interval=0.5, reply_timeout=10).start()
                for _ in range(CAPACITY)]
        try:
            connected = [h.report().connected for h in held]
            with ThreadPoolExecutor(4) as pool:
                extra = list(pool.map(lambda _: tcp_request(pod(node), nat64(NSP, DOC), timeout=4), range(4)))
            time.sleep(2)
            surfaced = self._surfaced(node, small, "tcp")
        finally:
            reports = [h.stop() for h in held]
        after = jool_stats(namespace)
        assert all(connected), connected
        assert not any(r.ok for r in extra), [r.error for r in extra]
        assert all(r.ok for r in reports), [r.failures for r in reports if not r.ok]
        deltas = stat_deltas(before, after)
        # Jool's TCP path counts a SYN it cannot map as JSTAT_UNKNOWN (the
        # four parallel SYNs reach it before the node starts rejecting).
        assert deltas.get("JSTAT_UNKNOWN", 0) >= 4, deltas
        assert tcp_request(pod(node), nat64(WKP, GLOBAL), timeout=20).ok
        record("exhaustion", "tcp", {"capacity": CAPACITY, "held": sum(connected),
                                     "refused": sum(1 for r in extra if not r.ok),
                                     "refused_errors": sorted({r.error or "" for r in extra}),
                                     "held_still_working": sum(1 for r in reports if r.ok),
                                     "jool_stat_deltas": deltas, **surfaced})

    @staticmethod
    def _surfaced(node: Node, driver: RunningDriver, proto: str) -> dict[str, Any]:
        """How the exhaustion shows: driver readiness, `felix-nat64 status`, /metrics."""
        status = driver.status()
        assert driver.felix.running() and status["ready"], status["not_ready_reasons"]
        assert status["apply_failures"] == 0
        code, _ = scrape("/readiness")
        assert code == 200
        cli = status_json(node)
        assert cli["exit_code"] == 0
        translator = next(t for t in cli["kernel"]["stats"]["translators"] if t["parent"] == NSP)
        assert translator["pool4_ports"][proto] == CAPACITY
        # Jool counts BIB entries of every protocol together; the listing on
        # demand gives this protocol's share.
        assert translator["bib_entries"] >= CAPACITY, translator
        bib = sessions_json("--bib", "--proto", proto, "--prefix", NSP)["total"]
        assert bib == CAPACITY, bib
        text = ""

        def full() -> bool:
            nonlocal text
            _, text = scrape()
            ratio = metric(text, "calico_nat64_jool_pool4_utilisation_ratio", prefix=NSP, protocol=proto)
            return ratio == 1.0

        wait_for(full, timeout=30, interval=1.0, what="utilisation ratio 1 in /metrics")
        stat = "JSTAT_BIB6_NOT_FOUND" if proto == "udp" else "JSTAT_UNKNOWN"
        dropped = metric(text, "calico_nat64_jool_stats_total", prefix=NSP, stat=stat)
        assert dropped > 0
        kernel_log = run("dmesg", check=False)
        return {"status_bib_entries": translator["bib_entries"], "sessions_bib": bib,
                "status_pool4_ports": translator["pool4_ports"][proto],
                "metrics_utilisation_ratio": 1.0, f"metrics_{stat}": dropped,
                "kernel_log_warns": "running out of pool4 addresses" in kernel_log}

