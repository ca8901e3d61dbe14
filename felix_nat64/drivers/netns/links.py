"""Translator namespaces and the veth pairs that join them to the node.

Ownership is by name (model/ownership.py): namespaces `felix-nat64-<id>`,
node-side links `fn64-<id>` whose alias records the /96 parent they serve,
and routes with our route protocol number. A restarted driver finds all of
it again through `discovery.translators()` and changes nothing that is
already right.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import threading
from collections.abc import Iterable
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from felix_nat64.drivers.discovery import FoundTranslator
from felix_nat64.drivers.netns import offloads
from felix_nat64.drivers.netns.executor import NamespaceExecutor, netns_path
from felix_nat64.drivers.netns.namespaces import (
    create_namespace,
    namespace_entry_exists,
    namespace_exists,
    read_sysctl,
    remove_namespace,
    write_sysctl,
)
from felix_nat64.drivers.plan import Route, translator_routes
from felix_nat64.logs import EventLogger
from felix_nat64.model.ownership import NODE_LINK_LL, NS_LINK_LL, NS_LINK_NAME, ROUTE_PROTO, link_alias
from felix_nat64.model.state import Translator

IFA_F_NODAD = 0x02  # the link is point-to-point: duplicate detection only delays it
OFFLOADS_OFF = ("rx-gro", "rx-gro-list", "rx-lro")  # Jool must see unmerged packets

IPAddr = ipaddress.IPv4Interface | ipaddress.IPv6Interface


def _lookup(ipr: IPRoute, name: str) -> int | None:
    link = _get_link(ipr, name)
    return None if link is None else int(link["index"])


def _get_link(ipr: IPRoute, name: str) -> Any | None:
    """The link called `name` (one request: its message serves every later
    check of the same link), or None."""
    try:
        return ipr.link("get", ifname=name)[0]
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return None
        raise


class TranslatorLinks:
    """Creates, converges and removes translator namespaces and their links."""

    def __init__(self) -> None:
        self._log = EventLogger("netns")
        # Translators converge in parallel; namespace creation may have to
        # make /run/netns a shared mount first, which only one may do.
        self._creating = threading.Lock()

    # -- converge -------------------------------------------------------------

    def ensure(self, t: Translator, mtu: int) -> int:
        """Makes translator `t`'s namespace and link right; returns changes made."""
        log = self._log.bind(translator=t.namespace)
        changes = 0
        # A namespace made here holds nothing but lo and, once made, the
        # link's new half: its contents need not be read back.
        fresh = not namespace_exists(t.namespace)
        if fresh:
            if namespace_entry_exists(t.namespace):
                remove_namespace(t.namespace)  # the file of an interrupted creation
                log.info("unmounted namespace file removed")
            with self._creating:
                create_namespace(t.namespace)
            log.info("namespace created")
            changes += 1
        # Netlink and sysctls inside the namespace go through a thread that
        # lives there (no fork: the driver runs threads).
        with IPRoute() as node, NamespaceExecutor(t.namespace) as worker:
            inner: IPRoute = worker.call(IPRoute)
            try:
                node_link, inner_link, created = self._pair(node, worker, inner, t, fresh)
                changes += created
                if created:
                    log.info("link created", node_link=t.node_link)
                changes += self._converge_link(node, node_link, mtu, link_alias(t.parent))
                changes += worker.call(self._converge_inner, inner, inner_link, t, mtu, fresh)
                changes += self._converge_addrs(node, node_link["index"], [t.link_node_addr, NODE_LINK_LL],
                                                new=bool(created))
                changes += self._node_side_settings(t.node_link)
                changes += worker.call(self._inner_settings)
            finally:
                worker.call(inner.close)
        return changes

    def _converge_inner(self, inner: IPRoute, link: Any, t: Translator, mtu: int, fresh: bool) -> int:
        changes = self._converge_link(inner, link, mtu, None)
        lo = _get_link(inner, "lo")
        if lo is not None and not lo["flags"] & 1:
            inner.link("set", index=lo["index"], state="up")
            changes += 1
        changes += self._converge_addrs(inner, link["index"], [t.link_ns_addr, NS_LINK_LL, t.link_ns_addr6],
                                        new=fresh)
        return changes + self._converge_routes(inner, link["index"], translator_routes(t), new=fresh)

    @staticmethod
    def _pair(node: IPRoute, worker: NamespaceExecutor, inner: IPRoute, t: Translator,
              fresh: bool) -> tuple[Any, Any, int]:
        """Both halves of the veth pair as the kernel has them, and 1 if it
        had to be (re)built."""
        node_link = _get_link(node, t.node_link)
        inner_link = None if fresh else worker.call(_get_link, inner, NS_LINK_NAME)
        if node_link is not None and inner_link is not None and inner_link.get("link") == node_link["index"]:
            return node_link, inner_link, 0
        # Missing or mismatched halves: rebuild the pair from scratch.
        if node_link is not None:
            node.link("del", index=node_link["index"])
        if inner_link is not None:
            stale = inner_link["index"]
            worker.call(lambda: inner.link("del", index=stale))
        node.link("add", ifname=t.node_link, kind="veth",
                  peer={"ifname": NS_LINK_NAME, "net_ns_fd": netns_path(t.namespace)})
        node_link = _get_link(node, t.node_link)
        inner_link = worker.call(_get_link, inner, NS_LINK_NAME)
        if node_link is None or inner_link is None:
            raise RuntimeError(f"veth pair {t.node_link}/{NS_LINK_NAME} missing right after creation")
        return node_link, inner_link, 1

    @staticmethod
    def _converge_link(ipr: IPRoute, link: Any, mtu: int, alias: str | None) -> int:
        """Sets what differs on `link`, a message read in this same ensure."""
        wanted: dict[str, Any] = {}
        if link.get("mtu") != mtu:
            wanted["mtu"] = mtu
        if alias is not None and link.get("ifalias") != alias:
            wanted["ifalias"] = alias
        if not link["flags"] & 1:  # IFF_UP
            wanted["state"] = "up"
        if wanted:
            ipr.link("set", index=link["index"], **wanted)
            return 1
        return 0

    @staticmethod
    def _converge_addrs(ipr: IPRoute, index: int, wanted: Iterable[IPAddr], *, new: bool = False) -> int:
        """The link's addresses; a `new` link has none to read back."""
        want = set(wanted)
        have: set[IPAddr] = set()
        changes = 0
        for addr in () if new else ipr.addr("dump", index=index):
            iface = ipaddress.ip_interface((addr.get("address"), addr["prefixlen"]))
            if iface in want:
                have.add(iface)
            elif not iface.ip.is_link_local:  # the kernel's own link-local stays
                ipr.addr("del", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
                changes += 1
        for iface in sorted(want - have, key=str):
            flags = IFA_F_NODAD if iface.version == 6 else 0
            ipr.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen,
                     flags=flags)
            changes += 1
        return changes

    @staticmethod
    def _converge_routes(ipr: IPRoute, index: int, routes: Iterable[Route], *, new: bool = False) -> int:
        """Routes inside the namespace; a `new` namespace has none to read back."""
        changes = 0
        for route in routes:
            family = socket.AF_INET6 if route.dst.version == 6 else socket.AF_INET
            current = [] if new else [r for r in ipr.route("dump", family=family, table=route.table)
                       if r["dst_len"] == route.dst.prefixlen
                       and (r.get("dst") or str(route.dst.network_address)) == str(route.dst.network_address)]
            if any(r.get("gateway") == str(route.gateway) and r.get("oif") == index for r in current):
                continue
            ipr.route("replace", family=family, dst=str(route.dst.network_address),
                      dst_len=route.dst.prefixlen, gateway=str(route.gateway), oif=index,
                      table=route.table, proto=ROUTE_PROTO)
            changes += 1
        return changes

    @staticmethod
    def _node_side_settings(node_link: str) -> int:
        changes = 0
        # IPv4 forwarding is decided per input interface; the IPv4 leg enters here.
        if write_sysctl(f"net/ipv4/conf/{node_link}/forwarding", "1"):
            changes += 1
        changes += _offloads_off(node_link)
        return changes

    @staticmethod
    def _inner_settings() -> int:
        changes = 0
        for path in ("net/ipv4/conf/all/forwarding", "net/ipv6/conf/all/forwarding"):
            if write_sysctl(path, "1"):
                changes += 1
        changes += _offloads_off(NS_LINK_NAME)
        return changes

    # -- remove ---------------------------------------------------------------

    def remove(self, found: FoundTranslator) -> int:
        """Removes a translator's link and namespace (whatever is left of them)."""
        changes = 0
        if found.node_link is not None:
            with IPRoute() as node:
                index = _lookup(node, found.node_link)
                if index is not None:
                    node.link("del", index=index)  # its peer goes with it
                    changes += 1
        if found.namespace is not None and namespace_entry_exists(found.namespace):
            remove_namespace(found.namespace)
            changes += 1
        if changes:
            self._log.info("translator removed", tid=found.tid, namespace=found.namespace or "")
        return changes


def _offloads_off(ifname: str) -> int:
    """Turns receive offloads off on a link in the calling thread's namespace."""
    return 1 if offloads.turn_off(ifname, OFFLOADS_OFF) else 0


def forwarding_problems() -> list[str]:
    """Node-wide forwarding settings NAT64 needs (Calico sets them; we only check)."""
    problems = []
    for path, what in (("net/ipv4/ip_forward", "IPv4"), ("net/ipv6/conf/all/forwarding", "IPv6")):
        value = read_sysctl(path)
        if value != "1":
            problems.append(f"{what} forwarding is off on this node ({path.replace('/', '.')}={value}); "
                            "Calico enables it on its nodes, and NAT64 needs it")
    return problems
