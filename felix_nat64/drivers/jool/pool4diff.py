"""The pool4 changes that turn what Jool holds into what is wanted (pure).

Jool keeps pool4 as port ranges per (protocol, IPv4 address, mark), and a
remove takes away exactly the ports it names, splitting ranges as needed.
So the diff is done on ports: ports no longer wanted are removed first,
then the missing ones are added. Removing a whole old range after adding a
new one inside it would take the new ports away too; and ports kept in both
keep their BIB entries and sessions.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from felix_nat64.drivers.plan import Pool4Entry
from felix_nat64.model.protocol import Protocol

Key = tuple[Protocol, ipaddress.IPv4Network, int]  # protocol, one address, mark
Span = tuple[int, int]  # first and last port, inclusive


@dataclass(frozen=True)
class Pool4Changes:
    removals: tuple[Pool4Entry, ...]
    additions: tuple[Pool4Entry, ...]


def _merge(spans: Iterable[Span]) -> list[Span]:
    out: list[Span] = []
    for lo, hi in sorted(spans):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def subtract(spans: Iterable[Span], minus: Iterable[Span]) -> list[Span]:
    """The ports of `spans` that are in none of `minus`, as merged spans."""
    cuts = _merge(minus)
    out: list[Span] = []
    for first, hi in _merge(spans):
        lo = first
        for c_lo, c_hi in cuts:
            if c_hi < lo or c_lo > hi:
                continue
            if c_lo > lo:
                out.append((lo, c_lo - 1))
            lo = c_hi + 1
            if lo > hi:
                break
        if lo <= hi:
            out.append((lo, hi))
    return out


def _by_address(entries: Iterable[Pool4Entry]) -> dict[Key, list[Span]]:
    found: dict[Key, list[Span]] = defaultdict(list)
    for e in entries:
        for addr in e.prefix:
            found[(e.proto, ipaddress.IPv4Network(addr), e.mark)].append((e.port_min, e.port_max))
    return found


def pool4_changes(wanted: Iterable[Pool4Entry], have: Iterable[Pool4Entry]) -> Pool4Changes:
    """Removals (to send first) and additions that make `have` equal `wanted`.

    A wanted entry none of whose addresses holds any of its ports is added
    in one request for the whole prefix (Jool splits it per address)."""
    wanted = list(wanted)
    want_by, have_by = _by_address(wanted), _by_address(have)
    removals = [Pool4Entry(proto, addr, lo, hi, mark)
                for (proto, addr, mark), spans in sorted(have_by.items(), key=str)
                for lo, hi in subtract(spans, want_by.get((proto, addr, mark), []))]
    additions: list[Pool4Entry] = []
    for e in wanted:
        per_addr = {addr: subtract([(e.port_min, e.port_max)],
                                   have_by.get((e.proto, ipaddress.IPv4Network(addr), e.mark), []))
                    for addr in e.prefix}
        if all(missing == [(e.port_min, e.port_max)] for missing in per_addr.values()):
            additions.append(e)
            continue
        additions.extend(Pool4Entry(e.proto, ipaddress.IPv4Network(addr), lo, hi, e.mark)
                         for addr, missing in per_addr.items() for lo, hi in missing)
    return Pool4Changes(tuple(removals), tuple(additions))
