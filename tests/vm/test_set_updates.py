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
import subprocess
import threading
import time
from collections.abc import Callable

from felix_nat64.drivers.netns.executor import NamespaceExecutor
from felix_nat64.drivers.nft.ruleset import render
from felix_nat64.drivers.nft.table import Nft, NftTable
from felix_nat64.model.desired import build_desired
from felix_nat64.model.settings import Settings
from felix_nat64.model.state import DesiredState, Host, Inputs, Pool
from testbed.netns_exec import socket_in_netns

N6 = ipaddress.IPv6Network
POD = "fd00:10:244::5"
TARGET = "2001:db8:64::c633:640a"  # 198.51.100.10 behind a prefix that stays
CHANGES = 40


def desired(*prefixes: str) -> DesiredState:
    settings = Settings(prefixes=tuple(sorted(N6(p) for p in prefixes)), hostname="node")
    pools = (Pool("pods", N6("fd00:10:244::/64"), True),)
    return build_desired(Inputs(settings, pools, (Host("node", ipaddress.IPv4Address("192.0.2.1")),)))


def ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True)


def nft(netns: str, text: str) -> str:
    return subprocess.run(["ip", "netns", "exec", netns, "nft", text], check=True, capture_output=True,
                          text=True).stdout


def test_packets_to_a_prefix_that_stays_are_all_steered_while_others_change(
        make_netns: Callable[[], str]) -> None:
    node, pod = make_netns(), make_netns()
    ip("link", "add", "calitest0", "netns", node, "type", "veth", "peer", "eth0", "netns", pod)
    ip("-n", node, "link", "set", "calitest0", "up")
    ip("-n", pod, "link", "set", "eth0", "up")
    ip("-n", pod, "addr", "add", f"{POD}/128", "dev", "eth0", "nodad")
    ip("-6", "-n", pod, "route", "add", "default", "dev", "eth0")
    mac = subprocess.run(["ip", "-n", node, "-br", "link", "show", "calitest0"], check=True,
                         capture_output=True, text=True).stdout.split()[2]
    ip("-6", "-n", pod, "neigh", "add", TARGET, "lladdr", mac, "dev", "eth0", "nud", "permanent")
    # Every packet that arrives, counted before the driver's table sees it.
    nft(node, "add table inet arrivals; "
              "add chain inet arrivals c { type filter hook prerouting priority -300; }; "
              f"add rule inet arrivals c iifname calitest0 ip6 daddr {TARGET} counter")
    two = desired("64:ff9b::/96", "2001:db8:64::/96")
    three = desired("64:ff9b::/96", "2001:db8:64::/96", "2001:db8:65::/96")
    executor = NamespaceExecutor(node)
    try:
        executor.call(lambda: NftTable().apply(render(two)))
        stop = threading.Event()
        sent = [0]

        def send() -> None:
            sock = socket_in_netns(pod, socket.AF_INET6, socket.SOCK_DGRAM)
            with sock:
                while not stop.is_set():
                    sock.sendto(b"x", (TARGET, 9))
                    sent[0] += 1

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        for n in range(CHANGES):
            state = three if n % 2 == 0 else two
            assert executor.call(lambda: NftTable().apply(render(state))) == 1  # noqa: B023 - called at once
        stop.set()
        sender.join(10)
        time.sleep(0.5)
        steered = executor.call(lambda: Nft().counters())["steered"][0]
        arrived = int(nft(node, "list chain inet arrivals c").split("counter packets ")[1].split()[0])
    finally:
        executor.close()
    assert arrived > CHANGES * 50, f"too few packets to tell: {arrived}"
    assert steered == arrived, f"{arrived - steered} of {arrived} packets to a prefix that stayed " \
        f"were not steered during {CHANGES} prefix changes"
