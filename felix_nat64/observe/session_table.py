"""One page of Jool's session (or BIB) tables, read no further than it needs.

Jool lists a table a reply at a time (a few dozen rows each) and resumes
after the last row it sent, so a page asks only for the replies up to its
last row, plus, at most, what it takes to find one more row and say whether
there are more. Without filters the rows before the page are counted, not
decoded, and a translator whose whole table lies before the page is skipped
on the strength of Jool's own count (JSTAT_SESSIONS, JSTAT_BIB_ENTRIES). With
`--pod`, `--dest` or `--namespace` every row up to the page's end has to be
read, since any of them may match.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass

from felix_nat64.drivers.discovery import FoundTranslator
from felix_nat64.drivers.jool.client import JoolClient
from felix_nat64.drivers.jool.codec import Attr, decode_bib, decode_session
from felix_nat64.drivers.jool.entries import BibEntry, SessionEntry
from felix_nat64.model.ownership import JOOL_INSTANCE
from felix_nat64.model.protocol import PROTOCOLS, Protocol
from felix_nat64.model.workloads import Workload, WorkloadIndex
from felix_nat64.observe.kernel_stats import JSTAT_BIB_ENTRIES, JSTAT_SESSIONS


@dataclass(frozen=True)
class TableQuery:
    """Which rows, and which page of them."""

    bib: bool = False  # BIB entries instead of sessions
    proto: Protocol | None = None
    pod: ipaddress.IPv6Network | None = None  # the IPv6 side's address
    dest: ipaddress.IPv4Network | None = None  # the IPv4 destination (sessions only)
    namespace: str | None = None  # the pod's namespace, by the driver's workloads
    limit: int = 100
    page: int = 1

    @property
    def filtered(self) -> bool:
        """Whether rows have to be read to know if they belong."""
        return self.pod is not None or self.dest is not None or self.namespace is not None

    @property
    def skip(self) -> int:
        return (self.page - 1) * self.limit

    def matches(self, row: SessionEntry | BibEntry, workload: Workload | None) -> bool:
        if self.namespace is not None and (workload is None or workload.namespace != self.namespace):
            return False
        if isinstance(row, BibEntry):
            return self.dest is None and (self.pod is None or row.ipv6.address in self.pod)
        return (self.pod is None or row.src6.address in self.pod) and \
            (self.dest is None or row.dst4.address in self.dest)


@dataclass(frozen=True)
class TableRow:
    """A row, the /96 of the translator it comes from (None when the
    translator's link no longer says) and the pod holding its IPv6 address
    (None when the driver knows no such pod)."""

    parent: ipaddress.IPv6Network | None
    entry: SessionEntry | BibEntry
    workload: Workload | None = None


@dataclass(frozen=True)
class TablePage:
    """A page of rows; `total` is None when knowing it would take reading the
    rest of the table (a filter, or one protocol, over a table that goes on)."""

    query: TableQuery
    rows: tuple[TableRow, ...]
    total: int | None
    more: bool  # rows exist after this page

    @property
    def first(self) -> int:
        """The number of the page's first row, from 1."""
        return self.query.skip + 1


class _Walk:
    """State of one walk across translators and protocols."""

    def __init__(self, query: TableQuery, workloads: WorkloadIndex) -> None:
        self.query = query
        self.workloads = workloads
        self.to_skip = query.skip
        self.seen = 0  # matching rows met so far, skipped ones included
        self.rows: list[TableRow] = []
        self.more = False

    @property
    def full(self) -> bool:
        return len(self.rows) >= self.query.limit

    def skip_whole(self, count: int) -> bool:
        """Skips `count` rows known to lie before the page, unread; False if
        the page starts among them."""
        if self.query.filtered or self.to_skip < count:
            return False
        self.to_skip -= count
        self.seen += count
        return True

    def take(self, parent: ipaddress.IPv6Network | None, page: list[Attr]) -> bool:
        """Takes what the page needs from one reply; True once the walk can stop."""
        if self.skip_whole(len(page)):
            return False
        decode = decode_bib if self.query.bib else decode_session
        for item in page:
            entry = decode(item)
            workload = self.workloads.lookup(entry.ipv6.address if isinstance(entry, BibEntry)
                                             else entry.src6.address)
            if not self.query.matches(entry, workload):
                continue
            if self.full:
                self.more = True
                return True
            self.seen += 1
            if self.to_skip:
                self.to_skip -= 1
                continue
            self.rows.append(TableRow(parent, entry, workload))
        return False


def read_page(translators: list[FoundTranslator], query: TableQuery,
              workloads: WorkloadIndex | None = None) -> TablePage:
    """The rows of `query`'s page from the translators' Jool instances, in
    translator, protocol and Jool order, each named by `workloads`. Raises
    JoolError (or OSError) when a translator cannot be read."""
    walk = _Walk(query, workloads or WorkloadIndex())
    # Without a filter or a protocol, Jool's counts give the total, and let the
    # walk step over whole translators.
    counted = not query.filtered and query.proto is None
    counted_total = 0
    stopped = False
    for found in translators:
        if found.namespace is None or (stopped and not counted):
            continue
        with JoolClient.open(found.namespace) as jool:
            if counted:
                size = jool.stats(JOOL_INSTANCE).get(JSTAT_BIB_ENTRIES if query.bib else JSTAT_SESSIONS, 0)
                counted_total += size
                if stopped or walk.full or walk.skip_whole(size):
                    walk.more = walk.more or (walk.full and size > 0)
                    continue
            stopped = _walk_translator(jool, found.parent, walk)
    total: int | None = walk.seen
    if walk.more:
        total = max(counted_total, walk.seen + 1) if counted else None
    return TablePage(query, tuple(walk.rows), total, walk.more)


def _walk_translator(jool: JoolClient, parent: ipaddress.IPv6Network | None, walk: _Walk) -> bool:
    """Walks one translator's tables; True once the page and the peek past it are done."""
    for proto in PROTOCOLS if walk.query.proto is None else (walk.query.proto,):
        pages: Iterator[list[Attr]] = (jool.bib_pages(JOOL_INSTANCE, proto) if walk.query.bib
                                       else jool.session_pages(JOOL_INSTANCE, proto))
        for page in pages:
            if walk.take(parent, page):
                return True
    return False
