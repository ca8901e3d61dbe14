"""How full a translator's pool4 is, and whether Jool is failing to allocate.

Jool 4.1 drops a packet it cannot give a pool4 transport address to without
any ICMP error (src/mod/common/steps/filtering_and_updating.c:155, UDP and
ICMP: JSTAT_BIB6_NOT_FOUND; src/mod/common/db/bib/db.c:1733, TCP:
JSTAT_UNKNOWN; v4.1.9), so the driver watches these counters and the fill
of pool4 to reject such flows itself (dataplane/pool4watch.py).
"""

from __future__ import annotations

from collections import Counter

from felix_nat64.drivers.jool.client import JoolClient
from felix_nat64.drivers.jool.constants import JSTAT_BIB_ENTRIES
from felix_nat64.model.ownership import JOOL_INSTANCE
from felix_nat64.model.protocol import PROTOCOLS, Protocol

# The counters each protocol's allocation failures land in.
FAILURE_COUNTERS = {str(Protocol.TCP): "JSTAT_UNKNOWN", str(Protocol.UDP): "JSTAT_BIB6_NOT_FOUND",
                    str(Protocol.ICMP): "JSTAT_BIB6_NOT_FOUND"}


def allocation_failures(namespace: str) -> dict[str, int]:
    """The counters Jool's pool4 allocation failures land in, by name."""
    with JoolClient.open(namespace) as jool:
        stats = jool.stats(JOOL_INSTANCE)
    return {name: stats.get(name, 0) for name in set(FAILURE_COUNTERS.values())}


def pool4_fill(namespace: str, protocols: tuple[Protocol, ...] = PROTOCOLS,
               exact_from: float = 0.0) -> dict[str, float]:
    """BIB entries per pool4 transport address, per protocol (1.0: full).

    Jool counts its BIB entries of every protocol together
    (JSTAT_BIB_ENTRIES), which bounds each protocol's share from above at no
    cost. A protocol whose bound stays under `exact_from` gets the bound;
    only the others have their BIB walked, so a busy node whose pool4 is far
    from full never pays for a walk."""
    with JoolClient.open(namespace) as jool:
        capacity: Counter[str] = Counter()
        for entry in jool.pool4_list(JOOL_INSTANCE):
            capacity[entry.proto] += entry.prefix.num_addresses * (entry.port_max - entry.port_min + 1)
        total = jool.stats(JOOL_INSTANCE).get(JSTAT_BIB_ENTRIES, 0)
        fill: dict[str, float] = {}
        for proto in protocols:
            if not capacity[proto]:
                continue
            bound = total / capacity[proto]
            fill[str(proto)] = (bound if bound < exact_from
                                else len(jool.bib_list(JOOL_INSTANCE, proto)) / capacity[proto])
        return fill
