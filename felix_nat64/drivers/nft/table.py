"""Keeps the `inet felix-nat64` table equal to the rendered ruleset.

The kernel's table is read back and compared with the desired one (chains,
tagged rules in order, set contents, counters). When anything differs, the
table is refilled in one libnftables transaction: either everything
changes or nothing does, and named counters keep their values. Tables we do
not own are never listed, flushed or changed.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import nftables

from felix_nat64.drivers.nft.ruleset import COUNTERS, Ruleset
from felix_nat64.logs import EventLogger
from felix_nat64.model.ownership import NFT_FAMILY as FAMILY
from felix_nat64.model.ownership import NFT_TABLE as TABLE

Net = ipaddress.IPv4Network | ipaddress.IPv6Network


class NftError(Exception):
    """libnftables refused a command; the message quotes its error output."""


@dataclass(frozen=True)
class TableView:
    """The parts of our table that the comparison looks at."""

    chains: frozenset[tuple[str, str, str, int]]
    rules: tuple[tuple[str, str], ...]
    sets: dict[str, tuple[str, frozenset[Net]]]
    counters: frozenset[str]


class Nft:
    """A thin adapter over libnftables' JSON interface."""

    def __init__(self) -> None:
        self._nft = nftables.Nftables()
        self._nft.set_json_output(True)
        self._nft.set_handle_output(False)

    def run(self, commands: list[dict[str, Any]]) -> None:
        rc, _, err = self._nft.json_cmd({"nftables": commands})
        if rc != 0:
            summary = ", ".join(sorted({next(iter(c)) + " " + next(iter(next(iter(c.values()))))
                                        for c in commands}))
            raise NftError(f"nftables transaction ({len(commands)} commands: {summary}) failed: "
                           f"{err.strip()}")

    def list_table(self) -> list[dict[str, Any]] | None:
        """Our table's objects, or None if it does not exist."""
        rc, out, err = self._nft.cmd(f"list table {FAMILY} {TABLE}")
        if rc != 0:
            if "No such file or directory" in err or "does not exist" in err:
                return None
            raise NftError(f"listing table {FAMILY} {TABLE} failed: {err.strip()}")
        items: list[dict[str, Any]] = json.loads(out).get("nftables", [])
        return items

    def counters(self) -> dict[str, tuple[int, int]]:
        """Named counters of our table: name -> (packets, bytes)."""
        rc, out, _ = self._nft.cmd(f"list counters table {FAMILY} {TABLE}")
        if rc != 0:
            return {}
        result = {}
        for item in json.loads(out).get("nftables", []):
            counter = item.get("counter")
            if counter and counter.get("table") == TABLE:
                result[counter["name"]] = (int(counter.get("packets", 0)), int(counter.get("bytes", 0)))
        return result


def _elem_nets(elems: Iterable[Any]) -> frozenset[Net]:
    nets: list[Net] = []
    for item in elems:
        # Elements with attributes (timeouts, counters) come wrapped.
        elem = item["elem"].get("val") if isinstance(item, dict) and "elem" in item else item
        if isinstance(elem, str):
            nets.append(ipaddress.ip_network(elem))
        elif isinstance(elem, dict) and "prefix" in elem:
            nets.append(ipaddress.ip_network((elem["prefix"]["addr"], elem["prefix"]["len"])))
        elif isinstance(elem, dict) and "range" in elem:
            first, last = (ipaddress.ip_address(a) for a in elem["range"])
            nets.extend(ipaddress.summarize_address_range(first, last))
    v4 = [n for n in nets if n.version == 4]
    v6 = [n for n in nets if n.version == 6]
    return frozenset([*ipaddress.collapse_addresses(v4), *ipaddress.collapse_addresses(v6)])


def view_of_kernel(items: list[dict[str, Any]]) -> TableView:
    chains, rules, sets, counters = set(), [], {}, set()
    for item in items:
        if "chain" in item:
            c = item["chain"]
            chains.add((c["name"], c.get("type", ""), c.get("hook", ""), int(c.get("prio", 0))))
        elif "rule" in item:
            r = item["rule"]
            rules.append((r["chain"], r.get("comment", "")))
        elif "set" in item:
            s = item["set"]
            sets[s["name"]] = (s["type"], _elem_nets(s.get("elem", [])))
        elif "counter" in item:
            counters.add(item["counter"]["name"])
    return TableView(frozenset(chains), tuple(rules), sets, frozenset(counters))


def view_of_ruleset(rs: Ruleset) -> TableView:
    return TableView(
        frozenset((c["name"], c["type"], c["hook"], c["prio"]) for c in rs.chains),
        tuple(rs.rule_tags()),
        {s["name"]: (s["type"], _elem_nets(rs.elements[s["name"]])) for s in rs.sets},
        frozenset(COUNTERS),
    )


class NftTable:
    """Converges the kernel's felix-nat64 table on a rendered ruleset."""

    def __init__(self, nft: Nft | None = None) -> None:
        self.nft = nft or Nft()
        self._log = EventLogger("nft")

    def apply(self, desired: Ruleset | None) -> int:
        """Returns 1 if the table was (re)written or removed, else 0."""
        items = self.nft.list_table()
        if desired is None:
            if items is None:
                return 0
            self.nft.run([{"delete": {"table": {"family": FAMILY, "name": TABLE}}}])
            self._log.info("table removed")
            return 1
        if items is not None:
            have = view_of_kernel(items)
            want = view_of_ruleset(desired)
            if have == want:
                return 0
            self._log.info("table differs, rewriting", detail=_difference(have, want))
            cmds = desired.commands()
            if not have.chains <= want.chains or set(have.sets) - set(want.sets):
                # Something we no longer declare (or a changed hook): start afresh.
                cmds = [{"delete": {"table": {"family": FAMILY, "name": TABLE}}}, *cmds]
            self.nft.run(cmds)
            return 1
        self.nft.run(desired.commands())
        self._log.info("table created")
        return 1


def _difference(have: TableView, want: TableView) -> str:
    parts = []
    if have.chains != want.chains:
        parts.append("chains")
    if have.rules != want.rules:
        parts.append("rules")
    for name in sorted(set(have.sets) | set(want.sets)):
        if have.sets.get(name) != want.sets.get(name):
            parts.append(f"set {name}")
    if have.counters != want.counters:
        parts.append("counters")
    return ",".join(parts) or "unknown"
