"""Bytes of Jool's Generic Netlink messages: the request header, attribute
encoding, and a small TLV parser for replies (pure; no sockets).

Encoding follows what the kernel validates strictly since Linux 5.2: every
nested attribute carries NLA_F_NESTED at every depth, fixed-size integers
have exactly their size (a u8 is a 5-byte attribute before padding) and
addresses are exactly 4 or 16 bytes. Integers are in host byte order except
`joolnlhdr.version`, which is big-endian.

Replies are decoded by the command that was sent, because attribute numbers
mean different things per operation (type 1 is JNLAL_ENTRY in a foreach
reply, JNLAIS_STATUS in a hello reply, JNLAERR_CODE in an error reply and a
global or stat id elsewhere).
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from felix_nat64.drivers.jool.constants import (
    HEADER_MAGIC,
    INAME_MAX_LEN,
    BibAttr,
    ErrorAttr,
    Framework,
    HeaderFlag,
    InstanceEntryAttr,
    IterationFlag,
    L4Proto,
    ListAttr,
    Pool4Attr,
    PrefixAttr,
    SessionAttr,
    SessionTimer,
    TaddrAttr,
    TcpState,
    Translator,
)
from felix_nat64.drivers.jool.entries import BibEntry, InstanceInfo, SessionEntry, Taddr4, Taddr6
from felix_nat64.drivers.jool.errors import JoolProtocolError, error_for
from felix_nat64.drivers.plan import Pool4Entry
from felix_nat64.model.protocol import Protocol

T = TypeVar("T")

NLA_F_NESTED = 0x8000
NLA_F_NET_BYTEORDER = 0x4000
NLA_TYPE_MASK = 0x3FFF
NLA_HDR = struct.Struct("=HH")
NLMSG_HDR = struct.Struct("=IHHII")
GENL_HDR = struct.Struct("=BBH")
# struct joolnlhdr: magic, version (big-endian), xt, flags, reserved1, reserved2, iname.
JOOL_HDR = struct.Struct(">4sIBBBB16s")
NLMSG_ERROR = 2
NLMSGERR_ATTR_MSG = 1
NLM_F_CAPPED = 0x100
NLM_F_ACK_TLVS = 0x200


def _align(length: int) -> int:
    return (length + 3) & ~3


# ---------------------------------------------------------------- headers


def validate_iname(name: str) -> str:
    """Returns `name` if Jool accepts it as an instance name (<= 15 printable ASCII)."""
    if not name or len(name) > INAME_MAX_LEN or not all(32 <= ord(c) < 127 for c in name):
        raise ValueError(f"invalid Jool instance name {name!r}: "
                         f"1 to {INAME_MAX_LEN} printable ASCII characters")
    return name


@dataclass(frozen=True)
class JoolHeader:
    """struct joolnlhdr, which follows the genlmsghdr in every message."""

    version: int  # xlat_version() of the module we talk to
    iname: str = ""  # "" means Jool's "default" instance
    flags: HeaderFlag = HeaderFlag.NONE
    xt: int = Translator.NAT64

    def pack(self) -> bytes:
        if self.iname:
            validate_iname(self.iname)
        return JOOL_HDR.pack(HEADER_MAGIC, self.version, self.xt, int(self.flags), 0, 0,
                             self.iname.encode("ascii"))

    @classmethod
    def unpack(cls, data: bytes | bytearray | memoryview, offset: int = 0) -> JoolHeader:
        if len(data) - offset < JOOL_HDR.size:
            raise JoolProtocolError(f"reply too short for a Jool header ({len(data) - offset} bytes)")
        magic, version, xt, flags, _, _, iname = JOOL_HDR.unpack_from(data, offset)
        if magic != HEADER_MAGIC:
            raise JoolProtocolError(f"reply header magic is {magic!r}, not {HEADER_MAGIC!r}")
        name = iname.split(b"\0", 1)[0].decode("ascii", "replace")
        return cls(version=version, iname=name, flags=HeaderFlag(flags), xt=xt)


@dataclass(frozen=True)
class Reply:
    """One reply message: its Jool header and its raw top-level attributes."""

    cmd: int
    header: JoolHeader
    attrs: bytes

    @property
    def more(self) -> bool:
        """The M flag: entries remain; ask again starting after the last one."""
        return bool(self.header.flags & HeaderFlag.M)


def parse_reply(data: bytes | bytearray | memoryview, op: str | None = None) -> Reply:
    """Decodes one netlink message (nlmsghdr included) sent back by Jool.

    A bare NLMSG_ERROR (the kernel refused the request before Jool's handler
    ran, e.g. a policy violation) raises JoolError with the kernel's extended
    ack text when there is one.
    """
    data = bytes(data)
    if len(data) < NLMSG_HDR.size:
        raise JoolProtocolError(f"reply of {len(data)} bytes is shorter than a netlink header", op)
    length, msg_type, msg_flags, _, _ = NLMSG_HDR.unpack_from(data)
    if length < NLMSG_HDR.size or length > len(data):
        raise JoolProtocolError(f"netlink length {length} does not fit a {len(data)}-byte reply", op)
    if msg_type == NLMSG_ERROR:
        code = struct.unpack_from("=i", data, NLMSG_HDR.size)[0] if length >= NLMSG_HDR.size + 4 else 0
        if code == 0:
            raise JoolProtocolError("unexpected netlink ACK instead of a Jool reply", op)
        text = ""
        if msg_flags & NLM_F_ACK_TLVS and length >= NLMSG_HDR.size * 2 + 4:
            # The code is followed by the request (only its header if the
            # socket asked for capped acks), then the extended ack attributes.
            echoed = NLMSG_HDR.size
            if not msg_flags & NLM_F_CAPPED:
                echoed = _align(NLMSG_HDR.unpack_from(data, NLMSG_HDR.size + 4)[0])
            for item in parse_attrs(data[NLMSG_HDR.size + 4 + echoed:length]):
                if item.type == NLMSGERR_ATTR_MSG:
                    text = item.string()
        raise error_for(-code, text, op)
    offset = NLMSG_HDR.size
    if length < offset + GENL_HDR.size + JOOL_HDR.size:
        raise JoolProtocolError(f"reply of {length} bytes is too short for Jool's headers", op)
    cmd = data[offset]
    header = JoolHeader.unpack(data, offset + GENL_HDR.size)
    return Reply(cmd=cmd, header=header, attrs=data[offset + GENL_HDR.size + JOOL_HDR.size:length])


# ---------------------------------------------------------------- encoding


def attr(attr_type: int, payload: bytes) -> bytes:
    """One attribute: header, payload, padding to 4 bytes."""
    length = NLA_HDR.size + len(payload)
    return NLA_HDR.pack(length, attr_type) + payload + b"\0" * (_align(length) - length)


def _uint(attr_type: int, fmt: str, bits: int, value: int) -> bytes:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < (1 << bits):
        raise ValueError(f"attribute {attr_type}: {value!r} is not a u{bits}")
    return attr(attr_type, struct.pack(fmt, value))


def attr_u8(attr_type: int, value: int) -> bytes:
    return _uint(attr_type, "=B", 8, value)


def attr_u16(attr_type: int, value: int) -> bytes:
    return _uint(attr_type, "=H", 16, value)


def attr_u32(attr_type: int, value: int) -> bytes:
    return _uint(attr_type, "=I", 32, value)


def attr_bool(attr_type: int, value: bool) -> bytes:
    return attr(attr_type, b"\1" if value else b"\0")


def attr_string(attr_type: int, value: str) -> bytes:
    """A NUL-terminated string (NLA_NUL_STRING)."""
    return attr(attr_type, value.encode("ascii") + b"\0")


def attr_nested(attr_type: int, *children: bytes) -> bytes:
    """A nest; always flagged NLA_F_NESTED, which strict validation requires."""
    return attr(attr_type | NLA_F_NESTED, b"".join(children))


def attr_prefix6(attr_type: int, prefix: ipaddress.IPv6Network | None) -> bytes:
    """A prefix nest; None is Jool's "unset" (a length of 0 and no address)."""
    if prefix is None:
        return attr_nested(attr_type, attr_u8(PrefixAttr.LEN, 0))
    return attr_nested(attr_type, attr(PrefixAttr.ADDR, prefix.network_address.packed),
                       attr_u8(PrefixAttr.LEN, prefix.prefixlen))


def attr_prefix4(attr_type: int, prefix: ipaddress.IPv4Network | None) -> bytes:
    if prefix is None:
        return attr_nested(attr_type, attr_u8(PrefixAttr.LEN, 0))
    return attr_nested(attr_type, attr(PrefixAttr.ADDR, prefix.network_address.packed),
                       attr_u8(PrefixAttr.LEN, prefix.prefixlen))


def attr_taddr(attr_type: int, taddr: Taddr6 | Taddr4) -> bytes:
    return attr_nested(attr_type, attr(TaddrAttr.ADDR, taddr.address.packed),
                       attr_u16(TaddrAttr.PORT, taddr.port))


_L4_NUMBERS = {Protocol.TCP: L4Proto.TCP, Protocol.UDP: L4Proto.UDP, Protocol.ICMP: L4Proto.ICMP}
_L4_PROTOCOLS = {int(number): proto for proto, number in _L4_NUMBERS.items()}


def proto_number(proto: Protocol | str) -> L4Proto:
    """Jool's l4_protocol number of a protocol (ValueError for anything else)."""
    try:
        return _L4_NUMBERS[Protocol(proto)]
    except ValueError:
        raise ValueError(f"unknown protocol {proto!r}: expected tcp, udp or icmp") from None


def proto_name(number: int) -> Protocol:
    """The protocol of a NAT64 table row (L4PROTO_OTHER exists only in SIIT)."""
    try:
        return _L4_PROTOCOLS[number]
    except KeyError:
        raise JoolProtocolError(f"unknown Jool protocol number {number}") from None


def pool4_body(entry: Pool4Entry, iterations: int = 0,
               iteration_flags: IterationFlag = IterationFlag.NONE) -> bytes:
    """The attributes inside a pool4 entry nest. Mark, iterations and flags
    are optional to the kernel (mark defaults to 0), so they are sent only
    when they say something."""
    parts = []
    if entry.mark:
        parts.append(attr_u32(Pool4Attr.MARK, entry.mark))
    if iteration_flags:
        parts.append(attr_u32(Pool4Attr.ITERATIONS, iterations))
        parts.append(attr_u8(Pool4Attr.FLAGS, int(iteration_flags)))
    parts += [
        attr_u8(Pool4Attr.PROTO, proto_number(entry.proto)),
        attr_prefix4(Pool4Attr.PREFIX, entry.prefix),
        attr_u16(Pool4Attr.PORT_MIN, entry.port_min),
        attr_u16(Pool4Attr.PORT_MAX, entry.port_max),
    ]
    return b"".join(parts)


def bib_body(entry: BibEntry) -> bytes:
    return b"".join((
        attr_taddr(BibAttr.SRC6, entry.ipv6),
        attr_taddr(BibAttr.SRC4, entry.ipv4),
        attr_u8(BibAttr.PROTO, proto_number(entry.proto)),
        attr_bool(BibAttr.STATIC, entry.static),
    ))


def session_offset_body(entry: Attr) -> bytes:
    """The offset that resumes a session listing after `entry`, a raw entry of
    a reply: the kernel needs only its IPv4 pair, re-nested as strict
    validation wants it."""
    fields = entry.fields()
    return b"".join(attr_nested(key, _need(fields, key, "session").payload)
                    for key in (SessionAttr.SRC4, SessionAttr.DST4))


def instance_body(entry: InstanceInfo) -> bytes:
    framework = {"netfilter": Framework.NETFILTER, "iptables": Framework.IPTABLES}.get(entry.framework, 0)
    return b"".join((
        attr_u32(InstanceEntryAttr.NS, entry.namespace_id),
        attr_u8(InstanceEntryAttr.XF, int(framework)),
        attr_string(InstanceEntryAttr.INAME, entry.name),
    ))


# ---------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Attr:
    """One parsed attribute; `type` has the NLA_F_* flag bits removed."""

    type: int
    nested: bool
    payload: bytes

    def _fixed(self, fmt: str) -> int:
        size = struct.calcsize(fmt)
        if len(self.payload) != size:
            raise JoolProtocolError(f"attribute {self.type} has {len(self.payload)} bytes, expected {size}")
        value: int = struct.unpack(fmt, self.payload)[0]
        return value

    def u8(self) -> int:
        return self._fixed("=B")

    def u16(self) -> int:
        return self._fixed("=H")

    def u32(self) -> int:
        return self._fixed("=I")

    def u64(self) -> int:
        return self._fixed("=Q")

    def string(self) -> str:
        return self.payload.split(b"\0", 1)[0].decode("utf-8", "replace")

    def children(self) -> list[Attr]:
        return parse_attrs(self.payload)

    def fields(self) -> dict[int, Attr]:
        return attr_map(self.payload)


def parse_attrs(data: bytes | bytearray | memoryview) -> list[Attr]:
    """Splits a run of attributes; refuses truncated or overlong ones."""
    data = bytes(data)
    out: list[Attr] = []
    offset = 0
    while len(data) - offset >= NLA_HDR.size:
        length, raw_type = NLA_HDR.unpack_from(data, offset)
        if length < NLA_HDR.size or offset + length > len(data):
            raise JoolProtocolError(f"attribute at offset {offset} claims {length} bytes; "
                                    f"{len(data) - offset} remain")
        out.append(Attr(raw_type & NLA_TYPE_MASK, bool(raw_type & NLA_F_NESTED),
                        data[offset + NLA_HDR.size:offset + length]))
        offset += _align(length)
    return out


def attr_map(data: bytes | bytearray | memoryview) -> dict[int, Attr]:
    """Attributes by type (the first of each type wins)."""
    out: dict[int, Attr] = {}
    for item in parse_attrs(data):
        out.setdefault(item.type, item)
    return out


def _need(fields: dict[int, Attr], attr_type: int, what: str) -> Attr:
    found = fields.get(attr_type)
    if found is None:
        raise JoolProtocolError(f"{what} lacks attribute {attr_type}")
    return found


def decode_prefix6(item: Attr) -> ipaddress.IPv6Network | None:
    fields = item.fields()
    length = _need(fields, PrefixAttr.LEN, "prefix").u8()
    addr = fields.get(PrefixAttr.ADDR)
    if addr is None:
        return None
    if len(addr.payload) != 16:
        raise JoolProtocolError(f"IPv6 prefix address has {len(addr.payload)} bytes")
    return ipaddress.IPv6Network((addr.payload, length))


def decode_prefix4(item: Attr) -> ipaddress.IPv4Network | None:
    fields = item.fields()
    length = _need(fields, PrefixAttr.LEN, "prefix").u8()
    addr = fields.get(PrefixAttr.ADDR)
    if addr is None:
        return None
    if len(addr.payload) != 4:
        raise JoolProtocolError(f"IPv4 prefix address has {len(addr.payload)} bytes")
    return ipaddress.IPv4Network((addr.payload, length))


def decode_taddr6(item: Attr) -> Taddr6:
    fields = item.fields()
    addr = _need(fields, TaddrAttr.ADDR, "IPv6 transport address").payload
    if len(addr) != 16:
        raise JoolProtocolError(f"IPv6 address has {len(addr)} bytes")
    return Taddr6(ipaddress.IPv6Address(addr), _need(fields, TaddrAttr.PORT, "transport address").u16())


def decode_taddr4(item: Attr) -> Taddr4:
    fields = item.fields()
    addr = _need(fields, TaddrAttr.ADDR, "IPv4 transport address").payload
    if len(addr) != 4:
        raise JoolProtocolError(f"IPv4 address has {len(addr)} bytes")
    return Taddr4(ipaddress.IPv4Address(addr), _need(fields, TaddrAttr.PORT, "transport address").u16())


def decode_pool4(item: Attr) -> Pool4Entry:
    fields = item.fields()
    mark = fields.get(Pool4Attr.MARK)
    prefix = decode_prefix4(_need(fields, Pool4Attr.PREFIX, "pool4 entry"))
    if prefix is None:
        raise JoolProtocolError("pool4 entry has an unset prefix")
    return Pool4Entry(
        proto=proto_name(_need(fields, Pool4Attr.PROTO, "pool4 entry").u8()),
        prefix=prefix,
        port_min=_need(fields, Pool4Attr.PORT_MIN, "pool4 entry").u16(),
        port_max=_need(fields, Pool4Attr.PORT_MAX, "pool4 entry").u16(),
        mark=mark.u32() if mark is not None else 0,
    )


def decode_bib(item: Attr) -> BibEntry:
    fields = item.fields()
    static = fields.get(BibAttr.STATIC)
    return BibEntry(
        proto=proto_name(_need(fields, BibAttr.PROTO, "BIB entry").u8()),
        ipv6=decode_taddr6(_need(fields, BibAttr.SRC6, "BIB entry")),
        ipv4=decode_taddr4(_need(fields, BibAttr.SRC4, "BIB entry")),
        static=bool(static.u8()) if static is not None else False,
    )


def decode_session(item: Attr) -> SessionEntry:
    fields = item.fields()
    state = _need(fields, SessionAttr.STATE, "session").u8()
    timer = _need(fields, SessionAttr.TIMER, "session").u8()
    try:
        tcp_state, session_timer = TcpState(state), SessionTimer(timer)
    except ValueError as exc:
        raise JoolProtocolError(f"session entry: {exc}") from None
    return SessionEntry(
        proto=proto_name(_need(fields, SessionAttr.PROTO, "session").u8()),
        src6=decode_taddr6(_need(fields, SessionAttr.SRC6, "session")),
        dst6=decode_taddr6(_need(fields, SessionAttr.DST6, "session")),
        src4=decode_taddr4(_need(fields, SessionAttr.SRC4, "session")),
        dst4=decode_taddr4(_need(fields, SessionAttr.DST4, "session")),
        state=tcp_state,
        timer=session_timer,
        expiration_ms=_need(fields, SessionAttr.EXPIRATION, "session").u32(),
    )


def _child(data: bytes, start: int, end: int, wanted: int) -> tuple[int, int] | None:
    """Where the payload of the first attribute of type `wanted` lies in data[start:end]."""
    while end - start >= NLA_HDR.size:
        length, raw_type = NLA_HDR.unpack_from(data, start)
        if length < NLA_HDR.size or start + length > end:
            raise JoolProtocolError(f"attribute at offset {start} claims {length} bytes; "
                                    f"{end - start} remain")
        if raw_type & NLA_TYPE_MASK == wanted:
            return start + NLA_HDR.size, start + length
        start += _align(length)
    return None


def session_sources(entry: Attr) -> tuple[bytes, bytes]:
    """The IPv6 address of a session's pod and the raw bytes of its pool4
    transport address, read straight from the reply without building the
    session: a census of a whole table needs only these two."""
    data = entry.payload
    src6 = _child(data, 0, len(data), SessionAttr.SRC6)
    src4 = _child(data, 0, len(data), SessionAttr.SRC4)
    if src6 is None or src4 is None:
        raise JoolProtocolError("session lacks its IPv6 or IPv4 source")
    addr = _child(data, src6[0], src6[1], TaddrAttr.ADDR)
    if addr is None or addr[1] - addr[0] != 16:
        raise JoolProtocolError("session's IPv6 source has no 16-byte address")
    return data[addr[0]:addr[1]], data[src4[0]:src4[1]]


def decode_instance(item: Attr) -> InstanceInfo:
    fields = item.fields()
    xf = _need(fields, InstanceEntryAttr.XF, "instance").u8()
    frameworks = {int(Framework.NETFILTER): "netfilter", int(Framework.IPTABLES): "iptables"}
    framework = frameworks.get(xf, f"unknown({xf})")
    return InstanceInfo(
        name=_need(fields, InstanceEntryAttr.INAME, "instance").string(),
        framework=framework,
        namespace_id=_need(fields, InstanceEntryAttr.NS, "instance").u32(),
    )


def decode_entries(attrs: bytes, decode: Callable[[Attr], T]) -> list[T]:
    """The JNLAL_ENTRY elements of a foreach reply, decoded."""
    return [decode(item) for item in parse_attrs(attrs) if item.type == ListAttr.ENTRY]


def decode_error(attrs: bytes) -> tuple[int, str]:
    """(errno, message) of a reply flagged JOOLNLHDR_FLAGS_ERROR."""
    fields = attr_map(attrs)
    code = fields.get(ErrorAttr.CODE)
    msg = fields.get(ErrorAttr.MSG)
    return (code.u16() if code is not None else 0), (msg.string().strip() if msg is not None else "")
