"""Health endpoints, metrics, logs and the status command, without the kernel."""

from __future__ import annotations

import dataclasses
import io
import ipaddress
import json
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType

import pytest
from prometheus_client import generate_latest

from felix_nat64 import logs
from felix_nat64.cli import sessions as sessions_cli
from felix_nat64.cli import status as status_cli
from felix_nat64.cli.main import main
from felix_nat64.dataplane.managers import FelixView
from felix_nat64.drivers.jool import SessionEntry, SessionTimer, Taddr4, Taddr6, TcpState
from felix_nat64.model.desired import build_desired
from felix_nat64.model.protocol import Protocol
from felix_nat64.observe.health import HealthServer, Heartbeat
from felix_nat64.observe.kernel_stats import KernelStats, StatsPoller, TranslatorStats
from felix_nat64.observe.metrics import ApplyTimes, NAT64Collector, registry_for
from felix_nat64.observe.session_table import TablePage, TableQuery, TableRow
from felix_nat64.observe.status import ApplyRecord, StatusBoard, write_status_file
from felix_nat64.wire import messages as m


def board_in_sync(ok: bool = True) -> StatusBoard:
    board = StatusBoard()
    view = FelixView("node-1")
    view.on_message(m.ConfigUpdate(MappingProxyType({"NAT64Prefixes": "64:ff9b::/96"})))
    inputs = view.inputs({})
    assert inputs is not None
    board.set_in_sync(1.0)
    board.set_settings(ok=True, errors=(), warnings=(), in_force=view.settings.in_force, origins={},
                       rejections=0)
    board.set_desired(build_desired(inputs))
    board.record_apply(ApplyRecord(2.0, 0.012, ok, "" if ok else "boom", changes=7))
    return board


KERNEL = KernelStats(
    at=3.0,
    nft={"steered": (10, 1000), "refused": (2, 200)},
    translators=(TranslatorStats.from_counters(
        "felix-nat64-aaaa", "64:ff9b::/96",
        {Protocol.TCP: 8 * 64512, Protocol.UDP: 8 * 64512, Protocol.ICMP: 8 * 65536},
        {"JSTAT_SUCCESS": 42, "JSTAT_POOL4_MISMATCH": 1, "JSTAT_SESSIONS": 4, "JSTAT_BIB_ENTRIES": 3}),),
)


class TestReadiness:
    def test_transitions(self) -> None:
        board = StatusBoard()
        ready, reasons = board.readiness()
        assert not ready and "InSync" in reasons[0]
        board.update(in_sync=True)
        assert board.readiness() == (False, ["dataplane not yet applied"])
        board.record_apply(ApplyRecord(1.0, 0.1, False, "nft says no"))
        assert "dataplane apply failing: nft says no" in board.readiness()[1]
        board.record_apply(ApplyRecord(2.0, 0.1, True))
        assert board.readiness() == (True, [])
        board.update(settings_ok=False, settings_errors=("NAT64MTU='1': out of range",))
        assert not board.readiness()[0]

    def test_undecodable_used_message_makes_it_unready(self) -> None:
        board = board_in_sync()
        board.stream.undecodable_used = 1
        board.stream.last_undecodable = "ipam_pool_update: truncated"
        ready, reasons = board.readiness()
        assert not ready and "restart felix-nat64" in reasons[0]


@pytest.fixture
def server() -> Iterator[tuple[HealthServer, StatusBoard, Heartbeat]]:
    board = StatusBoard()
    beat = Heartbeat(max_age=60)
    collector = NAT64Collector(board, lambda: KERNEL, ApplyTimes(), "node-1")
    srv = HealthServer("127.0.0.1", 0, board, registry_for(collector), beat.check)
    srv.start()
    yield srv, board, beat
    srv.stop()


def get(srv: HealthServer, path: str) -> tuple[int, str]:
    url = f"http://127.0.0.1:{srv.address[1]}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class TestHealthServer:
    def test_readiness_follows_the_board(self, server: tuple[HealthServer, StatusBoard, Heartbeat]) -> None:
        srv, board, _ = server
        code, body = get(srv, "/readiness")
        assert code == 503 and json.loads(body)["ready"] is False
        board.update(in_sync=True)
        board.record_apply(ApplyRecord(1.0, 0.01, True))
        code, body = get(srv, "/readiness")
        assert code == 200 and json.loads(body) == {"ready": True, "reasons": []}

    def test_liveness_fails_when_the_loop_stalls(self) -> None:
        now = [100.0]
        beat = Heartbeat(max_age=90, clock=lambda: now[0])
        assert beat.check()[0]
        now[0] += 91
        ok, reason = beat.check()
        assert not ok and "stuck" in reason
        beat.beat()
        assert beat.check()[0]

    def test_metrics_and_unknown_paths(self, server: tuple[HealthServer, StatusBoard, Heartbeat]) -> None:
        srv, _, _ = server
        code, body = get(srv, "/metrics")
        assert code == 200 and "calico_nat64_info" in body
        assert get(srv, "/nope")[0] == 404
        assert get(srv, "/liveness")[0] == 200


class TestMetrics:
    def render(self, board: StatusBoard, kernel: KernelStats | None = KERNEL) -> str:
        times = ApplyTimes()
        times.observe(0.012)
        times.observe(3.0)
        return generate_latest(registry_for(NAT64Collector(board, lambda: kernel, times, "node-1"))).decode()

    def test_every_family_is_exported_with_our_prefix(self) -> None:
        text = self.render(board_in_sync())
        families = {line.split()[2].removesuffix("_total") for line in text.splitlines()
                    if line.startswith("# TYPE")}
        assert families >= {
            "calico_nat64_info", "calico_nat64_felix_in_sync", "calico_nat64_ready",
            "calico_nat64_settings_errors", "calico_nat64_settings_rejections",
            "calico_nat64_config_warnings", "calico_nat64_dataplane_applies",
            "calico_nat64_dataplane_apply_failures", "calico_nat64_dataplane_drift_repairs",
            "calico_nat64_dataplane_apply_duration_seconds", "calico_nat64_felix_messages",
            "calico_nat64_felix_undecodable_messages", "calico_nat64_nft_packets", "calico_nat64_nft_bytes",
            "calico_nat64_jool_sessions", "calico_nat64_jool_bib_entries",
            "calico_nat64_jool_pool4_transport_addresses", "calico_nat64_jool_pool4_utilisation_ratio",
            "calico_nat64_jool_stats", "calico_nat64_jool_instance_up",
        }
        assert not any(f.startswith("felix_") for f in families)

    def test_values(self) -> None:
        text = self.render(board_in_sync())
        assert 'calico_nat64_info{host="node-1",prefixes="64:ff9b::/96",version="0.1.0"} 1.0' in text
        assert "calico_nat64_felix_in_sync 1.0" in text
        assert "calico_nat64_ready 1.0" in text
        assert 'calico_nat64_nft_packets_total{rule="steered"} 10.0' in text
        assert 'calico_nat64_nft_packets_total{rule="snat"} 0.0' in text
        labels = 'prefix="64:ff9b::/96",translator="felix-nat64-aaaa"'
        assert f"calico_nat64_jool_sessions{{{labels}}} 4.0" in text
        assert f"calico_nat64_jool_bib_entries{{{labels}}} 3.0" in text
        tcp = 'prefix="64:ff9b::/96",protocol="tcp",translator="felix-nat64-aaaa"'
        assert f"calico_nat64_jool_pool4_transport_addresses{{{tcp}}} 516096.0" in text
        assert f"calico_nat64_jool_pool4_utilisation_ratio{{{tcp}}} {3 / 516096!r}" in text
        assert 'calico_nat64_jool_stats_total{prefix="64:ff9b::/96",stat="JSTAT_SUCCESS",' \
               'translator="felix-nat64-aaaa"} 42.0' in text
        # The table sizes are gauges of their own, not event counters.
        assert 'stat="JSTAT_SESSIONS"' not in text and 'stat="JSTAT_BIB_ENTRIES"' not in text
        assert 'calico_nat64_dataplane_apply_duration_seconds_bucket{le="0.025"} 1.0' in text
        assert 'calico_nat64_dataplane_apply_duration_seconds_count 2.0' in text

    def test_settings_errors_show(self) -> None:
        board = board_in_sync()
        board.update(settings_ok=False, settings_errors=("a", "b"), settings_rejections=1)
        text = self.render(board)
        assert "calico_nat64_settings_errors 2.0" in text
        assert "calico_nat64_settings_rejections_total 1.0" in text
        assert "calico_nat64_ready 0.0" in text

    def test_without_a_kernel_sample_kernel_families_are_absent(self) -> None:
        assert "calico_nat64_jool_sessions" not in self.render(board_in_sync(), None)

    def test_poller_keeps_running_when_a_sample_fails(self) -> None:
        calls = iter([RuntimeError("netlink exploded")])

        def sampler() -> KernelStats:
            raise next(calls)

        poller = StatsPoller(sampler)
        sample = poller.sample_now()
        assert sample.error == "netlink exploded" and poller.failures == 1
        assert poller.latest is sample


class TestLogs:
    def capture(self, fmt: str) -> str:
        stream = io.StringIO()
        logs.configure(fmt, "info", stream)
        log = logs.EventLogger("loop").bind(translator="felix-nat64-aaaa")
        log.info("dataplane applied", changes=3, error="two words")
        log.debug("hidden")
        logs.configure()
        return stream.getvalue()

    def test_key_value(self) -> None:
        (line,) = self.capture("keyvalue").splitlines()
        assert "level=info component=loop" in line
        assert 'event="dataplane applied" translator=felix-nat64-aaaa changes=3 error="two words"' in line

    def test_json(self) -> None:
        (line,) = self.capture("json").splitlines()
        record = json.loads(line)
        assert record["event"] == "dataplane applied" and record["changes"] == 3
        assert record["component"] == "loop" and record["level"] == "info"

    def test_settings_errors_are_one_line_each_without_traceback(self) -> None:
        stream = io.StringIO()
        logs.configure("keyvalue", "info", stream)
        view = FelixView("n")
        view.on_message(m.ConfigUpdate(MappingProxyType({"NAT64MTU": "1", "NAT64UDPTimeout": "1s"})))
        logs.configure()
        lines = stream.getvalue().splitlines()
        invalid = [x for x in lines if "invalid setting" in x]
        assert len(invalid) == 2
        assert any("key=NAT64MTU" in x and 'value=1' in x for x in invalid)
        assert "Traceback" not in stream.getvalue()
        assert logging.getLogger("felix_nat64").handlers


class TestStatusCommand:
    def write(self, tmp_path: Path, board: StatusBoard, pid: int | None = None) -> str:
        path = str(tmp_path / "status.json")
        snap = board.snapshot()
        if pid is not None:
            snap = dataclasses.replace(snap, pid=pid)
        write_status_file(path, snap)
        return path

    def test_ready(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        path = self.write(tmp_path, board_in_sync())
        assert main(["status", "--no-kernel", "--status-file", path]) == 0
        out = capsys.readouterr().out
        assert "READY" in out and "NAT64 ON: prefixes 64:ff9b::/96" in out
        assert "7 changes" in out

    def test_not_ready_json(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        path = self.write(tmp_path, board_in_sync(ok=False))
        assert main(["status", "--no-kernel", "--json", "--status-file", path]) == 4
        data = json.loads(capsys.readouterr().out)
        assert data["driver"]["ready"] is False
        assert any("boom" in r for r in data["driver"]["not_ready_reasons"])

    def test_not_running(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["status", "--no-kernel", "--status-file", str(tmp_path / "none.json")]) == 5
        assert "not running" in capsys.readouterr().out
        dead = self.write(tmp_path, board_in_sync(), pid=2**22 + 12345)
        assert main(["status", "--no-kernel", "--status-file", dead]) == 5

    def test_kernel_part_renders_jools_counts(self, tmp_path: Path) -> None:
        driver, down = status_cli.read_driver(self.write(tmp_path, board_in_sync()))
        report = status_cli.StatusReport(driver, down, KERNEL, {"objects": []}, "")
        text = status_cli.render_text(report)
        row = next(line for line in text.splitlines() if line.startswith("felix-nat64-aaaa"))
        assert row.split() == ["felix-nat64-aaaa", "64:ff9b::/96", "up", "4", "3",
                               "516,096/516,096/524,288", "<=", "0.00%"]
        assert "nftables counters: refused 2 pkts, steered 10 pkts" in text
        data = json.loads(status_cli.render_json(report))
        assert data["kernel"]["stats"]["translators"][0]["sessions"] == 4
        assert data["kernel"]["stats"]["translators"][0]["bib_entries"] == 3
        assert data["driver"]["applies"] == 1 and report.exit_code == 0

    def test_sessions_page_renders_its_place_in_the_table(self) -> None:
        entry = SessionEntry(Protocol.UDP, Taddr6(ipaddress.IPv6Address("fd00::1"), 5000),
                             Taddr6(ipaddress.IPv6Address("64:ff9b::c633:640a"), 53),
                             Taddr4(ipaddress.IPv4Address("169.254.64.9"), 2000),
                             Taddr4(ipaddress.IPv4Address("198.51.100.10"), 53),
                             TcpState.ESTABLISHED, SessionTimer.EST, 299_000)
        row = TableRow(ipaddress.IPv6Network("64:ff9b::/96"), entry)
        known = TablePage(TableQuery(limit=1, page=3), (row,), 7, True)
        assert known.first == 3
        assert sessions_cli.render_text(known).splitlines()[-1] == "3-3 of 7 sessions; --page 4 for more"
        unknown = TablePage(TableQuery(limit=1, page=3, proto=Protocol.UDP), (row,), None, True)
        assert sessions_cli.render_text(unknown).splitlines()[-1] == \
            "3-3 of more than 3 sessions; --page 4 for more"
        data = json.loads(sessions_cli.render_json(unknown))
        assert (data["total"], data["more"], data["page"]) == (None, True, 3)
        assert data["rows"] == [{"prefix": "64:ff9b::/96", "proto": "udp", "pod": "fd00::1", "pod_port": 5000,
                                 "namespace": "", "pod_name": "",
                                 "destination": "198.51.100.10", "dest_port": 53,
                                 "destination6": "64:ff9b::c633:640a", "pool4": "169.254.64.9",
                                 "pool4_port": 2000, "state": "ESTABLISHED", "expires_ms": 299_000}]
        empty = TablePage(TableQuery(limit=10, page=9), (), 5, False)
        assert sessions_cli.render_text(empty).splitlines()[-1] == "none of 5 sessions"

    def test_sessions_rejects_bad_filters(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["sessions", "--pod", "10.0.0.1"]) == 2
        assert "must be IPv6" in capsys.readouterr().err
        assert main(["sessions", "--limit", "0"]) == 2


def test_status_file_is_replaced_atomically(tmp_path: Path) -> None:
    path = str(tmp_path / "d" / "status.json")
    board = StatusBoard()
    write_status_file(path, board.snapshot())
    board.set_in_sync(5.0)
    write_status_file(path, board.snapshot())
    assert json.loads(Path(path).read_text())["in_sync_at"] == 5.0
    assert os.listdir(tmp_path / "d") == ["status.json"]


def test_status_file_keeps_its_fields(tmp_path: Path) -> None:
    """Other tools and the docs read these names: the typed status writes them all."""
    board = board_in_sync()
    board.count_drift_repair()
    data = board.snapshot().to_json()
    assert set(data) == {
        "started_at", "in_sync", "in_sync_at", "settings_ok", "settings_errors", "settings_warnings",
        "settings", "origins", "settings_rejections", "desired", "desired_error", "unsupported_dataplane",
        "warnings", "last_apply", "last_success_at", "last_error", "applies", "apply_failures",
        "consecutive_failures", "drift_repairs", "first_apply_after_sync", "ready", "not_ready_reasons",
        "stream", "pid", "written_at", "endpoints", "endpoints_dropped", "census"}
    assert data["settings"]["prefixes"] == ["64:ff9b::/96"]
    assert data["desired"]["translators"][0]["parent"] == "64:ff9b::/96"
    assert data["last_apply"] == {"at": 2.0, "duration_seconds": 0.012, "ok": True, "error": "",
                                  "changes": 7, "resync": False}
    assert (data["applies"], data["drift_repairs"], data["ready"]) == (1, 1, True)
    assert set(data["stream"]) == {"frames", "bytes", "by_payload", "undecodable_used", "undecodable_other"}
