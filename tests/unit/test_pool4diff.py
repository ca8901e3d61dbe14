"""The pool4 diff: removals first, on ports, so kept ports stay and new ones survive."""

from __future__ import annotations

import ipaddress
import random

from felix_nat64.drivers.jool.pool4diff import pool4_changes, subtract
from felix_nat64.drivers.plan import Pool4Entry


def entry(proto: str, prefix: str, lo: int, hi: int, mark: int = 0) -> Pool4Entry:
    return Pool4Entry(proto, ipaddress.IPv4Network(prefix), lo, hi, mark)


def ports(entries: list[Pool4Entry] | tuple[Pool4Entry, ...]) -> set[tuple[str, str, int, int]]:
    return {(e.proto, str(a), e.mark, p) for e in entries for a in e.prefix
            for p in range(e.port_min, e.port_max + 1)}


def apply(have: list[Pool4Entry], removals: tuple[Pool4Entry, ...],
          additions: tuple[Pool4Entry, ...]) -> set[tuple[str, str, int, int]]:
    """What Jool holds afterwards: removals take away exactly their ports, in order."""
    held = ports(have)
    held -= ports(removals)
    return held | ports(additions)


def test_subtract_splits_and_merges() -> None:
    assert subtract([(1, 10)], [(3, 4), (8, 20)]) == [(1, 2), (5, 7)]
    assert subtract([(1, 5), (6, 10)], []) == [(1, 10)]
    assert subtract([(1, 10)], [(0, 11)]) == []
    assert subtract([(5, 5)], [(1, 4), (6, 9)]) == [(5, 5)]


def test_a_narrower_range_inside_the_old_one_removes_only_the_ports_left_out() -> None:
    have = [entry(p, f"169.254.64.{i}/32", 61001, 65535) for p in ("tcp", "udp") for i in range(8, 16)]
    wanted = [entry(p, "169.254.64.8/29", 65280, 65535) for p in ("tcp", "udp")]
    changes = pool4_changes(wanted, have)
    assert changes.additions == ()
    assert {(e.port_min, e.port_max) for e in changes.removals} == {(61001, 65279)}
    assert apply(have, changes.removals, changes.additions) == ports(wanted)


def test_nothing_there_adds_each_prefix_in_one_request() -> None:
    wanted = [entry("tcp", "169.254.64.8/29", 1024, 65535), entry("icmp", "169.254.64.8/29", 0, 65535)]
    changes = pool4_changes(wanted, [])
    assert changes == type(changes)((), tuple(wanted))


def test_an_equal_pool4_changes_nothing() -> None:
    wanted = [entry("udp", "169.254.64.8/30", 2000, 2003)]
    have = [entry("udp", f"169.254.64.{i}/32", 2000, 2003) for i in range(8, 12)]
    changes = pool4_changes(wanted, have)
    assert changes.removals == () and changes.additions == ()


def test_marks_and_protocols_are_separate_entries() -> None:
    have = [entry("tcp", "10.0.0.1/32", 1, 100, mark=1)]
    wanted = [entry("tcp", "10.0.0.1/32", 1, 100, mark=0)]
    changes = pool4_changes(wanted, have)
    assert changes.removals == (entry("tcp", "10.0.0.1/32", 1, 100, mark=1),)
    assert changes.additions == tuple(wanted)


def test_random_ranges_always_converge() -> None:
    rng = random.Random(6146)
    for _ in range(500):
        def some() -> list[Pool4Entry]:
            return [entry(rng.choice(("tcp", "udp")), f"10.0.0.{rng.randint(0, 3)}/32",
                          lo := rng.randint(1, 60), rng.randint(lo, 64)) for _ in range(rng.randint(0, 4))]
        have, wanted = some(), some()
        changes = pool4_changes(wanted, have)
        held = apply(have, changes.removals, changes.additions)
        assert held == ports(wanted)
        # What Jool then holds (one port per entry here) needs no more changes.
        after = [entry(proto, f"{addr}/32", port, port, mark) for proto, addr, mark, port in held]
        assert pool4_changes(wanted, after) == type(changes)((), ())
