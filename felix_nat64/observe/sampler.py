"""Reads felix-nat64's kernel state for metrics and `status` (read-only).

The cost of a sample does not depend on how many sessions Jool holds: per
translator it asks whether the instance exists, lists pool4 (a few entries)
and reads Jool's counters, whose JSTAT_BIB_ENTRIES and JSTAT_SESSIONS are the
table sizes.
"""

from __future__ import annotations

import time
from collections import Counter

from felix_nat64.drivers.jool.client import JoolClient
from felix_nat64.drivers.jool.errors import JoolError
from felix_nat64.drivers.netns.links import discover
from felix_nat64.drivers.nft.table import Nft
from felix_nat64.model.protocol import Protocol
from felix_nat64.model.state import JOOL_INSTANCE
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
