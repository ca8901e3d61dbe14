"""Operations on a live node: metrics, health, status, sessions and logs.

Each view is checked against the kernel's own tools (the jool CLI) or
against traffic the test sends.
"""

from __future__ import annotations

import csv
import ipaddress
import json
import re
import subprocess
import time
from collections.abc import Iterator

import pytest

from felix_nat64.drivers.discovery import translators as discover
from felix_nat64.drivers.jool import JoolClient, JoolWorker, SessionEntry, module_version
from felix_nat64.drivers.jool.constants import Op
from felix_nat64.model.ownership import JOOL_INSTANCE
from felix_nat64.model.protocol import Protocol
from felix_nat64.observe import session_table
from testbed.traffic import tcp_request, udp_exchange, udp_flows
from tests.vm.dataplane_fixtures import (
    NSP,
    CountingTransport,
    Node,
    RunningDriver,
    metric,
    nat64,
    node_stream,
    ready_driver,
    scrape,
)

DOC = "198.51.100.10"


# The pods of the simulated node, as Felix names them to the driver.
PODS = (("shop", "web-0"), ("dns", "resolver-1"))


@pytest.fixture(scope="module")
def driver(node: Node) -> Iterator[RunningDriver]:
    workloads = [(ns, name, str(node.topo.pod(i).address)) for i, (ns, name) in enumerate(PODS)]
    stream = node_stream(extra={"NAT64MetricsPort": "9096", "NAT64LogFormat": "json"}, workloads=workloads)
    with ready_driver(stream, node.status_file) as d:
        yield d





def felix_nat64(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["felix-nat64", *args], capture_output=True, text=True, check=False, timeout=300)


def pod(node: Node) -> str:
    return node.topo.pod(0).netns


def test_health_endpoints(driver: RunningDriver) -> None:
    assert scrape("/liveness")[0] == 200
    code, body = scrape("/readiness")
    assert code == 200 and json.loads(body)["ready"]


def test_metrics_move_when_traffic_flows(node: Node, driver: RunningDriver) -> None:
    _, before = scrape()
    assert metric(before, "calico_nat64_ready") == 1
    assert metric(before, "calico_nat64_felix_in_sync") == 1
    for _ in range(3):
        assert tcp_request(pod(node), nat64(NSP, DOC), timeout=20).ok
    assert udp_exchange(pod(node), nat64(NSP, DOC), count=2, reply_timeout=5).ok
    # kernel figures are sampled on their own thread (every 5 s here)
    deadline = time.monotonic() + 60
    while True:
        _, after = scrape()
        steered = metric(after, "calico_nat64_nft_packets_total", rule="steered")
        sessions = metric(after, "calico_nat64_jool_sessions", prefix=NSP)
        if steered > metric(before, "calico_nat64_nft_packets_total", rule="steered") and sessions > 0:
            break
        assert time.monotonic() < deadline, "metrics did not move"
        time.sleep(1)
    assert metric(after, "calico_nat64_nft_packets_total", rule="snat") > 0
    assert metric(after, "calico_nat64_jool_bib_entries", prefix=NSP) >= 1
    assert metric(after, "calico_nat64_jool_stats_total", prefix=NSP, stat="JSTAT_SUCCESS") > 0
    assert 0 < metric(after, "calico_nat64_jool_pool4_utilisation_ratio", prefix=NSP, protocol="tcp") < 1
    assert metric(after, "calico_nat64_jool_instance_up") == 2
    assert metric(after, "calico_nat64_felix_messages_total", payload="ipam_pool_update") == 3
    assert metric(after, "calico_nat64_dataplane_apply_duration_seconds_count") >= 1


def test_status_json_and_human_on_a_live_dataplane(node: Node, driver: RunningDriver) -> None:
    done = felix_nat64("status", "--json", "--status-file", node.status_file)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["driver"]["ready"]
    assert data["driver"]["origins"]["NAT64Prefixes"]["source"] == "environment variable"
    translators = data["kernel"]["stats"]["translators"]
    assert {t["parent"] for t in translators} == {"64:ff9b::/96", NSP}
    assert all(t["instance"] for t in translators)
    assert "steered" in data["kernel"]["stats"]["nft"]
    human = felix_nat64("status", "--status-file", node.status_file)
    assert human.returncode == 0
    assert "READY" in human.stdout and "NAT64 ON" in human.stdout
    assert "felix-nat64-" in human.stdout and "environment variable" in human.stdout


def jool_sessions(namespace: str, proto: str) -> set[tuple[str, int, str, int, str, int]]:
    argv = ["ip", "netns", "exec", namespace, "jool", "-i", "felix-nat64", "session", "display",
            f"--{proto}", "--numeric", "--csv"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return {(r["IPv6 Remote Address"], int(r["IPv6 Remote L4-ID"]), r["IPv4 Remote Address"],
             int(r["IPv4 Remote L4-ID"]), r["IPv4 Local Address"], int(r["IPv4 Local L4-ID"]))
            for r in csv.DictReader(out.splitlines())}


def test_sessions_match_jools_own_display(node: Node, driver: RunningDriver) -> None:
    for _ in range(3):
        assert udp_exchange(pod(node), nat64(NSP, DOC), reply_timeout=5).ok
    assert tcp_request(pod(node), nat64(NSP, DOC), timeout=20).ok
    status = json.loads(felix_nat64("status", "--json", "--status-file", node.status_file).stdout)
    namespace = next(t["namespace"] for t in status["kernel"]["stats"]["translators"] if t["parent"] == NSP)
    for proto in ("udp", "tcp"):
        done = felix_nat64("sessions", "--json", "--prefix", NSP, "--proto", proto, "--limit", "10000")
        assert done.returncode == 0, done.stderr
        ours = {(r["pod"], r["pod_port"], r["destination"], r["dest_port"], r["pool4"], r["pool4_port"])
                for r in json.loads(done.stdout)["rows"]}
        assert ours and ours == jool_sessions(namespace, proto)


def test_sessions_filters_and_paging(node: Node, driver: RunningDriver) -> None:
    for _ in range(3):
        assert udp_exchange(pod(node), nat64(NSP, DOC), reply_timeout=5).ok
    everything = json.loads(felix_nat64("sessions", "--json", "--limit", "10000").stdout)
    assert everything["total"] >= 3
    mine = json.loads(felix_nat64("sessions", "--json", "--pod", str(node.topo.pod(0).address)).stdout)
    assert mine["total"] >= 3 and all(r["pod"] == str(node.topo.pod(0).address) for r in mine["rows"])
    nobody = json.loads(felix_nat64("sessions", "--json", "--pod", "fd00:99::1").stdout)
    assert nobody["total"] == 0
    page1 = json.loads(felix_nat64("sessions", "--json", "--limit", "1", "--page", "1").stdout)
    page2 = json.loads(felix_nat64("sessions", "--json", "--limit", "1", "--page", "2").stdout)
    after = json.loads(felix_nat64("sessions", "--json", "--limit", "10000").stdout)

    def flow(row: dict[str, object]) -> tuple[object, ...]:
        # sessions age between calls: compare what identifies the flow
        return tuple(v for k, v in sorted(row.items()) if k not in ("expires_ms", "state"))

    known = {flow(r) for r in everything["rows"] + after["rows"]}
    assert len(page1["rows"]) == 1 and len(page2["rows"]) == 1
    assert flow(page1["rows"][0]) != flow(page2["rows"][0])
    assert flow(page2["rows"][0]) in known
    text = felix_nat64("sessions", "--limit", "1").stdout
    assert "--page 2 for more" in text
    bib = json.loads(felix_nat64("sessions", "--bib", "--json", "--proto", "udp").stdout)
    assert bib["total"] >= 1 and all(r["proto"] == "udp" for r in bib["rows"])


def counting_clients(monkeypatch: pytest.MonkeyPatch) -> list[CountingTransport]:
    """Makes the session table open its Jool clients through counting transports."""
    transports: list[CountingTransport] = []

    def open_counted(netns: str | None = None) -> JoolClient:
        assert netns is not None
        transports.append(CountingTransport(JoolWorker(netns)))
        return JoolClient(transports[-1], module_version(), netns)

    monkeypatch.setattr(session_table.JoolClient, "open", open_counted)
    return transports


def test_a_page_of_sessions_reads_only_what_it_shows(node: Node, driver: RunningDriver,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    assert udp_flows(pod(node), nat64(NSP, DOC), count=300) == 300
    translators = [t for t in discover() if t.namespace]
    everything: list[tuple[object, ...]] = []
    for t in translators:
        assert t.namespace is not None
        with JoolClient.open(t.namespace) as jool:
            everything += [(s.proto, s.src6, s.dst4, s.src4) for s in jool.session_list(JOOL_INSTANCE)]
    assert len(everything) >= 300

    def flows(page: session_table.TablePage) -> list[tuple[object, ...]]:
        return [(r.entry.proto, r.entry.src6, r.entry.dst4, r.entry.src4) for r in page.rows
                if isinstance(r.entry, SessionEntry)]

    transports = counting_clients(monkeypatch)
    second = session_table.read_page(translators, session_table.TableQuery(limit=100, page=2))
    assert flows(second) == everything[100:200]
    assert second.more and second.total == len(everything)
    # Jool sends a few dozen sessions per reply: rows 1-201 take about 8
    # replies, the whole table at least 12.
    pages_read = sum(t.requests[Op.SESSION_FOREACH] for t in transports)
    assert pages_read <= 10 < len(everything) // 26

    last = session_table.read_page(translators, session_table.TableQuery(limit=100, page=100))
    assert last.rows == () and not last.more and last.total == len(everything)

    address = node.topo.pod(0).address
    mine = session_table.read_page(translators, session_table.TableQuery(
        pod=ipaddress.IPv6Network(address), proto=Protocol.UDP, limit=50, page=2))
    expected = [f for f in everything if f[0] == "udp" and f[1].address == address]  # type: ignore[attr-defined]
    assert flows(mine) == expected[50:100]
    assert mine.more and mine.total is None  # a filter: the total would need the rest of the table


def test_sessions_and_the_census_name_the_pods(node: Node, driver: RunningDriver) -> None:
    """Real sessions from two pods, named by the endpoints Felix sent: in
    `sessions` (table, JSON, --namespace) and, from the census, in the
    per-namespace metric and `status`."""
    web, resolver = (str(node.topo.pod(i).address) for i in range(2))
    assert udp_flows(pod(node), nat64(NSP, DOC), count=30) == 30
    assert udp_flows(node.topo.pod(1).netns, nat64(NSP, DOC), count=20) == 20
    named = ["--status-file", node.status_file]
    listed = felix_nat64("sessions", "--json", "--limit", "100000", *named)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)["rows"]
    by_pod = {(r["pod"], r["namespace"], r["pod_name"]) for r in rows}
    assert (web, "shop", "web-0") in by_pod and (resolver, "dns", "resolver-1") in by_pod
    assert all(r["namespace"] for r in rows if r["pod"] in (web, resolver))
    shop = felix_nat64("sessions", "--json", "--namespace", "shop", "--limit", "1000", *named)
    page = json.loads(shop.stdout)
    assert page["total"] >= 30 and not page["more"]  # a filter: exact once the walk reached the end
    assert {(r["pod"], r["pod_name"]) for r in page["rows"]} == {(web, "web-0")}
    text = felix_nat64("sessions", "--namespace", "dns", "--limit", "5", *named).stdout
    assert "dns/resolver-1" in text and "shop/web-0" not in text
    # The census runs every ten resync intervals (2 s here): wait for one that saw the flows.
    deadline = time.monotonic() + 120
    while True:
        _, body = scrape()
        if metric(body, "calico_nat64_census_namespace_sessions", namespace="shop") >= 30 and \
                metric(body, "calico_nat64_census_namespace_sessions", namespace="dns") >= 20:
            break
        assert time.monotonic() < deadline, "the census never counted the pods' sessions"
        time.sleep(2)
    assert metric(body, "calico_nat64_census_sessions", prefix=NSP, protocol="udp") >= 50
    assert metric(body, "calico_nat64_census_bib_entries", prefix=NSP, protocol="udp") >= 50
    assert metric(body, "calico_nat64_felix_workload_endpoints") == 2
    deadline = time.monotonic() + 60
    while "session census" not in (status := felix_nat64("status", "--status-file", node.status_file).stdout):
        assert time.monotonic() < deadline, status
        time.sleep(1)
    assert "pods: 2 workload endpoints known by name" in status and "shop " in status


def test_logs_are_json_lines_when_asked(driver: RunningDriver) -> None:
    lines = [x for x in driver.felix.output.splitlines() if x.startswith("{")]
    records = [json.loads(x) for x in lines]
    assert any(r["event"] == "dataplane applied" for r in records)
    assert all({"time", "level", "component", "event"} <= set(r) for r in records)
    assert not re.search(r"^Traceback", driver.felix.output, re.MULTILINE)
