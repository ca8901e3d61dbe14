import ipaddress
from types import MappingProxyType

import pytest

from felix_nat64.model import values
from felix_nat64.model.settings import SPECS, Settings, resolve_settings, source_rank
from felix_nat64.wire.messages import ConfigUpdate, RawConfigSource


def resolved(**config: str) -> ConfigUpdate:
    return ConfigUpdate(MappingProxyType(dict(config)))


def sourced(**by_source: dict[str, str]) -> ConfigUpdate:
    names = {"env": "environment variable", "file": "config file", "host": "datastore (per-host)",
             "selector": "datastore (per-selector)", "glob": "datastore (global)"}
    sources = tuple(RawConfigSource(names[k], MappingProxyType(v)) for k, v in by_source.items())
    return ConfigUpdate(MappingProxyType({}), sources)


def ok(update: ConfigUpdate) -> Settings:
    result = resolve_settings(update, default_hostname="node-1")
    assert result.ok, result.errors
    assert result.settings is not None
    return result.settings


def errors(update: ConfigUpdate) -> list[str]:
    result = resolve_settings(update, default_hostname="node-1")
    assert not result.ok
    return [str(e) for e in result.errors]


def test_defaults_meet_rfc6146() -> None:
    s = ok(resolved())
    assert not s.active and s.prefixes == ()
    assert s.tcp_established_timeout >= 2 * 3600 + 4 * 60
    assert s.tcp_transitory_timeout == 240 and s.udp_timeout == 300 and s.icmp_timeout == 60
    assert s.hostname == "node-1"


def test_keys_are_case_insensitive_and_values_trimmed() -> None:
    s = ok(resolved(nat64prefixes=" 64:FF9B::/96 , 2001:db8:64::/96 "))
    assert s.prefixes == (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("2001:db8:64::/96"))
    assert s.active


@pytest.mark.parametrize("key", ["NAT64Prefixes", "nat64prefixes", "Nat64Prefixes", "NAT64PREFIXES"])
def test_every_spelling_of_a_key(key: str) -> None:
    assert ok(resolved(**{key: "64:ff9b::/96"})).prefixes


@pytest.mark.parametrize("value,reason", [
    ("64:ff9b::/64", "shorter than /96"),
    ("10.0.0.0/8", "IPv4 CIDR where an IPv6"),
    ("64:ff9b::1/96", "host bits set"),
    ("banana", "not an IPv6 CIDR"),
    ("64:ff9b::/96,64:ff9b::/96", "listed twice"),
    ("64:ff9b::/96,64:ff9b::800:0/104", "overlap"),
])
def test_bad_prefixes(value: str, reason: str) -> None:
    (err,) = errors(resolved(NAT64Prefixes=value))
    assert "NAT64Prefixes" in err and repr(value) in err and reason in err


@pytest.mark.parametrize("value,reason", [
    ("ff0e::/96", "multicast (RFC 4291 section 2.7)"),
    ("fe80::/96", "link-local (RFC 4291 section 2.5.6)"),
    ("::/96", "IPv4-compatible"),
    ("::c000:0/104", "IPv4-compatible"),
    ("::ffff:0:0/96", "IPv4-mapped (RFC 4291 section 2.5.5.2)"),
    ("2001:db8:0:0:100::/96", "non-zero u octet (bits 64-71)"),
    ("2001:db8::ff00:0:0:0/96", "non-zero u octet (bits 64-71)"),
    # Under the Well-Known Prefix, RFC 6052 section 3.1 refuses every one of these.
    ("64:ff9b::a00:0/104", "only covers IPv4 addresses that are not globally reachable"),
    ("64:ff9b::c0a8:0/112", "only covers IPv4 addresses that are not globally reachable"),
    ("64:ff9b::a9fe:a9fe/128", "only covers IPv4 addresses that are not globally reachable"),
    ("64:ff9b::c633:6400/120", "only covers IPv4 addresses that are not globally reachable"),
])
def test_prefixes_that_cannot_carry_ipv4_embedded_addresses(value: str, reason: str) -> None:
    (err,) = errors(resolved(NAT64Prefixes=value))
    assert "NAT64Prefixes" in err and reason in err, err


@pytest.mark.parametrize("value", [
    "64:ff9b::c000:0/120",  # 192.0.0.0/24: refused except PCP and TURN anycast (192.0.0.9, .10)
    "64:ff9b::808:808/128",  # 8.8.8.8
    "2001:db8:64::a00:0/104",  # network-specific: private IPv4 may be reached behind it
])
def test_prefixes_with_something_to_reach_are_accepted(value: str) -> None:
    assert ok(resolved(NAT64Prefixes=value)).prefixes


@pytest.mark.parametrize("value,reason", [
    ("169.254.0.0/16", "contains 169.254.169.254, the cloud metadata service"),
    ("169.254.169.0/24", "contains 169.254.169.254"),
    ("169.254.1.0/24", "contains 169.254.1.1, Calico's gateway address for pods"),
])
def test_pool4_must_leave_link_local_services_alone(value: str, reason: str) -> None:
    (err,) = errors(resolved(NAT64Pool4CIDR=value))
    assert "NAT64Pool4CIDR" in err and reason in err, err


def test_pool4_outside_link_local_is_a_warning() -> None:
    result = resolve_settings(resolved(NAT64Pool4CIDR="100.127.0.0/24"), default_hostname="n")
    assert result.ok
    assert any("outside 169.254.0.0/16" in w for w in result.warnings), result.warnings
    result = resolve_settings(resolved(), default_hostname="n")
    assert not result.warnings


def test_refused_cidrs_default_and_override() -> None:
    assert [str(n) for n in ok(resolved()).refused_cidrs] == [
        "168.63.129.16/32", "100.100.100.200/32", "100.96.0.96/32"]
    s = ok(resolved(NAT64RefusedCIDRs="203.0.113.0/25, 203.0.113.128/25,192.0.2.7"))
    assert [str(n) for n in s.refused_cidrs] == ["192.0.2.7/32", "203.0.113.0/24"]
    assert ok(resolved(NAT64RefusedCIDRs="")).refused_cidrs == ()
    (err,) = errors(resolved(NAT64RefusedCIDRs="2001:db8::/32"))
    assert "NAT64RefusedCIDRs" in err and "IPv6 CIDR where an IPv4" in err


def test_prefix_lengths_96_to_128_accepted() -> None:
    s = ok(resolved(NAT64Prefixes="2001:db8::a00:0/104,2001:db9::c633:640a/128"))
    assert [p.prefixlen for p in s.prefixes] == [104, 128]


def test_empty_prefixes_mean_off() -> None:
    assert not ok(resolved(NAT64Prefixes="")).active
    assert not ok(resolved(NAT64Prefixes="none")).active


def test_enabled_false_keeps_prefixes_but_turns_off() -> None:
    s = ok(resolved(NAT64Prefixes="64:ff9b::/96", NAT64Enabled="false"))
    assert s.prefixes and not s.active


@pytest.mark.parametrize("key,value,expected", [
    ("NAT64SNATAddress", "192.0.2.10", ("snat_address", ipaddress.IPv4Address("192.0.2.10"))),
    ("NAT64SourceCIDRs", "fd00:10::/64, fd00:20::/64",
     ("source_cidrs", (ipaddress.IPv6Network("fd00:10::/64"), ipaddress.IPv6Network("fd00:20::/64")))),
    ("NAT64PortRange", "32768:65535", ("port_range", values.PortRange(32768, 65535))),
    ("NAT64PortRange", "1024-2048", ("port_range", values.PortRange(1024, 2048))),
    ("NAT64MTU", "1450", ("mtu", 1450)),
    ("NAT64TCPEstablishedTimeout", "3h", ("tcp_established_timeout", 10800.0)),
    ("NAT64TCPTransitoryTimeout", "300", ("tcp_transitory_timeout", 300.0)),
    ("NAT64UDPTimeout", "2m30s", ("udp_timeout", 150.0)),
    ("NAT64ICMPTimeout", "1.5s", ("icmp_timeout", 1.5)),
    ("NAT64Pool4CIDR", "100.127.0.0/24", ("pool4_cidr", ipaddress.IPv4Network("100.127.0.0/24"))),
    ("NAT64FirewallMark", "0x200", ("firewall_mark", 0x200)),
    ("NAT64RoutingTable", "1000", ("routing_table", 1000)),
    ("NAT64RoutingTable", "251", ("routing_table", 251)),
    ("NAT64RoutingRulePriority", "50", ("rule_priority", 50)),
    ("NAT64ResyncInterval", "5s", ("resync_interval", 5.0)),
    ("NAT64MetricsHost", "0.0.0.0", ("metrics_host", "0.0.0.0")),
    ("NAT64MetricsPort", "0", ("metrics_port", 0)),
    ("NAT64LogFormat", "JSON", ("log_format", "json")),
    ("NAT64LogLevel", "Debug", ("log_level", "debug")),
    ("NAT64Enabled", "TRUE", ("enabled", True)),
    ("FelixHostname", "worker-7", ("hostname", "worker-7")),
    ("InterfacePrefix", "cali,tap", ("interface_prefixes", ("cali", "tap"))),
    ("IptablesMarkMask", "0xff000000", ("felix_mark_mask", 0xFF000000)),
    ("NftablesMarkMask", "4278190080", ("felix_nft_mark_mask", 0xFF000000)),
    ("NFTablesMode", "Enabled", ("felix_nftables_mode", "enabled")),
    ("NFTablesMode", "Sometimes", ("felix_nftables_mode", "")),
    ("RouteTableRanges", "1-100,300-400", ("felix_route_table_ranges", ((1, 100), (300, 400)))),
    ("RouteTableRange", "1-250", ("felix_route_table_range", (1, 250))),
    ("BPFEnabled", "true", ("felix_bpf_enabled", True)),
    ("BPFEnabled", "T", ("felix_bpf_enabled", True)),
    ("BPFEnabled", "false", ("felix_bpf_enabled", False)),
    # Felix replaces an invalid boolean by the default, false.
    ("BPFEnabled", "maybe", ("felix_bpf_enabled", False)),
    ("NAT64KubeProxyMasqueradeBit", "13", ("kube_proxy_masquerade_bit", 13)),
])
def test_good_values(key: str, value: str, expected: tuple[str, object]) -> None:
    attr, want = expected
    assert getattr(ok(resolved(**{key: value})), attr) == want


@pytest.mark.parametrize("key,value,reason", [
    ("NAT64Enabled", "maybe", "expected a boolean"),
    ("NAT64SNATAddress", "2001:db8::1", "IPv6 address where an IPv4"),
    ("NAT64SNATAddress", "192.0.2", "expected an IPv4 address"),
    ("NAT64SNATAddress", "169.254.64.9", "inside NAT64Pool4CIDR"),
    ("NAT64SourceCIDRs", "10.0.0.0/8", "IPv4 CIDR where an IPv6"),
    ("NAT64SourceCIDRs", ",", "empty list"),
    ("NAT64SourceCIDRs", "fd00::/64,fd00::/64", "listed twice"),
    ("NAT64PortRange", "65535-1024", "first port <= last port"),
    ("NAT64PortRange", "0-100", "1 <= first port"),
    ("NAT64PortRange", "80", "expected a port range"),
    ("NAT64MTU", "1000", "out of range"),
    ("NAT64MTU", "big", "expected an integer"),
    ("NAT64TCPEstablishedTimeout", "1h", "below the minimum of 2h"),
    ("NAT64TCPTransitoryTimeout", "1m", "below the minimum of 4m"),
    ("NAT64UDPTimeout", "30s", "below the minimum of 2m"),
    ("NAT64ICMPTimeout", "0", "below the minimum of 1s"),
    ("NAT64ICMPTimeout", "-5", "non-negative"),
    ("NAT64UDPTimeout", "5 minutes", "expected a duration"),
    ("NAT64UDPTimeout", "9999999h", "above the maximum"),
    ("NAT64Pool4CIDR", "10.0.0.0/30", "too small"),
    ("NAT64Pool4CIDR", "fd00::/64", "IPv6 CIDR where an IPv4"),
    ("NAT64Pool4CIDR", "224.0.0.0/24", "not a usable unicast"),
    ("NAT64FirewallMark", "0x4000", "kube-proxy's masquerade mark 0x4000"),
    ("NAT64FirewallMark", "0x8000", "drop mark 0x8000"),
    ("NAT64FirewallMark", "0x10000", "overlaps Felix's IptablesMarkMask"),
    ("NAT64FirewallMark", "0", "out of range"),
    ("NAT64RoutingTable", "254", "kernel's own tables"),
    ("NAT64RoutingTable", "100", "inside Felix's route tables 1-250"),
    ("NAT64KubeProxyMasqueradeBit", "32", "out of range"),
    ("RouteTableRanges", "1-x", "expected an integer"),
    ("RouteTableRanges", "200-100", "first table is above the last"),
    ("RouteTableRange", "100", "not a range of route tables"),
    ("NftablesMarkMask", "mask", "expected an integer"),
    ("NAT64RoutingRulePriority", "40000", "out of range"),
    ("NAT64ResyncInterval", "0s", "1s to 1h"),
    ("NAT64MetricsPort", "9099", "used by Calico"),
    ("NAT64MetricsPort", "70000", "out of range"),
    ("NAT64MetricsHost", "my-host", "expected an IP address"),
    ("NAT64LogFormat", "xml", "one of: keyvalue, json"),
    ("InterfacePrefix", "ca*li", "not a valid interface name prefix"),
    ("InterfacePrefix", "cali,fn", "matches felix-nat64's own translator links"),
    ("InterfacePrefix", "fn64-", "matches felix-nat64's own translator links"),
    ("InterfacePrefix", "fn64-1a", "matches felix-nat64's own translator links"),
])
def test_bad_values_name_key_value_and_reason(key: str, value: str, reason: str) -> None:
    errs = errors(resolved(**{key: value}))
    assert len(errs) == 1, errs
    assert key in errs[0] and repr(value) in errs[0] and reason in errs[0], errs[0]


def test_unknown_nat64_key_suggests_the_right_one() -> None:
    (err,) = errors(resolved(NAT64Prefix="64:ff9b::/96"))
    assert "unknown felix-nat64 setting" in err and "did you mean NAT64Prefixes?" in err


def test_other_felix_keys_are_ignored() -> None:
    assert not ok(resolved(LogSeverityScreen="Info", IPv6Support="true")).active


def test_all_errors_reported_at_once() -> None:
    errs = errors(resolved(NAT64MTU="1", NAT64UDPTimeout="1s", NAT64Prefixes="::/0"))
    assert len(errs) == 3


def test_source_cidr_overlapping_a_prefix_is_rejected() -> None:
    (err,) = errors(resolved(NAT64Prefixes="64:ff9b::/96", NAT64SourceCIDRs="64:ff9b::/64"))
    assert "overlaps NAT64 prefix" in err


def test_too_many_translators_for_pool4_range() -> None:
    prefixes = ",".join(f"2001:db8:{i}::/96" for i in range(17))
    (err,) = errors(resolved(NAT64Prefixes=prefixes))
    assert "NAT64Pool4CIDR" in err and "16 /28 blocks" in err


class TestPrecedence:
    def test_env_beats_file_beats_host_beats_global(self) -> None:
        update = sourced(
            glob={"NAT64UDPTimeout": "10m", "NAT64ICMPTimeout": "2m", "NAT64MTU": "1400",
                  "NAT64Prefixes": "64:ff9b::/96"},
            host={"NAT64UDPTimeout": "9m", "NAT64ICMPTimeout": "3m", "NAT64MTU": "1410"},
            file={"NAT64UDPTimeout": "8m", "NAT64ICMPTimeout": "4m"},
            env={"nat64udptimeout": "7m"},
        )
        result = resolve_settings(update, "n")
        assert result.settings is not None
        assert result.settings.udp_timeout == 420
        assert result.settings.icmp_timeout == 240
        assert result.settings.mtu == 1410
        assert result.origins["NAT64UDPTimeout"].source == "environment variable"
        assert result.origins["NAT64ICMPTimeout"].source == "config file"
        assert result.origins["NAT64MTU"].source == "datastore (per-host)"
        assert result.origins["NAT64Prefixes"].source == "datastore (global)"

    def test_selector_sits_between_host_and_global(self) -> None:
        update = sourced(glob={"NAT64MTU": "1400"}, selector={"NAT64MTU": "1420"})
        assert ok(update).mtu == 1420
        assert source_rank("datastore (per-host)") > source_rank("datastore (per-selector)") > \
            source_rank("datastore (global)")

    def test_same_key_twice_in_one_source_with_different_values(self) -> None:
        (err,) = errors(sourced(glob={"NAT64MTU": "1400", "nat64mtu": "1500"}))
        assert "set it once" in err

    def test_case_variants_in_resolved_map_must_agree(self) -> None:
        errs = errors(resolved(NAT64MTU="1400", nat64mtu="1500"))
        assert any("set it once" in e for e in errs)
        assert ok(resolved(NAT64MTU="1400", nat64mtu="1400")).mtu == 1400

    def test_bad_value_names_its_source(self) -> None:
        (err,) = errors(sourced(env={"nat64mtu": "tiny"}))
        assert "from environment variable" in err


def test_every_spec_has_help_and_a_valid_example() -> None:
    for spec in SPECS:
        assert spec.help and spec.example
        spec.parse(spec.example)


class TestValueParsers:
    @pytest.mark.parametrize("text,seconds", [("300", 300), ("5m", 300), ("2h4m", 7440), ("1h0m10s", 3610),
                                              ("250ms", 0.25), ("1.5h", 5400)])
    def test_durations(self, text: str, seconds: float) -> None:
        assert values.parse_duration(text) == seconds

    @pytest.mark.parametrize("text", ["", "5x", "m5", "5m5", "nan", "inf", "1h-5m"])
    def test_bad_durations(self, text: str) -> None:
        with pytest.raises(ValueError):
            values.parse_duration(text)

    @pytest.mark.parametrize("seconds,text", [(7440, "2h4m"), (60, "1m"), (0, "0s"), (3601, "1h1s")])
    def test_format_duration(self, seconds: float, text: str) -> None:
        assert values.format_duration(seconds) == text


class TestFelixCrossChecks:
    """Our mark and table against what Felix (and kube-proxy) own, per Felix's mode."""

    @pytest.mark.parametrize("prefix", ["eni", "gke", "azv", "cali,tap", "f0", "fn65"])
    def test_other_prefixes_are_fine(self, prefix: str) -> None:
        assert ok(resolved(InterfacePrefix=prefix)).interface_prefixes == tuple(prefix.split(","))

    @pytest.mark.parametrize("mode,iptables_mask,nft_mask,bad", [
        # nftables mode: only NftablesMarkMask counts.
        ("Enabled", "0xffff0000", "0xff00", "NftablesMarkMask 0xff00"),
        # iptables mode: only IptablesMarkMask counts.
        ("Disabled", "0xff00", "0xffff0000", "IptablesMarkMask 0xff00"),
        # Auto (v3.32+ default) or unset: the mode depends on kube-proxy, so both count.
        ("Auto", "0xffff0000", "0xff00", "NftablesMarkMask 0xff00"),
        ("", "0xff00", "0xffff0000", "IptablesMarkMask 0xff00"),
    ])
    def test_mark_against_the_mask_in_force(self, mode: str, iptables_mask: str, nft_mask: str,
                                            bad: str) -> None:
        update = {"NAT64FirewallMark": "0x1000", "IptablesMarkMask": iptables_mask,
                  "NftablesMarkMask": nft_mask}
        if mode:
            update["NFTablesMode"] = mode
        (err,) = errors(resolved(**update))
        assert "NAT64FirewallMark" in err and f"overlaps Felix's {bad}" in err

    @pytest.mark.parametrize("mode,iptables_mask,nft_mask", [
        ("Enabled", "0xff00", "0xffff0000"),  # iptables mask unused in nftables mode
        ("Disabled", "0xffff0000", "0xff00"),  # and the other way round
    ])
    def test_the_mask_not_in_force_is_ignored(self, mode: str, iptables_mask: str, nft_mask: str) -> None:
        s = ok(resolved(NAT64FirewallMark="0x1000", IptablesMarkMask=iptables_mask,
                        NftablesMarkMask=nft_mask, NFTablesMode=mode))
        assert s.firewall_mark == 0x1000

    def test_both_masks_named_when_both_overlap(self) -> None:
        (err,) = errors(resolved(NAT64FirewallMark="0x10000"))
        assert "IptablesMarkMask 0xffff0000 and NftablesMarkMask 0xffff0000" in err

    def test_masquerade_bit_is_configurable(self) -> None:
        # kube-proxy moved to bit 12: 0x4000 becomes free and 0x1000 (our default) does not.
        moved = ok(resolved(NAT64KubeProxyMasqueradeBit="12", NAT64FirewallMark="0x4000"))
        assert moved.firewall_mark == 0x4000
        (err,) = errors(resolved(NAT64KubeProxyMasqueradeBit="12"))
        assert "NAT64FirewallMark" in err and "masquerade mark 0x1000 (NAT64KubeProxyMasqueradeBit 12)" in err

    @pytest.mark.parametrize("config,table,ok_", [
        ({}, 250, False),  # Felix's default 1-250
        ({}, 251, True),
        ({"RouteTableRange": "1-100"}, 150, True),
        ({"RouteTableRange": "1-100"}, 100, False),
        # RouteTableRanges wins over the deprecated RouteTableRange, as in Felix.
        ({"RouteTableRange": "1-100", "RouteTableRanges": "200-300,6000-7000"}, 100, True),
        ({"RouteTableRange": "1-100", "RouteTableRanges": "200-300,6000-7000"}, 6464, False),
        ({"RouteTableRanges": "1-250"}, 6464, True),
    ])
    def test_routing_table_against_felix_route_tables(self, config: dict[str, str], table: int,
                                                      ok_: bool) -> None:
        update = resolved(NAT64RoutingTable=str(table), **config)
        if ok_:
            assert ok(update).routing_table == table
        else:
            (err,) = errors(update)
            assert "NAT64RoutingTable" in err and "inside Felix's route tables" in err

    def test_known_felix_parameters_arrive_under_their_canonical_name(self) -> None:
        # Felix resolves its own parameters to their canonical names in
        # ConfigUpdate.config, while the per-source maps keep each source's
        # spelling (lower case for the environment).
        env = {"bpfenabled": "true", "nftablesmarkmask": "0xff000000"}
        sources = (RawConfigSource("environment variable", MappingProxyType(env)),
                   RawConfigSource("datastore (global)", MappingProxyType({"BPFEnabled": "false"})))
        resolved_map = {"BPFEnabled": "true", "NftablesMarkMask": "0xff000000"}
        for update in (ConfigUpdate(MappingProxyType(resolved_map), sources),
                       ConfigUpdate(MappingProxyType(resolved_map)),  # resolved map alone
                       ConfigUpdate(MappingProxyType({}), sources)):  # per-source maps alone
            s = ok(update)
            assert s.felix_bpf_enabled and s.felix_nft_mark_mask == 0xFF000000
