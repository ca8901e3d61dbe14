"""The simulated Calico node and the traffic tools, on this machine's kernel.

Everything runs in throwaway namespaces; the node itself is one too, except in
the test that runs the "node is the current namespace" mode (the VM's) inside a
namespace of its own.
"""

from __future__ import annotations

import ipaddress
import os
import re
import time

import pytest
from pyroute2 import IPRoute, netns

from felix_nat64.drivers.netns.namespaces import list_namespaces
from testbed import topology as t
from testbed.netns_exec import (
    read_sysctls,
    run_command_in_netns,
    run_in_netns,
)
from testbed.topology import Topology, build_topology, cleanup_stale, stale_namespaces
from testbed.traffic import (
    HeldConnection,
    ServerProcess,
    connection_burst,
    ping,
    start_server,
    start_tcp_server,
    tcp_request,
    udp_exchange,
)
from tests.host.conftest import require_root

pytestmark = pytest.mark.host

MiB = 1 << 20


def link_names(ns: str | None) -> set[str]:
    with IPRoute(netns=ns, flags=0) if ns else IPRoute() as ipr:
        return {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}


def our_namespaces(prefix: str) -> list[str]:
    return [n for n in list_namespaces() if n.startswith(prefix)]


# --- plain routing through the node ----------------------------------------------------


def test_every_pod_reaches_the_ipv6_server_through_the_node(
    topo: Topology, inet4_server: ServerProcess
) -> None:
    for pod in topo.pods:
        tcp = tcp_request(pod.netns, t.SERVER_IPV6, response_bytes=200_000)
        assert tcp.ok, tcp.error
        assert tcp.bytes_received == 200_000
        assert tcp.seen_source == pod.address

        udp = udp_exchange(pod.netns, t.SERVER_IPV6, count=3, payload_size=1000)
        assert udp.ok, udp.error
        assert udp.seen_source == pod.address

        echo = ping(pod.netns, t.SERVER_IPV6)
        assert echo.ok, echo.errors
        # ...and the node itself, through the cali link's link-local gateway.
        assert ping(pod.netns, t.NODE_UPLINK_IPV6, count=1).ok


def test_pods_are_attached_the_way_calico_attaches_them(topo: Topology) -> None:
    node = topo.node_netns
    with IPRoute(netns=node, flags=0) as ipr:
        for pod in topo.pods:
            assert re.fullmatch(r"cali[0-9a-f]{11}", pod.node_ifname)
            (link,) = ipr.get_links(ifname=pod.node_ifname)
            assert link.get_attr("IFLA_ADDRESS") == t.CALI_MAC
            lladdrs = {
                ipaddress.ip_address(a.get_attr("IFA_ADDRESS"))
                for a in ipr.get_addr(family=10, index=link["index"])
            }
            assert lladdrs == {t.NODE_CALI_LINK_LOCAL}
            (route,) = ipr.route("get", dst=str(pod.address))
            assert route.get_attr("RTA_OIF") == link["index"]
            assert route.get_attr("RTA_GATEWAY") is None
    for pod in topo.pods:
        with IPRoute(netns=pod.netns, flags=0) as ipr:
            (route,) = ipr.route("get", dst=str(t.SERVER_IPV6))
            assert ipaddress.ip_address(route.get_attr("RTA_GATEWAY")) == t.NODE_CALI_LINK_LOCAL
            assert not ipr.get_addr(family=2, label=pod.ifname)  # IPv6-only
        assert pod.address in t.POD_POOL
        assert pod.address == t.FIRST_POD_ADDRESS + pod.index
    cali = topo.pod().node_ifname
    values = read_sysctls(
        node,
        [
            "net/ipv4/ip_forward",
            "net/ipv6/conf/all/forwarding",
            "net/ipv6/conf/all/accept_ra",
            f"net/ipv6/conf/{cali}/proxy_ndp",
            f"net/ipv6/conf/{cali}/forwarding",
            f"net/ipv6/conf/{cali}/accept_ra",
        ],
    )
    assert list(values.values()) == ["1", "1", "0", "1", "1", "0"]


def test_outsider_reaches_the_node_and_the_ipv6_server(topo: Topology, inet4_server: ServerProcess) -> None:
    assert ping(topo.outsider_netns, t.NODE_OUTSIDER_IPV6, count=1).ok
    tcp = tcp_request(topo.outsider_netns, t.SERVER_IPV6)
    assert tcp.ok, tcp.error
    assert tcp.seen_source == t.OUTSIDER_IPV6
    udp = udp_exchange(topo.outsider_netns, t.SERVER_IPV6)
    assert udp.ok, udp.error
    assert udp.seen_source == t.OUTSIDER_IPV6
    assert ping(topo.outsider_netns, t.SERVER_IPV6).ok


def test_node_reaches_every_ipv4_server_from_its_own_address(
    topo: Topology, inet4_server: ServerProcess
) -> None:
    for server in t.INET4_SERVER_IPV4:
        tcp = tcp_request(topo.node_netns, server)
        assert tcp.ok, (server, tcp.error)
        assert tcp.seen_source == t.NODE_IPV4
        udp = udp_exchange(topo.node_netns, server)
        assert udp.ok, (server, udp.error)
        assert udp.seen_source == t.NODE_IPV4
        assert ping(topo.node_netns, server, count=1).ok


def test_masquerade_makes_a_node_internal_ipv4_source_reach_the_server(
    topo: Topology, inet4_server: ServerProcess
) -> None:
    stub = topo.add_stub("v4src", ["10.200.0.2/30"], ["10.200.0.1/30"])
    assert stub.ipv4 == ipaddress.IPv4Address("10.200.0.2")
    # inet4 has no route back to a private source: without masquerade nothing comes back.
    before = tcp_request(stub.netns, t.SERVER_DOC_IPV4, timeout=1.0)
    assert not before.ok
    assert before.error == "timeout"

    run_command_in_netns(
        topo.node_netns,
        ["nft", "-f", "-"],
        input_text=(
            "table ip fn64h_masq {\n"
            "  chain postrouting {\n"
            "    type nat hook postrouting priority srcnat; policy accept;\n"
            f'    oifname "{t.NODE_UPLINK_IFNAME}" ip saddr 10.200.0.0/30 masquerade\n'
            "  }\n"
            "}\n"
        ),
    )
    try:
        tcp = tcp_request(stub.netns, t.SERVER_DOC_IPV4, response_bytes=100_000)
        assert tcp.ok, tcp.error
        assert tcp.local_address == stub.ipv4
        assert tcp.seen_source == t.NODE_IPV4
        udp = udp_exchange(stub.netns, t.SERVER_DOC_IPV4)
        assert udp.ok, udp.error
        assert udp.seen_source == t.NODE_IPV4
    finally:
        run_command_in_netns(topo.node_netns, ["nft", "delete", "table", "ip", "fn64h_masq"])


# --- the MTU-1400 hop ----------------------------------------------------------------------


def test_far_hop_needs_and_gets_path_mtu_discovery(topo: Topology, far_server: ServerProcess) -> None:
    node = topo.node_netns
    assert t.cached_path_mtu(node, t.FAR_SERVER_IPV4) is None

    upload = tcp_request(node, t.FAR_SERVER_IPV4, upload_bytes=MiB, timeout=20.0)
    assert upload.ok, upload.error
    assert upload.seen_source == t.NODE_IPV4
    # Only a "fragmentation needed" from inet4 can have taught the node this.
    assert t.cached_path_mtu(node, t.FAR_SERVER_IPV4) == t.FAR_LINK_MTU
    download = tcp_request(node, t.FAR_SERVER_IPV4, response_bytes=MiB, timeout=20.0)
    assert download.ok, download.error

    # The same over IPv6 from a pod: "packet too big" reaches it through the node.
    pod = topo.pod()
    upload6 = tcp_request(pod.netns, t.FAR_SERVER_IPV6, upload_bytes=MiB, timeout=20.0)
    assert upload6.ok, upload6.error
    assert t.cached_path_mtu(pod.netns, t.FAR_SERVER_IPV6) == t.FAR_LINK_MTU

    # A raw ICMPv6 echo sees the error itself; once the PMTU is known the echo fits.
    big = ping(topo.outsider_netns, t.FAR_SERVER_IPV6, count=1, payload_size=1452)
    assert not big.ok
    assert big.reported_mtu == t.FAR_LINK_MTU, big.errors
    assert ping(topo.outsider_netns, t.FAR_SERVER_IPV6, count=1, payload_size=1452).ok


# --- long-lived and many connections ---------------------------------------------------------


def test_held_connection_exchanges_until_stopped(topo: Topology, inet4_server: ServerProcess) -> None:
    pod = topo.pod(1)
    held = HeldConnection(pod.netns, t.SERVER_IPV6, interval=0.02).start()
    time.sleep(0.6)
    report = held.stop()
    assert report.ok, report.failures
    assert report.exchanges >= 10
    assert report.seen_source == pod.address


def test_held_connection_reports_a_broken_connection(topo: Topology) -> None:
    with start_tcp_server(topo.inet4_netns, [t.SERVER_IPV6], port=8090) as server:
        held = HeldConnection(topo.pod().netns, t.SERVER_IPV6, 8090, interval=0.02, reply_timeout=1.0).start()
        time.sleep(0.2)
        server.stop()
        time.sleep(0.3)
        report = held.stop()
    assert report.connected
    assert report.exchanges > 0
    assert not report.ok
    assert len(report.failures) == 1


def test_connection_burst_completes_thousands_of_flows(topo: Topology, inet4_server: ServerProcess) -> None:
    pod = topo.pod()
    result = connection_burst(pod.netns, t.SERVER_IPV6, flows=2000, concurrency=100, response_bytes=100)
    assert result.succeeded == 2000, result.errors
    assert result.failed == result.not_started == 0
    assert result.seen_sources == {pod.address}
    assert 1 < result.max_concurrent <= 100


def test_connection_burst_stops_at_its_time_limit(topo: Topology, inet4_server: ServerProcess) -> None:
    started = time.monotonic()
    result = connection_burst(topo.node_netns, t.SERVER_DOC_IPV4, flows=10**6, concurrency=20, time_limit=0.5)
    assert time.monotonic() - started < 5.0
    assert result.not_started > 0
    assert result.succeeded + result.failed + result.not_started == 10**6
    assert result.failed == 0, result.errors


# --- building and tearing down ---------------------------------------------------------------------


def test_two_topologies_coexist_and_teardown_leaves_nothing(root: None) -> None:
    host_links = link_names(None)
    for prefix in ("fn64h-a-", "fn64h-b-"):
        cleanup_stale(prefix)
    a = build_topology("fn64h-a-")
    try:
        b = build_topology("fn64h-b-", pods=3)
        try:
            assert set(a.namespaces()).isdisjoint(b.namespaces())
            # A shorter prefix's sweep must not touch the longer prefixes' namespaces.
            assert not set(stale_namespaces("fn64h-")) & set(a.namespaces() + b.namespaces())
            for topo in (a, b):
                for pod in topo.pods:
                    assert ping(pod.netns, t.SERVER_IPV6, count=1).ok
            a.teardown()
            assert our_namespaces("fn64h-a-") == []
            assert ping(b.pod(2).netns, t.SERVER_IPV6, count=1).ok
        finally:
            b.teardown()
        b.teardown()  # idempotent
    finally:
        a.teardown()
    assert our_namespaces("fn64h-a-") == our_namespaces("fn64h-b-") == []
    assert link_names(None) == host_links


def test_cleanup_stale_removes_a_crashed_topology_and_its_processes(root: None) -> None:
    prefix = "fn64h-c-"
    cleanup_stale(prefix)
    topo = build_topology(prefix, far=True)
    server = start_server(topo.inet4_netns, [t.SERVER_IPV6])
    try:
        # The process that built it is gone: only the prefix is known.
        removed = cleanup_stale(prefix)
        assert sorted(removed) == sorted(topo.namespaces())
        assert our_namespaces(prefix) == []
        server.process.wait(5.0)
        assert not server.alive()
        assert cleanup_stale(prefix) == []
    finally:
        server.stop()


def test_building_over_a_leftover_refuses_clearly(root: None) -> None:
    prefix = "fn64h-d-"
    cleanup_stale(prefix)
    with t.topology(prefix), pytest.raises(t.TopologyError, match="already exist"):
        build_topology(prefix)
    assert our_namespaces(prefix) == []


def test_node_as_the_current_namespace_as_in_the_vm(root: None) -> None:
    """The VM mode, run in a thread inside a namespace that stands in for the VM's own."""
    holder = "fn64h-vmnode"
    prefix = "fn64h-v-"
    cleanup_stale(prefix)
    if holder in netns.listnetns():
        netns.remove(holder)
    netns.create(holder)
    host_links = link_names(None)
    keys = ["net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding", "net/ipv6/conf/default/accept_ra"]

    def scenario() -> None:
        before = read_sysctls(None, keys)
        topo = build_topology(prefix, node_in_current_netns=True, pods=2)
        try:
            assert topo.node_netns is None
            assert set(topo.node_links()) <= link_names(None)
            assert read_sysctls(None, keys) == dict(zip(keys, ["1", "1", "0"], strict=True))
            with start_server(topo.inet4_netns, [t.SERVER_IPV6, t.SERVER_DOC_IPV4]):
                pod6 = tcp_request(topo.pod(1).netns, t.SERVER_IPV6)
                assert pod6.ok, pod6.error
                assert pod6.seen_source == topo.pod(1).address
                node4 = tcp_request(None, t.SERVER_DOC_IPV4)
                assert node4.ok, node4.error
                assert node4.seen_source == t.NODE_IPV4
        finally:
            topo.teardown()
        assert link_names(None) == {"lo"}
        assert read_sysctls(None, keys) == before

    try:
        run_in_netns(holder, scenario, timeout=60.0)
    finally:
        netns.remove(holder)
    assert our_namespaces(prefix) == []
    assert link_names(None) == host_links


def test_fixture_requires_root_with_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(pytest.fail.Exception, match="need root"):
        require_root()
