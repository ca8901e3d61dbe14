"""The driver loop's contract, with a recording dataplane standing in for the kernel."""

import ipaddress
import queue
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType

import pytest
from prometheus_client import generate_latest

from felix_nat64.cli.main import main
from felix_nat64.dataplane.loop import DataplaneLoop, LoopOptions, StreamEnd
from felix_nat64.drivers.api import ApplyOutcome, DataplaneError
from felix_nat64.model.state import DesiredState
from felix_nat64.observe.metrics import ApplyTimes, NAT64Collector, registry_for
from felix_nat64.observe.status import StatusBoard, write_status_file
from felix_nat64.wire import messages as m

N6 = ipaddress.IPv6Network
N4 = ipaddress.IPv4Network

FAST = LoopOptions(coalesce_seconds=0.02, max_coalesce_seconds=0.2, backoff_initial=0.01, backoff_max=0.05)


class RecordingDataplane:
    def __init__(self, failures: int = 0, existing: Mapping[N6, N4] | None = None) -> None:
        self.applied: list[DesiredState] = []
        self.failures = failures
        self.existing = dict(existing or {})
        self.adopt_calls = 0

    def adopt(self) -> Mapping[N6, N4]:
        self.adopt_calls += 1
        return self.existing

    def apply(self, desired: DesiredState) -> ApplyOutcome:
        if self.failures:
            self.failures -= 1
            raise DataplaneError("injected failure")
        self.applied.append(desired)
        return ApplyOutcome(changes=1)


def config(**values: str) -> m.ConfigUpdate:
    return m.ConfigUpdate(MappingProxyType(values))


def pool(cidr: str) -> m.PoolUpdate:
    return m.PoolUpdate(cidr.replace("/", "-"), ipaddress.ip_network(cidr), False)


def run_loop(events: Iterable[object], dataplane: RecordingDataplane, options: LoopOptions = FAST,
             settle: float = 0.0) -> tuple[DataplaneLoop, StatusBoard, StreamEnd]:
    q: queue.Queue[object] = queue.Queue()
    status = StatusBoard()
    loop = DataplaneLoop(q, dataplane, status, options=options)  # type: ignore[arg-type]
    for e in events:
        q.put(e)
    result: list[StreamEnd] = []
    t = threading.Thread(target=lambda: result.append(loop.run()))
    t.start()
    if settle:
        threading.Event().wait(settle)
    q.put(StreamEnd())
    t.join(10)
    assert not t.is_alive()
    return loop, status, result[0]


def test_nothing_is_applied_before_in_sync() -> None:
    dp = RecordingDataplane()
    _, status, end = run_loop([config(NAT64Prefixes="64:ff9b::/96"), pool("fd00::/64")], dp, settle=0.1)
    assert dp.applied == [] and dp.adopt_calls == 0
    assert end == StreamEnd()
    ready, reasons = status.readiness()
    assert not ready and "InSync" in reasons[0]


def test_burst_is_coalesced_into_one_recalculation() -> None:
    dp = RecordingDataplane()
    events: list[object] = [config(NAT64Prefixes="64:ff9b::/96")]
    events += [pool(f"fd00:{i:x}::/64") for i in range(500)]
    events += [m.InSync()]
    loop, status, _ = run_loop(events, dp, LoopOptions(coalesce_seconds=0.2, max_coalesce_seconds=5),
                               settle=0.5)
    assert loop.recalculations == 1
    assert len(dp.applied) == 1
    desired = dp.applied[0]
    assert len(desired.sources) == 500
    assert status.readiness() == (True, [])


def test_updates_after_sync_are_applied_and_duplicates_are_not() -> None:
    dp = RecordingDataplane()
    events = [config(NAT64Prefixes="64:ff9b::/96"), pool("fd00:1::/64"), m.InSync()]
    q: queue.Queue[object] = queue.Queue()
    loop = DataplaneLoop(q, dp, StatusBoard(), options=FAST)  # type: ignore[arg-type]
    for e in events:
        loop.handle(e)  # type: ignore[arg-type]
    loop.step()
    loop.handle(pool("fd00:2::/64"))
    loop.step()
    loop.handle(pool("fd00:2::/64"))  # unchanged
    loop.step()
    loop.handle(m.InSync())  # a second InSync changes nothing
    loop.step()
    assert [len(d.sources) for d in dp.applied] == [1, 2]


def test_failed_apply_is_retried_with_backoff() -> None:
    dp = RecordingDataplane(failures=3)
    _, status, _ = run_loop([config(NAT64Prefixes="64:ff9b::/96"), m.InSync()], dp, settle=0.5)
    assert len(dp.applied) == 1
    assert status.status.apply_failures == 3
    assert status.status.consecutive_failures == 0
    assert status.readiness()[0]


def test_failing_apply_keeps_running_and_reports_not_ready() -> None:
    dp = RecordingDataplane(failures=10**6)
    _, status, end = run_loop([config(NAT64Prefixes="64:ff9b::/96"), m.InSync()], dp, settle=0.3)
    assert end == StreamEnd()
    ready, reasons = status.readiness()
    assert not ready and any("injected failure" in r for r in reasons)
    assert status.status.apply_failures >= 3


def test_invalid_first_settings_leave_the_kernel_untouched() -> None:
    dp = RecordingDataplane()
    _, status, _ = run_loop([config(NAT64Prefixes="64:ff9b::/64"), m.InSync()], dp, settle=0.2)
    assert dp.applied == [] and dp.adopt_calls == 0
    ready, reasons = status.readiness()
    assert not ready and any("NAT64Prefixes" in r for r in reasons)


def test_bad_settings_later_keep_the_last_good_ones() -> None:
    dp = RecordingDataplane()
    q: queue.Queue[object] = queue.Queue()
    status = StatusBoard()
    loop = DataplaneLoop(q, dp, status, options=FAST)  # type: ignore[arg-type]
    for e in (config(NAT64Prefixes="64:ff9b::/96"), m.InSync()):
        loop.handle(e)  # type: ignore[arg-type]
    loop.step()
    loop.handle(config(NAT64Prefixes="2001:db8::/96", NAT64MTU="1"))
    loop.step()
    assert len(dp.applied) == 1
    assert loop.view.settings.in_force is not None
    assert loop.view.settings.in_force.prefixes == (N6("64:ff9b::/96"),)
    assert not status.readiness()[0]
    assert status.status.settings_rejections == 1


def test_turning_nat64_off_applies_an_empty_state() -> None:
    dp = RecordingDataplane()
    q: queue.Queue[object] = queue.Queue()
    loop = DataplaneLoop(q, dp, StatusBoard(), options=FAST)  # type: ignore[arg-type]
    for e in (config(NAT64Prefixes="64:ff9b::/96"), m.InSync()):
        loop.handle(e)  # type: ignore[arg-type]
    loop.step()
    loop.handle(config(NAT64Prefixes="64:ff9b::/96", NAT64Enabled="false"))
    loop.step()
    assert [d.active for d in dp.applied] == [True, False]


def test_periodic_resync_reapplies_the_same_state() -> None:
    dp = RecordingDataplane()
    run_loop([config(NAT64Prefixes="64:ff9b::/96", NAT64ResyncInterval="1s"), m.InSync()], dp, settle=1.5)
    assert len(dp.applied) >= 2 and dp.applied[0] == dp.applied[1]


def test_existing_translator_blocks_are_adopted() -> None:
    wkp = N6("64:ff9b::/96")
    dp = RecordingDataplane(existing={wkp: N4("169.254.64.32/28")})
    run_loop([config(NAT64Prefixes="64:ff9b::/96"), m.InSync()], dp, settle=0.2)
    assert dp.applied[0].translators[0].block == N4("169.254.64.32/28")


def test_stream_end_with_error_is_returned() -> None:
    q: queue.Queue[object] = queue.Queue()
    loop = DataplaneLoop(q, RecordingDataplane(), StatusBoard(), options=FAST)  # type: ignore[arg-type]
    q.put(StreamEnd("bad framing"))
    assert loop.run() == StreamEnd("bad framing")


def test_out_of_order_messages_are_tolerated() -> None:
    dp = RecordingDataplane()
    events = [m.PoolRemove("nope"), m.HostRemove("ghost"), pool("fd00::/64"), m.InSync(),
              config(NAT64Prefixes="64:ff9b::/96"), m.InSync()]
    run_loop(events, dp, settle=0.2)
    assert len(dp.applied) == 1 and dp.applied[0].sources == (N6("fd00::/64"),)


class FailingAfter(RecordingDataplane):
    """Succeeds `ok` times, then fails every apply."""

    def __init__(self, ok: int) -> None:
        super().__init__()
        self.ok = ok
        self.calls = 0

    def apply(self, desired: DesiredState) -> ApplyOutcome:
        self.calls += 1
        if self.calls > self.ok:
            raise DataplaneError("kernel said no")
        return super().apply(desired)


def test_a_failing_resync_backs_off_instead_of_spinning() -> None:
    dp = FailingAfter(ok=1)
    opts = LoopOptions(coalesce_seconds=0.01, backoff_initial=0.2, backoff_max=0.4)
    run_loop([config(NAT64Prefixes="64:ff9b::/96", NAT64ResyncInterval="1s"), m.InSync()], dp, opts,
             settle=2.5)
    # first apply, a resync at ~1s that fails, then retries 0.2s, 0.4s, 0.4s apart
    assert 3 <= dp.calls <= 8, dp.calls


def test_retries_and_desired_changes_are_not_counted_as_drift() -> None:
    dp = RecordingDataplane(failures=2)
    q: queue.Queue[object] = queue.Queue()
    status = StatusBoard()
    loop = DataplaneLoop(q, dp, status, options=FAST)  # type: ignore[arg-type]
    for e in (config(NAT64Prefixes="64:ff9b::/96"), m.InSync()):
        loop.handle(e)  # type: ignore[arg-type]
    deadline = threading.Event()
    for _ in range(100):
        loop.step()
        if dp.applied:
            break
        deadline.wait(0.02)
    assert len(dp.applied) == 1
    loop.handle(pool("fd00:9::/64"))
    loop.step()
    assert len(dp.applied) == 2
    assert status.status.drift_repairs == 0


def test_configuration_warnings_are_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    q: queue.Queue[object] = queue.Queue()
    loop = DataplaneLoop(q, RecordingDataplane(), StatusBoard(), options=FAST)  # type: ignore[arg-type]
    masq = m.PoolUpdate("p", ipaddress.ip_network("fd00::/64"), True)
    with caplog.at_level("WARNING", logger="felix_nat64"):
        for e in (config(NAT64Prefixes="64:ff9b::/96"), masq, m.InSync()):
            loop.handle(e)  # type: ignore[arg-type]
        loop.step()
        loop.handle(pool("fd00:9::/64"))
        loop.step()
    warned = [r for r in caplog.records if r.getMessage() == "configuration warning"]
    assert len(warned) == 1


# -- Calico's eBPF dataplane: refused, loudly --------------------------------------


def stepped(*events: object) -> tuple[DataplaneLoop, StatusBoard, RecordingDataplane]:
    """A loop that has folded `events` and taken one step (no threads, no timing)."""
    dp = RecordingDataplane()
    status = StatusBoard()
    loop = DataplaneLoop(queue.Queue(), dp, status, options=FAST)  # type: ignore[arg-type]
    for e in events:
        loop.handle(e)  # type: ignore[arg-type]
    loop.step()
    return loop, status, dp


def test_bpf_dataplane_programs_nothing_and_says_why() -> None:
    _, status, dp = stepped(config(NAT64Prefixes="64:ff9b::/96", BPFEnabled="true"), pool("fd00::/64"),
                            m.InSync())
    # Not applied, and the kernel was not even read.
    assert dp.applied == [] and dp.adopt_calls == 0
    ready, reasons = status.readiness()
    assert not ready
    assert len(reasons) == 1 and "BPFEnabled=true" in reasons[0] and "programs nothing" in reasons[0]
    assert status.status.unsupported_dataplane == reasons[0]


def test_bpf_dataplane_programs_nothing_in_the_running_loop() -> None:
    dp = RecordingDataplane()
    events = [config(NAT64Prefixes="64:ff9b::/96", BPFEnabled="true"), pool("fd00::/64"), m.InSync()]
    _, status, end = run_loop(events, dp, settle=0.3)
    assert end == StreamEnd()
    assert dp.applied == [] and dp.adopt_calls == 0
    assert not status.readiness()[0]


def test_bpf_refusal_shows_in_metrics_and_the_status_command(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    _, status, _ = stepped(config(NAT64Prefixes="64:ff9b::/96", BPFEnabled="true"), m.InSync())
    text = generate_latest(registry_for(NAT64Collector(status, lambda: None, ApplyTimes(), "n"))).decode()
    assert "calico_nat64_unsupported_dataplane 1.0" in text and "calico_nat64_ready 0.0" in text
    path = str(tmp_path / "status.json")
    write_status_file(path, status.snapshot())
    assert main(["status", "--no-kernel", "--status-file", path]) == 4
    assert "BPFEnabled=true" in capsys.readouterr().out


def test_supported_dataplane_metric_is_zero() -> None:
    _, status, _ = stepped(config(NAT64Prefixes="64:ff9b::/96"), m.InSync())
    text = generate_latest(registry_for(NAT64Collector(status, lambda: None, ApplyTimes(), "n"))).decode()
    assert "calico_nat64_unsupported_dataplane 0.0" in text and "calico_nat64_ready 1.0" in text


def test_bpf_refusal_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO"):
        loop, _, dp = stepped(config(NAT64Prefixes="64:ff9b::/96", BPFEnabled="true"), m.InSync())
        loop.handle(pool("fd00::/64"))
        loop.step()
    event = "unsupported Calico dataplane, programming nothing"
    refusals = [r for r in caplog.records if r.getMessage() == event]
    assert len(refusals) == 1 and refusals[0].levelname == "ERROR"
    assert dp.applied == []


def test_bpf_off_again_programs_as_usual() -> None:
    # Felix restarts for a BPFEnabled change; a live ConfigUpdate is handled the same way.
    loop, status, dp = stepped(config(NAT64Prefixes="64:ff9b::/96", BPFEnabled="true"), pool("fd00::/64"),
                               m.InSync())
    assert dp.applied == [] and status.status.unsupported_dataplane
    loop.handle(config(NAT64Prefixes="64:ff9b::/96", BPFEnabled="false"))
    loop.step()
    assert len(dp.applied) == 1 and dp.applied[0].active
    assert status.status.unsupported_dataplane == ""
    assert status.readiness() == (True, [])


def test_bpf_refusal_wins_over_nat64_being_off() -> None:
    # Even with NAT64 off the node is reported: NAT64 could not be turned on there.
    _, status, dp = stepped(config(BPFEnabled="true"), m.InSync())
    assert dp.applied == []
    assert not status.readiness()[0]
