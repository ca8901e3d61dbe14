"""The desired state in kernel terms: routes, Jool globals, nftables objects."""

import ipaddress
import json
from dataclasses import replace

from felix_nat64.drivers.kernel import mtu_warnings
from felix_nat64.drivers.nft.ruleset import ct_timeouts, render
from felix_nat64.drivers.plan import LOWEST_IPV6_MTU, MAIN_TABLE, jool_config, node_routes
from felix_nat64.model.desired import build_desired
from felix_nat64.model.settings import Settings
from felix_nat64.model.state import Inputs, Pool

N6 = ipaddress.IPv6Network
N4 = ipaddress.IPv4Network
NSP = N6("2001:db8:64::/96")


def desired(**kw: object):
    s = replace(Settings(prefixes=(N6("64:ff9b::/96"), NSP), hostname="n"), **kw)
    return build_desired(Inputs(s, (Pool("pods", N6("fd00:10:244::/64"), True),)))


def test_routes_end_in_unreachable_catch_alls() -> None:
    d = desired()
    catch_alls = [r for r in node_routes(d) if r.unreachable]
    assert [(str(r.dst), r.table) for r in catch_alls] == [("::/0", 6464), ("169.254.64.0/24", MAIN_TABLE)]
    assert all(r.gateway is None and r.dev is None for r in catch_alls)


def test_jool_cuts_ipv4_without_df_into_1280_byte_ipv6_packets() -> None:
    d = desired(mtu=9000)
    assert LOWEST_IPV6_MTU == 1280
    assert all(jool_config(t, d).globals["lowest-ipv6-mtu"] == 1280 for t in d.translators)


def test_translator_has_a_routable_address_of_its_own() -> None:
    t = next(t for t in desired().translators if t.parent == NSP)
    assert t.link_ns_addr6 == ipaddress.IPv6Interface(f"2001:db8:64::{t.link_ns_addr.ip}/128")
    assert t.link_ns_addr6.ip in t.parent and not t.link_ns_addr6.ip.is_link_local


def test_ct_timeouts_follow_the_nat64_timeouts() -> None:
    tcp, udp = ct_timeouts(desired(udp_timeout=600.0, tcp_established_timeout=10800.0,
                                   tcp_transitory_timeout=300.0))
    assert udp.name == "udp-600" and dict(udp.policy) == {"unreplied": 600, "replied": 600}
    assert "policy = { unreplied : 600, replied : 600 }" in udp.text()
    # As Jool times its sessions: established and half-closed on the
    # established timer; the pod's lone SYN, both FINs and a reset on the
    # transitory one.
    assert tcp.name == "tcp-10800-300"
    assert dict(tcp.policy) == {"established": 10800, "syn_recv": 10800, "fin_wait": 10800,
                                "close_wait": 10800, "syn_sent": 300, "last_ack": 300, "time_wait": 300,
                                "close": 300}
    # Swapped values are another object, not a name collision.
    (swapped, _) = ct_timeouts(desired(tcp_established_timeout=300.0, tcp_transitory_timeout=10800.0))
    assert swapped.name == "tcp-300-10800"


def test_nat_keeps_ports_and_exhausted_translators_get_their_prefixes() -> None:
    d = replace(desired(), exhausted=((NSP, "udp"),))
    rs = render(d)
    text = json.dumps(rs.commands())
    assert "random" not in text and "masquerade" in text
    assert rs.elements["exhausted_udp6"] == [{"prefix": {"addr": "2001:db8:64::", "len": 96}}]
    assert rs.elements["exhausted_tcp6"] == []
    assert render(d, with_ct_timeouts=False).ct_timeouts == ()


def test_nat64_mtu_above_the_pod_mtu_is_warned_about() -> None:
    assert mtu_warnings(None, 1440) == [] and mtu_warnings(1440, 1440) == []
    assert mtu_warnings(1500, None) == []
    (warning,) = mtu_warnings(9000, 1440)
    assert "NAT64MTU 9000 exceeds the pod network MTU 1440" in warning


def test_sets_that_stay_change_only_the_elements_that_differ() -> None:
    rs = render(desired())
    present = {"prefixes6": ["64:ff9b::", {"prefix": {"addr": "64:ff9b::", "len": 96}},
                             {"range": ["2001:db8:99::5", "2001:db8:99::9"]}],
               "sources6": list(rs.elements["sources6"])}
    cmds = rs.commands(present)
    by_set: dict[str, list[str]] = {}
    for cmd in cmds:
        verb, body = next(iter(cmd.items()))
        obj, spec = next(iter(body.items()))
        if obj in ("element", "set"):
            by_set.setdefault(spec["name"], []).append(f"{verb} {obj}")
    # Sets that stay: no flush; stale and foreign elements deleted, missing ones added.
    assert by_set["prefixes6"] == ["add set", "delete element", "add element"]
    assert by_set["sources6"] == ["add set"]
    prefixes = [c for c in cmds if "element" in next(iter(c.values())) and
                next(iter(c.values()))["element"]["name"] == "prefixes6"]
    stale = ["64:ff9b::", {"range": ["2001:db8:99::5", "2001:db8:99::9"]}]
    assert prefixes[0]["delete"]["element"]["elem"] == stale
    assert prefixes[1]["add"]["element"]["elem"] == [{"prefix": {"addr": "2001:db8:64::", "len": 96}}]
    # Sets not in `present` are flushed and filled, as on creation.
    assert {"flush": {"set": {"family": "inet", "table": "felix-nat64", "name": "refused6"}}} in cmds
    assert rs.element_updates("sources6", rs.elements["sources6"]) == []
