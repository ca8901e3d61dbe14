"""Keeps the `inet felix-nat64` table equal to the rendered ruleset.

The kernel's table is read back and compared with the desired one (chains,
tagged rules in order, set contents, counters, `ct timeout` objects). When
only set contents differ, just the elements that change are deleted and
added; otherwise the table is refilled, its sets still changed element by
element (see `Ruleset.element_updates` for why an element kept must not be
re-added). Either way it is one libnftables transaction: everything changes
or nothing does, and named counters keep their values. The table itself is
never deleted while it is wanted: between a delete and the next create,
steered packets would leave untranslated.
`ct timeout` objects are created just before, in a transaction of their own
written in nft's text syntax (see `CtTimeout.text`), and compared by name
only: the name carries the timeouts, while a listing leaves out every
policy value equal to libnftables' built-in default for its state (nftables
v1.0.6 src/json.c:302, defaults in src/rule.c:60-77). Tables we do not own
are never listed, flushed or changed.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import nftables

from felix_nat64.drivers.nft.ruleset import COUNTERS, Ruleset, element_key
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
    # (chain, tag), grouped by chain in a stable sort: only the order within
    # a chain matters, and a listing gives chains in the order they were made.
    rules: tuple[tuple[str, str], ...]
    sets: dict[str, tuple[str, frozenset[Net]]]
    counters: frozenset[str]
    # ct timeout objects: (name, protocol)
    objects: frozenset[tuple[str, str]] = frozenset()


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

    def run_text(self, text: str, *, dry_run: bool = False) -> None:
        """Runs nft commands in its text syntax as one transaction."""
        self._nft.set_dry_run(dry_run)
        try:
            rc, _, err = self._nft.cmd(text)
        finally:
            self._nft.set_dry_run(False)
        if rc != 0:
            first = text.splitlines()[0] if text else ""
            raise NftError(f"nftables transaction ({first}...) failed: {err.strip()}")

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


def _unwrapped(item: Any) -> Any:
    # Elements with attributes (timeouts, counters) come wrapped.
    return item["elem"].get("val") if isinstance(item, dict) and "elem" in item else item


def _elem_nets(elems: Iterable[Any]) -> frozenset[Net]:
    nets: list[Net] = []
    for item in elems:
        key = element_key(_unwrapped(item))
        if isinstance(key, ipaddress.IPv4Network | ipaddress.IPv6Network):
            nets.append(key)
        elif isinstance(key, tuple):
            nets.extend(ipaddress.summarize_address_range(*key))
    v4 = [n for n in nets if n.version == 4]
    v6 = [n for n in nets if n.version == 6]
    return frozenset([*ipaddress.collapse_addresses(v4), *ipaddress.collapse_addresses(v6)])


def _set_elements(items: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Each listed set's elements as libnftables gives them (attributes
    such as counters left off), for deleting exactly what is there."""
    return {item["set"]["name"]: [_unwrapped(e) for e in item["set"].get("elem", [])]
            for item in items if "set" in item}


def _by_chain(rules: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(rules, key=lambda rule: rule[0]))


def view_of_kernel(items: list[dict[str, Any]]) -> TableView:
    chains, rules, sets, counters, objects = set(), [], {}, set(), set()
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
        elif "ct timeout" in item:
            o = item["ct timeout"]
            objects.add((o["name"], o.get("protocol", "")))
    return TableView(frozenset(chains), _by_chain(rules), sets, frozenset(counters), frozenset(objects))


def view_of_ruleset(rs: Ruleset) -> TableView:
    return TableView(
        frozenset((c["name"], c["type"], c["hook"], c["prio"]) for c in rs.chains),
        _by_chain(rs.rule_tags()),
        {s["name"]: (s["type"], _elem_nets(rs.elements[s["name"]])) for s in rs.sets},
        frozenset(COUNTERS),
        frozenset((o.name, o.protocol) for o in rs.ct_timeouts),
    )


# A throwaway table that only a dry run ever "creates": the kernel checks the
# whole transaction and then aborts it.
_PROBE = ("add table inet felix-nat64-probe\n"
          "add ct timeout inet felix-nat64-probe probe { protocol udp; l3proto ip; "
          "policy = { unreplied : 30 }; }")


class NftTable:
    """Converges the kernel's felix-nat64 table on a rendered ruleset."""

    def __init__(self, nft: Nft | None = None) -> None:
        self.nft = nft or Nft()
        self._log = EventLogger("nft")
        self._ct_timeouts: bool | None = None

    def ct_timeouts_supported(self) -> bool:
        """Whether this kernel takes nftables `ct timeout` objects (needs
        CONFIG_NF_CONNTRACK_TIMEOUT and nft_ct); checked once, by a dry run."""
        if self._ct_timeouts is None:
            try:
                self.nft.run_text(_PROBE, dry_run=True)
                self._ct_timeouts = True
            except NftError as exc:
                self._log.warning("conntrack timeout objects unsupported", error=str(exc))
                self._ct_timeouts = False
        return self._ct_timeouts

    def apply(self, desired: Ruleset | None) -> int:
        """Returns 1 if the table was (re)written or removed, else 0."""
        items = self.nft.list_table()
        if desired is None:
            if items is None:
                return 0
            self.nft.run([{"delete": {"table": {"family": FAMILY, "name": TABLE}}}])
            self._log.info("table removed")
            return 1
        want = view_of_ruleset(desired)
        if items is None:
            self._objects(desired)
            self.nft.run(desired.commands())
            self._log.info("table created")
            return 1
        have = view_of_kernel(items)
        if have == want:
            return 0
        present = _set_elements(items)
        self._log.info("table differs, updating", detail=_difference(have, want))
        if _same_shape(have, want):
            # Only set contents differ: the elements that change, nothing else.
            self.nft.run([cmd for name in sorted(want.sets)
                          for cmd in desired.element_updates(name, present[name])])
            return 1
        self._objects(desired, have)
        old_sets = _replaced_sets(have, want)
        kept = {name: elems for name, elems in present.items() if name not in old_sets}
        self.nft.run(_removals(have, want, items, old_sets) + desired.commands(kept))
        stale = {name for name, _ in have.objects - want.objects}
        if stale:
            # Only now does no rule refer to them. In text: libnftables 1.0.6
            # aborts on a JSON `delete ct timeout`.
            self.nft.run_text("\n".join(f"delete ct timeout {FAMILY} {TABLE} {name}"
                                         for name in sorted(stale)))
        return 1

    def _objects(self, desired: Ruleset, have: TableView | None = None) -> None:
        """Creates the table and the `ct timeout` objects the rules refer to."""
        present = {name for name, _ in have.objects} if have else set()
        if have is None or {o.name for o in desired.ct_timeouts} - present:
            self.nft.run_text(desired.object_commands())


def _replaced_sets(have: TableView, want: TableView) -> list[str]:
    """Sets we no longer declare or whose type changed."""
    return sorted(name for name, (kind, _) in have.sets.items()
                  if name not in want.sets or want.sets[name][0] != kind)


def _removals(have: TableView, want: TableView, items: list[dict[str, Any]],
              old_sets: list[str]) -> list[dict[str, Any]]:
    """Commands that clear what the refill cannot overwrite: chains we no
    longer declare or whose hook changed, and `old_sets`. They run in the
    refill's transaction, after a flush of every chain's rules (rules are
    all that refer to chains and sets; set elements are left alone)."""
    wanted_chains = {chain[0]: chain for chain in want.chains}
    old_chains = sorted(c[0] for c in have.chains if wanted_chains.get(c[0]) != c)
    if not old_chains and not old_sets:
        return []
    listed = sorted(item["chain"]["name"] for item in items if "chain" in item)
    cmds = [{"flush": {"chain": {"family": FAMILY, "table": TABLE, "name": n}}} for n in listed]
    cmds += [{"delete": {"chain": {"family": FAMILY, "table": TABLE, "name": n}}} for n in old_chains]
    cmds += [{"delete": {"set": {"family": FAMILY, "table": TABLE, "name": n}}} for n in old_sets]
    return cmds


def _same_shape(have: TableView, want: TableView) -> bool:
    """Whether the table differs only in the contents of its sets."""
    return (have.chains, have.rules, have.counters, have.objects) == \
        (want.chains, want.rules, want.counters, want.objects) and \
        {n: kind for n, (kind, _) in have.sets.items()} == {n: kind for n, (kind, _) in want.sets.items()}


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
    if have.objects != want.objects:
        parts.append("ct timeouts")
    return ",".join(parts) or "unknown"
