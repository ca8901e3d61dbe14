"""The NAT64 data path end to end, through the real Jool module.

The driver is fed a Felix stream for a node whose pods are IPv6-only; pods
reach IPv4-only servers behind the node's uplink through the translator.
"""

from __future__ import annotations

import csv
import subprocess
import time
from collections.abc import Iterator

import pytest

from felix_nat64.dataplane.fold import desired_from
from felix_nat64.drivers.jool.instances import JoolInstances
from felix_nat64.drivers.kernel import KernelDataplane
from felix_nat64.drivers.nft.table import Nft
from testbed.traffic import HeldConnection, ping, tcp_request, udp_exchange
from tests.vm.dataplane_fixtures import (
    NSP,
    WKP,
    Node,
    RunningDriver,
    kernel_leftovers,
    nat64,
    node_stream,
    ready_driver,
    start_driver,
    stream_frames,
)

DOC = "198.51.100.10"
FAR = "198.51.100.20"
PRIVATE = "10.0.0.10"
GLOBAL = "192.0.0.10"


@pytest.fixture(scope="module")
def driver(node: Node) -> Iterator[RunningDriver]:
    with ready_driver(node_stream(), node.status_file) as d:
        yield d


def pod(node: Node, i: int = 0) -> str:
    return node.topo.pod(i).netns


class TestTranslation:
    def test_tcp_reaches_ipv4_server_with_node_source(self, node: Node, driver: RunningDriver) -> None:
        r = tcp_request(pod(node), nat64(NSP, DOC), timeout=20)
        assert r.ok, r.error
        assert str(r.seen_source) == "192.0.2.1"

    def test_udp(self, node: Node, driver: RunningDriver) -> None:
        r = udp_exchange(pod(node), nat64(NSP, DOC), count=3, reply_timeout=5)
        assert r.ok and r.received == 3, r.error
        assert str(r.seen_source) == "192.0.2.1"

    def test_icmpv6_echo(self, node: Node, driver: RunningDriver) -> None:
        r = ping(pod(node), nat64(NSP, DOC), count=3, reply_timeout=5)
        assert r.ok and r.received == 3, r.errors

    def test_well_known_prefix_reaches_a_global_address(self, node: Node, driver: RunningDriver) -> None:
        r = tcp_request(pod(node), nat64(WKP, GLOBAL), timeout=20)
        assert r.ok, r.error
        assert str(r.seen_source) == "192.0.2.1"

    def test_second_pod_shares_the_translator(self, node: Node, driver: RunningDriver) -> None:
        r = tcp_request(pod(node, 1), nat64(NSP, DOC), timeout=20)
        assert r.ok, r.error


@pytest.fixture
def no_icmp_ratelimit() -> Iterator[None]:
    # The kernel sends a burst of six ICMPv6 errors per destination, then one a
    # second: lift that so each case sees its own error.
    path = "/proc/sys/net/ipv6/icmp/ratelimit"
    with open(path) as handle:
        saved = handle.read().strip()
    with open(path, "w") as handle:
        handle.write("0")
    yield
    with open(path, "w") as handle:
        handle.write(saved)


@pytest.mark.usefixtures("no_icmp_ratelimit")
class TestRefusals:
    @pytest.mark.parametrize("prefix,ipv4", [
        (WKP, PRIVATE), (WKP, DOC), (NSP, "169.254.169.254"), (NSP, "127.0.0.1"), (NSP, "192.0.2.1"),
        (NSP, "192.0.2.2"), (NSP, "224.0.0.1"), (WKP, "255.255.255.255"),
    ])
    def test_refused_destination_gets_admin_prohibited(self, node: Node, driver: RunningDriver,
                                                       prefix: str, ipv4: str) -> None:
        before = Nft().counters()["refused"][0]
        r = ping(pod(node), nat64(prefix, ipv4), count=1, reply_timeout=3)
        assert not r.ok
        assert any("code 1" in e for e in r.errors), r.errors  # ICMPv6 1/1 administratively prohibited
        assert Nft().counters()["refused"][0] > before

    def test_outsider_gets_no_translation(self, node: Node, driver: RunningDriver) -> None:
        before = Nft().counters()["steered"][0]
        r = tcp_request(node.topo.outsider_netns, nat64(NSP, DOC), timeout=3)
        assert not r.ok
        assert Nft().counters()["steered"][0] == before

    def test_private_server_is_unreachable_through_the_well_known_prefix(
            self, node: Node, driver: RunningDriver) -> None:
        r = tcp_request(pod(node), nat64(WKP, PRIVATE), timeout=5)
        assert not r.ok


class TestConvergence:
    def test_applying_the_same_state_twice_changes_nothing(self, node: Node, driver: RunningDriver) -> None:
        dp = KernelDataplane(JoolInstances())
        desired = desired_from(node_stream(), dp.adopt())
        assert dp.apply(desired).changes == 0
        assert dp.apply(desired).changes == 0


class TestIcmpErrors:
    def test_port_unreachable_becomes_icmpv6_port_unreachable(self, node: Node,
                                                              driver: RunningDriver) -> None:
        r = udp_exchange(pod(node), nat64(NSP, DOC), port=9, reply_timeout=3)
        assert not r.ok
        assert r.error is not None and "refused" in r.error.lower(), r.error

    def test_fragmentation_needed_becomes_packet_too_big(self, node: Node, driver: RunningDriver) -> None:
        r = tcp_request(pod(node), nat64(NSP, FAR), upload_bytes=1_000_000, timeout=60)
        assert r.ok, r.error
        assert r.bytes_sent >= 1_000_000


@pytest.mark.usefixtures("exclusive")
class TestLifecycle:
    def test_driver_restart_keeps_an_established_connection(self, node: Node) -> None:
        first = start_driver(node_stream(), node.status_file)
        first.wait_ready()
        held = HeldConnection(pod(node), nat64(NSP, DOC), interval=0.2, reply_timeout=10).start()
        try:
            time.sleep(1)
            assert first.stop() == 0  # SIGTERM: no teardown
            second = start_driver(node_stream(), node.status_file)
            second.wait_ready()
            time.sleep(2)
            report = held.stop()
        finally:
            held.stop()
        assert report.ok, report.failures
        assert report.exchanges > 5
        # the new driver adopted what was there: nothing to change
        assert second.status()["last_apply"]["changes"] == 0
        second.stop()

    def test_eof_exits_cleanly_without_teardown(self, node: Node) -> None:
        d = start_driver(node_stream(), node.status_file)
        d.wait_ready()
        d.felix.end_stream()
        assert d.felix.wait(30) == 0
        assert "nftables table inet felix-nat64" in kernel_leftovers()

    def test_turning_nat64_off_and_cleanup_leave_nothing(self, node: Node) -> None:
        off = start_driver(node_stream(extra={"NAT64Enabled": "false"}), node.status_file)
        off.wait_ready()
        assert kernel_leftovers() == []
        off.stop()
        on = start_driver(node_stream(), node.status_file)
        on.wait_ready()
        on.stop()
        assert kernel_leftovers() != []
        done = subprocess.run(["felix-nat64", "cleanup", "--force"], capture_output=True, text=True,
                              check=False)
        assert done.returncode == 0, done.stderr
        assert kernel_leftovers() == []
        again = subprocess.run(["felix-nat64", "cleanup", "--force"], capture_output=True, text=True,
                               check=False)
        assert again.returncode == 0 and "0 kernel changes" in again.stdout, again.stdout
        assert kernel_leftovers() == []


@pytest.mark.usefixtures("exclusive")
class TestPrefixes:
    def test_104_prefix_translates_only_its_part(self, node: Node) -> None:
        # 2001:db8:64::c600:0/104 is 198.0.0.0/8: the documentation server is in it,
        # the private one is not (and is not steered: normal routing, no translator).
        d = start_driver(node_stream(prefixes="2001:db8:64::c600:0/104", pools=(NSP,)), node.status_file)
        try:
            d.wait_ready()
            assert tcp_request(pod(node), nat64(NSP, DOC), timeout=20).ok
            before = Nft().counters()["steered"][0]
            assert not tcp_request(pod(node), nat64(NSP, PRIVATE), timeout=3).ok
            assert Nft().counters()["steered"][0] == before
        finally:
            d.stop()


@pytest.mark.usefixtures("exclusive")
class TestSnat:
    def test_snat_address_and_port_range(self, node: Node) -> None:
        # The SNAT address must be the node's: add it to the uplink.
        subprocess.run(["ip", "addr", "add", "192.0.2.10/32", "dev", "eth-up"], check=True)
        d = start_driver(node_stream(extra={"NAT64SNATAddress": "192.0.2.10",
                                            "NAT64PortRange": "40000-40099"}), node.status_file)
        try:
            d.wait_ready()
            for _ in range(3):
                r = tcp_request(pod(node), nat64(NSP, DOC), timeout=20)
                assert r.ok, r.error
                assert str(r.seen_source) == "192.0.2.10"
                assert r.seen_port is not None and 40000 <= r.seen_port <= 40099
            u = udp_exchange(pod(node), nat64(NSP, DOC), reply_timeout=5)
            assert u.ok and str(u.seen_source) == "192.0.2.10"
            assert u.seen_port is not None and 40000 <= u.seen_port <= 40099
        finally:
            d.stop()
            subprocess.run(["ip", "addr", "del", "192.0.2.10/32", "dev", "eth-up"], check=False)


@pytest.mark.usefixtures("exclusive")
class TestPool4:
    def test_a_live_pool4_port_range_change_keeps_translating(self, node: Node) -> None:
        (t,) = [t for t in desired_from(node_stream(), {}).translators if str(t.parent) == NSP]

        def jool_pool4() -> set[tuple[str, str]]:
            rows: set[tuple[str, str]] = set()
            for proto in ("--tcp", "--udp"):
                argv = ["ip", "netns", "exec", t.namespace, "jool", "-i", "felix-nat64", "pool4", "display",
                        proto, "--csv", "--no-headers"]
                out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
                # Mark, protocol, address, first port, last port.
                rows |= {(r[2], f"{r[3]}-{r[4]}") for r in csv.reader(out.splitlines()) if r}
            return rows

        d = start_driver(node_stream(), node.status_file)
        try:
            d.wait_ready()
            assert tcp_request(pod(node), nat64(NSP, DOC), timeout=20).ok
            changed_at = time.time()
            d.felix.send(stream_frames(node_stream(extra={"NAT64Pool4PortRange": "65280-65535"}))[0])
            d.wait_ready(since=changed_at)
            # Every pool4 address keeps only the new ports (Jool lists them per address).
            assert {ports for _, ports in jool_pool4()} == {"65280-65535"}, jool_pool4()
            assert len(jool_pool4()) == t.pool4.num_addresses
            for _ in range(3):
                r = tcp_request(pod(node), nat64(NSP, DOC), timeout=20)
                assert r.ok, r.error
                assert udp_exchange(pod(node), nat64(NSP, DOC), reply_timeout=5).ok
            assert d.status()["last_apply"]["changes"] > 0
        finally:
            d.stop()
