"""Forgets the node's conntrack entries of translator blocks no longer in use.

The IPv4 leg's entries are keyed by pool4 source addresses. Once the /28
block that held them is gone (translator removed, or renumbered into another
block), those entries would keep rewriting late replies towards addresses
that now route nowhere, or, once the block is given to another translator,
into the wrong translator. They are deleted as soon as the block is.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

from pyroute2 import Conntrack
from pyroute2.conntrack import NFCTAttrTuple
from pyroute2.netlink.exceptions import NetlinkError

from felix_nat64.logs import EventLogger

_log = EventLogger("conntrack")
ENOENT = 2  # deleted meanwhile (expired, or by someone else)


def forget_blocks(blocks: Iterable[ipaddress.IPv4Network]) -> int:
    """Deletes the IPv4 conntrack entries whose original source lies in one of
    `blocks`; returns how many went."""
    nets = list(blocks)
    if not nets:
        return 0
    deleted = 0
    with Conntrack() as ct:
        # One dump of the IPv4 table; the kernel has no filter by source prefix.
        ipv4 = NFCTAttrTuple(family=socket.AF_INET)
        stale = [entry.tuple_orig for entry in ct.dump_entries(tuple_orig=ipv4)
                 if entry.tuple_orig.saddr is not None
                 and any(ipaddress.IPv4Address(entry.tuple_orig.saddr) in net for net in nets)]
        for orig in stale:
            try:
                ct.entry("del", tuple_orig=orig)
                deleted += 1
            except NetlinkError as exc:
                if exc.code != ENOENT:
                    raise
    if deleted:
        _log.info("conntrack entries of removed blocks deleted", entries=deleted,
                  blocks=",".join(map(str, nets)))
    return deleted
