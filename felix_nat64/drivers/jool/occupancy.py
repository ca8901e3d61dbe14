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


def pool4_fill(namespace: str, protocols: tuple[Protocol, ...] = PROTOCOLS) -> dict[str, float]:
    """BIB entries per pool4 transport address, per protocol (1.0: full).

    Walks the BIB of each protocol asked for: call it when failures rose, not
    routinely."""
    with JoolClient.open(namespace) as jool:
        capacity: Counter[str] = Counter()
        for entry in jool.pool4_list(JOOL_INSTANCE):
            capacity[entry.proto] += entry.prefix.num_addresses * (entry.port_max - entry.port_min + 1)
        return {str(proto): len(jool.bib_list(JOOL_INSTANCE, proto)) / capacity[proto]
                for proto in protocols if capacity[proto]}
