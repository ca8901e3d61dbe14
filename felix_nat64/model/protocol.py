"""The transport protocols a NAT64 translator keeps state for (RFC 6146 section 3)."""

from __future__ import annotations

from enum import StrEnum


class Protocol(StrEnum):
    """TCP, UDP and ICMP query sessions: Jool's three BIB and session tables.

    A StrEnum: a member is its lower-case name wherever text is needed (CLI
    choices, JSON, metric labels), so `Protocol("tcp")` parses what those give.
    """

    TCP = "tcp"
    UDP = "udp"
    ICMP = "icmp"


# In the order tables are listed and shown: TCP, then UDP, then ICMP.
PROTOCOLS: tuple[Protocol, ...] = tuple(Protocol)
