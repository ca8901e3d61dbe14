"""Felix-style rulesets on the simulated node, and felix-nat64's table beside them.

Both of Felix's Linux dataplane modes are loaded into the node (a throwaway
namespace) and exercised with real traffic: workload policy, natOutgoing and
the covering pool, and the FORWARD policy variant. felix-nat64's own table is
then applied next to them to show that neither side changes the other. Jool is
not involved (see tests/vm for translation itself).
"""

from __future__ import annotations

import ipaddress
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from felix_nat64.drivers.nft.ruleset import render
from felix_nat64.drivers.nft.table import Nft, NftTable
from felix_nat64.model.desired import build_desired
from felix_nat64.model.ownership import NFT_TABLE
from felix_nat64.model.settings import Settings
from felix_nat64.model.state import DesiredState, Host, Inputs, Pool
from testbed.calico_rules import (
    ALL_POOLS_SET_BEFORE_3_32,
    ALL_POOLS_SET_FROM_3_32,
    ALLOW_ALL,
    DENY_ALL_EGRESS,
    NAT64_WELL_KNOWN_PREFIX,
    FelixDataplane,
    FelixRulesError,
    FelixSpec,
    Mode,
    deny_egress_to,
    felix_dataplane,
    felix_snapshot,
    ipset_name,
    node_spec,
    remove_felix_rules,
)
from testbed.netns_exec import run_command_in_netns, run_in_netns
from testbed.topology import Topology, build_topology, cleanup_stale
from testbed.traffic import ServerProcess, ping, start_server, tcp_request, udp_exchange
from tests.host.conftest import require_root

pytestmark = pytest.mark.host

# A prefix of its own: these tests never touch another module's topology.
PREFIX = "fn64cr-"
MODES = [pytest.param(Mode.NFTABLES, id="nftables"), pytest.param(Mode.IPTABLES, id="iptables")]
# Each mode is tested with one of the two names the "all pools" set has had.
ALL_POOLS_SET = {Mode.NFTABLES: ALL_POOLS_SET_FROM_3_32, Mode.IPTABLES: ALL_POOLS_SET_BEFORE_3_32}
# 192.0.0.10 behind the well-known prefix: inside the covering pool, and a global
# address, so felix-nat64 steers it rather than refusing it.
NAT64_DESTINATION = ipaddress.IPv6Address("64:ff9b::c000:a")
BLOCKED = 2.0  # seconds to wait for a connection that policy drops
PROBE = ("inet", "fn64probe")  # a table of the test's own, to watch packets pass


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    require_root()
    missing = [t for t in ("iptables-nft-restore", "ip6tables-nft-restore", "ipset", "conntrack")
               if shutil.which(t) is None]
    if missing:
        pytest.fail(f"these tests need {', '.join(missing)}: run scripts/install-system-deps.sh",
                    pytrace=False)
    cleanup_stale(PREFIX)
    topology = build_topology(PREFIX, pods=2)
    try:
        yield topology
    finally:
        topology.teardown()


@pytest.fixture(scope="module")
def server(topo: Topology) -> Iterator[ServerProcess]:
    with start_server(topo.inet4_netns, [topo.server_ipv6]) as srv:
        yield srv


def spec_for(topo: Topology, mode: Mode, **kw: Any) -> FelixSpec:
    return node_spec(topo, mode, all_pools_set=ALL_POOLS_SET[mode], **kw)


@contextmanager
def felix(topo: Topology, spec: FelixSpec) -> Iterator[FelixDataplane]:
    with felix_dataplane(spec, topo.node_netns) as dataplane:
        yield dataplane


def whole_ruleset(topo: Topology) -> str:
    """Every nftables object and every ipset in the node."""
    nft = run_command_in_netns(topo.node_netns, ["nft", "list", "ruleset"]).stdout
    ipsets = run_command_in_netns(topo.node_netns, ["ipset", "save"]).stdout
    return nft + ipsets


def desired_state() -> DesiredState:
    settings = Settings(prefixes=(NAT64_WELL_KNOWN_PREFIX,), hostname="node")
    pools = (Pool("pods", Topology.pod_pool, True), Pool("cover", NAT64_WELL_KNOWN_PREFIX, False))
    return build_desired(Inputs(settings, pools, (Host("node", Topology.node_ipv4),)))


def our_table(topo: Topology) -> str:
    return run_command_in_netns(topo.node_netns, ["nft", "list", "table", "inet", NFT_TABLE]).stdout


def conntrack_reply_destination(topo: Topology, dst: ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    """Where the node's conntrack expects replies of the one flow to ``dst``: the
    original source, or the node's address if the flow was masqueraded."""
    out = run_command_in_netns(topo.node_netns, ["conntrack", "-L", "-f", "ipv6", "-d", str(dst)]).stdout
    flows = [line for line in out.splitlines() if f"dst={dst}" in line]
    assert len(flows) == 1, out
    # Original tuple first, reply tuple second.
    return ipaddress.IPv6Address(re.findall(r"dst=(\S+)", flows[0])[1])


def flush_conntrack(topo: Topology) -> None:
    run_command_in_netns(topo.node_netns, ["conntrack", "-F"], check=False)


# --- loading and removal ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "forward_policy"),
    [
        pytest.param(Mode.NFTABLES, "accept", id="nftables"),
        pytest.param(Mode.IPTABLES, "accept", id="iptables"),
        pytest.param(Mode.IPTABLES, "drop", id="iptables-forward-drop"),
    ],
)
def test_ruleset_loads_and_is_removed_cleanly(topo: Topology, mode: Mode, forward_policy: str) -> None:
    before = whole_ruleset(topo)
    spec = spec_for(topo, mode, forward_policy=forward_policy,
                    egress={1: deny_egress_to(f"{topo.server_ipv6}/128")})
    with felix(topo, spec) as dataplane:
        snap = dataplane.snapshot()
        all_pools = ipset_name(6, ALL_POOLS_SET[mode])
        if mode is Mode.NFTABLES:
            table = snap["ip6 calico"]
            assert "type filter hook prerouting priority raw" in table
            assert "fib saddr . mark . iif oif 0" in table
            for pod in topo.pods:
                assert f'"{pod.node_ifname}" : goto filter-cali-fw-{pod.node_ifname}' in table
            assert re.search(rf"set {all_pools} {{[^}}]*64:ff9b::/96", table)
            assert "masquerade fully-random" in table
        else:
            assert f"add {all_pools} 64:ff9b::/96" in snap["ipsets"]
            assert "xt match set xt match set" in snap["ip6 nat"]
            forward = re.search(r"chain FORWARD {\n[^\n]*policy (\w+);", snap["ip6 filter"])
            assert forward and forward.group(1) == forward_policy
            saved = snap["ip6 filter (iptables-save)"]
            for pod in topo.pods:
                assert f"-g cali-fw-{pod.node_ifname}" in saved
            assert '"Policy explicitly accepted packet." -m mark --mark 0x10000/0x10000 -j ACCEPT' in saved
        # Felix's objects exist once: a second install is refused.
        with pytest.raises(FelixRulesError, match="already exist"):
            FelixDataplane(spec, topo.node_netns).install()
    assert whole_ruleset(topo) == before


@pytest.mark.parametrize("mode", MODES)
def test_ruleset_goes_into_the_calling_threads_namespace(topo: Topology, mode: Mode) -> None:
    spec = spec_for(topo, mode)
    dataplane = FelixDataplane(spec)  # no name: wherever the calling thread is
    run_in_netns(topo.node_netns, dataplane.install)
    try:
        assert "cali-FORWARD" in "".join(felix_snapshot(mode, topo.node_netns).values())
        assert run_in_netns(topo.node_netns, dataplane.snapshot) == felix_snapshot(mode, topo.node_netns)
    finally:
        run_in_netns(topo.node_netns, dataplane.remove)
    assert set(felix_snapshot(mode, topo.node_netns).values()) == {""}


def test_remove_sweeps_leftovers_and_does_nothing_without_them(topo: Topology) -> None:
    before = whole_ruleset(topo)
    for mode in Mode:
        FelixDataplane(spec_for(topo, mode), topo.node_netns).install()
    for mode in Mode:
        remove_felix_rules(mode, topo.node_netns)
        remove_felix_rules(mode, topo.node_netns)
    assert whole_ruleset(topo) == before


# --- what Felix's rules do to traffic ----------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_workload_policy_allows_and_denies_egress(topo: Topology, server: ServerProcess, mode: Mode) -> None:
    pod, other = topo.pod(0), topo.pod(1)
    with felix(topo, spec_for(topo, mode, masquerade=False)) as dataplane:
        allowed = tcp_request(pod.netns, topo.server_ipv6)
        assert allowed.ok, allowed.error
        assert allowed.seen_source == pod.address  # plain routing, no NAT

        dataplane.set_egress_policy(pod.node_ifname, deny_egress_to(f"{topo.server_ipv6}/128"))
        assert not tcp_request(pod.netns, topo.server_ipv6, timeout=BLOCKED).ok
        assert ping(pod.netns, topo.outsider_ipv6, count=1).ok  # only that destination is denied
        assert tcp_request(other.netns, topo.server_ipv6).ok  # and only for that pod

        dataplane.set_egress_policy(pod.node_ifname, deny_egress_to("2001:db8:9::/64"))
        assert tcp_request(pod.netns, topo.server_ipv6).ok

        dataplane.set_egress_policy(pod.node_ifname, DENY_ALL_EGRESS)
        assert not tcp_request(pod.netns, topo.server_ipv6, timeout=BLOCKED).ok
        assert not ping(pod.netns, topo.outsider_ipv6, count=1, reply_timeout=BLOCKED).ok

        dataplane.set_egress_policy(pod.node_ifname, ALLOW_ALL)
        assert tcp_request(pod.netns, topo.server_ipv6).ok


@pytest.mark.parametrize("mode", MODES)
def test_nat_outgoing_spares_destinations_in_the_covering_pool(
    topo: Topology, server: ServerProcess, mode: Mode
) -> None:
    pod = topo.pod(0)
    spec = spec_for(topo, mode, masquerade=True)
    with felix(topo, spec) as dataplane:
        # Outside all pools: masqueraded to the node's uplink address.
        outside = tcp_request(pod.netns, topo.server_ipv6)
        assert outside.ok, outside.error
        assert outside.seen_source == topo.node_uplink_ipv6

        # Inside the disabled pool that covers the NAT64 prefix: left alone, so the
        # translator sees the pod's own address (no double NAT). Nothing translates
        # here, so the flow is read from the node's conntrack.
        flush_conntrack(topo)
        udp_exchange(pod.netns, NAT64_DESTINATION, reply_timeout=0.3)
        assert conntrack_reply_destination(topo, NAT64_DESTINATION) == pod.address

        # The same flow without the covering pool would be masqueraded.
        dataplane.update(spec_for(topo, mode, masquerade=True, covering=()))
        flush_conntrack(topo)
        udp_exchange(pod.netns, NAT64_DESTINATION, reply_timeout=0.3)
        assert conntrack_reply_destination(topo, NAT64_DESTINATION) == topo.node_uplink_ipv6
    flush_conntrack(topo)


def test_forward_policy_drop_spares_workloads_only(topo: Topology, server: ServerProcess) -> None:
    with felix(topo, spec_for(topo, Mode.IPTABLES, masquerade=False)):
        assert tcp_request(topo.outsider_netns, topo.server_ipv6).ok
    with felix(topo, spec_for(topo, Mode.IPTABLES, masquerade=False, forward_policy="drop")):
        # Felix accepts its workloads' traffic itself ("Policy explicitly accepted packet.")...
        assert tcp_request(topo.pod(0).netns, topo.server_ipv6).ok
        # ...but anything else forwarded meets the DROP policy, whatever other tables say.
        assert not tcp_request(topo.outsider_netns, topo.server_ipv6, timeout=BLOCKED).ok


# --- felix-nat64 beside Felix ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_felix_nat64_table_and_felix_leave_each_other_alone(topo: Topology, mode: Mode) -> None:
    ruleset = render(desired_state())
    with felix(topo, spec_for(topo, mode)) as dataplane:
        felix_before = dataplane.snapshot()
        try:
            assert run_in_netns(topo.node_netns, lambda: NftTable().apply(ruleset)) == 1
            assert dataplane.snapshot() == felix_before

            ours = our_table(topo)
            dataplane.resync()
            if mode is Mode.NFTABLES:
                dataplane.resync(recreate=True)
            dataplane.set_egress_policy(topo.pod(0).node_ifname, DENY_ALL_EGRESS)
            assert our_table(topo) == ours
            # ...and felix-nat64 sees nothing to repair.
            assert run_in_netns(topo.node_netns, lambda: NftTable().apply(ruleset)) == 0

            assert run_in_netns(topo.node_netns, lambda: NftTable().apply(None)) == 1
            dataplane.set_egress_policy(topo.pod(0).node_ifname, ALLOW_ALL)
            assert dataplane.snapshot() == felix_before
        finally:
            run_in_netns(topo.node_netns, lambda: NftTable().apply(None))


@pytest.mark.parametrize("mode", MODES)
def test_pod_traffic_keeps_our_mark_through_felix_chains(topo: Topology, mode: Mode) -> None:
    desired = desired_state()
    mark = desired.firewall_mark
    assert mark & 0xFFFF0000 == 0  # outside Felix's IptablesMarkMask/NftablesMarkMask
    probe = (
        "table inet fn64probe {\n"
        # After Felix's filter FORWARD (priority 0), which clears its own bits...
        " chain forward { type filter hook forward priority 10; policy accept;\n"
        f"  meta mark & {mark:#x} == {mark:#x} counter\n }}\n"
        # ...and after every mangle/nat postrouting chain.
        " chain postrouting { type filter hook postrouting priority 300; policy accept;\n"
        f"  meta mark & {mark:#x} == {mark:#x} counter\n }}\n"
        "}\n"
    )
    # Marked packets must leave by a translator link (felix-nat64 rejects them
    # anywhere else): a veth of its own, reached through our fwmark rule and table.
    steer = [["ip", "link", "add", "fn64-probe", "type", "veth", "peer", "name", "fn64-probe-p"],
             ["ip", "link", "set", "fn64-probe", "up"], ["ip", "link", "set", "fn64-probe-p", "up"],
             ["ip", "-6", "rule", "add", "fwmark", f"{mark:#x}/{mark:#x}", "table",
              str(desired.routing_table), "priority", str(desired.rule_priority)],
             ["ip", "-6", "route", "add", f"{NAT64_DESTINATION}/128", "dev", "fn64-probe", "table",
              str(desired.routing_table)]]
    with felix(topo, spec_for(topo, mode)):
        try:
            run_in_netns(topo.node_netns, lambda: NftTable().apply(render(desired)))
            run_command_in_netns(topo.node_netns, ["nft", "-f", "-"], input_text=probe)
            for argv in steer:
                run_command_in_netns(topo.node_netns, argv)
            udp_exchange(topo.pod(0).netns, NAT64_DESTINATION, count=3, reply_timeout=0.2)
            steered = run_in_netns(topo.node_netns, lambda: Nft().counters())["steered"][0]
            assert steered == 3
            listing = run_command_in_netns(topo.node_netns, ["nft", "list", "table", *PROBE]).stdout
            assert re.findall(r"counter packets (\d+)", listing) == ["3", "3"], listing
        finally:
            run_command_in_netns(topo.node_netns, ["nft", "delete", "table", *PROBE], check=False)
            unsteer = ["ip", "-6", "rule", "del", "fwmark", f"{mark:#x}/{mark:#x}", "table",
                       str(desired.routing_table)]
            run_command_in_netns(topo.node_netns, unsteer, check=False)
            run_command_in_netns(topo.node_netns, ["ip", "link", "del", "fn64-probe"], check=False)
            run_in_netns(topo.node_netns, lambda: NftTable().apply(None))
    flush_conntrack(topo)


def test_snapshot_of_absent_rules_is_empty(topo: Topology) -> None:
    assert set(felix_snapshot(Mode.NFTABLES, topo.node_netns).values()) == {""}
    assert set(felix_snapshot(Mode.IPTABLES, topo.node_netns).values()) == {""}
