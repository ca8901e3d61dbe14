"""Typed Felix messages, and the cheap decision of which frames to parse.

Felix streams everything its calculation graph produces: policies, IP sets,
profiles, endpoints, routes and more. felix-nat64 needs a handful of payload
types, so each frame's top-level fields are scanned without parsing and only
frames carrying a payload we use are handed to protobuf.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from types import MappingProxyType
from typing import NamedTuple

from google.protobuf.message import DecodeError

from felix_nat64.wire import felixbackend_pb2 as pb


class Payload(IntEnum):
    """`ToDataplane` payload field numbers that felix-nat64 reads."""

    IN_SYNC = 1
    WORKLOAD_ENDPOINT_UPDATE = 11
    WORKLOAD_ENDPOINT_REMOVE = 12
    CONFIG_UPDATE = 13
    HOST_METADATA_UPDATE = 14
    IPAM_POOL_UPDATE = 16
    IPAM_POOL_REMOVE = 17
    HOST_METADATA_REMOVE = 18
    VTEP_UPDATE = 25
    VTEP_REMOVE = 26
    WIREGUARD_ENDPOINT_UPDATE = 27
    WIREGUARD_ENDPOINT_REMOVE = 28
    GLOBAL_BGP_CONFIG_UPDATE = 29
    HOST_METADATA_V6_UPDATE = 35
    HOST_METADATA_V6_REMOVE = 36
    HOST_METADATA_V4V6_UPDATE = 37
    HOST_METADATA_V4V6_REMOVE = 38


USED_PAYLOADS = frozenset(int(p) for p in Payload)
# Used only to name the pods behind sessions: one that cannot be decoded
# leaves NAT64 itself intact, so it does not make the driver unready.
NAMING_PAYLOADS = frozenset({int(Payload.WORKLOAD_ENDPOINT_UPDATE), int(Payload.WORKLOAD_ENDPOINT_REMOVE)})

# Names of the payloads we skip, for logs and metrics (Felix master numbering).
SKIPPED_PAYLOAD_NAMES: Mapping[int, str] = MappingProxyType(
    {
        2: "ipset_update",
        3: "ipset_delta_update",
        4: "ipset_remove",
        5: "active_profile_update",
        6: "active_profile_remove",
        7: "active_policy_update",
        8: "active_policy_remove",
        9: "host_endpoint_update",
        10: "host_endpoint_remove",
        19: "service_account_update",
        20: "service_account_remove",
        21: "namespace_update",
        22: "namespace_remove",
        23: "route_update",
        24: "route_remove",
        30: "encapsulation",
        31: "service_update",
        32: "service_remove",
        33: "wireguard_endpoint_v6_update",
        34: "wireguard_endpoint_v6_remove",
    }
)


def payload_name(field_number: int | None) -> str:
    """A stable, human name for a payload field number."""
    if field_number is None:
        return "none"
    if field_number in USED_PAYLOADS:
        return Payload(field_number).name.lower()
    return SKIPPED_PAYLOAD_NAMES.get(field_number, f"field_{field_number}")


class ScanError(ValueError):
    """The frame body is not a well-formed protobuf message."""


def scan_payload_field(body: bytes) -> int | None:
    """Returns the `ToDataplane` payload field number without parsing it.

    Every payload is a sub-message (wire type 2) and the only other top-level
    field is the varint sequence number, so the payload is the first
    length-delimited field; a used payload wins if, in some future Felix,
    another length-delimited field precedes it.
    """
    pos = 0
    end = len(body)
    first: int | None = None
    while pos < end:
        tag = body[pos]
        pos += 1
        if tag & 0x80:
            tag, pos = _varint_tail(body, pos, tag)
        wire_type = tag & 7
        number = tag >> 3
        if number == 0:
            raise ScanError("field number 0")
        if wire_type == 2:
            if pos >= end:
                raise ScanError(f"field {number} has no length")
            length = body[pos]
            pos += 1
            if length & 0x80:
                length, pos = _varint_tail(body, pos, length)
            pos += length
            if pos > end:
                raise ScanError(f"field {number} runs past the end of the frame")
            if number in USED_PAYLOADS:
                return number
            if first is None:
                first = number
        elif wire_type == 0:
            while True:
                if pos >= end:
                    raise ScanError("truncated varint")
                byte = body[pos]
                pos += 1
                if not byte & 0x80:
                    break
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        else:
            raise ScanError(f"unsupported wire type {wire_type} for field {number}")
    if pos > end:
        raise ScanError("last field runs past the end of the frame")
    return first


def _varint_tail(buf: bytes, pos: int, first_byte: int) -> tuple[int, int]:
    result = first_byte & 0x7F
    shift = 7
    end = len(buf)
    while True:
        if pos >= end:
            raise ScanError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ScanError("varint longer than 10 bytes")


# ---------------------------------------------------------------------------
# Typed messages: what the rest of felix-nat64 sees.


@dataclass(frozen=True)
class InSync:
    """Felix has sent its whole initial snapshot."""

    seq: int = 0


@dataclass(frozen=True)
class RawConfigSource:
    """One of Felix's configuration sources and the raw values it set."""

    name: str
    config: Mapping[str, str]


@dataclass(frozen=True)
class ConfigUpdate:
    """Felix's resolved configuration plus its raw per-source values."""

    config: Mapping[str, str]
    sources: tuple[RawConfigSource, ...] = ()
    seq: int = 0


@dataclass(frozen=True)
class HostUpdate:
    """Host metadata for one node, normalised over every Felix wire variant.

    `sets_ipv4` / `sets_ipv6` say which addresses the message is
    authoritative for: Calico <= v3.32 sends IPv4 and IPv6 in separate
    messages, so a missing address must not erase one learnt elsewhere.
    """

    hostname: str
    ipv4: ipaddress.IPv4Address | None
    ipv6: ipaddress.IPv6Address | None
    sets_ipv4: bool
    sets_ipv6: bool
    variant: str
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    seq: int = 0


@dataclass(frozen=True)
class HostRemove:
    """A node's metadata is gone (`ipv6_only`: only its IPv6 address)."""

    hostname: str
    ipv6_only: bool = False
    seq: int = 0


@dataclass(frozen=True)
class PoolUpdate:
    """An IP pool was created or changed."""

    pool_id: str
    cidr: ipaddress.IPv4Network | ipaddress.IPv6Network
    masquerade: bool
    allowed_uses: tuple[str, ...] = ()
    seq: int = 0


@dataclass(frozen=True)
class PoolRemove:
    """An IP pool was deleted."""

    pool_id: str
    seq: int = 0


# The endpoint messages are NamedTuples, immutable like the dataclasses above
# but built and hashed in C: a snapshot can hold thousands of them, and their
# ids are dictionary keys at every step of the fold.
class EndpointId(NamedTuple):
    """Felix's WorkloadEndpointID (the node is implied: Felix sends only its own)."""

    orchestrator: str
    workload: str  # Kubernetes: "<namespace>/<pod>"
    endpoint: str


class EndpointUpdate(NamedTuple):
    """A local workload endpoint (a pod) and its IPv6 networks, as Felix wrote
    them ("fd00:10:244::5/128"). They are left as text here: a node's snapshot
    can carry thousands of endpoints, most of them unchanged when Felix sends
    them again, and the endpoint manager parses only what it keeps."""

    endpoint_id: EndpointId
    ipv6_nets: tuple[str, ...]
    seq: int = 0


class EndpointRemove(NamedTuple):
    """A local workload endpoint is gone."""

    endpoint_id: EndpointId
    seq: int = 0


@dataclass(frozen=True)
class TunnelUpdate:
    """A node's IPv4 tunnel addresses: VXLAN (the VTEP and the address it
    sends from) or WireGuard (the interface address)."""

    hostname: str
    kind: str  # "vxlan" | "wireguard"
    addresses: tuple[ipaddress.IPv4Address, ...]
    seq: int = 0


@dataclass(frozen=True)
class TunnelRemove:
    """A node's tunnel of one kind is gone."""

    hostname: str
    kind: str
    seq: int = 0


@dataclass(frozen=True)
class ServiceCidrs:
    """The cluster's service address ranges (BGPConfiguration serviceClusterIPs,
    serviceExternalIPs, serviceLoadBalancerIPs); each update replaces the last."""

    cidrs: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    seq: int = 0


@dataclass(frozen=True)
class Undecodable:
    """A well-framed message that could not be decoded.

    `used` says whether it carried a payload felix-nat64 needs, in which case
    our view of Felix's state may now be incomplete.
    """

    field_number: int | None
    used: bool
    error: str


FelixMessage = InSync | ConfigUpdate | HostUpdate | HostRemove | PoolUpdate | PoolRemove | EndpointUpdate \
    | EndpointRemove | TunnelUpdate | TunnelRemove | ServiceCidrs
Decoded = FelixMessage | Undecodable | None


def decode_frame(body: bytes) -> tuple[int | None, Decoded]:
    """Scans one frame body, skips a payload felix-nat64 does not use and
    decodes the others: the payload's field number, and the typed message,
    an Undecodable (a malformed frame, or a used payload that does not
    parse), or None for a skipped payload. The reader and `stream dump` both
    read frames through here."""
    try:
        number = scan_payload_field(body)
    except ScanError as exc:
        return None, Undecodable(None, False, f"malformed protobuf: {exc}")
    if number not in USED_PAYLOADS:
        return number, None
    return number, decode_used(body, number)


def decode_used(body: bytes, number: int) -> FelixMessage | Undecodable:
    """Parses a frame already known to carry payload `number` (a used one)."""
    needed = number not in NAMING_PAYLOADS
    try:
        decoded = from_protobuf(pb.ToDataplane.FromString(body))
    except DecodeError as exc:
        return Undecodable(number, needed, f"{payload_name(number)}: {exc}")
    except ValueError as exc:
        return Undecodable(number, needed, f"{payload_name(number)}: {exc}")
    if decoded is None:  # cannot happen for a used payload that parsed
        return Undecodable(number, needed, f"{payload_name(number)}: payload missing after parse")
    return decoded


def from_protobuf(msg: pb.ToDataplane) -> FelixMessage | None:
    """Converts a parsed `ToDataplane` to a typed message.

    Raises ValueError if a field we rely on holds something unusable.
    """
    kind = msg.WhichOneof("payload")
    convert = _CONVERTERS.get(kind) if kind is not None else None
    return convert(msg, msg.sequence_number) if convert is not None else None


def _config_update(msg: pb.ToDataplane, seq: int) -> ConfigUpdate:
    cu = msg.config_update
    sources = tuple(
        RawConfigSource(raw.source, MappingProxyType(dict(raw.config)))
        for _, raw in sorted(cu.source_to_raw_config.items())
    )
    return ConfigUpdate(MappingProxyType(dict(cu.config)), sources, seq)


def _pool_update(msg: pb.ToDataplane, seq: int) -> PoolUpdate:
    upd = msg.ipam_pool_update
    cidr = _parse_network(upd.pool.cidr, f"IP pool {upd.id!r} cidr")
    return PoolUpdate(upd.id, cidr, upd.pool.masquerade, tuple(upd.pool.allowed_uses), seq)


def _endpoint_update(msg: pb.ToDataplane, seq: int) -> EndpointUpdate:
    wep = msg.workload_endpoint_update
    return EndpointUpdate(_endpoint_id(wep.id), tuple(wep.endpoint.ipv6_nets), seq)


def _host_update(msg: pb.ToDataplane, seq: int) -> HostUpdate:
    h = msg.host_metadata_update
    ipv6 = _parse_v6(h.ipv6_addr, h.hostname)
    return HostUpdate(h.hostname, _parse_v4(h.ipv4_addr, h.hostname), ipv6, sets_ipv4=True,
                      sets_ipv6=bool(h.ipv6_addr), variant="host_metadata_update",
                      labels=MappingProxyType(dict(h.labels)), seq=seq)


def _host_v4v6_update(msg: pb.ToDataplane, seq: int) -> HostUpdate:
    h4 = msg.host_metadata_v4v6_update
    ipv6 = _parse_v6(h4.ipv6_addr, h4.hostname)
    return HostUpdate(h4.hostname, _parse_v4(h4.ipv4_addr, h4.hostname), ipv6, sets_ipv4=True,
                      sets_ipv6=True, variant="host_metadata_v4v6_update",
                      labels=MappingProxyType(dict(h4.labels)), seq=seq)


def _host_v6_update(msg: pb.ToDataplane, seq: int) -> HostUpdate:
    h6 = msg.host_metadata_v6_update
    return HostUpdate(h6.hostname, None, _parse_v6(h6.ipv6_addr, h6.hostname), sets_ipv4=False,
                      sets_ipv6=True, variant="host_metadata_v6_update", seq=seq)


def _vtep_update(msg: pb.ToDataplane, seq: int) -> TunnelUpdate:
    v = msg.vtep_update
    addrs = (_parse_v4(v.ipv4_addr, v.node), _parse_v4(v.parent_device_ip, v.node))
    return TunnelUpdate(v.node, "vxlan", tuple(a for a in addrs if a is not None), seq)


def _wireguard_update(msg: pb.ToDataplane, seq: int) -> TunnelUpdate:
    w = msg.wireguard_endpoint_update
    addr = _parse_v4(w.interface_ipv4_addr, w.hostname)
    return TunnelUpdate(w.hostname, "wireguard", (addr,) if addr else (), seq)


def _service_cidrs(msg: pb.ToDataplane, seq: int) -> ServiceCidrs:
    b = msg.global_bgp_config_update
    texts = [*b.service_cluster_cidrs, *b.service_external_cidrs, *b.service_loadbalancer_cidrs]
    return ServiceCidrs(tuple(_parse_network(t, "service CIDR") for t in texts), seq)


# ToDataplane's oneof name -> the typed message it becomes.
_CONVERTERS: Mapping[str, Callable[[pb.ToDataplane, int], FelixMessage]] = MappingProxyType({
    "in_sync": lambda msg, seq: InSync(seq),
    "config_update": _config_update,
    "ipam_pool_update": _pool_update,
    "ipam_pool_remove": lambda msg, seq: PoolRemove(msg.ipam_pool_remove.id, seq),
    "workload_endpoint_update": _endpoint_update,
    "workload_endpoint_remove": lambda msg, seq: EndpointRemove(_endpoint_id(msg.workload_endpoint_remove.id),
                                                                seq),
    "host_metadata_update": _host_update,
    "host_metadata_v4v6_update": _host_v4v6_update,
    "host_metadata_v6_update": _host_v6_update,
    "host_metadata_remove": lambda msg, seq: HostRemove(msg.host_metadata_remove.hostname, seq=seq),
    "host_metadata_v4v6_remove": lambda msg, seq: HostRemove(msg.host_metadata_v4v6_remove.hostname, seq=seq),
    "host_metadata_v6_remove": lambda msg, seq: HostRemove(msg.host_metadata_v6_remove.hostname,
                                                           ipv6_only=True, seq=seq),
    "vtep_update": _vtep_update,
    "vtep_remove": lambda msg, seq: TunnelRemove(msg.vtep_remove.node, "vxlan", seq),
    "wireguard_endpoint_update": _wireguard_update,
    "wireguard_endpoint_remove": lambda msg, seq: TunnelRemove(msg.wireguard_endpoint_remove.hostname,
                                                               "wireguard", seq),
    "global_bgp_config_update": _service_cidrs,
})


def _endpoint_id(wid: pb.WorkloadEndpointID) -> EndpointId:
    return EndpointId(wid.orchestrator_id, wid.workload_id, wid.endpoint_id)


def _parse_network(text: str, what: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError as exc:
        raise ValueError(f"{what} {text!r} is not a CIDR: {exc}") from None


def _parse_v4(text: str, hostname: str) -> ipaddress.IPv4Address | None:
    if not text:
        return None
    addr = _parse_host_addr(text, 4, hostname)
    assert isinstance(addr, ipaddress.IPv4Address)
    return addr


def _parse_v6(text: str, hostname: str) -> ipaddress.IPv6Address | None:
    if not text:
        return None
    addr = _parse_host_addr(text, 6, hostname)
    assert isinstance(addr, ipaddress.IPv6Address)
    return addr


def _parse_host_addr(text: str, version: int, hostname: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    # v3.29-v3.32 send a bare IPv4 in field 14; every other variant sends CIDRs.
    try:
        addr = ipaddress.ip_interface(text.strip()).ip
    except ValueError as exc:
        raise ValueError(f"host {hostname!r} address {text!r} is invalid: {exc}") from None
    if addr.version != version:
        raise ValueError(f"host {hostname!r} address {text!r} is not IPv{version}")
    return addr
