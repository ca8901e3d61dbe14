"""Reads felix-nat64's kernel state for metrics and `status` (read-only).

The cost of a sample does not depend on how many sessions Jool holds: per
translator it asks whether the instance exists, lists pool4 (a few entries)
and reads Jool's counters, whose JSTAT_BIB_ENTRIES and JSTAT_SESSIONS are the
table sizes. The session census (`take_census`) is the one read that walks
the session tables, and runs rarely (`felix_nat64.observe.census`).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from felix_nat64.drivers.discovery import translators as discover
from felix_nat64.drivers.jool.client import JoolClient
from felix_nat64.drivers.jool.codec import session_sources
from felix_nat64.drivers.jool.errors import JoolError
from felix_nat64.drivers.nft.table import Nft
from felix_nat64.model.ownership import JOOL_INSTANCE
from felix_nat64.model.protocol import PROTOCOLS, Protocol
from felix_nat64.model.workloads import WorkloadIndex
from felix_nat64.observe.census import UNKNOWN, Census, TranslatorCensus, rank_namespaces
from felix_nat64.observe.kernel_stats import KernelStats, TranslatorStats


def sample_kernel() -> KernelStats:
    """One sample of nftables counters and every translator's Jool instance."""
    errors: list[str] = []
    try:
        nft = Nft().counters()
    except Exception as exc:  # a failing part must not hide the others
        nft = {}
        errors.append(f"nftables: {exc}")
    translators = []
    for found in discover():
        if found.namespace is None:
            continue
        translators.append(_translator(found.namespace, str(found.parent or "")))
    errors += [f"{t.namespace}: {t.error}" for t in translators if t.error]
    return KernelStats(time.time(), nft, tuple(translators), "; ".join(errors))


def _translator(namespace: str, parent: str) -> TranslatorStats:
    try:
        with JoolClient.open(namespace) as jool:
            if not jool.instance_exists(JOOL_INSTANCE):
                return TranslatorStats(namespace, parent, instance=False)
            ports: Counter[Protocol] = Counter()
            for entry in jool.pool4_list(JOOL_INSTANCE):
                span = entry.port_max - entry.port_min + 1
                ports[Protocol(entry.proto)] += entry.prefix.num_addresses * span
            return TranslatorStats.from_counters(namespace, parent, dict(ports), jool.stats(JOOL_INSTANCE))
    except (JoolError, OSError) as exc:
        return TranslatorStats(namespace, parent, instance=False, error=str(exc))


def count_translator(jool: JoolClient, workloads: WorkloadIndex,
                     namespaces: Counter[str]) -> tuple[dict[Protocol, int], dict[Protocol, int]]:
    """Sessions and BIB entries per protocol of one Jool instance; adds each
    session to its pod's namespace in `namespaces`."""
    sessions: dict[Protocol, int] = {}
    bib: dict[Protocol, int] = {}
    names: dict[bytes, str] = {}  # pod address -> namespace, for this walk
    for proto in PROTOCOLS:
        count = entries = 0
        last_pool4 = b""
        for page in jool.session_pages(JOOL_INSTANCE, proto):
            for item in page:
                pod, pool4 = session_sources(item)
                count += 1
                if pool4 != last_pool4:
                    entries += 1
                    last_pool4 = pool4
                namespace = names.get(pod)
                if namespace is None:
                    workload = workloads.lookup_packed(pod)
                    namespace = names[pod] = workload.namespace if workload is not None else UNKNOWN
                namespaces[namespace] += 1
        sessions[proto] = count
        bib[proto] = entries
    return sessions, bib


def take_census(workloads: WorkloadIndex, clock: Callable[[], float] = time.time) -> Census:
    """Reads every session of every translator on this node once."""
    start = time.monotonic()
    namespaces: Counter[str] = Counter()
    translators: list[TranslatorCensus] = []
    for found in discover():
        if found.namespace is None:
            continue
        parent = str(found.parent or "")
        try:
            with JoolClient.open(found.namespace) as jool:
                sessions, bib = count_translator(jool, workloads, namespaces)
            translators.append(TranslatorCensus(found.namespace, parent, sessions, bib))
        except (JoolError, OSError) as exc:
            translators.append(TranslatorCensus(found.namespace, parent, error=str(exc)))
    errors = "; ".join(f"{t.namespace}: {t.error}" for t in translators if t.error)
    return Census(clock(), time.monotonic() - start, tuple(translators), rank_namespaces(namespaces), errors)
