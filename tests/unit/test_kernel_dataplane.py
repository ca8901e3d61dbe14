"""KernelDataplane's order and error reporting, with fakes for its drivers.

The drivers themselves are tested against the host kernel (tests/host) and
the whole dataplane against the real Jool module (tests/vm); here the fakes
record each step in one journal, so the order across drivers and threads
is what is checked.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterable
from dataclasses import replace

import pytest

from felix_nat64.drivers.api import DataplaneError
from felix_nat64.drivers.discovery import FoundTranslator
from felix_nat64.drivers.kernel import KernelDataplane
from felix_nat64.drivers.nft.ruleset import Ruleset
from felix_nat64.drivers.plan import JoolConfig, Route
from felix_nat64.drivers.routing import RuleSpec
from felix_nat64.model.desired import build_desired
from felix_nat64.model.ownership import tid_of_namespace
from felix_nat64.model.settings import Settings
from felix_nat64.model.state import DesiredState, Inputs, Pool, Translator

N6 = ipaddress.IPv6Network
N4 = ipaddress.IPv4Network
WKP, NSP, THIRD = N6("64:ff9b::/96"), N6("2001:db8:64::/96"), N6("2001:db8:65::/96")


def desired(*prefixes: N6) -> DesiredState:
    settings = replace(Settings(prefixes=tuple(sorted(prefixes)), hostname="node"))
    return build_desired(Inputs(settings, (Pool("pods", N6("fd00:10:244::/64"), True),)))


class Node:
    """The fakes of every driver, writing to one journal; `translators` is
    what discovery finds, kept up to date by the fake links driver."""

    def __init__(self, found: Iterable[Translator] = ()) -> None:
        self.journal: list[tuple[str, ...]] = []
        self._lock = threading.Lock()
        self.translators: dict[str, FoundTranslator] = {t.tid: self._found(t) for t in found}
        self.failing: dict[str, Exception] = {}  # "<step> <tid>" -> what it raises
        self.on_links_ensure = lambda t: None
        self.forwarding: list[str] = []

    @staticmethod
    def _found(t: Translator) -> FoundTranslator:
        return FoundTranslator(t.tid, t.namespace, t.node_link, t.parent, t.block)

    def _note(self, *entry: str) -> None:
        with self._lock:
            self.journal.append(entry)
        failure = self.failing.get(" ".join(entry))
        if failure is not None:
            raise failure

    def dataplane(self, parallelism: int = 8) -> KernelDataplane:
        return KernelDataplane(self.jool(), links=self.links(), routing=self.routing(), nft=self.nft(),
                               find_translators=lambda: list(self.translators.values()),
                               check_forwarding=lambda: self.forwarding, parallelism=parallelism,
                               mtu_file="/nonexistent")

    # The fakes, one per driver.

    def links(self) -> FakeLinks:
        return FakeLinks(self)

    def jool(self) -> FakeJool:
        return FakeJool(self)

    def routing(self) -> FakeRouting:
        return FakeRouting(self)

    def nft(self) -> FakeTable:
        return FakeTable(self)

    def steps(self, *names: str) -> list[tuple[str, ...]]:
        return [e for e in self.journal if e[0] in names]

    def index(self, *entry: str) -> int:
        return self.journal.index(entry)


class FakeLinks:
    def __init__(self, node: Node) -> None:
        self.node = node

    def ensure(self, t: Translator, mtu: int) -> int:
        self.node.on_links_ensure(t)
        self.node._note("links.ensure", t.tid)
        self.node.translators[t.tid] = Node._found(t)
        return 1

    def remove(self, found: FoundTranslator) -> int:
        self.node._note("links.remove", found.tid)
        del self.node.translators[found.tid]
        return 1


class FakeJool:
    def __init__(self, node: Node) -> None:
        self.node = node

    def ensure(self, namespace: str, config: JoolConfig) -> int:
        self.node._note("jool.ensure", str(tid_of_namespace(namespace)))
        return 1

    def remove(self, namespace: str) -> int:
        self.node._note("jool.remove", str(tid_of_namespace(namespace)))
        return 1


class FakeRouting:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.routes: list[Route] = []

    def apply(self, rule: RuleSpec | None, routes: Iterable[Route], *, prune: bool = True) -> int:
        wanted = sorted(str(r.dst) for r in routes)
        self.node._note("routing", "prune" if prune else "add", ",".join(wanted), "rule" if rule else "-")
        return 1


class FakeTable:
    def __init__(self, node: Node) -> None:
        self.node = node

    def apply(self, desired: Ruleset | None) -> int:
        self.node._note("nft", "on" if desired is not None else "off")
        return 1

    def ct_timeouts_supported(self) -> bool:
        return True


def test_cold_apply_builds_translators_then_routes_then_steering() -> None:
    node = Node()
    d = desired(WKP, NSP)
    outcome = node.dataplane().apply(d)
    t1, t2 = (t.tid for t in d.translators)
    for tid in (t1, t2):
        # Each translator's link before its Jool instance, both before any route.
        assert node.index("links.ensure", tid) < node.index("jool.ensure", tid) < \
            node.journal.index(node.steps("routing")[0])
    routing = node.steps("routing")
    assert [r[1] for r in routing] == ["add", "prune"]
    assert node.journal[-3:] == [routing[0], ("nft", "on"), routing[1]]
    assert outcome.changes == len(node.journal)


def test_translators_of_different_namespaces_converge_at_the_same_time() -> None:
    d = desired(WKP, NSP, THIRD)
    together = threading.Barrier(3, timeout=10)
    node = Node()
    node.on_links_ensure = lambda t: together.wait()
    node.dataplane().apply(d)  # each waits for the other two: only works in parallel
    assert len(node.steps("jool.ensure")) == 3

    one_at_a_time = Node()
    alone = threading.Barrier(3, timeout=0.2)
    one_at_a_time.on_links_ensure = lambda t: alone.wait()
    with pytest.raises(DataplaneError):
        one_at_a_time.dataplane(parallelism=1).apply(d)


def test_a_removed_prefix_stops_being_steered_before_its_route_and_translator_go() -> None:
    before, after = desired(WKP, NSP), desired(WKP)
    old = next(t for t in before.translators if t.parent == NSP)
    node = Node(before.translators)
    node.dataplane().apply(after)
    kept = after.translators[0].tid
    add, prune = node.steps("routing")
    # New routes are added without removing the old prefix's...
    assert add[1] == "add" and str(NSP) not in add[2]
    # ...the table stops steering it, its route goes, then its translator.
    assert node.index(*add) < node.index("nft", "on") < node.index(*prune)
    assert node.index(*prune) < node.index("jool.remove", old.tid) < node.index("links.remove", old.tid)
    assert node.index("jool.ensure", kept) < node.index(*add)
    assert set(node.translators) == {kept}


def test_turning_nat64_off_removes_steering_then_routes_then_translators() -> None:
    before = desired(WKP, NSP)
    node = Node(before.translators)
    node.dataplane().apply(DesiredState())
    assert node.journal[:2] == [("nft", "off"), ("routing", "prune", "", "-")]
    removals = node.journal[2:]
    assert sorted(removals) == sorted([(step, t.tid) for t in before.translators
                                       for step in ("jool.remove", "links.remove")])
    for t in before.translators:
        assert node.index("jool.remove", t.tid) < node.index("links.remove", t.tid)
    assert node.translators == {}


def test_every_failing_translator_is_reported_and_nothing_is_steered() -> None:
    d = desired(WKP, NSP, THIRD)
    first, second, third = d.translators
    node = Node()
    node.failing[f"links.ensure {first.tid}"] = OSError(1, "Operation not permitted")
    node.failing[f"jool.ensure {third.tid}"] = DataplaneError(f"Jool in {third.namespace}: boom")
    with pytest.raises(DataplaneError) as caught:
        node.dataplane().apply(d)
    message = str(caught.value)
    assert f"translator {first.namespace}: EPERM" in message
    assert f"Jool in {third.namespace}: boom" in message
    # The third was still attempted, and the second built, but nothing steers into them yet.
    assert ("jool.ensure", second.tid) in node.journal
    assert ("jool.ensure", third.tid) in node.journal
    assert node.steps("routing", "nft") == []
    # The retry finishes the job.
    node.failing.clear()
    node.journal.clear()
    node.dataplane().apply(d)
    assert [e[0] for e in node.journal[-3:]] == ["routing", "nft", "routing"]


def test_every_failing_removal_is_reported() -> None:
    before = desired(WKP, NSP, THIRD)
    node = Node(before.translators)
    first, _, third = before.translators
    node.failing[f"links.remove {first.tid}"] = OSError(16, "Device or resource busy")
    node.failing[f"jool.remove {third.tid}"] = DataplaneError(f"Jool in {third.namespace}: stuck")
    with pytest.raises(DataplaneError) as caught:
        node.dataplane().apply(DesiredState())
    assert f"removing translator {first.tid}: EBUSY" in str(caught.value)
    assert f"Jool in {third.namespace}: stuck" in str(caught.value)
    assert set(node.translators) == {first.tid, third.tid}  # the second is gone all the same


def test_forwarding_off_stops_the_apply_before_any_change() -> None:
    node = Node()
    node.forwarding = ["IPv6 forwarding is off on this node"]
    with pytest.raises(DataplaneError, match="IPv6 forwarding is off"):
        node.dataplane().apply(desired(WKP))
    assert node.journal == []


def test_only_complete_translators_are_adopted() -> None:
    d = desired(WKP, NSP)
    complete, partial = d.translators
    node = Node()
    node.translators = {
        complete.tid: Node._found(complete),
        partial.tid: FoundTranslator(partial.tid, None, partial.node_link, partial.parent, partial.block),
    }
    assert node.dataplane().adopt() == {complete.parent: complete.block}
