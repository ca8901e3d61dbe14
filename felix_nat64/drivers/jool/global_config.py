"""Jool's global configuration values: CLI names, wire types, encoding.

Names are those `jool global display` prints (src/common/global.c); wire
types are those of nat64_globals_policy. Timeouts are u32 milliseconds on the
wire and here.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

from felix_nat64.drivers.jool.codec import (
    Attr,
    attr_bool,
    attr_nested,
    attr_prefix4,
    attr_prefix6,
    attr_u8,
    attr_u16,
    attr_u32,
    decode_prefix4,
    decode_prefix6,
)
from felix_nat64.drivers.jool.constants import GlobalAttr, ListAttr
from felix_nat64.drivers.jool.errors import JoolProtocolError

GlobalValue = bool | int | tuple[int, ...] | ipaddress.IPv6Network | ipaddress.IPv4Network | None

PLATEAUS_MAX = 64


class Kind(Enum):
    BOOL = "bool"
    U8 = "u8"
    U32 = "u32"
    TIMEOUT = "timeout (u32 ms)"
    PLATEAUS = "list of u16"
    PREFIX6 = "IPv6 prefix or None"
    PREFIX4 = "IPv4 prefix or None"


@dataclass(frozen=True)
class GlobalSpec:
    id: GlobalAttr
    name: str
    kind: Kind
    nat64: bool = True  # False: SIIT only, never reported by a NAT64 instance
    since: int = 9  # first 4.1 revision that has it


GLOBALS: tuple[GlobalSpec, ...] = (
    GlobalSpec(GlobalAttr.ENABLED, "manually-enabled", Kind.BOOL),
    GlobalSpec(GlobalAttr.POOL6, "pool6", Kind.PREFIX6),
    GlobalSpec(GlobalAttr.LOWEST_IPV6_MTU, "lowest-ipv6-mtu", Kind.U32),
    GlobalSpec(GlobalAttr.DEBUG, "logging-debug", Kind.BOOL),
    GlobalSpec(GlobalAttr.RESET_TC, "zeroize-traffic-class", Kind.BOOL),
    GlobalSpec(GlobalAttr.RESET_TOS, "override-tos", Kind.BOOL),
    GlobalSpec(GlobalAttr.TOS, "tos", Kind.U8),
    GlobalSpec(GlobalAttr.PLATEAUS, "mtu-plateaus", Kind.PLATEAUS),
    GlobalSpec(GlobalAttr.COMPUTE_CSUM_ZERO, "amend-udp-checksum-zero", Kind.BOOL, nat64=False),
    GlobalSpec(GlobalAttr.HAIRPIN_MODE, "eam-hairpin-mode", Kind.U8, nat64=False),
    GlobalSpec(GlobalAttr.RANDOMIZE_ERROR_ADDR, "randomize-rfc6791-addresses", Kind.BOOL, nat64=False),
    GlobalSpec(GlobalAttr.POOL6791V6, "rfc6791v6-prefix", Kind.PREFIX6, nat64=False),
    GlobalSpec(GlobalAttr.POOL6791V4, "rfc6791v4-prefix", Kind.PREFIX4, nat64=False),
    GlobalSpec(GlobalAttr.DROP_BY_ADDR, "address-dependent-filtering", Kind.BOOL),
    GlobalSpec(GlobalAttr.DROP_EXTERNAL_TCP, "drop-externally-initiated-tcp", Kind.BOOL),
    GlobalSpec(GlobalAttr.DROP_ICMP6_INFO, "drop-icmpv6-info", Kind.BOOL),
    GlobalSpec(GlobalAttr.SRC_ICMP6_BETTER, "source-icmpv6-errors-better", Kind.BOOL),
    GlobalSpec(GlobalAttr.F_ARGS, "f-args", Kind.U8),
    GlobalSpec(GlobalAttr.HANDLE_RST, "handle-rst-during-fin-rcv", Kind.BOOL),
    GlobalSpec(GlobalAttr.TTL_TCP_EST, "tcp-est-timeout", Kind.TIMEOUT),
    GlobalSpec(GlobalAttr.TTL_TCP_TRANS, "tcp-trans-timeout", Kind.TIMEOUT),
    GlobalSpec(GlobalAttr.TTL_UDP, "udp-timeout", Kind.TIMEOUT),
    GlobalSpec(GlobalAttr.TTL_ICMP, "icmp-timeout", Kind.TIMEOUT),
    GlobalSpec(GlobalAttr.BIB_LOGGING, "logging-bib", Kind.BOOL),
    GlobalSpec(GlobalAttr.SESSION_LOGGING, "logging-session", Kind.BOOL),
    GlobalSpec(GlobalAttr.MAX_STORED_PKTS, "maximum-simultaneous-opens", Kind.U32),
    GlobalSpec(GlobalAttr.JOOLD_ENABLED, "ss-enabled", Kind.BOOL),
    GlobalSpec(GlobalAttr.JOOLD_FLUSH_ASAP, "ss-flush-asap", Kind.BOOL),
    GlobalSpec(GlobalAttr.JOOLD_FLUSH_DEADLINE, "ss-flush-deadline", Kind.U32),
    GlobalSpec(GlobalAttr.JOOLD_CAPACITY, "ss-capacity", Kind.U32),
    GlobalSpec(GlobalAttr.JOOLD_MAX_PAYLOAD, "ss-max-payload", Kind.U32),
    GlobalSpec(GlobalAttr.JOOLD_MAX_SESSIONS_PER_PACKET, "ss-max-sessions-per-packet", Kind.U32, since=11),
)

BY_NAME: dict[str, GlobalSpec] = {spec.name: spec for spec in GLOBALS}
BY_ID: dict[int, GlobalSpec] = {int(spec.id): spec for spec in GLOBALS}


def nat64_names(revision: int) -> tuple[str, ...]:
    """Every global a NAT64 instance of Jool 4.1.`revision` reports, in id order."""
    return tuple(spec.name for spec in GLOBALS if spec.nat64 and spec.since <= revision)


def decode_value(spec: GlobalSpec, item: Attr) -> GlobalValue:
    if spec.kind is Kind.BOOL:
        return bool(item.u8())
    if spec.kind is Kind.U8:
        return item.u8()
    if spec.kind in (Kind.U32, Kind.TIMEOUT):
        return item.u32()
    if spec.kind is Kind.PLATEAUS:
        return tuple(child.u16() for child in item.children() if child.type == ListAttr.ENTRY)
    if spec.kind is Kind.PREFIX6:
        return decode_prefix6(item)
    return decode_prefix4(item)


def decode_globals(items: Iterable[Attr]) -> list[tuple[GlobalSpec, GlobalValue]]:
    """The globals of GLOBAL_FOREACH replies (top-level attributes, type = id),
    in the order sent. Ids this client does not know (a newer module) are skipped."""
    out = []
    for item in items:
        spec = BY_ID.get(item.type)
        if spec is None:
            continue
        try:
            out.append((spec, decode_value(spec, item)))
        except JoolProtocolError as exc:
            raise JoolProtocolError(f"global {spec.name}: {exc.message}") from None
    return out


def _int_in(name: str, value: object, bits: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < (1 << bits):
        raise ValueError(f"Jool global {name!r} takes an integer from 0 to {(1 << bits) - 1}, not {value!r}")
    return value


def encode_value(spec: GlobalSpec, value: object) -> bytes:
    """One global as the attribute GLOBAL_UPDATE expects inside JNLAR_GLOBALS."""
    name = spec.name
    if spec.kind is Kind.BOOL:
        if not isinstance(value, bool):
            raise ValueError(f"Jool global {name!r} takes a bool, not {value!r}")
        return attr_bool(spec.id, value)
    if spec.kind is Kind.U8:
        return attr_u8(spec.id, _int_in(name, value, 8))
    if spec.kind in (Kind.U32, Kind.TIMEOUT):
        return attr_u32(spec.id, _int_in(name, value, 32))
    if spec.kind is Kind.PLATEAUS:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) \
                or not 0 < len(value) <= PLATEAUS_MAX:
            raise ValueError(f"Jool global {name!r} takes 1 to {PLATEAUS_MAX} MTU values, not {value!r}")
        return attr_nested(spec.id, *(attr_u16(ListAttr.ENTRY, _int_in(name, v, 16)) for v in value))
    if spec.kind is Kind.PREFIX6:
        if value is not None and not isinstance(value, ipaddress.IPv6Network):
            raise ValueError(f"Jool global {name!r} takes an IPv6Network or None, not {value!r}")
        return attr_prefix6(spec.id, value)
    if value is not None and not isinstance(value, ipaddress.IPv4Network):
        raise ValueError(f"Jool global {name!r} takes an IPv4Network or None, not {value!r}")
    return attr_prefix4(spec.id, value)


def encode_globals(values: Mapping[str, object], revision: int) -> bytes:
    """The contents of JNLAR_GLOBALS for a NAT64 instance of Jool 4.1.`revision`.
    Raises ValueError for unknown names, SIIT-only ones, and wrong types."""
    if not values:
        raise ValueError("no Jool globals to update")
    parts: list[tuple[int, bytes]] = []
    for name, value in values.items():
        spec = BY_NAME.get(name)
        if spec is None:
            raise ValueError(f"unknown Jool global {name!r}; known: {', '.join(nat64_names(revision))}")
        if not spec.nat64:
            raise ValueError(f"Jool global {name!r} only exists in SIIT instances")
        if spec.since > revision:
            raise ValueError(f"Jool global {name!r} needs Jool 4.1.{spec.since} or later "
                             f"(loaded: 4.1.{revision})")
        parts.append((spec.id, encode_value(spec, value)))
    return b"".join(blob for _, blob in sorted(parts))
