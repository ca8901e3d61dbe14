"""The nftables, routing and translator-link drivers against the host kernel.

Each test runs the drivers on a thread inside a throwaway network namespace
that plays the node, so this machine's own networking is never touched.
Jool is not involved here (see tests/vm for the whole dataplane).
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

import nftables
import pytest
from pyroute2 import IPRoute
from pyroute2 import netns as pr_netns

from felix_nat64.drivers.discovery import namespaces
from felix_nat64.drivers.discovery import translators as discover
from felix_nat64.drivers.netns.executor import NamespaceExecutor
from felix_nat64.drivers.netns.links import TranslatorLinks
from felix_nat64.drivers.netns.namespaces import namespace_exists
from felix_nat64.drivers.nft.ruleset import render
from felix_nat64.drivers.nft.table import Nft, NftError, NftTable
from felix_nat64.drivers.plan import node_routes
from felix_nat64.drivers.routing import NodeRouting, RuleSpec
from felix_nat64.model.desired import build_desired
from felix_nat64.model.ownership import is_our_route
from felix_nat64.model.settings import Settings
from felix_nat64.model.state import DesiredState, Host, Inputs, Pool
from felix_nat64.model.values import PortRange
from testbed.netns_exec import run_command_in_netns, socket_in_netns, write_sysctls

N6 = ipaddress.IPv6Network


def desired_state(*prefixes: str, **kw: object) -> DesiredState:
    settings = replace(Settings(prefixes=tuple(sorted(N6(p) for p in prefixes)), hostname="node"), **kw)
    pools = (Pool("pods", N6("fd00:10:244::/64"), True), Pool("cover", N6("64:ff9b::/96"), False))
    return build_desired(Inputs(settings, pools, (Host("node", ipaddress.IPv4Address("192.0.2.1")),)))


@pytest.fixture
def node() -> Iterator[NamespaceExecutor]:
    if os.geteuid() != 0:
        pytest.fail("host-kernel tests need root (network namespaces, nftables)")
    name = f"fn64h-{secrets.token_hex(3)}"
    before = set(namespaces())
    pr_netns.create(name)
    worker = NamespaceExecutor(name)
    yield worker
    worker.close()
    pr_netns.remove(name)
    for leftover in set(namespaces()) - before:
        pr_netns.remove(leftover)


def nft_list(worker: NamespaceExecutor, what: str = "ruleset") -> str:
    def run() -> str:
        nft = nftables.Nftables()
        rc, out, err = nft.cmd(f"list {what}")
        assert rc == 0, err
        return str(out)

    return worker.call(run)


def nft_cmd(worker: NamespaceExecutor, cmd: str) -> None:
    def run() -> None:
        rc, _, err = nftables.Nftables().cmd(cmd)
        assert rc == 0, err

    worker.call(run)


class ElementEvents:
    """`nft monitor elements` in a namespace: which set elements each step
    added and deleted, as the kernel reports them. Steps end with `mark()`,
    an element added to a set of a table of the test's own. (nft 1.0.6's
    unfiltered monitor crashes on a `ct timeout` deletion.)"""

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self._proc: subprocess.Popen[str] | None = None
        self._out = ""
        self._marks = 0

    def __enter__(self) -> ElementEvents:
        run_command_in_netns(self.netns, ["nft", "add table inet marks; add set inet marks steps "
                                                 "{ type inet_service; }"])
        # Line-buffered: terminate() would lose what stdio still holds.
        self._proc = subprocess.Popen(["ip", "netns", "exec", self.netns, "stdbuf", "-oL", "nft", "monitor",
                                       "elements"], stdout=subprocess.PIPE, text=True)
        time.sleep(0.5)  # subscribed before the first change
        return self

    def mark(self) -> None:
        self._marks += 1
        run_command_in_netns(self.netns, ["nft", f"add element inet marks steps {{ {self._marks} }}"])

    def __exit__(self, *exc: object) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + 10
        while self._out.count("inet marks steps") < self._marks and time.monotonic() < deadline:
            line = self._proc.stdout.readline() if self._proc.stdout else ""
            self._out += line
        self._proc.terminate()
        self._proc.wait(10)

    def steps(self) -> list[tuple[set[tuple[str, str]], set[tuple[str, str]]]]:
        """(added, deleted) (set, element) pairs of each step."""
        result: list[tuple[set[tuple[str, str]], set[tuple[str, str]]]] = []
        added: set[tuple[str, str]] = set()
        deleted: set[tuple[str, str]] = set()
        for line in self._out.splitlines():
            words = line.split(maxsplit=5)
            if len(words) < 6 or words[1] != "element":
                continue
            if words[3] == "marks":
                result.append((added, deleted))
                added, deleted = set(), set()
            elif words[3] == "felix-nat64":
                elems = {(words[4], e.strip()) for e in words[5].strip("{} ").split(",")}
                (added if words[0] == "add" else deleted).update(elems)
        assert len(result) == self._marks, self._out
        return result


class TestNftTable:
    def test_create_converge_and_remove(self, node: NamespaceExecutor) -> None:
        d = desired_state("64:ff9b::/96", "2001:db8::a00:0/104")
        assert node.call(lambda: NftTable().apply(render(d))) == 1
        text = nft_list(node)
        assert "table inet felix-nat64" in text and "@prefixes6" in text
        # applying the same state again is a no-op
        assert node.call(lambda: NftTable().apply(render(d))) == 0
        assert node.call(lambda: NftTable().apply(None)) == 1
        assert "felix-nat64" not in nft_list(node)
        assert node.call(lambda: NftTable().apply(None)) == 0

    def test_changes_are_applied_in_place_and_counters_survive(self, node: NamespaceExecutor) -> None:
        d1 = desired_state("64:ff9b::/96")
        node.call(lambda: NftTable().apply(render(d1)))
        nft_cmd(node, "add table inet probe")

        def send_from_pool4() -> None:
            # A packet from a pool4 address leaving by a non-translator link
            # passes the SNAT rule and bumps its named counter.
            with IPRoute() as ipr:
                lo = ipr.link_lookup(ifname="lo")[0]
                ipr.link("set", index=lo, state="up")
                ipr.addr("add", index=lo, address="169.254.64.9", prefixlen=32)
                ipr.link("add", ifname="up0", kind="veth", peer="up1")
                for name in ("up0", "up1"):
                    ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")
                ipr.addr("add", index=ipr.link_lookup(ifname="up0")[0], address="192.0.2.1", prefixlen=24)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.bind(("169.254.64.9", 0))
                sock.sendto(b"x", ("192.0.2.2", 9))

        node.call(send_from_pool4)
        assert node.call(lambda: Nft().counters())["snat"][0] == 1
        d2 = desired_state("64:ff9b::/96", "2001:db8:64::/96")
        assert node.call(lambda: NftTable().apply(render(d2))) == 1
        assert "2001:db8:64::/96" in nft_list(node, "set inet felix-nat64 prefixes6")
        assert node.call(lambda: Nft().counters())["snat"][0] == 1
        assert "table inet probe" in nft_list(node)  # other tables untouched

    def test_drift_is_detected_and_repaired(self, node: NamespaceExecutor) -> None:
        d = desired_state("64:ff9b::/96")
        node.call(lambda: NftTable().apply(render(d)))
        nft_cmd(node, "flush chain inet felix-nat64 prerouting")
        assert node.call(lambda: NftTable().apply(render(d))) == 1
        assert "fn64:steer-cali" in nft_list(node, "chain inet felix-nat64 prerouting")
        nft_cmd(node, "flush set inet felix-nat64 sources6")
        assert node.call(lambda: NftTable().apply(render(d))) == 1
        assert "fd00:10:244::/64" in nft_list(node, "set inet felix-nat64 sources6")
        nft_cmd(node, "delete table inet felix-nat64")
        assert node.call(lambda: NftTable().apply(render(d))) == 1
        assert node.call(lambda: NftTable().apply(render(d))) == 0

    def test_repairs_never_delete_the_table(self, node: NamespaceExecutor) -> None:
        # Between a delete and a create, steered packets would leave
        # untranslated: chains and sets are replaced inside the table.
        d = desired_state("64:ff9b::/96")
        node.call(lambda: NftTable().apply(render(d)))

        def handle() -> int:
            items = node.call(lambda: Nft().list_table()) or []
            return int(next(i["table"]["handle"] for i in items if "table" in i))

        before = handle()
        nft_cmd(node, "add chain inet felix-nat64 stray { type filter hook forward priority 7; }")
        nft_cmd(node, "add set inet felix-nat64 stray4 { type ipv4_addr; }")
        nft_cmd(node, "flush chain inet felix-nat64 input")
        nft_cmd(node, "delete chain inet felix-nat64 input")
        nft_cmd(node, "add chain inet felix-nat64 input { type filter hook input priority 5; }")
        nft_cmd(node, "add ct timeout inet felix-nat64 stale { protocol udp; l3proto ip; "
                      "policy = { unreplied : 40 }; }")
        assert node.call(lambda: NftTable().apply(render(d))) == 1
        listed = nft_list(node, "table inet felix-nat64")
        assert "stray" not in listed and "stale" not in listed
        assert "hook input priority filter;" in listed
        assert handle() == before
        assert node.call(lambda: NftTable().apply(render(d))) == 0

    def test_set_elements_that_stay_are_never_removed_and_readded(self, node: NamespaceExecutor) -> None:
        # On Linux 6.1 an interval set can miss an element while a transaction
        # that deletes and re-adds it commits: live flows of the prefixes that
        # stay would lose packets. The kernel's own event stream shows what
        # each transaction touched.
        d2 = desired_state("64:ff9b::/96", "2001:db8:64::/96")
        d3 = desired_state("64:ff9b::/96", "2001:db8:64::/96", "2001:db8:65::/96")
        # Rules and ct timeout objects change too (new names), sets do not.
        d4 = desired_state("64:ff9b::/96", "2001:db8:64::/96", udp_timeout=600.0)
        # A prefix replaced by a longer one inside it.
        d5 = desired_state("64:ff9b::/96", "2001:db8:64::a00:0/104", udp_timeout=600.0)
        node.call(lambda: NftTable().apply(render(d2)))
        assert node.name is not None
        with ElementEvents(node.name) as events:
            for d in (d3, d2, d4):
                assert node.call(lambda: NftTable().apply(render(d))) == 1  # noqa: B023 - called at once
                events.mark()
            # Drift: an element nobody asked for, as a range, and a lost one.
            nft_cmd(node, "add element inet felix-nat64 prefixes6 { 2001:db8:99::5-2001:db8:99::9 }")
            nft_cmd(node, "delete element inet felix-nat64 sources6 { fd00:10:244::/64 }")
            events.mark()
            for d, changed in ((d4, 1), (d5, 1), (d5, 0)):
                assert node.call(lambda: NftTable().apply(render(d))) == changed  # noqa: B023 - called at once
                events.mark()
        steps = events.steps()
        added, removed, refilled, _, repaired, replaced, unchanged = steps
        # A step never deletes an element it adds: what stays is left alone.
        for step in steps:
            assert not step[0] & step[1], f"removed and re-added: {step[0] & step[1]}"
        third = ("prefixes6", "2001:db8:65::/96")
        assert third in added[0] and not added[1]
        assert third in removed[1] and not removed[0]
        assert refilled == (set(), set())  # only rules and ct timeout objects changed
        foreign = ("prefixes6", "2001:db8:99::5-2001:db8:99::9")
        assert repaired == ({("sources6", "fd00:10:244::/64")}, {foreign})
        assert ("prefixes6", "2001:db8:64::/96") in replaced[1]
        assert ("prefixes6", "2001:db8:64::a00:0/104") in replaced[0]
        assert all(e[1].startswith("2001:db8:64:") for e in replaced[0] | replaced[1]), replaced
        assert unchanged == (set(), set())
        listed = nft_list(node, "set inet felix-nat64 prefixes6")
        assert "2001:db8:64::a00:0/104" in listed and "64:ff9b::/96" in listed and ":99:" not in listed

    def test_foreign_tables_are_never_touched(self, node: NamespaceExecutor) -> None:
        nft_cmd(node, "add table ip calico")
        nft_cmd(node, "add chain ip calico filter-FORWARD { type filter hook forward priority 0; }")
        nft_cmd(node, "add rule ip calico filter-FORWARD counter accept")
        before = nft_list(node, "table ip calico")
        d = desired_state("64:ff9b::/96")
        node.call(lambda: NftTable().apply(render(d)))
        node.call(lambda: NftTable().apply(None))
        assert nft_list(node, "table ip calico") == before

    def test_a_failed_transaction_changes_nothing(self, node: NamespaceExecutor) -> None:
        d = desired_state("64:ff9b::/96")
        node.call(lambda: NftTable().apply(render(d)))
        before = nft_list(node, "table inet felix-nat64")
        bad = render(desired_state("64:ff9b::/96", "2001:db8:64::/96"))
        bad.rules.append({"family": "inet", "table": "felix-nat64", "chain": "nope", "comment": "x",
                          "expr": [{"accept": None}]})
        with pytest.raises(NftError, match="failed"):
            node.call(lambda: NftTable().apply(bad))
        assert nft_list(node, "table inet felix-nat64") == before

    def test_counters_are_readable(self, node: NamespaceExecutor) -> None:
        d = desired_state("64:ff9b::/96")
        node.call(lambda: NftTable().apply(render(d)))
        counters = node.call(lambda: Nft().counters())
        assert set(counters) >= {"steered", "refused", "snat", "inbound_blocked"}
        assert all(v == (0, 0) for v in counters.values())

    @pytest.mark.parametrize("address", [None, "192.0.2.10"])
    @pytest.mark.parametrize("ports", [None, (40000, 40099)])
    def test_every_snat_form_applies_and_reads_back_unchanged(
            self, node: NamespaceExecutor, address: str | None, ports: tuple[int, int] | None) -> None:
        d = desired_state("64:ff9b::/96", snat_address=address and ipaddress.IPv4Address(address),
                          port_range=ports and PortRange(*ports))
        assert node.call(lambda: NftTable().apply(render(d))) == 1
        # Read back equal to what was rendered: a resync changes nothing.
        assert node.call(lambda: NftTable().apply(render(d))) == 0
        text = nft_list(node, "table inet felix-nat64")
        if ports:
            assert "meta l4proto { tcp, udp }" in text and ":40000-40099" in text, text
        assert text.count("counter name \"snat\"") == (2 if ports else 1), text

    def test_rendered_json_round_trips_through_nft(self, node: NamespaceExecutor) -> None:
        d = desired_state("64:ff9b::/96", snat_address=ipaddress.IPv4Address("192.0.2.10"))
        node.call(lambda: NftTable().apply(render(d)))
        out = node.call(lambda: Nft().list_table())
        assert out is not None
        text = json.dumps(out)
        # No random port selection: the pool4 port is kept where it is free.
        assert "192.0.2.10" in text and "random" not in text

    def test_ct_timeouts_carry_the_nat64_timeouts_and_follow_changes(self, node: NamespaceExecutor) -> None:
        assert node.call(lambda: NftTable().ct_timeouts_supported())
        d = desired_state("64:ff9b::/96", udp_timeout=600.0)
        assert node.call(lambda: NftTable().apply(render(d))) == 1
        assert node.call(lambda: NftTable().apply(render(d))) == 0

        def objects() -> dict[str, dict[str, object]]:
            items = Nft().list_table() or []
            return {o["ct timeout"]["name"]: o["ct timeout"] for o in items if "ct timeout" in o}

        found = node.call(objects)
        assert found["udp-600"]["policy"] == {"unreplied": 600, "replied": 600}
        assert found["tcp-7440-240"]["policy"]["established"] == 7440
        assert found["tcp-7440-240"]["policy"]["time_wait"] == 240
        assert set(found) == {"udp-600", "tcp-7440-240"}
        chain = nft_list(node, "chain inet felix-nat64 timeouts")
        assert 'ct timeout set "udp-600"' in chain and 'ct timeout set "tcp-7440-240"' in chain
        d2 = desired_state("64:ff9b::/96", udp_timeout=300.0)
        assert node.call(lambda: NftTable().apply(render(d2))) == 1
        assert set(node.call(objects)) == {"udp-300", "tcp-7440-240"}  # the old object is gone
        assert node.call(lambda: NftTable().apply(render(d2))) == 0
        # 120 s is conntrack's own UDP "replied" default, which a listing
        # leaves out: the table is still recognised as up to date.
        d3 = desired_state("64:ff9b::/96", udp_timeout=120.0)
        assert node.call(lambda: NftTable().apply(render(d3))) == 1
        assert node.call(objects)["udp-120"]["policy"] == {"unreplied": 120}
        assert node.call(lambda: NftTable().apply(render(d3))) == 0
        # Without kernel support the table carries neither objects nor the chain.
        assert node.call(lambda: NftTable().apply(render(d2, with_ct_timeouts=False))) == 1
        assert node.call(objects) == {}
        assert "timeouts" not in nft_list(node, "table inet felix-nat64")


def _pod_behind(node: NamespaceExecutor, host_ifname: str, address: str) -> str:
    """A pod namespace whose eth0 is wired to the node by `host_ifname`, with a
    static next hop on the node so packets reach the node's prerouting hook."""
    pod = f"fn64hp-{secrets.token_hex(3)}"
    pr_netns.create(pod)
    peer = f"p{secrets.token_hex(4)}"

    def wire() -> str:
        with IPRoute() as ipr:
            ipr.link("add", ifname=host_ifname, kind="veth", peer=peer)
            host = ipr.link_lookup(ifname=host_ifname)[0]
            ipr.link("set", index=host, state="up")
            ipr.link("set", index=ipr.link_lookup(ifname=peer)[0], net_ns_fd=pod)
            return str(ipr.get_links(host)[0].get_attr("IFLA_ADDRESS"))

    try:
        _wire_pod(node, pod, peer, wire, address)
        node.call(_wait_until_up, host_ifname)
    except BaseException:
        pr_netns.remove(pod)
        raise
    return pod


def _wait_until_up(ifname: str) -> None:
    # A fresh veth pair can take up to a second to report carrier (linkwatch
    # defers it); packets sent before then are dropped, never steered.
    deadline = time.monotonic() + 10
    with IPRoute() as ipr:
        while ipr.get_links(ipr.link_lookup(ifname=ifname)[0])[0].get_attr("IFLA_OPERSTATE") != "UP":
            assert time.monotonic() < deadline, f"{ifname} never came up"
            time.sleep(0.02)


def _wire_pod(node: NamespaceExecutor, pod: str, peer: str, wire: Callable[[], str], address: str) -> None:
    mac = node.call(wire)
    worker = NamespaceExecutor(pod)

    def rename() -> None:
        with IPRoute() as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname=peer)[0], ifname="eth0")

    def inside() -> None:
        with IPRoute() as ipr:
            eth0 = ipr.link_lookup(ifname="eth0")[0]
            ipr.link("set", index=eth0, state="up")
            # Without duplicate address detection (IFA_F_NODAD): usable at once.
            ipr.addr("add", index=eth0, address=address, prefixlen=64, flags=0x02)
            ipr.neigh("add", dst="fe80::1", lladdr=mac, ifindex=eth0, state=0x80, family=socket.AF_INET6)
            ipr.route("add", dst="64:ff9b::", dst_len=96, gateway="fe80::1", oif=eth0, family=socket.AF_INET6)
            # Until the veth has carrier the route is unusable (EADDRNOTAVAIL on send).
            deadline = time.monotonic() + 10
            while ipr.get_links(eth0)[0].get_attr("IFLA_OPERSTATE") != "UP":
                assert time.monotonic() < deadline, "the pod's veth never came up"
                time.sleep(0.02)

    try:
        worker.call(rename)
        # No duplicate address detection: the address is usable at once.
        write_sysctls(pod, {"net/ipv6/conf/eth0/accept_dad": 0})
        worker.call(inside)
        worker.call(_wait_until_up, "eth0")
    finally:
        worker.close()


def _send_udp(pod: str, destination: str, count: int) -> None:
    with socket_in_netns(pod, socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        for _ in range(count):
            sock.sendto(b"nat64", (destination, 9))


class TestInterfacePrefix:
    """Only traffic from interfaces with Felix's workload prefix is steered."""

    @pytest.mark.parametrize("prefixes", [("eni",), ("cali",), ("cali", "eni")])
    def test_only_the_configured_prefixes_are_steered(self, node: NamespaceExecutor,
                                                      prefixes: tuple[str, ...]) -> None:
        d = desired_state("64:ff9b::/96", interface_prefixes=prefixes)
        node.call(lambda: NftTable().apply(render(d)))
        pods = {"eni": _pod_behind(node, f"eni{secrets.token_hex(4)}", "fd00:10:244::a"),
                "cali": _pod_behind(node, f"cali{secrets.token_hex(4)}", "fd00:10:244::b")}
        try:
            sent = {"eni": 3, "cali": 5}
            expected = 0
            for kind, pod in pods.items():
                _send_udp(pod, "64:ff9b::c000:201", sent[kind])
                expected += sent[kind] if kind in prefixes else 0
                deadline = time.monotonic() + 5
                while node.call(lambda: Nft().counters())["steered"][0] < expected \
                        and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert node.call(lambda: Nft().counters())["steered"][0] == expected, (kind, prefixes)
        finally:
            for pod in pods.values():
                pr_netns.remove(pod)


class TestNodeRouting:
    def test_rule_and_routes_converge_and_sweep(self, node: NamespaceExecutor) -> None:
        d = desired_state("64:ff9b::/96")
        (t,) = d.translators

        def setup() -> None:
            with IPRoute() as ipr:
                ipr.link("add", ifname=t.node_link, kind="veth", peer="fn64-peer")
                ipr.link("set", index=ipr.link_lookup(ifname="fn64-peer")[0], state="up")
                idx = ipr.link_lookup(ifname=t.node_link)[0]
                ipr.link("set", index=idx, state="up")
                ipr.addr("add", index=idx, address=str(t.link_node_addr.ip), prefixlen=30)
                ipr.addr("add", index=idx, address="fe80::1", prefixlen=64)
                # a foreign route and rule that must survive
                ipr.route("add", dst="198.18.0.0", dst_len=15, oif=idx)
                ipr.rule("add", family=socket.AF_INET6, table=100, priority=200)

        node.call(setup)
        rule = RuleSpec(d.firewall_mark, d.routing_table, d.rule_priority)
        routes = node_routes(d)
        # the rule, the two routes and the two unreachable catch-alls
        assert node.call(lambda: NodeRouting().apply(rule, routes)) == 5
        assert node.call(lambda: NodeRouting().apply(rule, routes)) == 0

        def dump() -> tuple[list[str], list[int]]:
            with IPRoute() as ipr:
                ours = [f"{r.get('dst') or 'default'}/{r['dst_len']} type {r['type']}"
                        for fam in (socket.AF_INET, socket.AF_INET6)
                        for tbl in (254, d.routing_table) for r in ipr.route("dump", family=fam, table=tbl)
                        if is_our_route(r["proto"])]
                prios = [r.get("priority") for r in ipr.rule("dump", family=socket.AF_INET6)]
                return ours, prios

        ours, prios = node.call(dump)
        assert sorted(ours) == ["169.254.64.0/24 type 7", "169.254.64.8/29 type 1", "64:ff9b::/96 type 1",
                                "default/0 type 7"]
        assert 96 in prios and 200 in prios

        # without pruning, what is no longer wanted stays (removal comes after
        # the nftables table stops steering to it)
        fewer = tuple(r for r in routes if str(r.dst) != "64:ff9b::/96")
        assert node.call(lambda: NodeRouting().apply(rule, fewer, prune=False)) == 0
        assert len(node.call(dump)[0]) == 4
        assert node.call(lambda: NodeRouting().apply(rule, fewer)) == 1
        assert node.call(lambda: NodeRouting().apply(rule, routes)) == 1

        # a route deleted from outside comes back
        def delete_route() -> None:
            with IPRoute() as ipr:
                ipr.route("del", family=socket.AF_INET6, dst="64:ff9b::", dst_len=96, table=d.routing_table)

        node.call(delete_route)
        assert node.call(lambda: NodeRouting().apply(rule, routes)) == 1
        # off: ours go, the foreign ones stay
        assert node.call(lambda: NodeRouting().apply(None, ())) == 5
        ours, prios = node.call(dump)
        assert ours == [] and 96 not in prios and 200 in prios

        def foreign_route_left() -> bool:
            with IPRoute() as ipr:
                return any(r.get("dst") == "198.18.0.0" for r in ipr.route("dump", family=socket.AF_INET))

        assert node.call(foreign_route_left)


class TestTranslatorLinks:
    def test_ensure_is_idempotent_and_repairs(self, node: NamespaceExecutor) -> None:
        d = desired_state("64:ff9b::/96")
        (t,) = d.translators
        assert node.call(lambda: TranslatorLinks().ensure(t, 1450)) > 0
        assert namespace_exists(t.namespace)
        assert node.call(lambda: TranslatorLinks().ensure(t, 1450)) == 0

        def inspect() -> dict[str, object]:
            with IPRoute() as ipr, IPRoute(netns=t.namespace) as inner:
                link = ipr.link("get", index=ipr.link_lookup(ifname=t.node_link)[0])[0]
                peer = inner.link("get", index=inner.link_lookup(ifname="fn64-node")[0])[0]
                addrs = sorted(f"{a.get('address')}/{a['prefixlen']}" for a in
                               inner.addr("dump", index=peer["index"]))
                routes = sorted(f"{r.get('dst') or 'default'}/{r['dst_len']} via {r.get('gateway')}"
                                for fam in (socket.AF_INET, socket.AF_INET6)
                                for r in inner.route("dump", family=fam, table=254) if r.get("gateway"))
                return {"mtu": link.get("mtu"), "peer_mtu": peer.get("mtu"), "alias": link.get("ifalias"),
                        "addrs": addrs, "routes": routes}

        info = node.call(inspect)
        assert info["mtu"] == 1450 and info["peer_mtu"] == 1450
        assert info["alias"] == "felix-nat64 parent=64:ff9b::/96"
        assert "169.254.64.2/30" in info["addrs"] and "fe80::2/64" in info["addrs"]  # type: ignore[operator]
        assert info["routes"] == ["default/0 via 169.254.64.1", "default/0 via fe80::1"]

        ethtool = subprocess.run(["ip", "netns", "exec", t.namespace, "ethtool", "-k", "fn64-node"],
                                 capture_output=True, text=True, check=True).stdout
        assert "generic-receive-offload: off" in ethtool

        # Receive offloads turned on behind our back, on either half, are turned off again.
        halves = ((node.name, t.node_link), (t.namespace, "fn64-node"))
        for ns, dev in halves:
            subprocess.run(["ip", "netns", "exec", ns, "ethtool", "-K", dev, "gro", "on",
                            "rx-gro-list", "on"], capture_output=True, check=True)
        assert node.call(lambda: TranslatorLinks().ensure(t, 1450)) == 2
        for ns, dev in halves:
            shown = subprocess.run(["ip", "netns", "exec", ns, "ethtool", "-k", dev],
                                   capture_output=True, text=True, check=True).stdout
            assert "generic-receive-offload: off" in shown and "rx-gro-list: off" in shown

        found = node.call(discover)
        assert [(f.parent, f.block) for f in found] == [(t.parent, t.block)]

        # MTU change and a deleted inner link are both converged
        def break_it() -> None:
            with IPRoute(netns=t.namespace) as inner:
                inner.link("del", index=inner.link_lookup(ifname="fn64-node")[0])

        node.call(break_it)
        assert node.call(lambda: TranslatorLinks().ensure(t, 1400)) > 0
        assert node.call(inspect)["mtu"] == 1400
        assert node.call(lambda: TranslatorLinks().ensure(t, 1400)) == 0

        # removal leaves nothing behind
        (f,) = node.call(discover)
        assert node.call(lambda: TranslatorLinks().remove(f)) == 2
        assert not namespace_exists(t.namespace)
        assert node.call(discover) == []
        assert node.call(lambda: TranslatorLinks().remove(f)) == 0

    def test_a_namespace_file_left_by_an_interrupted_creation_is_replaced(
            self, node: NamespaceExecutor) -> None:
        # A creator killed between creating /run/netns/NAME and bind-mounting
        # a namespace on it leaves an empty file that is no namespace.
        d = desired_state("64:ff9b::/96")
        (t,) = d.translators
        path = f"/run/netns/{t.namespace}"
        with open(path, "x"):
            pass
        assert not namespace_exists(t.namespace)
        (f,) = [f for f in node.call(discover) if f.tid == t.tid]
        assert f.namespace == t.namespace
        assert node.call(lambda: TranslatorLinks().ensure(t, 1450)) > 0
        assert namespace_exists(t.namespace)
        assert node.call(lambda: TranslatorLinks().ensure(t, 1450)) == 0
        (f,) = node.call(discover)
        node.call(lambda: TranslatorLinks().remove(f))
        with open(path, "x"):
            pass
        (f,) = node.call(discover)
        assert node.call(lambda: TranslatorLinks().remove(f)) == 1
        assert not os.path.lexists(path)
