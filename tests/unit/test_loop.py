"""The driver loop's contract, with a recording dataplane standing in for the
kernel and a manual clock standing in for time: no test here sleeps."""

import ipaddress
import queue
from collections.abc import Iterable
from pathlib import Path
from types import MappingProxyType

import pytest
from prometheus_client import generate_latest

from felix_nat64.cli.main import main
from felix_nat64.dataplane.loop import DataplaneLoop, Event, LoopOptions, StreamEnd
from felix_nat64.dataplane.pool4watch import Pool4Pressure
from felix_nat64.observe.metrics import ApplyTimes, NAT64Collector, registry_for
from felix_nat64.observe.status import StatusBoard, write_status_file
from felix_nat64.wire import messages as m
from tests.fakes import INJECTED, ClockedQueue, ManualClock, RecordingDataplane

N6 = ipaddress.IPv6Network
N4 = ipaddress.IPv4Network

FAST = LoopOptions(coalesce_seconds=0.02, max_coalesce_seconds=0.2, backoff_initial=0.01, backoff_max=0.05)


def config(**values: str) -> m.ConfigUpdate:
    return m.ConfigUpdate(MappingProxyType(values))


def pool(cidr: str) -> m.PoolUpdate:
    return m.PoolUpdate(cidr.replace("/", "-"), ipaddress.ip_network(cidr), False)


class Harness:
    """A loop on a manual clock, fed through a queue that waits in clock time."""

    def __init__(self, dataplane: RecordingDataplane, options: LoopOptions = FAST) -> None:
        self.clock = ManualClock()
        self.events: ClockedQueue[Event] = ClockedQueue(self.clock)
        self.status = StatusBoard()
        self.dataplane = dataplane
        self.loop = DataplaneLoop(self.events, dataplane, self.status, options=options, clock=self.clock,
                                  wall_clock=self.clock)
        dataplane.clock = self.clock

    def run(self, events: Iterable[Event], for_seconds: float) -> StreamEnd:
        """Queues `events`, lets the loop run for `for_seconds` of clock time, then ends the stream."""
        for event in events:
            self.events.put(event)
        self.events.put_at(self.clock() + for_seconds, StreamEnd())
        return self.loop.run()

    def feed(self, *events: m.FelixMessage) -> None:
        """Folds events and steps once, as the loop does after a burst."""
        for event in events:
            self.loop.handle(event)
        self.loop.step()


def test_nothing_is_applied_before_in_sync() -> None:
    dp = RecordingDataplane()
    h = Harness(dp)
    end = h.run([config(NAT64Prefixes="64:ff9b::/96"), pool("fd00::/64")], for_seconds=60)
    assert dp.applied == [] and dp.adopt_calls == 0
    assert end == StreamEnd()
    ready, reasons = h.status.readiness()
    assert not ready and "InSync" in reasons[0]


def test_burst_is_coalesced_into_one_recalculation() -> None:
    dp = RecordingDataplane()
    h = Harness(dp, LoopOptions(coalesce_seconds=0.2, max_coalesce_seconds=5))
    events: list[Event] = [config(NAT64Prefixes="64:ff9b::/96")]
    events += [pool(f"fd00:{i:x}::/64") for i in range(500)]
    events += [m.InSync()]
    h.run(events, for_seconds=1)
    assert h.loop.recalculations == 1
    assert len(dp.applied) == 1
    assert len(dp.applied[0].sources) == 500
    assert h.status.readiness() == (True, [])


def test_a_burst_is_cut_at_the_longest_coalescing_delay() -> None:
    dp = RecordingDataplane()
    h = Harness(dp, LoopOptions(coalesce_seconds=0.1, max_coalesce_seconds=0.25))
    start = h.clock()
    h.events.put(config(NAT64Prefixes="64:ff9b::/96"))
    h.events.put(m.InSync())
    # One pool every 0.05 s, for a second: always within the coalescing window.
    for i in range(20):
        h.events.put_at(start + 0.05 * (i + 1), pool(f"fd00:{i:x}::/64"))
    h.events.put_at(start + 5, StreamEnd())
    h.loop.run()
    # Applied at the cap (0.25 s), not after the whole second of updates...
    assert dp.attempts[0] - start == pytest.approx(0.25)
    # ...and every update is in the end.
    assert len(dp.applied[-1].sources) == 20


def test_updates_after_sync_are_applied_and_duplicates_are_not() -> None:
    dp = RecordingDataplane()
    h = Harness(dp)
    h.feed(config(NAT64Prefixes="64:ff9b::/96"), pool("fd00:1::/64"), m.InSync())
    h.feed(pool("fd00:2::/64"))
    h.feed(pool("fd00:2::/64"))  # unchanged
    h.feed(m.InSync())  # a second InSync changes nothing
    assert [len(d.sources) for d in dp.applied] == [1, 2]


def test_failed_apply_is_retried_with_backoff() -> None:
    dp = RecordingDataplane(failures=3)
    h = Harness(dp, LoopOptions(backoff_initial=0.5, backoff_max=30))
    h.run([config(NAT64Prefixes="64:ff9b::/96"), m.InSync()], for_seconds=10)
    assert len(dp.applied) == 1
    # 0.5 s, then doubling: 0.5, 1, 2.
    gaps = [round(b - a, 6) for a, b in zip(dp.attempts, dp.attempts[1:], strict=False)]
    assert gaps[:3] == [0.5, 1.0, 2.0]
    assert h.status.status.apply_failures == 3
    assert h.status.status.consecutive_failures == 0
    assert h.status.readiness()[0]


def test_failing_apply_keeps_running_and_reports_not_ready() -> None:
    dp = RecordingDataplane(failures=10**6)
    h = Harness(dp)
    end = h.run([config(NAT64Prefixes="64:ff9b::/96"), m.InSync()], for_seconds=3)
    assert end == StreamEnd()
    ready, reasons = h.status.readiness()
    assert not ready and any(INJECTED in r for r in reasons)
    # Back-off 0.01 s doubling to its 0.05 s cap: about 60 attempts in 3 s, never a spin.
    assert 55 <= h.status.status.apply_failures <= 62


def test_invalid_first_settings_leave_the_kernel_untouched() -> None:
    dp = RecordingDataplane()
    h = Harness(dp)
    h.run([config(NAT64Prefixes="64:ff9b::/64"), m.InSync()], for_seconds=60)
    assert dp.applied == [] and dp.adopt_calls == 0
    ready, reasons = h.status.readiness()
    assert not ready and any("NAT64Prefixes" in r for r in reasons)


def test_bad_settings_later_keep_the_last_good_ones() -> None:
    dp = RecordingDataplane()
    h = Harness(dp)
    h.feed(config(NAT64Prefixes="64:ff9b::/96"), m.InSync())
    h.feed(config(NAT64Prefixes="2001:db8::/96", NAT64MTU="1"))
    assert len(dp.applied) == 1
    assert h.loop.view.settings.in_force is not None
    assert h.loop.view.settings.in_force.prefixes == (N6("64:ff9b::/96"),)
    assert not h.status.readiness()[0]
    assert h.status.status.settings_rejections == 1


def test_turning_nat64_off_applies_an_empty_state() -> None:
    dp = RecordingDataplane()
    h = Harness(dp)
    h.feed(config(NAT64Prefixes="64:ff9b::/96"), m.InSync())
    h.feed(config(NAT64Prefixes="64:ff9b::/96", NAT64Enabled="false"))
    assert [d.active for d in dp.applied] == [True, False]


def test_periodic_resync_reapplies_the_same_state() -> None:
    dp = RecordingDataplane()
    h = Harness(dp)
    h.run([config(NAT64Prefixes="64:ff9b::/96", NAT64ResyncInterval="1s"), m.InSync()], for_seconds=3.5)
    assert len(dp.applied) == 4 and all(d == dp.applied[0] for d in dp.applied)
    gaps = [round(b - a, 6) for a, b in zip(dp.attempts, dp.attempts[1:], strict=False)]
    assert gaps == [1.0, 1.0, 1.0]


def test_existing_translator_blocks_are_adopted() -> None:
    wkp = N6("64:ff9b::/96")
    dp = RecordingDataplane(existing={wkp: N4("169.254.64.32/28")})
    Harness(dp).run([config(NAT64Prefixes="64:ff9b::/96"), m.InSync()], for_seconds=1)
    assert dp.adopt_calls == 1
    assert dp.applied[0].translators[0].block == N4("169.254.64.32/28")


def test_stream_end_with_error_is_returned() -> None:
    h = Harness(RecordingDataplane())
    h.events.put(StreamEnd("bad framing"))
    assert h.loop.run() == StreamEnd("bad framing")


def test_out_of_order_messages_are_tolerated() -> None:
    dp = RecordingDataplane()
    events: list[Event] = [m.PoolRemove("nope"), m.HostRemove("ghost"), pool("fd00::/64"), m.InSync(),
                           config(NAT64Prefixes="64:ff9b::/96"), m.InSync()]
    Harness(dp).run(events, for_seconds=1)
    assert len(dp.applied) == 1 and dp.applied[0].sources == (N6("fd00::/64"),)


def test_a_failing_resync_backs_off_instead_of_spinning() -> None:
    dp = RecordingDataplane(fail_after=1)
    opts = LoopOptions(coalesce_seconds=0.01, backoff_initial=0.2, backoff_max=0.4)
    h = Harness(dp, opts)
    h.run([config(NAT64Prefixes="64:ff9b::/96", NAT64ResyncInterval="1s"), m.InSync()], for_seconds=2.5)
    # The first apply, the resync 1 s later that fails, then retries 0.2 s, 0.4 s, 0.4 s... apart.
    gaps = [round(b - a, 6) for a, b in zip(dp.attempts, dp.attempts[1:], strict=False)]
    assert gaps == [1.0, 0.2, 0.4, 0.4, 0.4]
    assert len(dp.applied) == 1


def test_retries_and_desired_changes_are_not_counted_as_drift() -> None:
    dp = RecordingDataplane(failures=2)
    h = Harness(dp)
    h.feed(config(NAT64Prefixes="64:ff9b::/96"), m.InSync())
    while not dp.applied:
        h.clock.advance(0.01)
        h.loop.step()
    assert len(dp.attempts) == 3
    h.feed(pool("fd00:9::/64"))
    assert len(dp.applied) == 2
    assert h.status.status.drift_repairs == 0


def test_changes_found_by_a_resync_are_counted_as_drift() -> None:
    dp = RecordingDataplane()
    h = Harness(dp)
    h.feed(config(NAT64Prefixes="64:ff9b::/96", NAT64ResyncInterval="30s"), m.InSync())
    h.clock.advance(30)
    h.loop.step()
    assert len(dp.applied) == 2
    assert h.status.status.drift_repairs == 1
    dp.changes = 0
    h.clock.advance(30)
    h.loop.step()
    assert len(dp.applied) == 3
    assert h.status.status.drift_repairs == 1


def test_configuration_warnings_are_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness(RecordingDataplane())
    masq = m.PoolUpdate("p", ipaddress.ip_network("fd00::/64"), True)
    with caplog.at_level("WARNING", logger="felix_nat64"):
        h.feed(config(NAT64Prefixes="64:ff9b::/96"), masq, m.InSync())
        h.feed(pool("fd00:9::/64"))
    warned = [r for r in caplog.records if r.getMessage() == "configuration warning"]
    assert len(warned) == 1


# -- Calico's eBPF dataplane: refused, loudly --------------------------------------


def test_bpf_dataplane_programs_nothing_and_says_why() -> None:
    dp = RecordingDataplane()
    h = Harness(dp)
    h.run([config(NAT64Prefixes="64:ff9b::/96", BPFEnabled="true"), pool("fd00::/64"), m.InSync()],
          for_seconds=60)
    # Not applied, and the kernel was not even read.
    assert dp.applied == [] and dp.adopt_calls == 0
    ready, reasons = h.status.readiness()
    assert not ready
    assert len(reasons) == 1 and "BPFEnabled=true" in reasons[0] and "programs nothing" in reasons[0]
    assert h.status.status.unsupported_dataplane == reasons[0]


def test_bpf_refusal_shows_in_metrics_and_the_status_command(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    h = Harness(RecordingDataplane())
    h.run([config(NAT64Prefixes="64:ff9b::/96", BPFEnabled="true"), m.InSync()], for_seconds=1)
    text = generate_latest(registry_for(NAT64Collector(h.status, lambda: None, ApplyTimes(), "n"))).decode()
    assert "calico_nat64_unsupported_dataplane 1.0" in text and "calico_nat64_ready 0.0" in text
    path = str(tmp_path / "status.json")
    write_status_file(path, h.status.snapshot())
    assert main(["status", "--no-kernel", "--status-file", path]) == 4
    assert "BPFEnabled=true" in capsys.readouterr().out


def test_supported_dataplane_metric_is_zero() -> None:
    h = Harness(RecordingDataplane())
    h.run([config(NAT64Prefixes="64:ff9b::/96"), m.InSync()], for_seconds=1)
    text = generate_latest(registry_for(NAT64Collector(h.status, lambda: None, ApplyTimes(), "n"))).decode()
    assert "calico_nat64_unsupported_dataplane 0.0" in text and "calico_nat64_ready 1.0" in text


def test_bpf_refusal_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    dp = RecordingDataplane()
    h = Harness(dp)
    for e in (config(NAT64Prefixes="64:ff9b::/96", BPFEnabled="true"), m.InSync()):
        h.loop.handle(e)
    with caplog.at_level("INFO"):
        h.loop.step()
        h.feed(pool("fd00::/64"))
    event = "unsupported Calico dataplane, programming nothing"
    refusals = [r for r in caplog.records if r.getMessage() == event]
    assert len(refusals) == 1 and refusals[0].levelname == "ERROR"
    assert dp.applied == []


def test_bpf_off_again_programs_as_usual() -> None:
    # Felix restarts for a BPFEnabled change; a live ConfigUpdate is handled the same way.
    dp = RecordingDataplane()
    h = Harness(dp)
    h.feed(config(NAT64Prefixes="64:ff9b::/96", BPFEnabled="true"), pool("fd00::/64"), m.InSync())
    assert dp.applied == [] and h.status.status.unsupported_dataplane
    h.feed(config(NAT64Prefixes="64:ff9b::/96", BPFEnabled="false"))
    assert len(dp.applied) == 1 and dp.applied[0].active
    assert h.status.status.unsupported_dataplane == ""
    assert h.status.readiness() == (True, [])


def test_bpf_refusal_wins_over_nat64_being_off() -> None:
    # Even with NAT64 off the node is reported: NAT64 could not be turned on there.
    dp = RecordingDataplane()
    h = Harness(dp)
    h.run([config(BPFEnabled="true"), m.InSync()], for_seconds=1)
    assert dp.applied == []
    assert not h.status.readiness()[0]


def test_pool4_pressure_is_folded_into_the_desired_state() -> None:
    dp = RecordingDataplane()
    loop = DataplaneLoop(queue.Queue(), dp, StatusBoard(), options=FAST)
    for e in (config(NAT64Prefixes="64:ff9b::/96"), pool("fd00:1::/64"), m.InSync()):
        loop.handle(e)
    loop.step()
    assert dp.applied[-1].exhausted == ()
    assert loop.translators() == {N6("64:ff9b::/96"): dp.applied[-1].translators[0].namespace}
    full = frozenset({(N6("64:ff9b::/96"), "tcp")})
    loop.handle(Pool4Pressure(full))
    loop.step()
    assert dp.applied[-1].exhausted == ((N6("64:ff9b::/96"), "tcp"),)
    loop.handle(Pool4Pressure(full))  # the same again: nothing to do
    loop.step()
    loop.handle(Pool4Pressure(frozenset()))
    loop.step()
    assert [d.exhausted for d in dp.applied] == [(), ((N6("64:ff9b::/96"), "tcp"),), ()]
