"""Steering while the prefixes change, on the VM's Linux 6.1 kernel.

Linux 6.1's rbtree set backend, which interval sets use, can miss an element
while a transaction that deletes and re-adds that element commits (v6.1.192
net/netfilter/nft_set_rbtree.c lines 73-80 and 105-113: the lookup keeps the
closest lower element it walked past even when that copy is inactive). The
driver's table must therefore change only the elements that change: packets
to a prefix that stays are steered, every one, while other prefixes come and
go. The host's newer kernel does not show the race, so this runs in the VM.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time

from felix_nat64.drivers.netns.executor import NamespaceExecutor
from felix_nat64.drivers.nft.ruleset import render
from felix_nat64.drivers.nft.table import Nft, NftTable
from felix_nat64.model.desired import build_desired
from felix_nat64.model.settings import Settings
from felix_nat64.model.state import DesiredState, Host, Inputs, Pool
from testbed.netns_exec import run_command_in_netns, socket_in_netns
from testbed.topology import Topology, build_topology

N6 = ipaddress.IPv6Network
TARGET = "2001:db8:64::c633:640a"  # 198.51.100.10 behind a prefix that stays
CHANGES = 40


def desired(*prefixes: str) -> DesiredState:
    settings = Settings(prefixes=tuple(sorted(N6(p) for p in prefixes)), hostname="node")
    pools = (Pool("pods", Topology.pod_pool, True),)
    return build_desired(Inputs(settings, pools, (Host("node", ipaddress.IPv4Address("192.0.2.1")),)))


def test_packets_to_a_prefix_that_stays_are_all_steered_while_others_change() -> None:
    with build_topology("fn64s-") as topo:
        node, pod = topo.node_netns, topo.pod()
        assert node is not None
        # Every packet that arrives, counted before the driver's table sees it.
        run_command_in_netns(node, ["nft", "-f", "-"], input_text=(
            "add table inet arrivals\n"
            "add chain inet arrivals c { type filter hook prerouting priority -300; }\n"
            f"add rule inet arrivals c iifname {pod.node_ifname} ip6 daddr {TARGET} counter\n"))
        steered = _steer_while_changing(node, pod.netns)
        listed = run_command_in_netns(node, ["nft", "list", "chain", "inet", "arrivals", "c"]).stdout
        arrived = int(listed.split("counter packets ")[1].split()[0])
    assert arrived > CHANGES * 50, f"too few packets to tell: {arrived}"
    assert steered == arrived, f"{arrived - steered} of {arrived} packets to a prefix that stayed " \
        f"were not steered during {CHANGES} prefix changes"


def _steer_while_changing(node: str, pod: str) -> int:
    """Sends from the pod as fast as it can while the prefixes change;
    returns the driver table's count of steered packets."""
    two = desired("64:ff9b::/96", "2001:db8:64::/96")
    three = desired("64:ff9b::/96", "2001:db8:64::/96", "2001:db8:65::/96")
    executor = NamespaceExecutor(node)
    try:
        executor.call(lambda: NftTable().apply(render(two)))
        stop = threading.Event()

        def send() -> None:
            with socket_in_netns(pod, socket.AF_INET6, socket.SOCK_DGRAM) as sock:
                while not stop.is_set():
                    sock.sendto(b"x", (TARGET, 9))

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        for n in range(CHANGES):
            state = three if n % 2 == 0 else two
            assert executor.call(lambda: NftTable().apply(render(state))) == 1  # noqa: B023 - called at once
        stop.set()
        sender.join(10)
        time.sleep(0.5)
        return int(executor.call(lambda: Nft().counters())["steered"][0])
    finally:
        executor.close()
