"""What RFC 6146, RFC 7915 and RFC 4787 ask of a stateful NAT64, end to end.

Real packets from a pod through the real Jool module and the node's IPv4
leg to the IPv4-only servers of the simulated node (tests/vm). Each class
proves rows of the conformance table in docs/architecture.md. One driver
serves the module; the classes that change settings run their own.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Self

import pytest
from pyroute2 import Conntrack
from pyroute2.conntrack import NFCTAttrTuple

from felix_nat64.dataplane.fold import desired_from
from felix_nat64.drivers.jool.client import JoolClient
from felix_nat64.drivers.nft.table import Nft
from felix_nat64.model.ownership import JOOL_INSTANCE
from felix_nat64.model.protocol import Protocol
from felix_nat64.model.state import Translator
from testbed.netns_exec import (
    netns_exists,
    read_sysctls,
    run_command_in_netns,
    socket_in_netns,
    write_sysctls,
)
from testbed.topology import cached_path_mtu
from testbed.traffic import ping, tcp_request, traceroute, udp_exchange
from tests.vm.dataplane_fixtures import (
    NSP,
    WKP,
    Node,
    RunningDriver,
    nat64,
    node_stream,
    ready_driver,
    start_driver,
    stream_frames,
)

DOC = "198.51.100.10"  # behind the node's uplink router
FAR = "198.51.100.20"  # one more hop, over a 1400-byte link
UDP_PORT = 8081
ROUTER = "192.0.2.254"  # the node's uplink router
TUNNEL_VXLAN, TUNNEL_WG = "198.51.100.77", "198.51.100.78"  # node-2's tunnel addresses
STREAM = node_stream(more=lambda b: b.vtep("node-2", TUNNEL_VXLAN, "192.0.2.2")
                     .wireguard("node-2", TUNNEL_WG))
T_NSP: Translator = {str(t.parent): t for t in desired_from(STREAM, {}).translators}[NSP]
POOL4_CIDR = ipaddress.IPv4Network("169.254.64.0/24")
IPV6_RECVERR = 25


@pytest.fixture(scope="module")
def driver(node: Node) -> Iterator[RunningDriver]:
    with ready_driver(STREAM, node.status_file) as d:
        yield d


@pytest.fixture
def no_icmp_ratelimit(node: Node) -> Iterator[None]:
    """Every hop answers each probe: the kernel's ICMP rate limits (a burst of
    six per destination, then one a second) lifted on the node, the router
    and in the translator."""
    where = [None, node.topo.inet4_netns, T_NSP.namespace]
    keys = ["net/ipv6/icmp/ratelimit", "net/ipv4/icmp_ratelimit"]
    saved = [read_sysctls(ns, keys) for ns in where]
    for ns in where:
        write_sysctls(ns, dict.fromkeys(keys, 0))
    yield
    for ns, values in zip(where, saved, strict=True):
        if ns is None or netns_exists(ns):
            write_sysctls(ns, values)


def pod(node: Node) -> str:
    return node.topo.pod(0).netns


def counter(name: str) -> int:
    return Nft().counters()[name][0]


def pod_udp(node: Node) -> socket.socket:
    """An unconnected UDP socket in the first pod, bound to a port of its own."""
    sock = socket_in_netns(node.topo.pod(0).netns, socket.AF_INET6, socket.SOCK_DGRAM)
    sock.bind(("::", 0))
    return sock


def echo(sock: socket.socket, ipv4: str, payload: bytes = b"ping", timeout: float = 5.0) -> tuple[str, int]:
    """Sends one datagram through NSP to the echo server at `ipv4`; returns the
    source (address, port) the server saw."""
    dst = (nat64(NSP, ipv4), UDP_PORT)
    sock.sendto(payload, dst)
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        data, peer = sock.recvfrom(65535)
        header, _, body = data.partition(b"\n")
        if peer[:2] == dst and body == payload:
            _, address, port = header.decode().split()
            return address, int(port)
    raise AssertionError(f"no echo from {ipv4} within {timeout}s")


def bib_port(node: Node, sock: socket.socket) -> int:
    """The pool4 port Jool's BIB gave the first pod's socket."""
    local = node.topo.pod(0).address, sock.getsockname()[1]
    with JoolClient.open(T_NSP.namespace) as jool:
        for entry in jool.bib_list(JOOL_INSTANCE, Protocol.UDP):
            if (entry.ipv6.address, entry.ipv6.port) == local:
                return entry.ipv4.port
    raise AssertionError(f"no BIB entry for {local}")


def ipv4_leg(server: str, proto: int = socket.IPPROTO_UDP) -> list[tuple[int, int]]:
    """(public port, seconds left) of the node's conntrack entries from pool4 to `server`."""
    found = []
    with Conntrack() as ct:
        for entry in ct.dump_entries(tuple_orig=NFCTAttrTuple(proto=proto, daddr=server)):
            if ipaddress.IPv4Address(entry.tuple_orig.saddr) in T_NSP.pool4:
                found.append((int(entry.tuple_reply.dport), int(entry.timeout)))
    return found


class TestIpv4LegMapping:
    """RFC 6146 §3.5.1 / RFC 4787 REQ-1 (endpoint-independent mapping) and
    RFC 4787 REQ-5 (a mapping lasts at least as long as the session)."""

    def test_one_socket_shows_one_public_port_to_every_server(self, node: Node,
                                                              driver: RunningDriver) -> None:
        with pod_udp(node) as sock:
            seen = {server: echo(sock, server) for server in (DOC, FAR)}
            assert {address for address, _ in seen.values()} == {"192.0.2.1"}, seen
            assert len({port for _, port in seen.values()}) == 1, seen
            # The node kept Jool's pool4 port: the public port is the BIB's.
            assert seen[DOC][1] == bib_port(node, sock), seen

    def test_a_mapping_outlives_conntracks_udp_default(self, node: Node, driver: RunningDriver) -> None:
        # One request and its answer: without the NAT64 timeout, conntrack
        # would forget this mapping after nf_conntrack_udp_timeout (30 s).
        with pod_udp(node) as sock:
            _, first = echo(sock, DOC)
            (entry,) = [e for e in ipv4_leg(DOC) if e[0] == first]
            assert entry[1] > 240, entry  # NAT64UDPTimeout (5 min), not 30 s
            time.sleep(35)
            assert [e for e in ipv4_leg(DOC) if e[0] == first], "the IPv4 leg's mapping expired"
            _, again = echo(sock, DOC)
            assert again == first

    def test_a_closed_tcp_mapping_lives_for_the_transitory_timeout(self, node: Node,
                                                                  driver: RunningDriver) -> None:
        # After a close, conntrack would keep the entry 120 s (TIME_WAIT);
        # Jool keeps the session for NAT64TCPTransitoryTimeout (4 min).
        before = {port for port, _ in ipv4_leg(DOC, socket.IPPROTO_TCP)}
        assert tcp_request(pod(node), nat64(NSP, DOC), 8080).ok
        deadline = time.monotonic() + 5
        while True:  # the last ACK of the close may still be on its way
            closed = [e for e in ipv4_leg(DOC, socket.IPPROTO_TCP) if e[0] not in before]
            if (closed and all(left <= 240 for _, left in closed)) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert closed and all(200 < left <= 240 for _, left in closed), closed


class TestFragments:
    """RFC 7915 section 4: IPv4 packets without DF are cut to fit the IPv6 side
    (Jool's lowest-ipv6-mtu, see drivers/plan.py); section 5: fragmented IPv6
    leaves as IPv4 fragments."""

    @pytest.mark.parametrize("server", [DOC, FAR])
    def test_a_datagram_larger_than_every_mtu_crosses_both_ways(self, node: Node, driver: RunningDriver,
                                                                server: str) -> None:
        # 3000 bytes: more than the pod link, the translator link and the
        # uplink (1500), and than the 1400-byte link in front of FAR. The
        # echo comes back as IPv4 fragments of 1500 (DOC) or 1400 (FAR).
        before = translator_frag_fails()
        r = udp_exchange(pod(node), nat64(NSP, server), payload_size=3000, count=2, reply_timeout=5)
        assert r.ok, r.error
        assert translator_frag_fails() == before


def translator_frag_fails() -> int:
    out = run_command_in_netns(T_NSP.namespace, ["nstat", "-az", "Ip6FragFails"]).stdout
    return sum(int(line.split()[1]) for line in out.splitlines() if line.startswith("Ip6FragFails"))


@pytest.mark.usefixtures("no_icmp_ratelimit")
class TestTranslatorIcmpErrors:
    """RFC 7915 sections 4 and 5: the translator's own ICMPv6 errors reach the
    pod, from its routable address (docs/architecture.md, Addresses)."""

    def test_traceroute_from_a_pod_hears_every_hop(self, node: Node, driver: RunningDriver) -> None:
        hops = traceroute(pod(node), nat64(NSP, FAR), max_hops=8, reply_timeout=3)
        answers = [(str(h.source) if h.source else None, h.answer) for h in hops]
        assert answers == [
            (str(node.topo.node_uplink_ipv6), "time exceeded"),  # the node, IPv6 side
            (str(T_NSP.link_ns_addr6.ip), "time exceeded"),  # Jool itself
            (nat64(NSP, str(T_NSP.link_node_addr.ip)), "time exceeded"),  # the node, IPv4 side
            (nat64(NSP, ROUTER), "time exceeded"),  # the uplink router
            (nat64(NSP, FAR), "reply"),
        ], answers


@pytest.fixture
def small_pod_link(node: Node) -> Iterator[int]:
    """The node side of the first pod's link at 1400 bytes, as for a pod
    created when the pod network MTU was smaller."""
    link = node.topo.pod(0).node_ifname
    run_command_in_netns(None, ["ip", "link", "set", "dev", link, "mtu", "1400"])
    yield 1400
    run_command_in_netns(None, ["ip", "link", "set", "dev", link, "mtu", "1500"])


class TestPathMtuTowardsThePod:
    """RFC 7915 section 5.2: a Packet Too Big about a translated packet reaches
    the IPv4 sender as Fragmentation Needed, also when the node sends it."""

    def test_the_nodes_packet_too_big_reaches_the_ipv4_sender(self, node: Node, driver: RunningDriver,
                                                              small_pod_link: int) -> None:
        steered = counter("errors_steered")
        # The echo is 20 bytes longer than the request (the server's header):
        # 1350 bytes make a request that still fits the pod's link and an
        # answer that leaves the server with DF set, fits every IPv4 link and
        # the translator link, but not the pod's.
        size = small_pod_link - 50
        first = udp_exchange(pod(node), nat64(NSP, DOC), payload_size=size, reply_timeout=3)
        assert not first.ok
        assert counter("errors_steered") > steered
        learnt = cached_path_mtu(node.topo.inet4_netns, node.topo.node_ipv4)
        assert learnt is not None and learnt <= small_pod_link - 20, learnt
        # Now the server sends smaller packets, and the pod gets the answer.
        again = udp_exchange(pod(node), nat64(NSP, DOC), payload_size=size, reply_timeout=5)
        assert again.ok, again.error


def admin_prohibited(node: Node, ipv4: str) -> bool:
    r = ping(pod(node), nat64(NSP, ipv4), count=1, reply_timeout=3)
    return not r.ok and any("destination unreachable (code 1)" in e for e in r.errors)


@pytest.mark.usefixtures("no_icmp_ratelimit")
class TestWhatMayBeReached:
    """NAT64RefusedCIDRs and other nodes' tunnel addresses are refused behind
    every prefix; the node's own processes cannot reach a pod through pool4."""

    @pytest.mark.parametrize("ipv4", ["168.63.129.16", "100.100.100.200", TUNNEL_VXLAN, TUNNEL_WG])
    def test_refused_at_once(self, node: Node, driver: RunningDriver, ipv4: str) -> None:
        before = counter("refused")
        assert admin_prohibited(node, ipv4)
        assert counter("refused") > before

    def test_the_node_cannot_reach_a_pod_session_through_pool4(self, node: Node,
                                                               driver: RunningDriver) -> None:
        with pod_udp(node) as sock:
            echo(sock, DOC)  # a BIB entry: pool4 address and port -> this socket
            local = sock.getsockname()[1]
            with JoolClient.open(T_NSP.namespace) as jool:
                (bib,) = [b for b in jool.bib_list(JOOL_INSTANCE, Protocol.UDP) if b.ipv6.port == local]
            blocked = counter("inbound_blocked")
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as node_sock, \
                    pytest.raises(PermissionError):  # dropped in the output hook: EPERM
                node_sock.sendto(b"from the node", (str(bib.ipv4.address), bib.ipv4.port))
            sock.settimeout(2)
            with pytest.raises(TimeoutError):
                sock.recvfrom(100)
            assert counter("inbound_blocked") > blocked


def connect_error(netns: str, dst: str, port: int, timeout: float) -> tuple[int | None, float]:
    """(errno, seconds) of a TCP connect from `netns`; errno None if it connected."""
    start = time.monotonic()
    with socket_in_netns(netns, socket.AF_INET6, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((dst, port))
        except TimeoutError:
            return errno.ETIMEDOUT, time.monotonic() - start
        except OSError as exc:
            return exc.errno, time.monotonic() - start
    return None, time.monotonic() - start


def udp_error(sock: socket.socket, dst: tuple[str, int], timeout: float) -> tuple[int | None, float]:
    """Sends a datagram every half second on a connected UDP socket until an
    ICMP error arrives (its errno) or `timeout` passes (None). The socket asks
    for ICMP errors (IPV6_RECVERR): Linux reports address unreachable, which
    RFC 4443 does not call fatal, only to sockets that do."""
    start = time.monotonic()
    sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
    sock.connect(dst)
    sock.settimeout(0.5)
    while time.monotonic() - start < timeout:
        try:
            sock.send(b"anyone?")
            sock.recv(100)
        except TimeoutError:
            continue
        except OSError as exc:
            return exc.errno, time.monotonic() - start
    return None, time.monotonic() - start


@pytest.mark.usefixtures("exclusive")
class TestPool4Exhaustion:
    """RFC 6146 sections 3.5.1, 3.5.2.2, 3.5.3: when no pool4 transport address
    is left, the pod is told at once (ICMPv6 address unreachable) instead of
    waiting for a timeout; Jool alone drops such packets silently."""

    def test_new_flows_fail_fast_while_pool4_is_full(self, node: Node) -> None:
        # One port per pool4 address: 8 transport addresses per protocol.
        d = start_driver(node_stream(extra={"NAT64Pool4PortRange": "65535-65535"}), node.status_file)
        held: list[socket.socket] = []
        try:
            d.wait_ready()
            for _ in range(8):
                held.append(pod_tcp(node, DOC))
                udp = pod_udp(node)
                echo(udp, DOC)
                held.append(udp)
            rejected = counter("pool4_exhausted")
            code, took = connect_error(pod(node), nat64(NSP, DOC), 8080, timeout=30)
            assert code == errno.EHOSTUNREACH, (code, took)
            assert took < 15, took  # not the minutes of a SYN that is never answered
            with pod_udp(node) as ninth:
                code, took = udp_error(ninth, (nat64(NSP, DOC), UDP_PORT), timeout=30)
            assert code == errno.EHOSTUNREACH, (code, took)
            assert counter("pool4_exhausted") > rejected
            # Flows that already have their pool4 transport address carry on.
            assert echo(held[1], DOC)
        finally:
            for sock in held:
                sock.close()
            d.stop()


def pod_tcp(node: Node, ipv4: str) -> socket.socket:
    """An established TCP connection from the first pod to the server's echo mode."""
    sock = socket_in_netns(pod(node), socket.AF_INET6, socket.SOCK_STREAM)
    sock.settimeout(20)
    sock.connect((nat64(NSP, ipv4), 8080))
    sock.sendall(b"ECHO\n")
    assert sock.recv(100).startswith(b"ECHO ")
    return sock


class SocketThread:
    """A socket served by a thread while the `with` block runs."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.serve, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def serve(self) -> None:
        raise NotImplementedError


class UplinkCapture(SocketThread):
    """Every frame the node puts on its uplink, seen from the router's end
    (an AF_PACKET socket in the router's namespace); `leaks` lists those that
    carry a pool4 address."""

    def __init__(self, node: Node) -> None:
        sock = socket_in_netns(node.topo.inet4_netns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        sock.bind(("eth0", 0))
        sock.settimeout(0.2)
        super().__init__(sock)
        self.leaks: list[str] = []
        self.frames = 0

    def serve(self) -> None:
        while not self._stop.is_set():
            try:
                frame, address = self._sock.recvfrom(65535)
            except TimeoutError:
                continue
            if address[2] == 4:  # PACKET_OUTGOING: the router's own frames
                continue
            self.frames += 1
            ethertype = int.from_bytes(frame[12:14], "big")
            if ethertype == 0x0800:
                src, dst = ipaddress.IPv4Address(frame[26:30]), ipaddress.IPv4Address(frame[30:34])
                if src in POOL4_CIDR or dst in POOL4_CIDR:
                    self.leaks.append(f"IPv4 {src} -> {dst}")


@pytest.fixture
def leak_probe() -> Iterator[Callable[[], int]]:
    """Counts packets that leave by the uplink still carrying the NAT64 mark:
    steered pod packets that would leave untranslated."""
    table = ("table inet fn64leak {\n chain out { type filter hook postrouting priority 300;\n"
             '  oifname "eth-up" meta mark & 0x1000 == 0x1000 counter\n }\n}\n')
    run_command_in_netns(None, ["nft", "-f", "-"], input_text=table)

    def count() -> int:
        out = run_command_in_netns(None, ["nft", "list", "table", "inet", "fn64leak"]).stdout
        return sum(int(n) for n in re.findall(r"counter packets (\d+)", out))

    yield count
    run_command_in_netns(None, ["nft", "delete", "table", "inet", "fn64leak"], check=False)


class Steady(SocketThread):
    """A UDP datagram every 20 ms from the first pod to DOC through NSP."""

    def __init__(self, node: Node) -> None:
        super().__init__(pod_udp(node))

    def serve(self) -> None:
        while not self._stop.wait(0.02):
            with contextlib.suppress(OSError):
                self._sock.sendto(b"steady", (nat64(NSP, DOC), UDP_PORT))


@pytest.mark.usefixtures("exclusive")
class TestFailClosed:
    """Whatever is missing on the way, a steered packet never leaves the node
    untranslated and a pool4 address never appears on the uplink."""

    def test_routes_removed_by_someone_else_under_live_traffic(self, node: Node,
                                                               leak_probe: Callable[[], int]) -> None:
        # A resync after an hour: the removed routes stay removed while we look.
        d = start_driver(node_stream(extra={"NAT64ResyncInterval": "1h"}), node.status_file)
        try:
            d.wait_ready()
            with UplinkCapture(node) as capture, Steady(node):
                time.sleep(1)
                # Replies de-NATed to pool4 find no route back into the translator...
                run_command_in_netns(None, ["ip", "route", "del", str(T_NSP.pool4)])
                time.sleep(1)
                # ...steered packets no route into it...
                run_command_in_netns(None, ["ip", "-6", "route", "del", NSP, "table", "6464"])
                time.sleep(1)
                unrouted = counter("unrouted")
                # ...and then not even the fwmark rule that leads to that table.
                run_command_in_netns(None, ["ip", "-6", "rule", "del", "priority", "96"])
                time.sleep(1)
            assert capture.frames > 0
            assert capture.leaks == [] and leak_probe() == 0
            # Without the rule the steered packets met the main table, whose
            # default route leads out of the node: the forward chain refused them.
            assert counter("unrouted") > unrouted
        finally:
            d.stop()

    def test_a_prefix_removed_under_live_traffic(self, node: Node, leak_probe: Callable[[], int]) -> None:
        d = start_driver(STREAM, node.status_file)
        try:
            d.wait_ready()
            with UplinkCapture(node) as capture, Steady(node):
                time.sleep(1)
                assert [e for e in ipv4_leg(DOC)], "no conntrack entry for the live flow"
                removed_at = time.time()
                d.felix.send(stream_frames(node_stream(prefixes=WKP))[0])
                d.wait_ready(since=removed_at)
                time.sleep(1)
            assert capture.frames > 0
            assert capture.leaks == [] and leak_probe() == 0
            # The removed translator's conntrack entries went with it.
            with Conntrack() as ct:
                left = [e for e in ct.dump_entries(tuple_orig=NFCTAttrTuple(family=socket.AF_INET))
                        if ipaddress.IPv4Address(e.tuple_orig.saddr) in T_NSP.block]
            assert left == []
        finally:
            d.stop()
