"""NAT64 on a node that carries Calico Felix's own rules, through the real Jool module.

A Felix-style dataplane (testbed/calico_rules.py) is loaded into
the node in each of Felix's modes: nftables, iptables-nft with the FORWARD
policy ACCEPT, and iptables-nft with FORWARD DROP (what Docker sets). With it
in place, and the driver run as Felix runs it:

- NAT64 works: TCP, UDP and ICMP through the network-specific prefix, TCP
  through the well-known prefix, from both pods;
- Felix's RPF check drops a pod that spoofs another pod's address before
  felix-nat64 steers anything;
- a Felix egress deny for one pod stops that pod's NAT64 traffic on the IPv6
  leg (steered, never translated) while the other pod and other
  destinations still work;
- with the disabled IP pool covering the prefix there is no double NAT (the
  node's conntrack and Jool's session both hold the pod's own address; the
  server sees the node's IPv4 address); without it Felix masquerades the
  IPv6 leg, and felix-nat64 says so in `felix-nat64 status` and the
  calico_nat64_config_warnings metric;
- felix-nat64 changes nothing of Felix's: every other table (rules, handles,
  sets, policies) and every ipset is the same before and after the driver's
  first apply, its periodic resyncs and `felix-nat64 cleanup --force`, with
  rule counters only ever growing (a flush would reset them);
- Felix's own flushes and rebuilds of its tables do not disturb a held NAT64
  connection, new flows, or felix-nat64's table;
- with FORWARD DROP the translated IPv4 leg dies in iptables' FORWARD chain,
  and the allowance docs/coexistence.md describes (accept fn64-+ in both
  directions in a chain for local additions, here Docker's DOCKER-USER)
  brings NAT64 back without opening the translators to the outside.

Each outcome is recorded in the figures (section "coexistence").

Run: .venv/bin/python -m testbed.vm .venv/bin/pytest -q tests/vm/reliability/test_coexistence.py
"""

from __future__ import annotations

import json
import re
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import pytest

from felix_nat64.drivers.jool.client import JoolClient
from felix_nat64.drivers.jool.entries import SessionEntry
from felix_nat64.drivers.nft.table import Nft
from felix_nat64.testing.streams import StreamBuilder
from testbed.calico_rules import (
    ALL_POOLS_SET_BEFORE_3_32,
    ALL_POOLS_SET_FROM_3_32,
    ALLOW_ALL,
    FelixDataplane,
    FelixSpec,
    Mode,
    deny_egress_to,
    felix_snapshot,
    node_spec,
    remove_felix_rules,
)
from testbed.netns_exec import socket_in_netns
from testbed.topology import Topology, pod_address
from testbed.traffic import HeldConnection, ping, tcp_request, udp_exchange
from tests.vm.dataplane_fixtures import (
    NSP,
    WKP,
    Node,
    RunningDriver,
    kernel_leftovers,
    metric,
    nat64,
    node_stream,
    scrape,
)
from tests.vm.reliability.conftest import (
    JOOL_INSTANCE,
    DriverPool,
    cleanup_cli,
    driver_pool,
    jool_stats,
    record,
    status_json,
    wait_for,
)
from tests.vm.reliability.test_security import ATTACKER4, T_NSP, ip_packet, wires

pytestmark = pytest.mark.reliability

DOC = "198.51.100.10"
GLOBAL = "192.0.0.10"
NODE4 = str(Topology.node_ipv4)
NODE6 = {str(Topology.node_uplink_ipv6), str(Topology.node_outsider_ipv6)}
POD0, POD1 = str(pod_address(0)), str(pod_address(1))
TCP_PORT, UDP_PORT = 8080, 8081
STREAM = node_stream()
FELIX_VERSION = "master"  # what node_stream() speaks
Forward = Literal["accept", "drop"]
CONFIGS: dict[str, tuple[Mode, Forward]] = {
    "nftables": (Mode.NFTABLES, "accept"),
    "iptables": (Mode.IPTABLES, "accept"),
    "iptables-forward-drop": (Mode.IPTABLES, "drop"),
}
# Each mode with one of the two names Felix's "all pools" set has had.
ALL_POOLS_SET = {Mode.NFTABLES: ALL_POOLS_SET_FROM_3_32, Mode.IPTABLES: ALL_POOLS_SET_BEFORE_3_32}
BLOCKED = 2.0  # seconds to wait for traffic that must not get through
# What docs/coexistence.md asks of iptables nodes whose FORWARD policy is DROP:
# accept the translator links in both directions in the chain kept for local
# additions (Docker's DOCKER-USER, jumped to first from FORWARD).
ALLOWANCE = ("*filter\n:DOCKER-USER - [0:0]\n-A DOCKER-USER -i fn64-+ -j ACCEPT\n"
             "-A DOCKER-USER -o fn64-+ -j ACCEPT\n-A DOCKER-USER -j RETURN\n"
             "-I FORWARD 1 -j DOCKER-USER\nCOMMIT\n")
ALLOWANCE_REMOVAL = "*filter\n-D FORWARD -j DOCKER-USER\n-F DOCKER-USER\n-X DOCKER-USER\nCOMMIT\n"


def outcome(config: str, case: str, result: str) -> None:
    record("coexistence", f"{config}: {case}", result)


def run(*argv: str, stdin: str | None = None, check: bool = True) -> str:
    done = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, check=False, timeout=120)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


# ---------------------------------------------------------------------------
# Everything on the node that is not felix-nat64's
# ---------------------------------------------------------------------------

# Rule counters ("counter packets 3 bytes 180") and named counters ("packets 3 bytes 180").
_COUNTER = re.compile(r"packets (\d+) bytes (\d+)")


@dataclass(frozen=True)
class Foreign:
    """Every nftables table but ours (with rule handles, so a rule deleted and
    added again shows) and Felix's view of its mode, counter values apart; the
    packet counters separately, in listing order."""

    listings: dict[str, str]
    counters: dict[str, tuple[int, ...]]


def foreign_state(mode: Mode) -> Foreign:
    listings: dict[str, str] = {}
    counters: dict[str, tuple[int, ...]] = {}
    tables = json.loads(run("nft", "-j", "list", "tables"))["nftables"]
    raw = {}
    for item in tables:
        table = item.get("table")
        if table and (table["family"], table["name"]) != ("inet", "felix-nat64"):
            name = f"{table['family']} {table['name']}"
            raw[f"nft -a {name}"] = run("nft", "-a", "list", "table", table["family"], table["name"])
    raw.update({f"felix {k}": v for k, v in felix_snapshot(mode).items()})
    raw["ipset save"] = "\n".join(sorted(re.sub(r" initval 0x[0-9a-f]+", "", line)
                                         for line in run("ipset", "save").splitlines()))
    for key, text in raw.items():
        counters[key] = tuple(int(p) for p, _ in _COUNTER.findall(text))
        listings[key] = _COUNTER.sub("packets - bytes -", text)
    return Foreign(listings, counters)


def assert_untouched(before: Foreign, after: Foreign, what: str) -> None:
    changed = sorted(k for k in before.listings.keys() | after.listings.keys()
                     if before.listings.get(k) != after.listings.get(k))
    assert changed == [], f"{what} changed {changed}:\n" + "\n".join(
        f"--- {k} before:\n{before.listings.get(k)}\n--- after:\n{after.listings.get(k)}" for k in changed)
    for key, counts in before.counters.items():
        went_back = [i for i, (b, a) in enumerate(zip(counts, after.counters[key], strict=True)) if a < b]
        assert went_back == [], f"{what}: counters of {key} went back (flushed?): {went_back}"
    # Not vacuous: Felix's tables are there and their counters have counted.
    assert sum(sum(c) for c in before.counters.values()) > 0
    assert any("cali" in text for text in before.listings.values())


def our_table() -> str:
    """Our table with rule handles, counter values apart."""
    return _COUNTER.sub("packets - bytes -", run("nft", "-a", "list", "table", "inet", "felix-nat64"))


# ---------------------------------------------------------------------------
# Traffic and what the kernel says about it
# ---------------------------------------------------------------------------


def pod_ns(node: Node, index: int = 0) -> str:
    return node.topo.pod(index).netns


def nat64_works(node: Node, index: int = 0) -> list[str]:
    """TCP, UDP and ICMP through the network-specific prefix and TCP through the
    well-known one, from pod `index`; returns the failures (empty when all work)."""
    ns = pod_ns(node, index)
    failures = []
    t = tcp_request(ns, nat64(NSP, DOC), timeout=20)
    if not (t.ok and str(t.seen_source) == NODE4):
        failures.append(f"tcp: {t.error or t.seen_source}")
    u = udp_exchange(ns, nat64(NSP, DOC), count=2, reply_timeout=5)
    if not (u.ok and str(u.seen_source) == NODE4):
        failures.append(f"udp: {u.error or u.seen_source}")
    p = ping(ns, nat64(NSP, DOC), count=2, reply_timeout=5)
    if not p.ok:
        failures.append(f"icmp: {p.errors}")
    w = tcp_request(ns, nat64(WKP, GLOBAL), timeout=20)
    if not (w.ok and str(w.seen_source) == NODE4):
        failures.append(f"tcp via {WKP}: {w.error or w.seen_source}")
    return failures


def nothing_gets_through(node: Node, index: int = 0) -> list[str]:
    """TCP, UDP and ICMP through the network-specific prefix; returns those that worked."""
    ns = pod_ns(node, index)
    worked = []
    if tcp_request(ns, nat64(NSP, DOC), timeout=BLOCKED).ok:
        worked.append("tcp")
    if udp_exchange(ns, nat64(NSP, DOC), reply_timeout=BLOCKED).ok:
        worked.append("udp")
    if ping(ns, nat64(NSP, DOC), count=1, reply_timeout=BLOCKED).ok:
        worked.append("icmp")
    return worked


@dataclass(frozen=True)
class UdpFlow:
    source_port: int
    server_saw: str  # the source address the IPv4 server reported


def udp_flow(node: Node) -> UdpFlow:
    """One UDP exchange from pod 0, from a fresh source port, through the prefix."""
    port = 20000 + secrets.randbelow(20000)
    sock = socket_in_netns(pod_ns(node), socket.AF_INET6, socket.SOCK_DGRAM)
    with sock:
        sock.bind(("::", port))
        sock.settimeout(10)
        sock.sendto(b"coexistence\n", (nat64(NSP, DOC), UDP_PORT))
        header = sock.recv(65535).split(b"\n")[0].split()
    return UdpFlow(port, header[1].decode())


def conntrack_reply_destination(flow: UdpFlow) -> str:
    """Where the node's conntrack sends replies of the flow's IPv6 leg: the pod's
    own address, or a node address if the leg was masqueraded."""
    out = run("conntrack", "-L", "-f", "ipv6", "-p", "udp", "--orig-src", POD0, "--orig-dst",
              nat64(NSP, DOC), "--sport", str(flow.source_port))
    lines = [line for line in out.splitlines() if f"sport={flow.source_port} " in line]
    assert len(lines) == 1, out
    return re.findall(r"dst=(\S+)", lines[0])[1]


def jool_sessions(flow_dst: str, port: int) -> list[SessionEntry]:
    with JoolClient.open(T_NSP.namespace) as jool:
        return [s for s in jool.session_list(JOOL_INSTANCE, "udp")
                if str(s.dst4.address) == flow_dst and s.dst4.port == port]


def jool_session_sources(flow: UdpFlow) -> set[str]:
    """The IPv6 sources of Jool's sessions that carry the flow: the pod's own
    transport address, or the node's after a masquerade."""
    sessions = jool_sessions(DOC, UDP_PORT)
    mine = {f"{s.src6.address}.{s.src6.port}" for s in sessions if s.src6.port == flow.source_port}
    if mine:
        return mine
    # A masquerade picks its own port (fully random): the newest session from a node address.
    return {f"{s.src6.address}.{s.src6.port}" for s in sessions if str(s.src6.address) in NODE6}


def steered() -> int:
    return Nft().counters()["steered"][0]


# ---------------------------------------------------------------------------
# The node with Felix's rules and the driver
# ---------------------------------------------------------------------------


@dataclass
class Stack:
    config: str
    mode: Mode
    spec: FelixSpec
    felix: FelixDataplane
    pool: DriverPool
    driver: RunningDriver
    before_apply: Foreign
    after_apply: Foreign
    allowance: bool = False


def _spec(node: Node, mode: Mode, forward: Forward, covering: tuple[str, ...] = (WKP, NSP)) -> FelixSpec:
    return node_spec(node.topo, mode, masquerade=True, covering=covering,
                     forward_policy=forward, all_pools_set=ALL_POOLS_SET[mode])


@pytest.fixture(scope="class")
def stack(request: pytest.FixtureRequest, node: Node) -> Iterator[Stack]:
    config = request.param
    mode, forward = CONFIGS[config]
    remove_felix_rules(mode, restore_forward_policy=True)  # leftovers of an interrupted run
    spec = _spec(node, mode, forward)
    felix = FelixDataplane(spec)
    felix.install()
    made = None
    try:
        with driver_pool(node) as pool:
            # Traffic through Felix's chains first, so that its counters have counted.
            assert ping(pod_ns(node), node.topo.server_ipv6, count=2, reply_timeout=5).ok
            before = foreign_state(mode)
            driver = pool.start(STREAM)
            driver.wait_ready()
            made = Stack(config, mode, spec, felix, pool, driver, before, foreign_state(mode))
            yield made
    finally:
        if made is not None and made.allowance:
            run("iptables-nft-restore", "--noflush", stdin=ALLOWANCE_REMOVAL)
        felix.remove()
        run("conntrack", "-D", "-f", "ipv6", "-p", "udp", "--orig-dst", nat64(NSP, DOC), check=False)


def check_first_apply(stack: Stack) -> None:
    assert_untouched(stack.before_apply, stack.after_apply, "the driver's first apply")
    assert "fn64:steer-cali" in our_table()
    outcome(stack.config, "Felix's tables across the driver's first apply", "unchanged")


def check_resync_and_cleanup(stack: Stack) -> None:
    before = foreign_state(stack.mode)
    applies = stack.driver.status()["applies"]
    wait_for(lambda: stack.driver.status().get("applies", 0) >= applies + 2, timeout=60,
             what="two periodic resyncs of the driver")
    assert stack.driver.status()["last_apply"]["ok"]
    assert_untouched(before, foreign_state(stack.mode), "the driver's periodic resyncs")
    assert stack.driver.stop() == 0
    cleanup_cli()
    assert kernel_leftovers() == []
    assert_untouched(before, foreign_state(stack.mode), "felix-nat64 cleanup --force")
    outcome(stack.config, "Felix's tables across 2 driver resyncs and cleanup --force", "unchanged")


@pytest.mark.parametrize("stack", ["nftables", "iptables"], indirect=True, scope="class")
class TestBesideFelix:
    def test_first_apply_changes_nothing_of_felix(self, stack: Stack) -> None:
        check_first_apply(stack)

    def test_nat64_works_through_felix_rules(self, node: Node, stack: Stack) -> None:
        assert nat64_works(node, 0) == []
        assert nat64_works(node, 1) == []
        outcome(stack.config, "TCP/UDP/ICMP via NSP and TCP via WKP, both pods", "all work, source 192.0.2.1")

    def test_felix_rpf_drops_a_pod_spoofing_another_pod(self, node: Node, stack: Stack) -> None:
        before, jool_before = steered(), jool_stats(T_NSP.namespace)["JSTAT_SUCCESS"]
        wires(node)["pod"].inject(ip_packet(POD1, nat64(NSP, DOC), "udp", dport=UDP_PORT))
        assert steered() == before
        assert jool_stats(T_NSP.namespace)["JSTAT_SUCCESS"] == jool_before
        outcome(stack.config, "pod 0 sending as pod 1", "dropped by Felix's RPF check, never steered")

    def test_egress_deny_applies_to_the_ipv6_leg(self, node: Node, stack: Stack) -> None:
        pod0 = node.topo.pod(0)
        denied = f"{nat64(NSP, '198.51.100.0')}/120"  # 198.51.100.0/24 as the pod sees it
        stack.felix.set_egress_policy(pod0.node_ifname, deny_egress_to(denied))
        try:
            before, jool_before = steered(), jool_stats(T_NSP.namespace)["JSTAT_SUCCESS"]
            assert nothing_gets_through(node, 0) == []
            # felix-nat64 steered the packets; Felix's policy dropped them before the translator.
            assert steered() > before
            assert jool_stats(T_NSP.namespace)["JSTAT_SUCCESS"] == jool_before
            assert nat64_works(node, 1) == []
            other = tcp_request(pod0.netns, nat64(WKP, GLOBAL), timeout=20)
            assert other.ok, other.error
        finally:
            stack.felix.set_egress_policy(pod0.node_ifname, ALLOW_ALL)
        assert nat64_works(node, 0) == []
        outcome(stack.config, f"egress deny of {denied} for pod 0",
                "pod 0 blocked on the IPv6 leg (steered, not translated); pod 1 and 192.0.0.10 work")

    def test_covering_pool_means_no_double_nat(self, node: Node, stack: Stack) -> None:
        flow = udp_flow(node)
        assert flow.server_saw == NODE4
        assert conntrack_reply_destination(flow) == POD0
        assert jool_session_sources(flow) == {f"{POD0}.{flow.source_port}"}
        outcome(stack.config, "pod pool natOutgoing, disabled pool covering the prefix",
                "IPv6 leg keeps the pod's address (conntrack and Jool); server sees 192.0.2.1")

    def test_without_covering_pool_felix_masquerades_and_we_warn(self, node: Node, stack: Stack) -> None:
        # The covering pools go away as Felix would tell both sides: its rules lose
        # them from the all-pools set, and the driver gets the pool removals.
        stack.felix.update(_spec(node, stack.mode, "accept", covering=()))
        stack.driver.felix.send(StreamBuilder(FELIX_VERSION).remove_pool(WKP).remove_pool(NSP).data())
        try:
            wait_for(lambda: len(stack.driver.status().get("warnings") or []) >= 2, timeout=60,
                     what="the driver's warnings")
            flow = udp_flow(node)
            masqueraded_to = conntrack_reply_destination(flow)
            sources = jool_session_sources(flow)
            driver = status_json(node)["driver"] if stack.mode is Mode.NFTABLES else stack.driver.status()
            warnings = [w for w in driver["warnings"] if "no IP pool covers NAT64 prefix" in w]
            everything = len(driver["warnings"]) + len(driver["settings_warnings"])
            metric_value = metric(scrape()[1], "calico_nat64_config_warnings")
        finally:
            stack.felix.update(stack.spec)
            stack.driver.felix.send(StreamBuilder(FELIX_VERSION).pool(WKP).pool(NSP).data())
        assert flow.server_saw == NODE4
        assert masqueraded_to in NODE6, masqueraded_to
        assert sources and {s.rsplit(".", 1)[0] for s in sources} <= NODE6, sources
        assert sorted(p for p in (WKP, NSP) if any(p in w for w in warnings)) == sorted((WKP, NSP)), warnings
        assert len(warnings) == 2 and metric_value == everything >= 2
        wait_for(lambda: not stack.driver.status().get("warnings"), timeout=60, what="warnings to clear")
        outcome(stack.config, "pod pool natOutgoing, no covering pool",
                f"IPv6 leg masqueraded to {masqueraded_to} before Jool (double NAT); server sees 192.0.2.1; "
                f"{len(warnings)} warnings in status and calico_nat64_config_warnings")
        record("coexistence", "warning text", warnings[0])

    def test_felix_resyncs_do_not_break_nat64(self, node: Node, stack: Stack) -> None:
        ours = our_table()
        repairs = stack.driver.status()["drift_repairs"]
        held = HeldConnection(pod_ns(node), nat64(NSP, DOC), interval=0.2, reply_timeout=10).start()
        try:
            time.sleep(1)
            stack.felix.resync()
            time.sleep(1)
            if stack.mode is Mode.NFTABLES:
                stack.felix.resync(recreate=True)
                time.sleep(1)
            report = held.stop()
        finally:
            held.stop()
        assert report.ok, report.failures
        assert report.exchanges >= 8
        assert nat64_works(node, 0) == []
        assert our_table() == ours
        assert stack.driver.status()["drift_repairs"] == repairs
        what = "flush and refill, then delete and rebuild" if stack.mode is Mode.NFTABLES else \
            "rewrite of every cali- chain and ipset swap"
        outcome(stack.config, f"Felix resync ({what}) under a held connection",
                f"held connection kept ({report.exchanges} exchanges), new flows work, our table untouched")

    def test_resync_and_cleanup_change_nothing_of_felix(self, stack: Stack) -> None:
        check_resync_and_cleanup(stack)


def _translated_and_dropped(node: Node) -> tuple[list[str], dict[str, int]]:
    before = {k: v[0] for k, v in Nft().counters().items()}
    jool_before = jool_stats(T_NSP.namespace)["JSTAT_SUCCESS"]
    worked = nothing_gets_through(node, 0)
    change = {k: v[0] - before[k] for k, v in Nft().counters().items()}
    change["jool_translated"] = jool_stats(T_NSP.namespace)["JSTAT_SUCCESS"] - jool_before
    return worked, change


@pytest.mark.parametrize("stack", ["iptables-forward-drop"], indirect=True, scope="class")
class TestForwardPolicyDrop:
    def test_first_apply_changes_nothing_of_felix(self, stack: Stack) -> None:
        check_first_apply(stack)

    def test_forward_drop_kills_the_translated_ipv4_leg(self, node: Node, stack: Stack) -> None:
        worked, change = _translated_and_dropped(node)
        assert worked == []
        # Steered and translated, then dropped by FORWARD's policy before postrouting.
        assert change["steered"] > 0 and change["jool_translated"] > 0, change
        assert change["snat"] == 0, change
        outcome(stack.config, "TCP/UDP/ICMP via NSP without the allowance",
                "all fail: translated by Jool, dropped by ip filter FORWARD policy DROP (0 SNATed)")

    def test_documented_allowance_brings_nat64_back(self, node: Node, stack: Stack) -> None:
        run("iptables-nft-restore", "--noflush", stdin=ALLOWANCE)
        stack.allowance = True
        assert nat64_works(node, 0) == []
        assert nat64_works(node, 1) == []
        # The allowance accepts everything towards fn64-*, but felix-nat64's own drop is
        # final: the translators stay closed to the outside.
        before = Nft().counters()["inbound_blocked"][0]
        answers = wires(node)["uplink"].inject(ip_packet(ATTACKER4["uplink"], str(T_NSP.pool4[0]), "tcp-syn",
                                                         dport=TCP_PORT))
        assert answers == []
        assert Nft().counters()["inbound_blocked"][0] == before + 1
        outcome(stack.config, "with the DOCKER-USER allowance for fn64-+",
                "all work, source 192.0.2.1; pool4 still closed to the uplink")

    def test_resync_and_cleanup_change_nothing_of_felix(self, stack: Stack) -> None:
        check_resync_and_cleanup(stack)
