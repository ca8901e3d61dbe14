"""Attacks on a NAT64 node, through the real Jool module: every one must be refused.

The driver runs as Felix runs it, on a node without Calico's own rules, so
what stops each attack here is felix-nat64's table and routing alone (on a
real node Calico's RPF check and policy come on top; see
test_coexistence.py). The attack cases, each counted in the figures
(section "security"):

spoofed   IPv6 packets (UDP, TCP SYN, ICMPv6 echo) to a NAT64 prefix with a
          pod-pool source, written as Ethernet frames onto the node's uplink
          and onto the outsider's link; the outsider's own source; sources
          outside the pod pools written onto a pod's link. Nothing may be
          steered, Jool may translate nothing and no IPv4 packet may leave
          towards the servers.
refused   TCP and UDP from a pod to non-global IPv4 behind the well-known
          prefix and, behind either prefix, to loopback, link-local (cloud
          metadata), multicast, broadcast, "this network", felix-nat64's own
          pool4 and link addresses and the Calico nodes' addresses: ICMPv6
          administratively prohibited; nothing reaches a server or a socket
          listening on the node (TCP and UDP on 0.0.0.0, on the servers' ports).
to-node   the same to node addresses Felix never announces (a secondary
          address, the uplink's subnet broadcast): translated, then dropped
          before the node's stack (counter to_node_blocked).
inbound   IPv4 (ICMP echo, TCP SYN, UDP) from the uplink and from the
          outsider's link to each translator's own address, the node end
          of its link and its pool4 addresses: dropped (counter inbound_blocked), never answered; Jool
          receives nothing.
bib       a pod holds a UDP flow and a TCP connection; the attacker aims at
          their pool4 transport addresses (from its own address and as the
          server: UDP, TCP SYN, ACK with data, RST) and at the node's
          masqueraded port: dropped, the pod's sockets receive nothing, and
          both flows still work afterwards. Return traffic of established
          flows is the only way in.
socket    an unprivileged user connects to `felix-nat64 driver --socket`.

Run: .venv/bin/python -m testbed.vm .venv/bin/pytest -q tests/vm/reliability/test_security.py
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import os
import secrets
import socket
import stat
import struct
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nftables
import pytest
from pyroute2 import IPRoute

from felix_nat64.dataplane.fold import desired_from
from felix_nat64.drivers.jool.client import JoolClient
from felix_nat64.drivers.jool.entries import Taddr4
from felix_nat64.drivers.nft.table import Nft
from felix_nat64.model.state import Translator
from testbed.netns_exec import run_command_in_netns, run_in_netns, socket_in_netns
from testbed.topology import CALI_MAC, Topology, pod_address
from testbed.traffic import tcp_request, udp_exchange
from tests.vm.dataplane_fixtures import NSP, WKP, Node, RunningDriver, nat64, node_stream
from tests.vm.reliability.conftest import JOOL_INSTANCE, driver_pool, jool_stats, record

pytestmark = pytest.mark.reliability

DOC = "198.51.100.10"
GLOBAL = "192.0.0.10"
PRIVATE = "10.0.0.10"
NODE4 = str(Topology.node_ipv4)
OTHER_NODE4 = "192.0.2.2"
UNLISTED_NODE4 = "192.0.2.77"  # an address of the node that Felix never announces
UPLINK_BROADCAST = "192.0.2.255"
ROUTER4 = str(Topology.uplink_router_ipv4)
OUTSIDER4 = "203.0.113.66"  # what an attacker on the outsider's link claims to be
POD0 = str(pod_address(0))
NOT_A_POD = "fd00:10:244::abcd"  # in the pod pool, but no pod has it
OUTSIDER6 = str(Topology.outsider_ipv6)
TCP_PORT, UDP_PORT = 8080, 8081  # the servers' ports, also listened on by the node here
STREAM = node_stream()
TRANSLATORS = {str(t.parent): t for t in desired_from(STREAM, {}).translators}
T_WKP: Translator = TRANSLATORS[WKP]
T_NSP: Translator = TRANSLATORS[NSP]
SETTLE = 0.3  # seconds for an injected frame to be fully processed (and answered)

FIGURES: dict[str, Counter[str]] = {}


def tried(group: str) -> None:
    FIGURES.setdefault(group, Counter())["tried"] += 1
    record("security", group, dict(FIGURES[group]))


def refused(group: str) -> None:
    FIGURES.setdefault(group, Counter())["refused"] += 1
    record("security", group, dict(FIGURES[group]))


# ---------------------------------------------------------------------------
# Packets, built by hand
# ---------------------------------------------------------------------------

ETH_P_ALL, ETH_P_IP, ETH_P_IPV6 = 0x0003, 0x0800, 0x86DD
PACKET_OUTGOING = 4
TCP_SYN, TCP_RST, TCP_PSH_ACK = 0x02, 0x04, 0x18
PROBE_PAYLOAD = b"felix-nat64 security probe\n"


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ip_packet(src: str, dst: str, proto: str, *, sport: int = 0, dport: int = 0, seq: int = 1) -> bytes:
    """An IPv4 or IPv6 packet with correct checksums. `proto`: udp, tcp-syn,
    tcp-ack (with data), tcp-rst or icmp (echo request)."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    v6 = s.version == 6
    sport = sport or 40000 + secrets.randbelow(20000)
    if proto == "udp":
        number, offset = 17, 6
        segment = struct.pack("!HHHH", sport, dport, 8 + len(PROBE_PAYLOAD), 0) + PROBE_PAYLOAD
    elif proto.startswith("tcp"):
        flags = {"tcp-syn": TCP_SYN, "tcp-rst": TCP_RST, "tcp-ack": TCP_PSH_ACK}[proto]
        payload = PROBE_PAYLOAD if proto == "tcp-ack" else b""
        number, offset = 6, 16
        segment = struct.pack("!HHIIBBHHH", sport, dport, seq, seq if flags != TCP_SYN else 0, 5 << 4,
                              flags, 65535, 0, 0) + payload
    elif proto == "icmp":
        number, offset = (58, 2) if v6 else (1, 2)
        segment = struct.pack("!BBHHH", 128 if v6 else 8, 0, 0, sport, 1) + PROBE_PAYLOAD
    else:
        raise ValueError(proto)
    if v6:
        pseudo = s.packed + d.packed + struct.pack("!I3xB", len(segment), number)
    else:
        pseudo = b"" if proto == "icmp" else s.packed + d.packed + struct.pack("!xBH", number, len(segment))
    csum = _checksum(pseudo + segment) or 0xFFFF
    segment = segment[:offset] + struct.pack("!H", csum) + segment[offset + 2:]
    if v6:
        return struct.pack("!IHBB", 6 << 28, len(segment), number, 64) + s.packed + d.packed + segment
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(segment), secrets.randbelow(0xFFFF), 0, 64,
                         number, 0, s.packed, d.packed)
    return header[:10] + struct.pack("!H", _checksum(header)) + header[12:] + segment


def _source_of(frame: bytes) -> str | None:
    ethertype = struct.unpack("!H", frame[12:14])[0]
    if ethertype == ETH_P_IP and len(frame) >= 34:
        return str(ipaddress.IPv4Address(frame[26:30]))
    if ethertype == ETH_P_IPV6 and len(frame) >= 54:
        return str(ipaddress.IPv6Address(frame[22:38]))
    return None


@dataclass(frozen=True)
class Wire:
    """An attacker on one of the node's links: writes frames straight to the node's
    interface (so the attacker's own routing and source checks play no part) and
    reports what comes back from the address it attacked."""

    name: str
    netns: str
    ifname: str
    peer_mac: str

    def inject(self, packet: bytes, *, window: float = SETTLE) -> list[str]:
        """Sends `packet` to the node; returns a line per frame that came back from
        the packet's destination address within `window` seconds."""
        v6 = packet[0] >> 4 == 6
        target = str(ipaddress.ip_address(packet[24:40] if v6 else packet[16:20]))
        sock = socket_in_netns(self.netns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        with sock:
            sock.bind((self.ifname, 0))
            own_mac = sock.getsockname()[4]
            frame = bytes.fromhex(self.peer_mac.replace(":", "")) + own_mac + \
                struct.pack("!H", ETH_P_IPV6 if v6 else ETH_P_IP) + packet
            sock.send(frame)
            answers: list[str] = []
            deadline = time.monotonic() + window
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                try:
                    data, address = sock.recvfrom(65535)
                except TimeoutError:
                    break
                if address[2] != PACKET_OUTGOING and _source_of(data) == target:
                    answers.append(f"{len(data)}-byte frame from {target}: {data[14:54].hex()}")
        return answers


def _mac(ifname: str) -> str:
    """The MAC address of a link of the node (this namespace)."""
    with IPRoute() as ipr:
        (link,) = ipr.get_links(ifname=ifname)
        return str(link.get_attr("IFLA_ADDRESS"))


def wires(node: Node) -> dict[str, Wire]:
    topo = node.topo
    return {
        "uplink": Wire("uplink", topo.inet4_netns, "eth0", _mac(topo.node_uplink_ifname)),
        "outsider": Wire("outsider", topo.outsider_netns, "eth0", _mac(topo.node_outsider_ifname)),
        "pod": Wire("pod", topo.pod(0).netns, topo.pod(0).ifname, CALI_MAC),
    }


# ---------------------------------------------------------------------------
# What the node, Jool and the servers' side saw
# ---------------------------------------------------------------------------

WATCH_TABLE = "fn64secwatch"  # in inet4: packets the node sends towards the servers
PROBE_TABLE = "fn64secprobe"  # in the node: packets from a translator that reach the node's stack
WATCH_RULES = {
    "ipv4_beyond_the_router": 'iifname "eth0" meta nfproto ipv4 '
                              "ip daddr != { 192.0.2.254, 192.0.2.255, 224.0.0.0/4, 255.255.255.255 }",
    "ipv4_broadcast_or_multicast": 'iifname "eth0" meta nfproto ipv4 ip protocol != igmp '
                                   "ip daddr { 192.0.2.255, 224.0.0.0/4, 255.255.255.255 }",
    "ipv4_from_pool4": 'iifname "eth0" meta nfproto ipv4 ip saddr 169.254.0.0/16',
}
PROBE_RULES = {
    "translator_to_node_ipv4": 'iifname "fn64-*" meta nfproto ipv4',
    "translator_to_node_ipv6": 'iifname "fn64-*" meta nfproto ipv6 meta l4proto != ipv6-icmp',
}


def _install_counting_table(netns: str | None, table: str, hook: str, priority: int,
                            rules: dict[str, str]) -> None:
    body = "".join(f'  {match} counter comment "{name}"\n' for name, match in rules.items())
    script = (f"table inet {table} {{\n chain count {{ type filter hook {hook} priority {priority}; "
              f"policy accept;\n{body} }}\n}}\n")
    run_command_in_netns(netns, ["nft", "-f", "-"], input_text=script)


def _counts(netns: str | None, table: str) -> dict[str, int]:
    def read() -> dict[str, int]:
        nft = nftables.Nftables()
        nft.set_json_output(True)
        rc, out, err = nft.cmd(f"list table inet {table}")
        assert rc == 0, err
        found = {}
        for item in json.loads(out)["nftables"]:
            rule = item.get("rule")
            if rule:
                counter = next(e["counter"] for e in rule["expr"] if "counter" in e)
                found[rule["comment"]] = int(counter["packets"])
        return found

    return run_in_netns(netns, read, timeout=30)


JOOL_FIGURES = {"success": "JSTAT_SUCCESS", "received4": "JSTAT_RECEIVED4", "sessions": "JSTAT_SESSIONS",
                "bib": "JSTAT_BIB_ENTRIES"}


@dataclass(frozen=True)
class Look:
    """One reading of every counter the attacks are judged by."""

    values: dict[str, int]

    def __sub__(self, before: Look) -> dict[str, int]:
        return {k: v - before.values.get(k, 0) for k, v in self.values.items()}


def look(node: Node) -> Look:
    values = {f"nft.{name}": packets for name, (packets, _) in Nft().counters().items()}
    for label, t in (("wkp", T_WKP), ("nsp", T_NSP)):
        stats = jool_stats(t.namespace)
        values.update({f"jool.{label}.{k}": stats.get(v, 0) for k, v in JOOL_FIGURES.items()})
    values.update({f"watch.{k}": v for k, v in _counts(node.topo.inet4_netns, WATCH_TABLE).items()})
    values.update({f"probe.{k}": v for k, v in _counts(None, PROBE_TABLE).items()})
    return Look(values)


class NodeServices:
    """TCP and UDP sockets on 0.0.0.0 in the node, on the servers' ports: anything a
    translation delivers to the node's own stack on those ports lands here."""

    def __init__(self) -> None:
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind(("0.0.0.0", TCP_PORT))
        self.tcp.listen(16)
        self.tcp.setblocking(False)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("0.0.0.0", UDP_PORT))
        self.udp.setblocking(False)

    def reached(self) -> list[str]:
        """What reached the listeners since the last call (an empty list is good)."""
        found = []
        with contextlib.suppress(BlockingIOError):
            while True:
                conn, peer = self.tcp.accept()
                conn.close()
                found.append(f"TCP connection from {peer}")
        with contextlib.suppress(BlockingIOError):
            while True:
                _, peer = self.udp.recvfrom(65535)
                found.append(f"UDP datagram from {peer}")
        # Half-open connections (SYN received, handshake not finished) too.
        port = f"{TCP_PORT:04X}"
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1].endswith(f":{port}") and fields[3] in ("01", "03"):
                found.append(f"TCP socket in state {fields[3]}: {fields[1]} <- {fields[2]}")
        return found

    def close(self) -> None:
        self.tcp.close()
        self.udp.close()


# ---------------------------------------------------------------------------
# The node under attack
# ---------------------------------------------------------------------------


@dataclass
class Env:
    node: Node
    driver: RunningDriver
    wires: dict[str, Wire]
    services: NodeServices
    socket_driver: subprocess.Popen[bytes]
    socket_path: Path


def _sysctl(path: str, value: str | None = None) -> str:
    file = Path("/proc/sys") / path
    old = file.read_text().strip()
    if value is not None:
        file.write_text(value + "\n")
    return old


@pytest.fixture(scope="module")
def env(node: Node) -> Iterator[Env]:
    topo = node.topo
    workdir = Path(tempfile.mkdtemp(prefix="fn64-security-"))
    socket_path = workdir / "run" / "driver.sock"
    saved_ratelimit = _sysctl("net/ipv6/icmp/ratelimit", "0")  # every refusal gets its own ICMPv6 error
    with contextlib.ExitStack() as stack:
        stack.callback(_sysctl, "net/ipv6/icmp/ratelimit", saved_ratelimit)
        stack.callback(lambda: subprocess.run(["rm", "-rf", str(workdir)], check=False))
        pool = stack.enter_context(driver_pool(node))
        driver = pool.start(STREAM)
        # Started now so that its Python start overlaps the other driver's.
        socket_driver = subprocess.Popen(
            ["felix-nat64", "driver", "--socket", str(socket_path), "--status-file", str(workdir / "s.json")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stack.callback(_stop, socket_driver)
        unlisted = [f"{UNLISTED_NODE4}/32", "dev", topo.node_uplink_ifname]
        subprocess.run(["ip", "addr", "replace", *unlisted], check=True)
        stack.callback(subprocess.run, ["ip", "addr", "del", *unlisted], check=False)
        for netns, table, hook, priority, rules in ((topo.inet4_netns, WATCH_TABLE, "prerouting", -400,
                                                     WATCH_RULES),
                                                    (None, PROBE_TABLE, "input", 10, PROBE_RULES)):
            _install_counting_table(netns, table, hook, priority, rules)
            stack.callback(run_command_in_netns, netns, ["nft", "delete", "table", "inet", table],
                           check=False)
        services = NodeServices()
        stack.callback(services.close)
        driver.wait_ready()
        stack.callback(driver.stop)
        yield Env(node, driver, wires(node), services, socket_driver, socket_path)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def assert_nothing_leaked(env: Env, change: dict[str, int]) -> None:
    """Nothing reached the servers' side, the node's stack or its listening sockets."""
    leaks = {k: v for k, v in change.items() if k.startswith(("watch.", "probe.")) and v}
    assert leaks == {}, leaks
    assert env.services.reached() == []


# ---------------------------------------------------------------------------
# Spoofed sources
# ---------------------------------------------------------------------------

SPOOFED = [
    ("uplink", POD0, NSP, DOC),
    ("uplink", NOT_A_POD, NSP, DOC),
    ("uplink", POD0, WKP, GLOBAL),
    ("outsider", POD0, NSP, DOC),
    ("outsider", POD0, WKP, GLOBAL),
    ("outsider", OUTSIDER6, NSP, DOC),
    ("pod", "2001:db8:ff::99", NSP, DOC),  # outside every pod pool
    ("pod", "fd00:10:245::10", NSP, DOC),  # next to the pod pool
]


@pytest.mark.parametrize("proto", ["udp", "tcp-syn", "icmp"])
@pytest.mark.parametrize(("link", "source", "prefix", "ipv4"), SPOOFED,
                         ids=[f"{w}-{s}-{i}" for w, s, _, i in SPOOFED])
def test_spoofed_sources_are_never_translated(env: Env, link: str, source: str, prefix: str, ipv4: str,
                                              proto: str) -> None:
    tried("spoofed")
    dport = UDP_PORT if proto == "udp" else TCP_PORT
    before = look(env.node)
    env.wires[link].inject(ip_packet(source, nat64(prefix, ipv4), proto, dport=dport))
    change = look(env.node) - before
    assert change["nft.steered"] == 0, change
    for label in ("wkp", "nsp"):
        assert change[f"jool.{label}.success"] == 0, change
        assert change[f"jool.{label}.sessions"] <= 0 and change[f"jool.{label}.bib"] <= 0, change
    assert_nothing_leaked(env, change)
    refused("spoofed")


# ---------------------------------------------------------------------------
# Refused destinations, by TCP and UDP
# ---------------------------------------------------------------------------

REFUSED = [
    (WKP, PRIVATE, "private-use, a server listens there"),
    (WKP, DOC, "documentation range, a server listens there"),
    (WKP, NODE4, "this node"),
    (WKP, "127.0.0.1", "loopback"),
    (WKP, "169.254.169.254", "cloud metadata"),
    (WKP, "255.255.255.255", "limited broadcast"),
    (NSP, "169.254.169.254", "cloud metadata"),
    (NSP, "127.0.0.1", "loopback"),
    (NSP, "127.0.0.53", "loopback, a local resolver"),
    (NSP, NODE4, "this node"),
    (NSP, OTHER_NODE4, "another Calico node"),
    (NSP, "0.0.0.0", "this network"),
    (NSP, "224.0.0.1", "all-hosts multicast"),
    (NSP, "239.255.255.250", "site multicast"),
    (NSP, "255.255.255.255", "limited broadcast"),
    (NSP, str(T_NSP.link_ns_addr.ip), "the translator's own address"),
    (NSP, str(T_WKP.link_node_addr.ip), "the node end of a translator link"),
    (NSP, str(T_NSP.pool4[0]), "felix-nat64's pool4"),
]


def _connect(env: Env, proto: str, dst: str, timeout: float) -> tuple[bool, str]:
    pod = env.node.topo.pod(0).netns
    if proto == "tcp":
        r = tcp_request(pod, dst, TCP_PORT, timeout=timeout)
        return r.ok, r.error or ""
    u = udp_exchange(pod, dst, UDP_PORT, reply_timeout=timeout)
    return u.ok, u.error or ""


@pytest.mark.parametrize("proto", ["tcp", "udp"])
@pytest.mark.parametrize(("prefix", "ipv4", "why"), REFUSED,
                         ids=[f"{'wkp' if p == WKP else 'nsp'}-{i}" for p, i, _ in REFUSED])
def test_refused_destinations_are_rejected_and_reach_nothing(env: Env, prefix: str, ipv4: str, why: str,
                                                              proto: str) -> None:
    tried("refused")
    before = look(env.node)
    ok, error = _connect(env, proto, nat64(prefix, ipv4), timeout=3)
    change = look(env.node) - before
    assert not ok, f"{why}: {proto} to {ipv4} through {prefix} got an answer"
    assert "EACCES" in error, error  # ICMPv6 administratively prohibited
    assert change["nft.refused"] >= 1 and change["nft.steered"] >= 1, change
    for label in ("wkp", "nsp"):
        assert change[f"jool.{label}.success"] == 0, change
    assert_nothing_leaked(env, change)
    refused("refused")


TO_NODE = [
    (NSP, UNLISTED_NODE4, "an address of this node that Felix does not announce"),
    (NSP, UPLINK_BROADCAST, "the broadcast address of the node's uplink subnet"),
]


@pytest.mark.parametrize("proto", ["tcp", "udp"])
@pytest.mark.parametrize(("prefix", "ipv4", "why"), TO_NODE, ids=[i for _, i, _ in TO_NODE])
def test_node_addresses_felix_does_not_announce_reach_nothing(env: Env, prefix: str, ipv4: str, why: str,
                                                               proto: str) -> None:
    tried("to-node")
    before = look(env.node)
    ok, error = _connect(env, proto, nat64(prefix, ipv4), timeout=1.5)
    change = look(env.node) - before
    assert not ok, f"{why}: got an answer"
    # Translated (the address is not on the refused list), then dropped before the
    # node's stack saw it.
    assert change["nft.to_node_blocked"] >= 1, (change, error)
    assert_nothing_leaked(env, change)
    refused("to-node")


# ---------------------------------------------------------------------------
# Inbound to the translators
# ---------------------------------------------------------------------------

INBOUND = [
    ("translator-address", T_NSP, T_NSP.link_ns_addr.ip),
    ("translator-address-wkp", T_WKP, T_WKP.link_ns_addr.ip),
    # The node ends of the links: node addresses, but inside pool4.
    ("link-node-end", T_NSP, T_NSP.link_node_addr.ip),
    ("link-node-end-wkp", T_WKP, T_WKP.link_node_addr.ip),
    ("pool4-first", T_NSP, T_NSP.pool4[0]),
    ("pool4-last", T_NSP, T_NSP.pool4[-1]),
    ("pool4-wkp", T_WKP, T_WKP.pool4[0]),
]
ATTACKER4 = {"uplink": ROUTER4, "outsider": OUTSIDER4}


@pytest.mark.parametrize("proto", ["icmp", "tcp-syn", "udp"])
@pytest.mark.parametrize("target", [t[0] for t in INBOUND])
@pytest.mark.parametrize("link", ["uplink", "outsider"])
def test_translators_are_unreachable_from_outside(env: Env, link: str, target: str, proto: str) -> None:
    tried("inbound")
    _, translator, address = next(t for t in INBOUND if t[0] == target)
    label = "wkp" if translator is T_WKP else "nsp"
    dport = UDP_PORT if proto == "udp" else TCP_PORT
    before = look(env.node)
    answers = env.wires[link].inject(ip_packet(ATTACKER4[link], str(address), proto, dport=dport))
    change = look(env.node) - before
    assert answers == []
    assert change["nft.inbound_blocked"] == 1, change
    assert change[f"jool.{label}.received4"] == 0, change
    assert_nothing_leaked(env, change)
    refused("inbound")


# ---------------------------------------------------------------------------
# Guessing the BIB entry of a live flow
# ---------------------------------------------------------------------------


@dataclass
class LiveFlows:
    """A UDP flow and a TCP connection from pod 0 to the documentation server."""

    udp: socket.socket  # bound, not connected: it would take a datagram from anyone
    udp_port: int
    udp_pool4: Taddr4
    udp_masquerade_port: int  # the node's port the server saw
    tcp: socket.socket
    tcp_port: int
    tcp_pool4: Taddr4


def _bib_of(port: int, proto: str) -> Taddr4:
    with JoolClient.open(T_NSP.namespace) as jool:
        entries = jool.bib_list(JOOL_INSTANCE, proto)
    found = [e.ipv4 for e in entries if str(e.ipv6.address) == POD0 and e.ipv6.port == port]
    assert len(found) == 1, entries
    return found[0]


def _pending(sock: socket.socket) -> str:
    """What arrived on `sock` without being asked for ('' when nothing)."""
    sock.setblocking(False)
    try:
        data = sock.recv(65535)
    except BlockingIOError:
        return ""
    except OSError as exc:
        return f"error {exc}"
    finally:
        sock.setblocking(True)
    return f"data {data!r}"


@pytest.fixture(scope="module")
def flows(env: Env) -> Iterator[LiveFlows]:
    pod = env.node.topo.pod(0).netns
    dst = nat64(NSP, DOC)
    udp = socket_in_netns(pod, socket.AF_INET6, socket.SOCK_DGRAM)
    tcp = socket_in_netns(pod, socket.AF_INET6, socket.SOCK_STREAM)
    with udp, tcp:
        udp.bind(("::", 0))
        udp.settimeout(10)
        udp.sendto(b"hello\n", (dst, UDP_PORT))
        header = udp.recvfrom(65535)[0].split(b"\n")[0].split()  # SRC <address> <port>
        assert header[1].decode() == NODE4, header
        tcp.settimeout(10)
        tcp.connect((dst, TCP_PORT))
        tcp.sendall(b"ECHO\n")
        assert tcp.recv(4096).startswith(b"ECHO " + NODE4.encode())
        live = LiveFlows(udp, udp.getsockname()[1], _bib_of(udp.getsockname()[1], "udp"), int(header[2]),
                         tcp, tcp.getsockname()[1], _bib_of(tcp.getsockname()[1], "tcp"))
        yield live


BIB_ATTACKS = [
    ("uplink", "udp", "attacker", "pool4"),
    ("uplink", "udp", "server", "pool4"),  # exactly what a reply looks like to Jool
    ("uplink", "tcp-syn", "server", "pool4"),
    ("uplink", "tcp-ack", "server", "pool4"),  # data pushed into the connection
    ("uplink", "tcp-rst", "server", "pool4"),  # would end the connection
    ("uplink", "udp", "attacker", "masquerade"),  # the node's port, from a source that is not the server
    ("outsider", "udp", "server", "pool4"),
    ("outsider", "tcp-rst", "server", "pool4"),
]


@pytest.mark.parametrize(("link", "proto", "claimed", "aimed_at"), BIB_ATTACKS,
                         ids=[f"{w}-{p}-as-{c}-to-{a}" for w, p, c, a in BIB_ATTACKS])
def test_guessed_bib_entries_do_not_reach_the_pod(env: Env, flows: LiveFlows, link: str, proto: str,
                                                  claimed: str, aimed_at: str) -> None:
    tried("bib")
    udp = proto == "udp"
    if aimed_at == "pool4":
        bib = flows.udp_pool4 if udp else flows.tcp_pool4
        dst, dport = str(bib.address), bib.port
    else:
        dst, dport = NODE4, flows.udp_masquerade_port
    src = DOC if claimed == "server" else ATTACKER4[link]
    sport = (UDP_PORT if udp else TCP_PORT) if claimed == "server" else 0
    before = look(env.node)
    answers = env.wires[link].inject(ip_packet(src, dst, proto, sport=sport, dport=dport,
                                               seq=secrets.randbelow(1 << 32)))
    change = look(env.node) - before
    assert answers == [] or aimed_at == "masquerade", answers  # the node itself may refuse its port
    assert change["jool.nsp.received4"] == 0, change
    if aimed_at == "pool4":
        assert change["nft.inbound_blocked"] == 1, change
    assert _pending(flows.udp) == "" and _pending(flows.tcp) == ""
    assert_nothing_leaked(env, change)
    refused("bib")


def test_flows_under_attack_still_carry_their_own_replies(env: Env, flows: LiveFlows) -> None:
    dst = nat64(NSP, DOC)
    flows.udp.sendto(b"still here\n", (dst, UDP_PORT))
    data, peer = flows.udp.recvfrom(65535)
    assert data.endswith(b"\nstill here\n") and ipaddress.ip_address(peer[0]) == ipaddress.ip_address(dst)
    flows.tcp.sendall(b"still here\n")
    assert flows.tcp.recv(4096) == b"still here\n"
    assert _bib_of(flows.udp_port, "udp") == flows.udp_pool4
    assert _bib_of(flows.tcp_port, "tcp") == flows.tcp_pool4


# ---------------------------------------------------------------------------
# The driver's unix socket
# ---------------------------------------------------------------------------


def _connect_as(uid: int, path: Path) -> int:
    """errno of connecting to `path` as user `uid` (0 when it connected)."""
    child = os.fork()
    if child == 0:  # pragma: no cover - the child only makes syscalls, then exits
        code = 0
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.connect(str(path))
        except OSError as exc:
            code = exc.errno or 255
        os._exit(code)
    _, status = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(status)


def test_only_root_can_talk_to_the_driver_socket(env: Env) -> None:
    tried("socket")
    deadline = time.monotonic() + 300
    while not (env.socket_path.exists() and stat.S_ISSOCK(os.lstat(env.socket_path).st_mode)):
        assert env.socket_driver.poll() is None, "felix-nat64 driver --socket exited"
        assert time.monotonic() < deadline, "no socket"
        time.sleep(0.2)
    st = os.lstat(env.socket_path)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0
    assert stat.S_IMODE(os.lstat(env.socket_path.parent).st_mode) == 0o700
    assert _connect_as(65534, env.socket_path) == errno.EACCES
    assert _connect_as(0, env.socket_path) == 0  # the socket is live: root gets in
    refused("socket")


def test_nothing_reached_the_node_or_the_servers_in_the_whole_run(env: Env) -> None:
    assert env.services.reached() == []
    watch = _counts(env.node.topo.inet4_netns, WATCH_TABLE)
    probe = _counts(None, PROBE_TABLE)
    assert probe == {k: 0 for k in PROBE_RULES}, probe
    assert watch["ipv4_broadcast_or_multicast"] == 0 and watch["ipv4_from_pool4"] == 0, watch
    counters: dict[str, Any] = {k: v[0] for k, v in Nft().counters().items()}
    record("security", "nft_counters_at_end", counters)
    record("security", "all", {"tried": sum(c["tried"] for c in FIGURES.values()),
                               "refused": sum(c["refused"] for c in FIGURES.values())})
