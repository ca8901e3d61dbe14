"""Reads felix-nat64's kernel state for metrics and `status` (read-only)."""

from __future__ import annotations

import time
from collections import Counter

from felix_nat64.drivers.jool.client import JoolClient
from felix_nat64.drivers.jool.errors import JoolError
from felix_nat64.drivers.netns.links import discover
from felix_nat64.drivers.nft.table import Nft
from felix_nat64.model.state import JOOL_INSTANCE
from felix_nat64.observe.kernel_stats import PROTOCOLS, KernelStats, TranslatorStats


def sample_kernel(count_rows: bool = True) -> KernelStats:
    """One sample of nftables counters and every translator's Jool instance.

    `count_rows` walks BIB and session tables to count them per protocol
    (Jool's stats only give totals); it costs one netlink dump per table.
    """
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
        translators.append(_translator(found.namespace, str(found.parent or ""), count_rows))
    errors += [f"{t.namespace}: {t.error}" for t in translators if t.error]
    return KernelStats(time.time(), nft, tuple(translators), "; ".join(errors))


def _translator(namespace: str, parent: str, count_rows: bool) -> TranslatorStats:
    try:
        with JoolClient.open(namespace) as jool:
            if not jool.instance_exists(JOOL_INSTANCE):
                return TranslatorStats(namespace, parent, instance=False)
            ports: Counter[str] = Counter()
            for entry in jool.pool4_list(JOOL_INSTANCE):
                ports[entry.proto] += entry.prefix.num_addresses * (entry.port_max - entry.port_min + 1)
            stats = jool.stats(JOOL_INSTANCE)
            bib: Counter[str] = Counter()
            sessions: Counter[str] = Counter()
            if count_rows:
                for proto in PROTOCOLS:
                    bib[proto] = len(jool.bib_list(JOOL_INSTANCE, proto))
                    sessions[proto] = len(jool.session_list(JOOL_INSTANCE, proto))
            return TranslatorStats(namespace, parent, True, dict(sessions), dict(bib), dict(ports), stats)
    except (JoolError, OSError) as exc:
        return TranslatorStats(namespace, parent, instance=False, error=str(exc))
