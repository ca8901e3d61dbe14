"""Pods by name: Felix's workload endpoints folded into a bounded map, the
session census that counts sessions per namespace, and what metrics, status
and sessions make of them (no kernel; the VM tests use real sessions)."""

from __future__ import annotations

import ipaddress
import json
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from felix_nat64.cli import sessions as sessions_cli
from felix_nat64.cli import status as status_cli
from felix_nat64.cli.driver import Driver
from felix_nat64.dataplane.fold import fold_stream
from felix_nat64.dataplane.managers import EndpointManager, FelixView
from felix_nat64.drivers.jool.codec import attr_map
from felix_nat64.drivers.jool.constants import HeaderFlag, Op, RootAttr
from felix_nat64.model.protocol import Protocol
from felix_nat64.model.workloads import MAX_NETS_PER_ENDPOINT, Workload, WorkloadEndpoint, WorkloadIndex
from felix_nat64.observe.census import (
    MAX_DUTY,
    OTHER,
    TOP_NAMESPACES,
    UNKNOWN,
    Census,
    CensusTaker,
    TranslatorCensus,
    rank_namespaces,
)
from felix_nat64.observe.metrics import ApplyTimes, NAT64Collector, registry_for
from felix_nat64.observe.sampler import count_translator
from felix_nat64.observe.status import StatusBoard, workloads_file, write_status_file
from felix_nat64.testing.streams import StreamBuilder
from felix_nat64.wire import messages as m
from tests.fakes import RecordingDataplane
from tests.unit.test_jool_codec import client_with, reply_bytes, session_entry_tlv

A6 = ipaddress.IPv6Address
N6 = ipaddress.IPv6Network


def folded(*builders: StreamBuilder) -> FelixView:
    """The view a driver has once it has read the builders' streams, one after the other."""
    return fold_stream([b.data() for b in builders], "node-1").view


def names(view: FelixView, *addresses: str) -> list[str | None]:
    index = view.endpoints.index()
    return [str(w) if (w := index.lookup(A6(a))) else None for a in addresses]


class TestEndpointStream:
    def test_endpoints_added_changed_and_removed(self) -> None:
        b = StreamBuilder("master")
        b.workload("shop", "web-1", "fd00:10:244::5/128", "cali1")
        b.workload("kube-system", "coredns-x", ["fd00:10:244::6/128", "fd00:20::6/128"], "cali2")
        view = folded(b)
        assert names(view, "fd00:10:244::5", "fd00:10:244::6", "fd00:20::6", "fd00:10:244::99") == [
            "shop/web-1", "kube-system/coredns-x", "kube-system/coredns-x", None]
        later = StreamBuilder("master")
        later.workload("shop", "web-1", "fd00:10:244::8/128", "cali1")  # the pod's address changed
        later.remove_workload("kube-system", "coredns-x")
        view = folded(b, later)
        assert names(view, "fd00:10:244::5", "fd00:10:244::8", "fd00:10:244::6", "fd00:20::6") == [
            None, "shop/web-1", None, None]
        assert len(view.endpoints.endpoints) == 1

    def test_endpoints_never_call_for_a_recalculation(self) -> None:
        view = FelixView("node-1")
        ident = m.EndpointId("k8s", "shop/web-1", "eth0")
        assert view.on_message(m.EndpointUpdate(ident, ("fd00::5/128",))) is False
        assert view.on_message(m.EndpointRemove(ident)) is False

    def test_a_wider_network_is_searched(self) -> None:
        index = WorkloadIndex.build([WorkloadEndpoint(Workload("vm", "big"), "eth0", (N6("fd00:99::/120"),))])
        assert index.lookup(A6("fd00:99::42")) == Workload("vm", "big")
        assert index.lookup(A6("fd00:99::1:0")) is None

    def test_networks_that_are_not_ipv6_are_left_out_not_fatal(self) -> None:
        nets = ["fd00::1/128", "10.0.0.1/32", "junk"]
        view = folded(StreamBuilder("master").workload("ns", "p", nets, "c"))
        (kept,) = view.endpoints.endpoints.values()
        assert kept.ipv6 == (N6("fd00::1/128"),)

    def test_only_so_many_networks_per_endpoint(self) -> None:
        nets = [f"fd00::{i:x}/128" for i in range(1, MAX_NETS_PER_ENDPOINT + 3)]
        view = folded(StreamBuilder("master").workload("ns", "p", nets, "cali1"))
        (kept,) = view.endpoints.endpoints.values()
        assert len(kept.ipv6) == MAX_NETS_PER_ENDPOINT


class TestBound:
    def update(self, manager: EndpointManager, pod: str, address: str) -> None:
        manager.on_update(m.EndpointUpdate(m.EndpointId("k8s", f"ns/{pod}", "eth0"), (address,)))

    def test_past_the_bound_new_endpoints_are_counted_not_kept(self) -> None:
        manager = EndpointManager(limit=2)
        self.update(manager, "a", "fd00::1/128")
        self.update(manager, "b", "fd00::2/128")
        self.update(manager, "c", "fd00::3/128")
        self.update(manager, "c", "fd00::3/128")  # Felix sends it again: still one endpoint
        assert sorted(w.workload.name for w in manager.endpoints.values()) == ["a", "b"]
        assert manager.dropped == 1 and manager.index().dropped == 1
        self.update(manager, "a", "fd00::9/128")  # known endpoints keep being updated
        assert manager.index().lookup(A6("fd00::9")) == Workload("ns", "a")
        manager.on_remove(m.EndpointRemove(m.EndpointId("k8s", "ns/b", "eth0")))
        manager.on_remove(m.EndpointRemove(m.EndpointId("k8s", "ns/c", "eth0")))
        assert manager.dropped == 0
        self.update(manager, "d", "fd00::4/128")  # a remove made room
        assert manager.index().lookup(A6("fd00::4")) == Workload("ns", "d")

    def test_version_moves_only_on_change(self) -> None:
        manager = EndpointManager()
        self.update(manager, "a", "fd00::1/128")
        version = manager.version
        self.update(manager, "a", "fd00::1/128")
        assert manager.version == version
        manager.on_remove(m.EndpointRemove(m.EndpointId("k8s", "ns/zz", "eth0")))
        assert manager.version == version


@pytest.mark.parametrize(("workload_id", "expected"), [
    ("default/web-7d9f8", Workload("default", "web-7d9f8")),
    ("ns/a/b", Workload("ns", "a/b")),
    ("openstack-vm-1", Workload("", "openstack-vm-1")),
])
def test_workload_ids(workload_id: str, expected: Workload) -> None:
    assert Workload.from_workload_id(workload_id) == expected


def test_index_survives_its_json() -> None:
    index = WorkloadIndex.build([WorkloadEndpoint(Workload("a", "p"), "eth0", (N6("fd00::1/128"),)),
                                 WorkloadEndpoint(Workload("b", "q"), "eth0", (N6("fd00:9::/120"),))], 3)
    again = WorkloadIndex.from_json(json.loads(json.dumps(index.to_json())))
    assert again == index and again.dropped == 3
    assert again.lookup(A6("fd00:9::7")) == Workload("b", "q")


# ---------------------------------------------------------------- the census


def session(sport: int, pod: str, pool4: tuple[str, int], dport: int = 443) -> bytes:
    return session_entry_tlv(0, (pod, sport), ("64:ff9b::c633:640a", dport), pool4,
                             ("198.51.100.10", dport), 0, 0, 1000)


def test_census_counts_by_protocol_bib_entry_and_namespace() -> None:
    # TCP: two pages; three sessions share one BIB entry (one pool4 address and
    # port, three destinations), two have their own; one pod is unknown.
    tcp1 = reply_bytes(Op.SESSION_FOREACH, session(1000, "fd00::1", ("169.254.64.9", 2000), 80)
                       + session(1000, "fd00::1", ("169.254.64.9", 2000), 443)
                       + session(1000, "fd00::1", ("169.254.64.9", 2000), 8080), flags=HeaderFlag.M)
    tcp2 = reply_bytes(Op.SESSION_FOREACH, session(1001, "fd00::2", ("169.254.64.9", 2001))
                       + session(7, "fd00::77", ("169.254.64.10", 2000)))
    udp = reply_bytes(Op.SESSION_FOREACH, session(53, "fd00::2", ("169.254.64.9", 3000), 53))
    icmp = reply_bytes(Op.SESSION_FOREACH, b"")
    client, transport = client_with(tcp1, tcp2, udp, icmp)
    index = WorkloadIndex.build([WorkloadEndpoint(Workload("shop", "web"), "eth0", (N6("fd00::1/128"),)),
                                 WorkloadEndpoint(Workload("dns", "resolver"), "eth0", (N6("fd00::2/128"),))])
    namespaces: Counter[str] = Counter()
    sessions, bib = count_translator(client, index, namespaces)
    assert sessions == {Protocol.TCP: 5, Protocol.UDP: 1, Protocol.ICMP: 0}
    assert bib == {Protocol.TCP: 3, Protocol.UDP: 1, Protocol.ICMP: 0}
    assert namespaces == {"shop": 3, "dns": 2, UNKNOWN: 1}
    # The walk resumed after the first page's last session, protocol repeated.
    follow = attr_map(transport.sent[1].attrs)
    assert follow[RootAttr.PROTO].u8() == 0 and RootAttr.OFFSET in follow


def test_namespace_series_are_bounded() -> None:
    counts = {f"ns-{i:02d}": 100 - i for i in range(50)} | {UNKNOWN: 7, "": 5}
    ranked = rank_namespaces(counts)
    assert len(ranked) == TOP_NAMESPACES + 2
    assert ranked[0] == ("ns-00", 100) and ranked[TOP_NAMESPACES - 1] == ("ns-19", 81)
    assert ranked[-2] == (OTHER, sum(100 - i for i in range(20, 50)) + 5)
    assert ranked[-1] == (UNKNOWN, 7)
    assert rank_namespaces({"a": 1}) == (("a", 1),)


def test_census_waits_in_proportion_to_what_the_last_one_took() -> None:
    taker = CensusTaker(lambda w: Census(0, 0), WorkloadIndex, resync_interval=30)
    assert taker.next_wait(None) == 30  # the first one after one resync interval
    assert taker.next_wait(Census(0, duration=2.0)) == 300  # ten resync intervals...
    assert taker.next_wait(Census(0, duration=40.0)) == pytest.approx(40 / MAX_DUTY)  # ...or 20x its length


def test_a_failed_census_is_recorded_and_the_thread_goes_on() -> None:
    def take(_: WorkloadIndex) -> Census:
        raise OSError("netlink went away")

    seen: list[Census] = []
    taker = CensusTaker(take, WorkloadIndex, resync_interval=30, on_census=seen.append)
    census = taker.census_now()
    assert census.error == "netlink went away" and taker.latest is census and seen == [census]


CENSUS = Census(
    at=50.0, duration=1.5,
    translators=(TranslatorCensus("felix-nat64-aaaa", "64:ff9b::/96", {Protocol.TCP: 5, Protocol.UDP: 1},
                                  {Protocol.TCP: 3, Protocol.UDP: 1}),),
    namespaces=(("shop", 3), ("dns", 2), (UNKNOWN, 1)))


def test_census_and_endpoints_in_metrics_and_status(tmp_path: Path) -> None:
    board = StatusBoard()
    board.update(census=CENSUS, endpoints=2, endpoints_dropped=1)
    text = generate_latest(registry_for(NAT64Collector(board, lambda: None, ApplyTimes(), "n"))).decode()
    assert 'calico_nat64_census_namespace_sessions{namespace="shop"} 3.0' in text
    assert 'calico_nat64_census_namespace_sessions{namespace="_unknown"} 1.0' in text
    labels = 'prefix="64:ff9b::/96",protocol="tcp",translator="felix-nat64-aaaa"'
    assert f"calico_nat64_census_sessions{{{labels}}} 5.0" in text
    assert f"calico_nat64_census_bib_entries{{{labels}}} 3.0" in text
    assert 'calico_nat64_census_sessions{prefix="64:ff9b::/96",protocol="icmp",' \
           'translator="felix-nat64-aaaa"} 0.0' in text
    assert "calico_nat64_census_duration_seconds 1.5" in text
    assert "calico_nat64_felix_workload_endpoints 2.0" in text
    assert "calico_nat64_felix_workload_endpoints_dropped 1.0" in text
    path = str(tmp_path / "status.json")
    write_status_file(path, board.snapshot())
    data = json.loads(Path(path).read_text())
    assert data["census"]["namespaces"][0] == {"namespace": "shop", "sessions": 3}
    assert data["census"]["translators"][0]["bib_entries"] == {"tcp": 3, "udp": 1}
    driver, _ = status_cli.read_driver(path)
    assert driver is not None and driver.census is not None
    text = status_cli.render_text(status_cli.StatusReport(driver, "", None, None, ""))
    assert "pods: 2 workload endpoints known by name, 1 more not kept (limit reached)" in text
    assert "tcp 5, udp 1, icmp 0; by namespace: shop 3, dns 2, _unknown 1" in text


def test_the_driver_publishes_pods_for_the_sessions_command(tmp_path: Path) -> None:
    status_file = str(tmp_path / "status.json")
    driver = Driver(RecordingDataplane(), status_file)  # type: ignore[arg-type]
    b = StreamBuilder("master").env_config(NAT64Prefixes="64:ff9b::/96", NAT64MetricsPort="0")
    b.workload("shop", "web-1", "fd00:10:244::5/128", "cali1")
    b.workload("shop", "web-2", "fd00:10:244::6/128", "cali2")
    b.remove_workload("shop", "web-2")
    b.in_sync()
    driver.run_stream(iter([b.data()]), "test-reader")
    index, note = sessions_cli.read_workloads(workloads_file(status_file))
    assert note == "" and index.lookup(A6("fd00:10:244::5")) == Workload("shop", "web-1")
    assert index.lookup(A6("fd00:10:244::6")) is None
    assert driver.status.status.endpoints == 1
    missing, note = sessions_cli.read_workloads(str(tmp_path / "nothing.json"))
    assert missing == WorkloadIndex() and "no workloads file" in note
