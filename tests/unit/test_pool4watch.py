"""The pool4 watch: Jool's allocation failures and a full pool4 become a
rejection of new flows, held for a while, then lifted."""

import ipaddress
from collections.abc import Mapping

import pytest

from felix_nat64.dataplane.pool4watch import Pool4Pressure, Pool4Watch

N6 = ipaddress.IPv6Network
NSP = N6("2001:db8:64::/96")
WKP = N6("64:ff9b::/96")
COUNTERS = {"tcp": "JSTAT_UNKNOWN", "udp": "JSTAT_BIB6_NOT_FOUND", "icmp": "JSTAT_BIB6_NOT_FOUND"}


class FakeJool:
    def __init__(self) -> None:
        self.now = 0.0
        self.failures: dict[str, dict[str, int]] = {}
        self.fill: dict[str, dict[str, float]] = {}
        self.fill_reads = 0
        self.translators = {NSP: "ns-nsp", WKP: "ns-wkp"}
        self.posted: list[Pool4Pressure] = []

    def watch(self) -> Pool4Watch:
        return Pool4Watch(lambda: self.translators, self.posted.append, self.read_failures, self.read_fill,
                          COUNTERS, hold=10.0, clock=lambda: self.now)

    def read_failures(self, ns: str) -> Mapping[str, int]:
        if ns not in self.failures:
            raise OSError("no instance yet")
        return dict(self.failures[ns])

    def read_fill(self, ns: str) -> Mapping[str, float]:
        self.fill_reads += 1
        return self.fill.get(ns, {})

    def fail(self, ns: str, counter: str) -> None:
        self.failures.setdefault(ns, {})[counter] = self.failures.get(ns, {}).get(counter, 0) + 1


@pytest.fixture
def jool() -> FakeJool:
    j = FakeJool()
    j.failures = {"ns-nsp": {"JSTAT_UNKNOWN": 0, "JSTAT_BIB6_NOT_FOUND": 0},
                  "ns-wkp": {"JSTAT_UNKNOWN": 5, "JSTAT_BIB6_NOT_FOUND": 0}}
    return j


def test_failures_on_a_full_pool4_reject_that_protocol_until_the_hold_ends(jool: FakeJool) -> None:
    w = jool.watch()
    w.check()  # the first reading is only a baseline
    assert jool.posted == [] and jool.fill_reads == 0
    jool.fail("ns-nsp", "JSTAT_UNKNOWN")
    jool.fill["ns-nsp"] = {"tcp": 1.0, "udp": 0.2, "icmp": 0.0}
    jool.now = 1
    w.check()
    assert jool.posted == [Pool4Pressure(frozenset({(NSP, "tcp")}))]
    jool.now = 5
    w.check()  # no change, nothing posted
    assert len(jool.posted) == 1
    jool.now = 11.5
    w.check()
    assert jool.posted[-1] == Pool4Pressure(frozenset())


def test_a_new_failure_renews_the_hold(jool: FakeJool) -> None:
    w = jool.watch()
    w.check()
    jool.fill["ns-nsp"] = {"udp": 0.95, "icmp": 0.1}
    jool.fail("ns-nsp", "JSTAT_BIB6_NOT_FOUND")
    jool.now = 1
    w.check()
    assert jool.posted == [Pool4Pressure(frozenset({(NSP, "udp")}))]  # not icmp: it has room
    jool.fail("ns-nsp", "JSTAT_BIB6_NOT_FOUND")
    jool.now = 9
    w.check()
    jool.now = 15
    w.check()
    assert len(jool.posted) == 1  # still held: the last failure was at 9


def test_failures_with_room_left_are_not_exhaustion(jool: FakeJool) -> None:
    w = jool.watch()
    w.check()
    jool.fill["ns-nsp"] = {"tcp": 0.3}
    jool.fail("ns-nsp", "JSTAT_UNKNOWN")
    w.check()
    assert jool.posted == []


def test_unreadable_and_removed_translators(jool: FakeJool) -> None:
    del jool.failures["ns-wkp"]
    w = jool.watch()
    w.check()
    jool.fail("ns-nsp", "JSTAT_UNKNOWN")
    jool.fill["ns-nsp"] = {"tcp": 1.0}
    w.check()
    assert jool.posted[-1].exhausted == {(NSP, "tcp")}
    del jool.translators[NSP]  # the translator went away: so does its rejection
    w.check()
    assert jool.posted[-1].exhausted == frozenset()


def test_a_reset_counter_is_not_a_failure(jool: FakeJool) -> None:
    w = jool.watch()
    jool.failures["ns-nsp"]["JSTAT_UNKNOWN"] = 7
    w.check()
    jool.failures["ns-nsp"]["JSTAT_UNKNOWN"] = 0  # the Jool instance was recreated
    jool.fill["ns-nsp"] = {"tcp": 1.0}
    w.check()
    assert jool.posted == [] and jool.fill_reads == 0
