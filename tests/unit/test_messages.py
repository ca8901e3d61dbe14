import ipaddress

import pytest

from felix_nat64.testing import protowire as pw
from felix_nat64.testing.streams import StreamBuilder
from felix_nat64.wire import felixbackend_pb2 as pb
from felix_nat64.wire import messages as m
from felix_nat64.wire.framing import FrameDecoder


def decode_all(builder: StreamBuilder) -> list[m.Decoded]:
    return [decode(body) for body in FrameDecoder().feed(builder.data())]


def decode(body: bytes) -> m.Decoded:
    number, decoded = m.decode_frame(body)
    if isinstance(decoded, m.Undecodable):
        assert number == decoded.field_number
    return decoded


@pytest.mark.parametrize("field", [2, 3, 4, 5, 7, 8, 9, 10, 19, 23, 24, 30, 31, 33, 34, 39, 99, 5000])
def test_unknown_and_skipped_payloads_are_not_parsed(field: int) -> None:
    body = b"\x0a\x03abc" * 10
    assert m.decode_frame(pw.uint(15, 7) + pw.length_delimited(field, body)) == (field, None)


def test_scan_finds_payload_before_or_after_sequence_number() -> None:
    payload = pw.length_delimited(16, b"")
    assert m.scan_payload_field(pw.uint(15, 300) + payload) == 16
    assert m.scan_payload_field(payload + pw.uint(15, 300)) == 16
    assert m.scan_payload_field(b"") is None


def test_scan_prefers_a_used_payload_over_an_unknown_length_delimited_field() -> None:
    body = pw.length_delimited(60, b"future") + pw.length_delimited(1, b"")
    assert m.scan_payload_field(body) == 1


@pytest.mark.parametrize("body", [
    b"\x0a", b"\x0a\x05ab", b"\xff", b"\x07", b"\x82" + b"\x80" * 10 + b"\x01", b"\x00\x01"])
def test_malformed_protobuf_is_undecodable_not_fatal(body: bytes) -> None:
    result = decode(body)
    assert isinstance(result, m.Undecodable)
    assert not result.used


def test_used_payload_that_fails_to_parse_is_reported_as_used() -> None:
    # field 16 (IPAMPoolUpdate) whose body has a bogus nested length
    body = pw.length_delimited(16, b"\x12\x50zz")
    result = decode(body)
    assert isinstance(result, m.Undecodable)
    assert result.used and result.field_number == 16
    assert "ipam_pool_update" in result.error


def test_invalid_pool_cidr_is_reported() -> None:
    msg = pb.ToDataplane()
    msg.ipam_pool_update.id = "x"
    msg.ipam_pool_update.pool.cidr = "not-a-cidr"
    result = decode(msg.SerializeToString())
    assert isinstance(result, m.Undecodable) and result.used
    assert "not-a-cidr" in result.error


def test_unknown_fields_inside_used_messages_are_ignored() -> None:
    msg = pb.ToDataplane()
    msg.ipam_pool_update.id = "fd00::-64"
    msg.ipam_pool_update.pool.cidr = "fd00::/64"
    body = msg.SerializeToString()
    # append an unknown field 9 inside the IPAMPool (and a top-level one)
    inner = pw.string(1, "fd00::-64") + pw.message(2, pw.string(1, "fd00::/64"), pw.string(9, "new"))
    body = pw.length_delimited(16, inner) + pw.string(77, "future")
    result = decode(body)
    assert isinstance(result, m.PoolUpdate)
    assert result.cidr == ipaddress.IPv6Network("fd00::/64")


def test_config_update_with_sources() -> None:
    b = StreamBuilder().config({"environment variable": {"nat64prefixes": "64:ff9b::/96"},
                                "datastore (global)": {"NAT64Enabled": "true"}})
    (msg,) = decode_all(b)
    assert isinstance(msg, m.ConfigUpdate)
    assert msg.config["nat64prefixes"] == "64:ff9b::/96"
    assert {s.name for s in msg.sources} == {"environment variable", "datastore (global)"}


def test_pool_update_and_remove() -> None:
    b = StreamBuilder().pool("fd00:10::/64", masquerade=True).remove_pool("fd00:10::/64")
    upd, rem = decode_all(b)
    assert upd == m.PoolUpdate("fd00:10::-64", ipaddress.IPv6Network("fd00:10::/64"), True,
                               ("Workload", "Tunnel"), seq=0)
    assert rem == m.PoolRemove("fd00:10::-64", seq=1)


def test_pool_without_allowed_uses_on_older_felix() -> None:
    (upd,) = decode_all(StreamBuilder("v3.29").pool("fd00:10::/64"))
    assert isinstance(upd, m.PoolUpdate) and upd.allowed_uses == ()


def test_in_sync() -> None:
    (msg,) = decode_all(StreamBuilder().in_sync())
    assert isinstance(msg, m.InSync)


class TestHostMetadataVariants:
    def test_master_sends_one_message_with_cidrs(self) -> None:
        msgs = decode_all(StreamBuilder("master").host("n1", "192.0.2.1/24", "2001:db8::1/64", "64512",
                                                         {"zone": "a"}))
        assert msgs == [m.HostUpdate("n1", ipaddress.IPv4Address("192.0.2.1"),
                                     ipaddress.IPv6Address("2001:db8::1"), True, True,
                                     "host_metadata_update", labels={"zone": "a"}, seq=0)]

    def test_master_without_ipv6_clears_nothing_it_does_not_carry(self) -> None:
        (msg,) = decode_all(StreamBuilder("master").host("n1", "192.0.2.1/24"))
        assert isinstance(msg, m.HostUpdate)
        assert msg.ipv6 is None and not msg.sets_ipv6

    @pytest.mark.parametrize("version", ["v3.29", "v3.32"])
    def test_v329_to_v332_send_bare_ipv4_then_v6_then_v4v6(self, version: str) -> None:
        msgs = decode_all(StreamBuilder(version).host("n1", "192.0.2.1/24", "2001:db8::1/64"))
        assert [type(x).__name__ for x in msgs] == ["HostUpdate"] * 3
        first, second, third = msgs
        assert isinstance(first, m.HostUpdate) and isinstance(second, m.HostUpdate)
        assert isinstance(third, m.HostUpdate)
        assert first.variant == "host_metadata_update"
        assert first.ipv4 == ipaddress.IPv4Address("192.0.2.1") and not first.sets_ipv6
        assert second.variant == "host_metadata_v6_update" and not second.sets_ipv4
        assert second.ipv6 == ipaddress.IPv6Address("2001:db8::1")
        assert third.variant == "host_metadata_v4v6_update" and third.sets_ipv4 and third.sets_ipv6

    def test_v326_sends_bare_ipv4_and_v6_message(self) -> None:
        msgs = decode_all(StreamBuilder("v3.26").host("n1", "192.0.2.1", "2001:db8::1"))
        assert [x.variant for x in msgs if isinstance(x, m.HostUpdate)] == [
            "host_metadata_update", "host_metadata_v6_update"]

    @pytest.mark.parametrize("version", ["v3.26", "v3.29", "v3.32", "master"])
    def test_removes(self, version: str) -> None:
        msgs = decode_all(StreamBuilder(version).remove_host("n1"))
        assert all(isinstance(x, m.HostRemove) and x.hostname == "n1" for x in msgs)
        assert any(isinstance(x, m.HostRemove) and not x.ipv6_only for x in msgs)

    def test_bad_host_address_is_undecodable(self) -> None:
        msg = pb.ToDataplane()
        msg.host_metadata_update.hostname = "n1"
        msg.host_metadata_update.ipv4_addr = "2001:db8::1"
        result = decode(msg.SerializeToString())
        assert isinstance(result, m.Undecodable) and "is not IPv4" in result.error


def test_real_felix_field_numbers_for_skipped_payloads_are_named() -> None:
    assert m.payload_name(7) == "active_policy_update"
    assert m.payload_name(2) == "ipset_update"
    assert m.payload_name(11) == "workload_endpoint_update"
    assert m.payload_name(1234) == "field_1234"
    assert m.payload_name(16) == "ipam_pool_update"


def test_workload_endpoints_decode_to_their_ids_and_ipv6_nets() -> None:
    b = StreamBuilder("master")
    b.workload("shop", "web-7d9f", ["fd00:10:244::5/128", "fd00:20::5/128"], "cali0123456789a",
               ipv4=["10.244.1.5/32"])
    b.remove_workload("shop", "web-7d9f")
    update, remove = decode_all(b)
    ident = m.EndpointId("k8s", "shop/web-7d9f", "eth0")
    assert update == m.EndpointUpdate(ident, ("fd00:10:244::5/128", "fd00:20::5/128"), 0)
    assert remove == m.EndpointRemove(ident, 1)


def test_a_broken_workload_endpoint_does_not_count_as_a_needed_payload() -> None:
    # Endpoints only name pods: losing one leaves NAT64 itself intact.
    result = decode(pw.uint(15, 7) + pw.length_delimited(11, b"\x0a\x05ab"))
    assert isinstance(result, m.Undecodable) and result.field_number == 11 and not result.used
    broken_pool = decode(pw.uint(15, 7) + pw.length_delimited(16, b"\x0a\x05ab"))
    assert isinstance(broken_pool, m.Undecodable) and broken_pool.used


class TestTunnelsAndServices:
    def test_vtep_and_wireguard_updates_carry_ipv4_tunnel_addresses(self) -> None:
        b = (StreamBuilder().vtep("n2", "10.244.7.1", "192.0.2.2").wireguard("n2", "10.244.9.1")
             .remove_vtep("n2").remove_wireguard("n2"))
        vtep, wg, vtep_gone, wg_gone = decode_all(b)
        a4 = ipaddress.IPv4Address
        assert vtep == m.TunnelUpdate("n2", "vxlan", (a4("10.244.7.1"), a4("192.0.2.2")), seq=0)
        assert wg == m.TunnelUpdate("n2", "wireguard", (a4("10.244.9.1"),), seq=1)
        assert vtep_gone == m.TunnelRemove("n2", "vxlan", seq=2)
        assert wg_gone == m.TunnelRemove("n2", "wireguard", seq=3)

    def test_ipv6_only_vtep_has_no_ipv4_address(self) -> None:
        (vtep,) = decode_all(StreamBuilder().vtep("n2", "", ""))
        assert vtep == m.TunnelUpdate("n2", "vxlan", (), seq=0)

    def test_service_cidrs_of_every_kind(self) -> None:
        (svc,) = decode_all(StreamBuilder().service_cidrs(["10.96.0.0/12", "fd00:96::/112"], ["192.0.2.0/28"],
                                                          ["198.51.100.0/26"]))
        assert svc == m.ServiceCidrs(tuple(ipaddress.ip_network(c) for c in (
            "10.96.0.0/12", "fd00:96::/112", "192.0.2.0/28", "198.51.100.0/26")), seq=0)

    def test_bad_tunnel_address_is_undecodable(self) -> None:
        (bad,) = decode_all(StreamBuilder().wireguard("n2", "fd00::1"))
        assert isinstance(bad, m.Undecodable) and bad.used and "not IPv4" in bad.error
