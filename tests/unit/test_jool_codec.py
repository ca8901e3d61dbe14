"""Jool Generic Netlink client without a kernel: exact request bytes, reply
decoding, pagination and version checks (replies are built by hand here)."""

from __future__ import annotations

import errno
import ipaddress
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from felix_nat64.drivers.jool import codec, global_config
from felix_nat64.drivers.jool.client import JoolClient
from felix_nat64.drivers.jool.codec import JoolHeader, Reply, parse_reply
from felix_nat64.drivers.jool.constants import (
    BibAttr,
    GlobalAttr,
    HeaderFlag,
    InstanceEntryAttr,
    IterationFlag,
    ListAttr,
    Op,
    Pool4Attr,
    PrefixAttr,
    RootAttr,
    SessionAttr,
    SessionTimer,
    TaddrAttr,
    TcpState,
    stat_names,
)
from felix_nat64.drivers.jool.entries import BibEntry, InstanceInfo, Taddr4, Taddr6
from felix_nat64.drivers.jool.errors import (
    JoolError,
    JoolExists,
    JoolNotFound,
    JoolNotLoaded,
    JoolProtocolError,
    JoolVersionUnsupported,
)
from felix_nat64.drivers.jool.transport import build_message
from felix_nat64.drivers.jool.version import JoolVersion, check_supported, module_version, parse_version
from felix_nat64.drivers.plan import Pool4Entry

V4_1_15 = JoolVersion(4, 1, 15, 0)
V4_1_9 = JoolVersion(4, 1, 9, 0)
NESTED = 0x8000


# ------------------------------------------------------------------ helpers


def tlv(attr_type: int, payload: bytes) -> bytes:
    """A netlink attribute written out by hand (independent of codec.attr)."""
    length = 4 + len(payload)
    return struct.pack("=HH", length, attr_type) + payload + b"\0" * ((4 - length % 4) % 4)


def reply_bytes(cmd: int, attrs: bytes, flags: int = 0, iname: str = "nat64", seq: int = 9,
                version: int = 0x04010900) -> bytes:
    """A Jool reply message as the kernel builds it: nlmsghdr, genlmsghdr, joolnlhdr, attributes."""
    jool = b"jool" + struct.pack(">I", version) + bytes([2, flags, 0, 0]) + iname.encode().ljust(16, b"\0")
    body = struct.pack("=BBH", cmd, 2, 0) + jool + attrs
    return struct.pack("=IHHII", 16 + len(body), 0x1C, 0, seq, 4242) + body


def prefix4_tlv(attr_type: int, addr: str, length: int) -> bytes:
    return tlv(attr_type | NESTED, tlv(PrefixAttr.ADDR, ipaddress.IPv4Address(addr).packed)
               + tlv(PrefixAttr.LEN, bytes([length])))


def taddr_tlv(attr_type: int, addr: str, port: int) -> bytes:
    return tlv(attr_type | NESTED, tlv(TaddrAttr.ADDR, ipaddress.ip_address(addr).packed)
               + tlv(TaddrAttr.PORT, struct.pack("=H", port)))


def pool4_entry_tlv(proto: int, addr: str, pmin: int, pmax: int, mark: int = 0) -> bytes:
    # What the kernel's jnla_put_pool4 writes: all seven attributes.
    return tlv(ListAttr.ENTRY | NESTED, b"".join((
        tlv(Pool4Attr.MARK, struct.pack("=I", mark)),
        tlv(Pool4Attr.ITERATIONS, struct.pack("=I", 1024)),
        tlv(Pool4Attr.FLAGS, bytes([2])),
        tlv(Pool4Attr.PROTO, bytes([proto])),
        prefix4_tlv(Pool4Attr.PREFIX, addr, 32),
        tlv(Pool4Attr.PORT_MIN, struct.pack("=H", pmin)),
        tlv(Pool4Attr.PORT_MAX, struct.pack("=H", pmax)),
    )))


def session_entry_tlv(proto: int, src6: tuple[str, int], dst6: tuple[str, int], src4: tuple[str, int],
                      dst4: tuple[str, int], state: int, timer: int, expiration: int) -> bytes:
    return tlv(ListAttr.ENTRY | NESTED, b"".join((
        taddr_tlv(SessionAttr.SRC6, *src6),
        taddr_tlv(SessionAttr.DST6, *dst6),
        taddr_tlv(SessionAttr.SRC4, *src4),
        taddr_tlv(SessionAttr.DST4, *dst4),
        tlv(SessionAttr.PROTO, bytes([proto])),
        tlv(SessionAttr.STATE, bytes([state])),
        tlv(SessionAttr.TIMER, bytes([timer])),
        tlv(SessionAttr.EXPIRATION, struct.pack("=I", expiration)),
    )))


@dataclass
class Sent:
    cmd: int
    header: JoolHeader
    attrs: bytes


@dataclass
class FakeTransport:
    """Answers each request with the next scripted reply (bytes or a callable)."""

    script: list[bytes | Callable[[Sent], bytes]]
    sent: list[Sent] = field(default_factory=list)
    closed: bool = False

    def exchange(self, cmd: int, header: JoolHeader, attrs: bytes, op: str) -> Reply:
        request = Sent(cmd, header, attrs)
        self.sent.append(request)
        answer = self.script.pop(0)
        data = answer(request) if callable(answer) else answer
        return parse_reply(data, op)

    def close(self) -> None:
        self.closed = True


def client_with(*script: bytes | Callable[[Sent], bytes],
                version: JoolVersion = V4_1_9) -> tuple[JoolClient, FakeTransport]:
    transport = FakeTransport(list(script))
    return JoolClient(transport, version), transport


# Schema of the nests a request may contain: type -> sub-schema (a nest) or None (a leaf).
Schema = dict[int, "Schema | None"]
PREFIX: Schema = {PrefixAttr.ADDR: None, PrefixAttr.LEN: None}
TADDR: Schema = {TaddrAttr.ADDR: None, TaddrAttr.PORT: None}
POOL4: Schema = {Pool4Attr.MARK: None, Pool4Attr.ITERATIONS: None, Pool4Attr.FLAGS: None,
                 Pool4Attr.PROTO: None, Pool4Attr.PREFIX: PREFIX, Pool4Attr.PORT_MIN: None,
                 Pool4Attr.PORT_MAX: None}
BIB: Schema = {BibAttr.SRC6: TADDR, BibAttr.SRC4: TADDR, BibAttr.PROTO: None, BibAttr.STATIC: None}
SESSION_OFFSET: Schema = {SessionAttr.SRC4: TADDR, SessionAttr.DST4: TADDR}
INSTANCE: Schema = {InstanceEntryAttr.NS: None, InstanceEntryAttr.XF: None, InstanceEntryAttr.INAME: None}


def assert_nesting(data: bytes, schema: Schema, path: str = "") -> int:
    """Every attribute that is a nest carries NLA_F_NESTED, and no leaf does;
    returns how many nests were checked."""
    checked = 0
    offset = 0
    assert len(data) % 4 == 0, f"{path}: unpadded run of {len(data)} bytes"
    while offset < len(data):
        length, raw_type = struct.unpack_from("=HH", data, offset)
        attr_type = raw_type & 0x3FFF
        assert attr_type in schema, f"{path}/{attr_type}: unexpected attribute"
        sub = schema[attr_type]
        here = f"{path}/{attr_type}"
        if sub is None:
            assert not raw_type & NESTED, f"{here}: leaf flagged nested"
        else:
            assert raw_type & NESTED, f"{here}: nest without NLA_F_NESTED"
            checked += 1 + assert_nesting(data[offset + 4:offset + length], sub, here)
        offset += (length + 3) & ~3
    return checked


def sample_session(sport: int = 5000) -> bytes:
    return session_entry_tlv(1, ("2001:db8::10", sport), ("64:ff9b::c633:6402", 53),
                             ("192.0.2.1", 60000 + sport - 5000), ("198.51.100.2", 53),
                             state=0, timer=0, expiration=299_000)


# ------------------------------------------------------------------ request bytes


def test_request_header_bytes() -> None:
    header = JoolHeader(version=V4_1_15.wire, iname="felix-nat64", flags=HeaderFlag.FORCE | HeaderFlag.QUICK)
    assert header.pack() == (
        b"jool"
        + bytes([0x04, 0x01, 0x0F, 0x00])  # version, big-endian
        + bytes([2, 6, 0, 0])  # xt NAT64, flags FORCE|QUICK, reserved
        + b"felix-nat64\0\0\0\0\0"
    )
    assert len(header.pack()) == 28


def test_default_instance_header_is_all_zero_name() -> None:
    assert JoolHeader(version=V4_1_9.wire).pack()[12:] == b"\0" * 16
    assert JoolHeader(version=V4_1_9.wire).pack()[4:8] == bytes([4, 1, 9, 0])


@pytest.mark.parametrize("name", ["", "sixteen-chars-xx", "tab\tname", "é"])
def test_bad_instance_names_are_refused_before_sending(name: str) -> None:
    client, transport = client_with()
    with pytest.raises(ValueError, match="instance name"):
        client.instance_add(name, ipaddress.IPv6Network("64:ff9b::/96"))
    assert transport.sent == []


def test_worked_example_pool4_add_exact_bytes() -> None:
    """Pool4 add TCP 192.0.2.1 61001-65535 to "k8s64", byte for byte, through
    the pyroute2 message class the socket sends."""
    entry = Pool4Entry("tcp", ipaddress.IPv4Network("192.0.2.1/32"), 61001, 65535)
    msg = build_message(Op.POOL4_ADD, JoolHeader(version=V4_1_15.wire, iname="k8s64"),
                        codec.attr_nested(RootAttr.OPERAND, codec.pool4_body(entry)))
    msg["header"].update(type=0x1C, flags=1, sequence_number=7, pid=1234)
    msg.encode()
    expected = bytes.fromhex(
        "60000000 1c00 0100 07000000 d2040000"  # nlmsghdr: 96 bytes, NLM_F_REQUEST only
        "13 01 0000"  # genlmsghdr: cmd 19 POOL4_ADD, version 1
        "6a6f6f6c 04010f00 02 00 00 00 6b38733634000000 0000000000000000"  # joolnlhdr
        "3000 0a80"  # JNLAR_OPERAND | NLA_F_NESTED, 48 bytes
        "0500 0400 00 000000"  # JNLAP4_PROTO u8 = 0 (TCP)
        "1400 0580"  # JNLAP4_PREFIX | NLA_F_NESTED
        "0800 0100 c0000201"  # JNLAP_ADDR 192.0.2.1
        "0500 0200 20 000000"  # JNLAP_LEN u8 = 32
        "0600 0600 49ee 0000"  # JNLAP4_PORT_MIN u16 = 61001
        "0600 0700 ffff 0000"  # JNLAP4_PORT_MAX u16 = 65535
    )
    assert bytes(msg.data) == expected


def test_integer_attributes_have_exact_payload_sizes() -> None:
    assert codec.attr_u8(7, 0xAB) == bytes.fromhex("0500 0700 ab 000000")
    assert codec.attr_u16(7, 0xABCD) == struct.pack("=HH", 6, 7) + struct.pack("=H", 0xABCD) + b"\0\0"
    assert codec.attr_u32(7, 0x01020304) == struct.pack("=HHI", 8, 7, 0x01020304)
    assert codec.attr_bool(3, True) == bytes.fromhex("0500 0300 01 000000")
    assert struct.unpack_from("=H", codec.attr_string(3, "abc"))[0] == 8  # NUL included


@pytest.mark.parametrize(("encode", "value"), [
    (codec.attr_u8, 256), (codec.attr_u8, -1), (codec.attr_u16, 65536), (codec.attr_u32, 1 << 32),
    (codec.attr_u32, True),
])
def test_integer_attributes_refuse_out_of_range(encode: Callable[[int, int], bytes], value: int) -> None:
    with pytest.raises(ValueError):
        encode(1, value)


def test_nested_flag_on_every_nested_attribute() -> None:
    entry = Pool4Entry("udp", ipaddress.IPv4Network("192.0.2.0/30"), 1, 65535, mark=7)
    bib = BibEntry("tcp", Taddr6(ipaddress.IPv6Address("2001:db8::1"), 80),
                   Taddr4(ipaddress.IPv4Address("192.0.2.1"), 8080), static=True)
    requests: list[tuple[bytes, Schema]] = [
        (codec.attr_nested(RootAttr.OPERAND, codec.pool4_body(entry, 5, IterationFlag.SET)),
         {RootAttr.OPERAND: POOL4}),
        (codec.attr_nested(RootAttr.OPERAND, codec.bib_body(bib)), {RootAttr.OPERAND: BIB}),
        (codec.attr_nested(RootAttr.OFFSET, codec.instance_body(InstanceInfo("a", "netfilter", 0xDEADBEEF))),
         {RootAttr.OFFSET: INSTANCE}),
        (codec.attr_u8(RootAttr.PROTO, 1) + codec.attr_nested(RootAttr.OFFSET, codec.session_offset_body(
            codec.parse_attrs(sample_session())[0])),
         {RootAttr.PROTO: None, RootAttr.OFFSET: SESSION_OFFSET}),
        (codec.attr_nested(RootAttr.GLOBALS, global_config.encode_globals(
            {"mtu-plateaus": (1500, 1280), "pool6": ipaddress.IPv6Network("64:ff9b::/96"),
             "udp-timeout": 300_000, "logging-bib": True}, 9)),
         {RootAttr.GLOBALS: {GlobalAttr.PLATEAUS: {ListAttr.ENTRY: None}, GlobalAttr.POOL6: PREFIX,
                             GlobalAttr.TTL_UDP: None, GlobalAttr.BIB_LOGGING: None}}),
    ]
    # instance add goes through the client to cover its operand too
    client, transport = client_with(reply_bytes(Op.INSTANCE_ADD, b""))
    client.instance_add("nat64", ipaddress.IPv6Network("64:ff9b::/96"))
    requests.append((transport.sent[0].attrs, {RootAttr.OPERAND: {1: None, 2: PREFIX}}))

    nests = sum(assert_nesting(data, schema) for data, schema in requests)
    assert nests == 2 + 3 + 1 + 3 + 3 + 2


def test_unset_prefix_is_a_nest_with_only_a_zero_length() -> None:
    assert codec.attr_prefix6(2, None) == bytes.fromhex("0c00 0280 0500 0200 00 000000")


def test_pool4_operand_carries_mark_and_iterations_only_when_set() -> None:
    one = ipaddress.IPv4Network("192.0.2.1/32")
    plain = codec.parse_attrs(codec.pool4_body(Pool4Entry("icmp", one, 0, 65535)))
    assert [a.type for a in plain] == [Pool4Attr.PROTO, Pool4Attr.PREFIX, Pool4Attr.PORT_MIN,
                                       Pool4Attr.PORT_MAX]
    assert plain[0].u8() == 2  # Jool's L4PROTO_ICMP, not IPPROTO_ICMP
    full = codec.attr_map(codec.pool4_body(Pool4Entry("tcp", one, 1, 2, mark=9),
                                           0, IterationFlag.SET | IterationFlag.INFINITE))
    assert full[Pool4Attr.MARK].u32() == 9
    assert full[Pool4Attr.FLAGS].u8() == 5
    assert full[Pool4Attr.ITERATIONS].u32() == 0


# ------------------------------------------------------------------ replies


def test_error_reply_raises_with_jool_text_and_errno() -> None:
    text = b"This namespace already has a Jool instance named 'nat64'.\0"
    error = tlv(1, struct.pack("=H", errno.EEXIST)) + tlv(2, text)
    client, _ = client_with(reply_bytes(Op.INSTANCE_ADD, error, flags=HeaderFlag.ERROR))
    with pytest.raises(JoolExists) as caught:
        client.instance_add("nat64", ipaddress.IPv6Network("64:ff9b::/96"))
    assert caught.value.errno == errno.EEXIST
    assert caught.value.message == "This namespace already has a Jool instance named 'nat64'."
    assert "already has a Jool instance named 'nat64'" in str(caught.value)
    assert "EEXIST" in str(caught.value)


def test_error_reply_for_missing_instance_is_not_found() -> None:
    error = tlv(1, struct.pack("=H", errno.ESRCH)) + tlv(2, b"This namespace lacks an instance named 'x'.\0")
    client, _ = client_with(reply_bytes(Op.POOL4_FOREACH, error, flags=HeaderFlag.ERROR))
    with pytest.raises(JoolNotFound, match="lacks an instance named 'x'"):
        client.pool4_list("x", "tcp")


def test_bare_netlink_error_with_extended_ack() -> None:
    request = struct.pack("=IHHII", 64, 0x1C, 1, 9, 4242)  # the echoed (capped) request header
    ext_ack = tlv(1, b"Attribute failed policy validation\0")
    body = struct.pack("=i", -errno.EINVAL) + request + ext_ack
    data = struct.pack("=IHHII", 16 + len(body), 2, 0x100 | 0x200, 9, 0) + body
    with pytest.raises(JoolError) as caught:
        parse_reply(data, "pool4 add")
    assert caught.value.errno == errno.EINVAL
    assert caught.value.message == "Attribute failed policy validation"
    assert str(caught.value).startswith("pool4 add: Attribute failed policy validation")


def test_bare_netlink_error_without_text_uses_strerror() -> None:
    body = struct.pack("=i", -errno.EPERM) + struct.pack("=IHHII", 16, 0x1C, 1, 9, 4242)
    data = struct.pack("=IHHII", 16 + len(body), 2, 0, 9, 0) + body
    with pytest.raises(JoolError, match=r"Operation not permitted \(errno 1 EPERM\)"):
        parse_reply(data)


def test_truncated_reply_is_a_protocol_error() -> None:
    good = reply_bytes(Op.POOL4_FOREACH, pool4_entry_tlv(0, "192.0.2.1", 1, 2))
    with pytest.raises(JoolProtocolError):
        parse_reply(good[:-4])
    bad_attr = reply_bytes(Op.POOL4_FOREACH, struct.pack("=HH", 200, 1) + b"xxxx")
    with pytest.raises(JoolProtocolError, match="claims 200 bytes"):
        codec.parse_attrs(parse_reply(bad_attr).attrs)


def test_paginated_pool4_follows_the_m_flag_with_the_last_entry_as_offset() -> None:
    page1 = reply_bytes(Op.POOL4_FOREACH, pool4_entry_tlv(0, "192.0.2.1", 1, 100, mark=3)
                        + pool4_entry_tlv(0, "192.0.2.2", 1, 100, mark=3), flags=HeaderFlag.M)
    page2 = reply_bytes(Op.POOL4_FOREACH, pool4_entry_tlv(0, "192.0.2.3", 200, 300, mark=4))
    client, transport = client_with(page1, page2)
    entries = client.pool4_list("nat64", "tcp")
    assert entries == (
        Pool4Entry("tcp", ipaddress.IPv4Network("192.0.2.1/32"), 1, 100, 3),
        Pool4Entry("tcp", ipaddress.IPv4Network("192.0.2.2/32"), 1, 100, 3),
        Pool4Entry("tcp", ipaddress.IPv4Network("192.0.2.3/32"), 200, 300, 4),
    )
    first, second = transport.sent
    assert (first.cmd, first.header.iname) == (Op.POOL4_FOREACH, "nat64")
    assert codec.parse_attrs(first.attrs) == [codec.Attr(RootAttr.PROTO, False, b"\0")]
    offset = codec.attr_map(second.attrs)
    assert set(offset) == {RootAttr.OFFSET}  # the protocol travels inside the offset
    assert codec.decode_pool4(offset[RootAttr.OFFSET]) == entries[1]


def test_listing_restarts_when_the_table_changes_between_pages() -> None:
    eagain = reply_bytes(Op.POOL4_FOREACH, tlv(1, struct.pack("=H", errno.EAGAIN)) + tlv(
        2, b"Oops. Pool4 changed while I was iterating so I lost track of where I was. Try again.\0"),
        flags=HeaderFlag.ERROR)
    page = reply_bytes(Op.POOL4_FOREACH, pool4_entry_tlv(1, "192.0.2.1", 1, 100), flags=HeaderFlag.M)
    last = reply_bytes(Op.POOL4_FOREACH, pool4_entry_tlv(1, "192.0.2.9", 1, 100))
    client, transport = client_with(page, eagain, page, last)
    assert [e.prefix.network_address for e in client.pool4_list("nat64", "udp")] == [
        ipaddress.IPv4Address("192.0.2.1"), ipaddress.IPv4Address("192.0.2.9")]
    assert [RootAttr.PROTO in codec.attr_map(s.attrs) for s in transport.sent] == [True, False, True, False]


def test_listing_gives_up_after_bounded_restarts() -> None:
    eagain = reply_bytes(Op.BIB_FOREACH, tlv(1, struct.pack("=H", errno.EAGAIN)) + tlv(2, b"changed\0"),
                         flags=HeaderFlag.ERROR)
    client, transport = client_with(*[eagain] * 6)
    with pytest.raises(JoolError, match="changed") as caught:
        client.bib_list("nat64", "tcp")
    assert caught.value.errno == errno.EAGAIN
    assert len(transport.sent) == 6


def test_m_flag_on_an_empty_page_is_refused() -> None:
    client, _ = client_with(reply_bytes(Op.BIB_FOREACH, b"", flags=HeaderFlag.M))
    with pytest.raises(JoolProtocolError, match="M flag"):
        client.bib_list("nat64", "udp")


def test_session_entries_decode_and_page_with_protocol_and_ipv4_offset() -> None:
    page1 = reply_bytes(Op.SESSION_FOREACH, sample_session(5000) + session_entry_tlv(
        0, ("2001:db8::11", 40000), ("64:ff9b::cb00:7101", 443), ("192.0.2.1", 61002),
        ("203.0.113.1", 443), state=TcpState.V4_FIN_RCV, timer=SessionTimer.TRANS, expiration=1234),
        flags=HeaderFlag.M)
    page2 = reply_bytes(Op.SESSION_FOREACH, sample_session(5001))
    client, transport = client_with(page1, page2)
    sessions = client.session_list("nat64", "udp")
    assert len(sessions) == 3
    udp, tcp = sessions[0], sessions[1]
    assert udp.proto == "udp"
    assert udp.src6 == Taddr6(ipaddress.IPv6Address("2001:db8::10"), 5000)
    assert udp.dst6 == Taddr6(ipaddress.IPv6Address("64:ff9b::198.51.100.2"), 53)
    assert udp.src4 == Taddr4(ipaddress.IPv4Address("192.0.2.1"), 60000)
    assert udp.dst4 == Taddr4(ipaddress.IPv4Address("198.51.100.2"), 53)
    assert (udp.state, udp.timer, udp.expiration_ms) == (TcpState.ESTABLISHED, SessionTimer.EST, 299_000)
    assert (tcp.proto, tcp.state, tcp.timer, tcp.expiration_ms) == ("tcp", TcpState.V4_FIN_RCV,
                                                                    SessionTimer.TRANS, 1234)
    follow = codec.attr_map(transport.sent[1].attrs)
    assert follow[RootAttr.PROTO].u8() == 1  # repeated on every session page
    offset = follow[RootAttr.OFFSET].fields()
    assert set(offset) == {SessionAttr.SRC4, SessionAttr.DST4}
    assert codec.decode_taddr4(offset[SessionAttr.SRC4]) == tcp.src4
    assert codec.decode_taddr4(offset[SessionAttr.DST4]) == tcp.dst4


def test_bib_entries_decode() -> None:
    entry = tlv(ListAttr.ENTRY | NESTED, taddr_tlv(BibAttr.SRC6, "2001:db8::5", 80)
                + taddr_tlv(BibAttr.SRC4, "192.0.2.1", 8080) + tlv(BibAttr.PROTO, b"\0")
                + tlv(BibAttr.STATIC, b"\1"))
    client, _ = client_with(reply_bytes(Op.BIB_FOREACH, entry))
    assert client.bib_list("nat64", "tcp") == (BibEntry(
        "tcp", Taddr6(ipaddress.IPv6Address("2001:db8::5"), 80),
        Taddr4(ipaddress.IPv4Address("192.0.2.1"), 8080), static=True),)


def test_listing_all_protocols_asks_tcp_udp_icmp_in_turn() -> None:
    empty = reply_bytes(Op.BIB_FOREACH, b"")
    client, transport = client_with(empty, empty, empty)
    assert client.bib_list("nat64") == ()
    assert [codec.attr_map(s.attrs)[RootAttr.PROTO].u8() for s in transport.sent] == [0, 1, 2]


def test_instance_list_pages_with_the_whole_last_entry() -> None:
    def entry(ns: int, name: str) -> bytes:
        return tlv(ListAttr.ENTRY | NESTED, tlv(InstanceEntryAttr.NS, struct.pack("=I", ns))
                   + tlv(InstanceEntryAttr.XF, b"\4") + tlv(InstanceEntryAttr.INAME, name.encode() + b"\0"))
    client, transport = client_with(
        reply_bytes(Op.INSTANCE_FOREACH, entry(0x8412D780, "a"), flags=HeaderFlag.M, iname=""),
        reply_bytes(Op.INSTANCE_FOREACH, entry(0x1, "b"), iname=""))
    assert client.instance_list() == (InstanceInfo("a", "netfilter", 0x8412D780),
                                      InstanceInfo("b", "netfilter", 1))
    offset = codec.attr_map(transport.sent[1].attrs)[RootAttr.OFFSET]
    assert codec.decode_instance(offset) == InstanceInfo("a", "netfilter", 0x8412D780)


def test_instance_hello() -> None:
    client, transport = client_with(reply_bytes(Op.INSTANCE_HELLO, tlv(1, b"\0")),
                                    reply_bytes(Op.INSTANCE_HELLO, tlv(1, b"\1")))
    assert client.instance_exists("nat64") is True
    assert client.instance_exists("other") is False
    assert [s.header.iname for s in transport.sent] == ["nat64", "other"]
    assert [s.cmd for s in transport.sent] == [Op.INSTANCE_HELLO] * 2


def test_globals_decode_to_cli_names_and_types() -> None:
    plateaus = tlv(GlobalAttr.PLATEAUS | NESTED,
                   b"".join(tlv(1, struct.pack("=H", v)) for v in (65535, 1492, 68)))
    pool6 = tlv(GlobalAttr.POOL6 | NESTED,
                tlv(1, ipaddress.IPv6Address("64:ff9b::").packed) + tlv(2, b"\x60"))
    page1 = reply_bytes(Op.GLOBAL_FOREACH, tlv(GlobalAttr.ENABLED, b"\1") + pool6
                        + tlv(GlobalAttr.LOWEST_IPV6_MTU, struct.pack("=I", 1280)) + plateaus,
                        flags=HeaderFlag.M)
    page2 = reply_bytes(Op.GLOBAL_FOREACH, tlv(GlobalAttr.F_ARGS, b"\x0b")
                        + tlv(GlobalAttr.TTL_TCP_EST, struct.pack("=I", 7_200_000))
                        + tlv(GlobalAttr.DROP_BY_ADDR, b"\0") + tlv(99, b"\0\0\0\0"))  # 99: unknown, skipped
    client, transport = client_with(page1, page2)
    values = client.global_list("nat64")
    assert values == {
        "manually-enabled": True,
        "pool6": ipaddress.IPv6Network("64:ff9b::/96"),
        "lowest-ipv6-mtu": 1280,
        "mtu-plateaus": (65535, 1492, 68),
        "f-args": 11,
        "tcp-est-timeout": 7_200_000,
        "address-dependent-filtering": False,
    }
    assert values["manually-enabled"] is True
    assert codec.attr_map(transport.sent[1].attrs)[RootAttr.OFFSET_U8].u8() == GlobalAttr.PLATEAUS


def test_global_update_encodes_every_kind() -> None:
    client, transport = client_with(reply_bytes(Op.GLOBAL_UPDATE, b""))
    client.global_update("nat64", {"tcp-est-timeout": 7_440_000, "lowest-ipv6-mtu": 1450, "logging-bib": True,
                                   "drop-icmpv6-info": False, "f-args": 9}, force=True)
    sent = transport.sent[0]
    assert sent.cmd == Op.GLOBAL_UPDATE
    assert sent.header.flags == HeaderFlag.FORCE
    inner = codec.attr_map(sent.attrs)[RootAttr.GLOBALS]
    assert inner.nested
    assert inner.payload == b"".join((  # in id order
        tlv(GlobalAttr.LOWEST_IPV6_MTU, struct.pack("=I", 1450)),
        tlv(GlobalAttr.DROP_ICMP6_INFO, b"\0"),
        tlv(GlobalAttr.F_ARGS, b"\x09"),
        tlv(GlobalAttr.TTL_TCP_EST, struct.pack("=I", 7_440_000)),
        tlv(GlobalAttr.BIB_LOGGING, b"\1"),
    ))
    decoded = {spec.name: value for spec, value in global_config.decode_globals(inner.children())}
    assert decoded == {"tcp-est-timeout": 7_440_000, "lowest-ipv6-mtu": 1450, "logging-bib": True,
                       "drop-icmpv6-info": False, "f-args": 9}


@pytest.mark.parametrize(("values", "message"), [
    ({"no-such-global": 1}, "unknown Jool global"),
    ({"logging-bib": 1}, "takes a bool"),
    ({"udp-timeout": True}, "integer"),
    ({"tos": 256}, "0 to 255"),
    ({"eam-hairpin-mode": 1}, "SIIT"),
    ({"ss-max-sessions-per-packet": 10}, "4.1.11 or later"),
    ({"mtu-plateaus": []}, "1 to 64"),
    ({"pool6": "64:ff9b::/96"}, "IPv6Network"),
    ({}, "no Jool globals"),
])
def test_global_update_refuses_bad_values_before_sending(values: dict[str, object], message: str) -> None:
    client, transport = client_with()
    with pytest.raises(ValueError, match=message):
        client.global_update("nat64", values)  # type: ignore[arg-type]
    assert transport.sent == []


def test_newer_global_is_accepted_by_a_newer_module() -> None:
    body = global_config.encode_globals({"ss-max-sessions-per-packet": 10}, 15)
    assert codec.attr_map(body)[GlobalAttr.JOOLD_MAX_SESSIONS_PER_PACKET].u32() == 10


def test_stats_by_name_skip_padding_and_follow_pages() -> None:
    def u64(stat: int, value: int) -> bytes:
        return tlv(stat, struct.pack("=Q", value))
    page1 = reply_bytes(Op.STATS_FOREACH, u64(1, 10) + tlv(70, b"") + u64(2, 20), flags=HeaderFlag.M)
    page2 = reply_bytes(Op.STATS_FOREACH, u64(68, 1) + u64(69, 5))
    client, transport = client_with(page1, page2)
    stats = client.stats("nat64")
    assert stats == {"JSTAT_RECEIVED6": 10, "JSTAT_RECEIVED4": 20, "JSTAT_ICMPEXT_BIG": 1, "JSTAT_UNKNOWN": 5}
    assert codec.attr_map(transport.sent[1].attrs)[RootAttr.OFFSET_U8].u8() == 2


def test_stat_tables_per_revision() -> None:
    assert len(stat_names(9)) == 69 and stat_names(9)[-1] == "JSTAT_UNKNOWN"
    assert stat_names(9)[67] == "JSTAT_ICMPEXT_BIG"
    assert stat_names(12)[68:70] == ("JSTAT_JOOLD_EMPTY", "JSTAT_JOOLD_TIMEOUT") and len(stat_names(12)) == 84
    assert len(stat_names(15)) == 83  # JSTAT_UNKNOWN = 83, padding 84, as in 4.1.15
    assert stat_names(15)[-2] == "JSTAT_JOOLD_ACKS"


def test_pool4_add_flags_and_iterations() -> None:
    ok = reply_bytes(Op.POOL4_ADD, b"")
    client, transport = client_with(ok, ok, ok)
    entry = Pool4Entry("tcp", ipaddress.IPv4Network("192.0.2.0/30"), 1024, 65535, mark=2)
    client.pool4_add("nat64", entry)
    client.pool4_add("nat64", entry, force=True, max_iterations="auto")
    client.pool4_remove("nat64", entry, quick=True)
    assert [s.header.flags for s in transport.sent] == [HeaderFlag.NONE, HeaderFlag.FORCE, HeaderFlag.QUICK]
    assert [s.cmd for s in transport.sent] == [Op.POOL4_ADD, Op.POOL4_ADD, Op.POOL4_RM]
    auto = codec.attr_map(transport.sent[1].attrs)[RootAttr.OPERAND].fields()
    assert auto[Pool4Attr.FLAGS].u8() == 3  # SET | AUTO
    assert codec.decode_pool4(codec.attr_map(transport.sent[2].attrs)[RootAttr.OPERAND]) == entry
    with pytest.raises(ValueError):
        client.pool4_add("nat64", entry, max_iterations=-1)
    with pytest.raises(ValueError, match="unknown protocol"):
        client.pool4_add("nat64", Pool4Entry("sctp", entry.prefix, 1, 2))


# ------------------------------------------------------------------ versions


def test_version_parsing_and_wire_value() -> None:
    assert parse_version("4.1.9.0\n") == V4_1_9
    assert parse_version("4.1.15") == V4_1_15
    assert V4_1_15.wire == 0x04010F00
    assert check_supported(V4_1_9) is V4_1_9
    assert check_supported(JoolVersion(4, 1, 254)).revision == 254


@pytest.mark.parametrize(("text", "found"), [
    ("4.1.255.0", "4.1.255.0"), ("4.2.0.0", "4.2.0.0"), ("4.0.8", "4.0.8.0"), ("4.1.8.0", "4.1.8.0"),
    ("5.0.0.0", "5.0.0.0"), ("not a version", "'not a version'"),
])
def test_unsupported_versions_are_refused_with_what_was_found(text: str, found: str) -> None:
    with pytest.raises(JoolVersionUnsupported) as caught:
        check_supported(parse_version(text))
    message = str(caught.value)
    assert message.startswith(f"Jool kernel module version {found} is not supported; supported: Jool 4.1.9 ")
    assert "4.1.255" in message  # says the development line is out
    assert caught.value.found == found


def test_module_version_reads_sysfs(tmp_path: Path) -> None:
    path = tmp_path / "version"
    path.write_text("4.1.15.0\n")
    assert module_version(str(path)) == V4_1_15
    path.write_text("4.1.255.0\n")
    with pytest.raises(JoolVersionUnsupported, match=r"4\.1\.255\.0 is not supported"):
        module_version(str(path))


def test_missing_module_gives_the_modprobe_hint(tmp_path: Path) -> None:
    with pytest.raises(JoolNotLoaded) as caught:
        module_version(str(tmp_path / "absent"))
    hint = "Jool kernel module not loaded: run modprobe jool (package jool-dkms)"
    assert str(caught.value).startswith(hint)
    assert caught.value.errno == errno.ENOENT


def test_requests_carry_the_module_version() -> None:
    ok = reply_bytes(Op.INSTANCE_RM, b"")
    for version in (V4_1_9, V4_1_15):
        client, transport = client_with(ok, version=version)
        client.instance_remove("nat64")
        assert transport.sent[0].header.pack()[4:8] == struct.pack(">I", version.wire)


def test_close_closes_the_transport() -> None:
    client, transport = client_with()
    with client:
        pass
    assert transport.closed
