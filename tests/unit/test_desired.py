import ipaddress
from dataclasses import replace

import pytest

from felix_nat64.model import addressing, special_ipv4
from felix_nat64.model.desired import Pool4OverlapError, allocate_blocks, build_desired
from felix_nat64.model.settings import Settings
from felix_nat64.model.state import Host, Inputs, Pool, TunnelAddress

N6 = ipaddress.IPv6Network
N4 = ipaddress.IPv4Network
A4 = ipaddress.IPv4Address
A6 = ipaddress.IPv6Address

WKP = N6("64:ff9b::/96")
NSP = N6("2001:db8:64::/96")
POD_POOL = Pool("pods", N6("fd00:10:244::/56"), masquerade=True)
V4_POOL = Pool("v4", N4("10.244.0.0/16"), masquerade=True)


def settings(*prefixes: str, **kw: object) -> Settings:
    return replace(Settings(prefixes=tuple(sorted(N6(p) for p in prefixes)), hostname="node-1"), **kw)


def desired(*prefixes: str, pools: tuple[Pool, ...] = (POD_POOL, V4_POOL), hosts: tuple[Host, ...] = (),
            **kw: object):
    return build_desired(Inputs(settings(*prefixes, **kw), pools, hosts))


def refused_v4(state, prefix: N6) -> set[N4]:
    parent = addressing.parent96(prefix)
    return {r.ipv4 for r in state.refused if r.network.subnet_of(parent)}


def is_refused(state, addr6: str) -> bool:
    a = A6(addr6)
    return any(a in r.network for r in state.refused)


def test_off_when_no_prefixes_or_disabled() -> None:
    assert not desired().active
    assert not desired("64:ff9b::/96", enabled=False).active
    assert desired("64:ff9b::/96").active


def test_single_96_prefix() -> None:
    s = desired("64:ff9b::/96")
    (t,) = s.translators
    assert t.parent == WKP and t.prefixes == (WKP,)
    assert t.namespace.startswith("felix-nat64-") and t.node_link.startswith("fn64-")
    assert len(t.node_link) <= 15
    assert t.block == N4("169.254.64.0/28")
    assert t.link_node_addr == ipaddress.IPv4Interface("169.254.64.1/30")
    assert t.link_ns_addr == ipaddress.IPv4Interface("169.254.64.2/30")
    assert t.pool4 == N4("169.254.64.8/29")
    assert s.sources == (N6("fd00:10:244::/56"),)
    assert s.steered == (WKP,)


def test_104_prefix_steers_only_its_part_and_shares_the_96_translator() -> None:
    s = desired("2001:db8::a00:0/104", "2001:db8::c000:0/104")
    (t,) = s.translators
    assert t.parent == N6("2001:db8::/96")
    assert t.prefixes == (N6("2001:db8::a00:0/104"), N6("2001:db8::c000:0/104"))
    assert s.steered == t.prefixes
    # a network-specific prefix may reach private destinations: that is what it is for
    assert not is_refused(s, "2001:db8::a01:203")
    # refusals are only ever inside the steered part
    for r in s.refused:
        assert any(r.network.subnet_of(p) for p in t.prefixes)


def test_two_parents_get_two_translators_with_distinct_blocks() -> None:
    s = desired("64:ff9b::/96", "2001:db8:64::/96")
    assert [t.parent for t in s.translators] == [WKP, NSP]
    blocks = [t.block for t in s.translators]
    assert len(set(blocks)) == 2
    assert len({t.namespace for t in s.translators}) == 2
    assert len({t.node_link for t in s.translators}) == 2


def test_well_known_prefix_refuses_every_non_global_ipv4() -> None:
    s = desired("64:ff9b::/96")
    for text in ["10.1.2.3", "172.16.0.1", "192.168.1.1", "100.64.0.1", "127.0.0.1", "169.254.169.254",
                 "192.0.2.1", "198.51.100.10", "203.0.113.5", "198.18.0.1", "224.0.0.1", "255.255.255.255",
                 "0.0.0.1", "240.0.0.1", "192.0.0.1", "192.88.99.1"]:
        assert is_refused(s, f"64:ff9b::{text}"), text
    for text in ["8.8.8.8", "1.1.1.1", "192.0.0.9", "192.0.0.10", "93.184.216.34"]:
        assert not is_refused(s, f"64:ff9b::{text}"), text


def test_well_known_refusals_agree_with_python_is_global() -> None:
    s = desired("64:ff9b::/96")
    sample = [A4(x) for x in range(0, 2**32, 2**32 // 20011)] + [A4("192.0.0.9"), A4("192.0.0.10")]
    for addr in sample:
        expected = not addr.is_global or addr.is_multicast
        assert is_refused(s, str(addressing.embed_address(WKP, addr))) == expected, addr


def test_network_specific_prefix_refuses_only_node_local_ranges() -> None:
    hosts = (Host("node-1", A4("192.0.2.7")), Host("node-2", A4("198.51.100.8")))
    s = desired("2001:db8:64::/96", hosts=hosts)
    for text in ["127.0.0.1", "169.254.169.254", "224.0.0.251", "255.255.255.255", "0.1.2.3",
                 "192.0.2.7", "198.51.100.8", "169.254.64.9"]:
        assert is_refused(s, f"2001:db8:64::{text}"), text
    for text in ["10.1.2.3", "192.168.0.1", "198.51.100.10", "8.8.8.8"]:
        assert not is_refused(s, f"2001:db8:64::{text}"), text


def test_node_address_inside_a_refused_range_is_not_listed_twice() -> None:
    s = desired("64:ff9b::/96", hosts=(Host("node-1", A4("10.1.2.3")),))
    nets = [r.network for r in s.refused]
    assert all(not (a != b and a.overlaps(b)) for a in nets for b in nets)


def test_refused_ranges_never_overlap() -> None:
    s = desired("64:ff9b::/96", "2001:db8::/96",
                hosts=tuple(Host(f"n{i}", A4(f"127.0.0.{i}")) for i in range(5)))
    nets = [r.network for r in s.refused]
    for i, a in enumerate(nets):
        for b in nets[i + 1:]:
            assert not a.overlaps(b), (a, b)


def test_128_prefix_with_refused_destination_is_entirely_refused() -> None:
    s = desired("2001:db8::7f00:1/128")
    assert s.refused[0].network == N6("2001:db8::7f00:1/128")


def test_sources_exclude_pools_inside_or_covering_a_prefix_and_non_workload_pools() -> None:
    pools = (
        POD_POOL,
        Pool("covering", WKP, masquerade=False),
        Pool("lb", N6("fd00:99::/64"), False, ("LoadBalancer",)),
        Pool("tunnel+wl", N6("fd00:20::/64"), False, ("Workload", "Tunnel")),
        Pool("inside", N6("64:ff9b::a00:0/120"), False),
        V4_POOL,
    )
    s = desired("64:ff9b::/96", pools=pools)
    assert s.sources == (N6("fd00:10:244::/56"), N6("fd00:20::/64"))


def test_pools_added_and_removed_change_sources() -> None:
    a = desired("64:ff9b::/96", pools=(POD_POOL,))
    b = desired("64:ff9b::/96", pools=(POD_POOL, Pool("more", N6("fd00:30::/64"), False)))
    c = desired("64:ff9b::/96", pools=())
    assert len(b.sources) == len(a.sources) + 1
    assert c.sources == () and "no IPv6 IP pool" in " ".join(c.warnings)


def test_configured_source_cidrs_override_pools() -> None:
    s = desired("64:ff9b::/96", source_cidrs=(N6("fd00:77::/64"),))
    assert s.sources == (N6("fd00:77::/64"),)


def test_warns_when_natoutgoing_pool_but_no_covering_pool() -> None:
    s = desired("64:ff9b::/96", pools=(POD_POOL,))
    assert any("create a disabled IP pool with cidr 64:ff9b::/96" in w for w in s.warnings)
    s2 = desired("64:ff9b::/96", pools=(POD_POOL, Pool("cover", WKP, False)))
    assert not any("create a disabled IP pool" in w for w in s2.warnings)


def test_warns_when_a_large_pool_contains_a_prefix() -> None:
    s = desired("fd00:10:244::/96", pools=(POD_POOL,))
    assert any("contains NAT64 prefix" in w for w in s.warnings)
    assert s.sources == ()


def test_settings_are_carried_into_the_state() -> None:
    s = desired("64:ff9b::/96", snat_address=A4("192.0.2.10"), mtu=1450, firewall_mark=0x200)
    assert s.snat.address == A4("192.0.2.10") and s.mtu == 1450 and s.firewall_mark == 0x200
    assert s.timeouts.tcp_established == 7440


def test_calculation_is_deterministic_and_frozen() -> None:
    hosts = (Host("b", A4("192.0.2.2")), Host("a", A4("192.0.2.1")))
    assert desired("64:ff9b::/96", hosts=hosts) == desired("64:ff9b::/96", hosts=hosts[::-1])
    s = desired("64:ff9b::/96")
    with pytest.raises(AttributeError):
        s.mtu = 5  # type: ignore[misc]


class TestBlockAllocation:
    def test_blocks_are_sticky_when_parents_change(self) -> None:
        cidr = N4("169.254.64.0/24")
        first = allocate_blocks([NSP], cidr, {})
        assert first[NSP] == N4("169.254.64.0/28")
        second = allocate_blocks([WKP, NSP], cidr, first)
        assert second[NSP] == first[NSP]  # the live translator keeps its block
        assert second[WKP] == N4("169.254.64.16/28")

    def test_block_outside_a_new_range_is_reallocated(self) -> None:
        new = allocate_blocks([WKP], N4("100.127.0.0/24"), {WKP: N4("169.254.64.0/28")})
        assert new[WKP] == N4("100.127.0.0/28")

    def test_duplicate_previous_blocks_are_resolved(self) -> None:
        block = N4("169.254.64.0/28")
        new = allocate_blocks([WKP, NSP], N4("169.254.64.0/24"), {WKP: block, NSP: block})
        assert new[WKP] != new[NSP]

    def test_previous_blocks_flow_through_build_desired(self) -> None:
        prev = {WKP: N4("169.254.64.48/28")}
        s = build_desired(Inputs(settings("64:ff9b::/96"), (POD_POOL,), (), prev))
        assert s.translators[0].block == N4("169.254.64.48/28")


def test_special_table_reasons_are_documented() -> None:
    for r in special_ipv4.ALWAYS_REFUSED + special_ipv4.NON_GLOBAL:
        assert "RFC" in r.reason


def test_refused_cidrs_and_tunnel_addresses_are_refused_behind_every_prefix() -> None:
    tunnels = (TunnelAddress("node-2", "vxlan", A4("10.244.7.1")),
               TunnelAddress("node-2", "wireguard", A4("198.51.100.78")))
    s = build_desired(Inputs(settings("2001:db8:64::/96"), (POD_POOL,), (), tunnels=tunnels))
    for text in ["168.63.129.16", "100.100.100.200", "100.96.0.96", "10.244.7.1", "198.51.100.78"]:
        assert is_refused(s, f"2001:db8:64::{text}"), text
    reasons = {r.reason for r in s.refused}
    assert "vxlan tunnel address of Calico node node-2" in reasons
    assert "listed in NAT64RefusedCIDRs" in reasons
    # An operator's own list replaces the default.
    s = desired("2001:db8:64::/96", refused_cidrs=(N4("203.0.113.0/24"),))
    assert is_refused(s, "2001:db8:64::cb00:7107") and not is_refused(s, "2001:db8:64::a83f:8110")


@pytest.mark.parametrize("inputs,what", [
    (dict(pools=(POD_POOL, Pool("v4", N4("169.254.0.0/16"), True))), "Calico IP pool v4"),
    (dict(hosts=(Host("node-9", A4("169.254.64.77")),)), "address of Calico node node-9"),
    (dict(tunnels=(TunnelAddress("node-9", "wireguard", A4("169.254.64.5")),)),
     "wireguard tunnel address of Calico node node-9"),
    (dict(service_cidrs=(N4("169.254.64.128/25"), N6("fd00:96::/112"))), "service CIDR"),
])
def test_pool4_overlapping_what_the_cluster_uses_is_refused(inputs: dict[str, object], what: str) -> None:
    base = {"pools": (POD_POOL,), "hosts": ()}
    args = {**base, **inputs}
    with pytest.raises(Pool4OverlapError, match=f"169.254.64.0/24 overlaps .*{what}"):
        build_desired(Inputs(settings("64:ff9b::/96"), **args))  # type: ignore[arg-type]
    # NAT64 off: nothing is programmed, nothing to check
    build_desired(Inputs(settings(), **args))  # type: ignore[arg-type]


def test_exhausted_translators_carry_their_prefixes_only() -> None:
    exhausted = frozenset({(NSP, "tcp"), (N6("2001:db8:99::/96"), "udp")})
    s = build_desired(Inputs(settings("64:ff9b::/96", "2001:db8:64::c600:0/104"), (POD_POOL,),
                             exhausted=exhausted))
    assert s.exhausted == ((NSP, "tcp"),)  # a translator that no longer exists is dropped
    assert s.exhausted_prefixes("tcp") == (N6("2001:db8:64::c600:0/104"),)
    assert s.exhausted_prefixes("udp") == ()
