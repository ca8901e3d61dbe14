"""A simulated Calico node and its neighbours, built from network namespaces.

The node is either a throwaway named namespace (host-kernel tests: this
machine's own networking is never touched) or the namespace of the calling
thread (inside the test VM, where the whole VM is the node). Everything around
it is a named namespace whose name starts with the topology's prefix:

    pod<i>     IPv6-only, attached as Calico attaches pods: a veth whose node side
               is cali<11 hex> with MAC ee:ee:ee:ee:ee:ee; the pod has
               fd00:10:244::10+i/128 on eth0 and a default route via the node
               side's link-local fe80::ecee:eeff:feee:eeee; the node routes the
               /128 to the cali interface.
    outsider   2001:db8:ff::2/64 behind the node's eth-out (2001:db8:ff::1/64):
               an IPv6 source that is in no pod pool.
    inet4      the node's uplink router: node eth-up 192.0.2.1/24 and
               2001:db8:1::1/64, router 192.0.2.254 and 2001:db8:1::254. It hosts
               IPv4-only servers 198.51.100.10, 10.0.0.10 and 192.0.0.10 and the
               IPv6 server 2001:db8:2::10. It routes the pod pool and the outsider
               network back to the node over IPv6 but has no IPv4 route back
               beyond 192.0.2.0/24: IPv4 from inside the node only comes back
               when it is masqueraded to 192.0.2.1.
    far        (optional) behind inet4 over an MTU-1400 link, hosting
               198.51.100.20 and 2001:db8:2::20, to exercise Path MTU discovery.

Typical use (host tests):

    with build_topology("fn64t-", far=True) as topo:
        ...  # topo.node_netns, topo.pod().netns, topo.inet4_netns, ...

Inside the VM the node is the current namespace:

    topo = build_topology(node_in_current_netns=True)

``python -m testbed.topology up|down|sweep`` builds and removes one
by hand (for demos and debugging).
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import ipaddress
import json
import os
import re
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface, IPv6Network
from typing import Any, ClassVar, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from felix_nat64.drivers.netns.executor import NamespaceUnavailable
from felix_nat64.drivers.netns.namespaces import create_namespace, list_namespaces, remove_namespace
from testbed.netns_exec import (
    kill_pids,
    netns_exists,
    netns_path,
    pids_in_netns,
    read_sysctls,
    socket_in_netns,
    write_sysctls,
)

IPInterface = IPv4Interface | IPv6Interface
T = TypeVar("T")

# --- names ------------------------------------------------------------------
DEFAULT_PREFIX = "fn64t-"
NODE_ROLE = "node"
POD_ROLE = "pod"
OUTSIDER_ROLE = "outsider"
INET4_ROLE = "inet4"
FAR_ROLE = "far"
STUB_ROLE = "stub"

POD_IFNAME = "eth0"
NODE_UPLINK_IFNAME = "eth-up"
NODE_OUTSIDER_IFNAME = "eth-out"
NODE_STUB_IFNAME_PREFIX = "stub-"
OUTSIDER_IFNAME = "eth0"
INET4_NODE_IFNAME = "eth0"
INET4_FAR_IFNAME = "eth-far"
FAR_IFNAME = "eth0"
STUB_IFNAME = "eth0"

# --- the pod network, Calico style ---------------------------------------------
POD_POOL = IPv6Network("fd00:10:244::/64")
FIRST_POD_ADDRESS = IPv6Address("fd00:10:244::10")
MAX_PODS = 1024
CALI_MAC = "ee:ee:ee:ee:ee:ee"
# EUI-64 link-local of CALI_MAC: what the pod's default route points at.
NODE_CALI_LINK_LOCAL = IPv6Address("fe80::ecee:eeff:feee:eeee")

# --- the node's links ---------------------------------------------------------
NODE_IPV4_INTERFACE = IPv4Interface("192.0.2.1/24")
NODE_IPV4 = NODE_IPV4_INTERFACE.ip
NODE_UPLINK_IPV6_INTERFACE = IPv6Interface("2001:db8:1::1/64")
NODE_UPLINK_IPV6 = NODE_UPLINK_IPV6_INTERFACE.ip
UPLINK_ROUTER_IPV4_INTERFACE = IPv4Interface("192.0.2.254/24")
UPLINK_ROUTER_IPV4 = UPLINK_ROUTER_IPV4_INTERFACE.ip
UPLINK_ROUTER_IPV6_INTERFACE = IPv6Interface("2001:db8:1::254/64")
UPLINK_ROUTER_IPV6 = UPLINK_ROUTER_IPV6_INTERFACE.ip
NODE_OUTSIDER_IPV6_INTERFACE = IPv6Interface("2001:db8:ff::1/64")
NODE_OUTSIDER_IPV6 = NODE_OUTSIDER_IPV6_INTERFACE.ip
OUTSIDER_IPV6_INTERFACE = IPv6Interface("2001:db8:ff::2/64")
OUTSIDER_IPV6 = OUTSIDER_IPV6_INTERFACE.ip

# --- servers in inet4 -----------------------------------------------------------
# Documentation range: reached from pods through a network-specific NAT64 prefix.
SERVER_DOC_IPV4 = IPv4Address("198.51.100.10")
# Private (RFC 1918): a well-known-prefix NAT64 must refuse it.
SERVER_PRIVATE_IPV4 = IPv4Address("10.0.0.10")
# Globally reachable per the IANA special-purpose registry (192.0.0.10/32, TURN anycast).
SERVER_GLOBAL_IPV4 = IPv4Address("192.0.0.10")
SERVER_IPV6 = IPv6Address("2001:db8:2::10")
INET4_SERVER_IPV4 = (SERVER_DOC_IPV4, SERVER_PRIVATE_IPV4, SERVER_GLOBAL_IPV4)

# --- the far hop ----------------------------------------------------------------
FAR_LINK_MTU = 1400
INET4_FAR_IPV4_INTERFACE = IPv4Interface("203.0.113.1/24")
FAR_LINK_IPV4_INTERFACE = IPv4Interface("203.0.113.2/24")
INET4_FAR_IPV6_INTERFACE = IPv6Interface("2001:db8:3::1/64")
FAR_LINK_IPV6_INTERFACE = IPv6Interface("2001:db8:3::2/64")
FAR_SERVER_IPV4 = IPv4Address("198.51.100.20")
FAR_SERVER_IPV6 = IPv6Address("2001:db8:2::20")
# far advertises the MSS of a host on a 1500-byte LAN so that TCP senders towards
# it overrun the 1400 link and must learn the path MTU (otherwise its own 1400 MTU
# would make it advertise 1360 and PMTU discovery would never be exercised).
FAR_ADVMSS_IPV4 = 1460
FAR_ADVMSS_IPV6 = 1440

_PREFIX_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}-$")
# Roles never contain "-": a name whose rest after a prefix has one belongs to a longer prefix.
_ROLE_RE = re.compile(r"^[a-z0-9]+$")
_STUB_NAME_RE = re.compile(r"^[a-z0-9]{1,10}$")
_READY_TIMEOUT = 5.0
NETLINK_ROUTE = 0
_MIN_NEAR_IFINDEX = 100
_IFA_F_TENTATIVE = 0x40


class TopologyError(RuntimeError):
    """The topology cannot be built or is in an unexpected state."""


def pod_address(index: int) -> IPv6Address:
    """The address of pod ``index``: fd00:10:244::10 + index."""
    if not 0 <= index < MAX_PODS:
        raise ValueError(f"pod index {index} outside 0..{MAX_PODS - 1}")
    return FIRST_POD_ADDRESS + index


def cali_ifname(prefix: str, index: int) -> str:
    """The node-side interface name of pod ``index``: 'cali' + 11 hex digits, as Calico names them.

    Derived from the prefix and index so that a later process can recognise it.
    """
    digest = hashlib.sha1(f"{prefix}{POD_ROLE}{index}".encode(), usedforsecurity=False).hexdigest()
    return "cali" + digest[:11]


def namespace_name(prefix: str, role: str) -> str:
    """The namespace name of ``role`` (e.g. 'pod0', 'inet4') in the topology ``prefix``."""
    if not _ROLE_RE.match(role):
        raise ValueError(f"bad role {role!r}")
    return prefix + role


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is usable: lower-case letters, digits and '-', ending with '-'."""
    if not _PREFIX_RE.match(prefix):
        raise ValueError(f"topology prefix {prefix!r} must match {_PREFIX_RE.pattern}")
    return prefix


@dataclass(frozen=True)
class Pod:
    """One pod: its namespace, address and the node side of its veth."""

    index: int
    netns: str
    address: IPv6Address
    node_ifname: str
    ifname: str = POD_IFNAME


@dataclass(frozen=True)
class Stub:
    """An extra namespace wired to the node by a veth, with default routes via the node."""

    name: str
    netns: str
    node_ifname: str
    addresses: tuple[IPInterface, ...]
    node_addresses: tuple[IPInterface, ...]
    ifname: str = STUB_IFNAME

    @property
    def ipv4(self) -> IPv4Address | None:
        """The stub's first IPv4 address, if any."""
        return next((a.ip for a in self.addresses if isinstance(a, IPv4Interface)), None)

    @property
    def ipv6(self) -> IPv6Address | None:
        """The stub's first IPv6 address, if any."""
        return next((a.ip for a in self.addresses if isinstance(a, IPv6Interface)), None)


# --- small pyroute2 helpers ---------------------------------------------------------


def _ipr(ns: str | None) -> Any:
    """An IPRoute whose netlink socket lives in ``ns`` (None: the calling thread's namespace)."""
    if ns is None:
        return IPRoute()
    # The socket is made by a thread inside the namespace rather than by
    # IPRoute(netns=...), which forks a helper process per socket: slow in the
    # emulated VM. It also never creates a namespace when a name is wrong.
    sock = socket_in_netns(ns, socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE)
    return IPRoute(fileno=sock.detach())


def _index(ipr: Any, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise TopologyError(f"link {ifname} not found")
    return int(found[0])


def _add_address(ipr: Any, index: int, iface: IPInterface) -> None:
    try:
        ipr.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise


def _add_route(ipr: Any, dst: str, **kwargs: Any) -> None:
    try:
        ipr.route("add", dst=dst, **kwargs)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise


def _create_veth(
    here_ns: str | None,
    here_ifname: str,
    there_ns: str,
    there_ifname: str,
    *,
    here_mac: str | None = None,
    mtu: int | None = None,
) -> None:
    """A veth pair whose peer is created directly inside ``there_ns`` (no name clash possible).

    The near end gets an explicit ifindex of at least 100. Index numbers are per
    namespace, so the first link of two fresh namespaces would otherwise both be
    2; the kernel then takes the pair for a device that is its own peer, treats
    its carrier change as non-urgent and delays operstate UP (and with it IPv6
    on the link) by up to a second.
    """
    fd = os.open(netns_path(there_ns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        peer: dict[str, Any] = {"ifname": there_ifname, "net_ns_fd": fd}
        spec: dict[str, Any] = {"ifname": here_ifname, "kind": "veth", "peer": peer}
        if mtu is not None:
            spec["mtu"] = mtu
            peer["mtu"] = mtu
        if here_mac is not None:
            spec["address"] = here_mac
        with _ipr(here_ns) as ipr:
            for _attempt in range(5):
                used = [int(link["index"]) for link in ipr.get_links()]
                try:
                    ipr.link("add", index=max([_MIN_NEAR_IFINDEX - 1, *used]) + 1, **spec)
                    return
                except NetlinkError as exc:
                    # Another process took that index meanwhile: pick the next one.
                    if exc.code not in (errno.EBUSY, errno.EEXIST) or ipr.link_lookup(ifname=here_ifname):
                        raise
            raise TopologyError(f"could not find a free ifindex for {here_ifname}")
    finally:
        os.close(fd)


def _ipv6_if_sysctls(ifname: str, **values: int) -> dict[str, int]:
    # DAD is pointless on point-to-point veths and would leave addresses tentative
    # for a second; Calico disables it too. Router advertisements are never wanted.
    base = {"accept_dad": 0, "accept_ra": 0}
    base.update(values)
    return {f"net/ipv6/conf/{ifname}/{key}": value for key, value in base.items()}


def _wait_until_ready(
    ns: str | None, ifnames: Sequence[str] | None, link_local: dict[str, IPv6Address]
) -> None:
    """Wait until the links (all but lo when ``ifnames`` is None) are operationally up and
    each name in ``link_local`` carries that link-local address, usable (not tentative)."""
    deadline = time.monotonic() + _READY_TIMEOUT
    with _ipr(ns) as ipr:
        while True:
            waiting: list[str] = []
            for link in ipr.get_links():
                name = link.get_attr("IFLA_IFNAME")
                wanted = name != "lo" if ifnames is None else name in ifnames
                if wanted and link.get_attr("IFLA_OPERSTATE") != "UP":
                    waiting.append(f"{name} not up")
                if name in link_local:
                    usable = {
                        IPv6Address(a.get_attr("IFA_ADDRESS"))
                        for a in ipr.get_addr(family=10, index=link["index"])
                        if not (a.get_attr("IFA_FLAGS") or a["flags"]) & _IFA_F_TENTATIVE
                    }
                    if link_local[name] not in usable:
                        waiting.append(f"{name} lacks {link_local[name]}")
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise TopologyError(f"namespace {ns or '(current)'} not ready: {'; '.join(waiting)}")
            time.sleep(0.01)


# --- the topology --------------------------------------------------------------------


@dataclass(eq=False)
class Topology:
    """A built topology. Names and addresses are fixed (see the module constants).

    ``node_netns`` is None when the node is the namespace of the thread that built it;
    then every call on this object must come from a thread in that same namespace.
    """

    prefix: str
    node_netns: str | None
    pods: tuple[Pod, ...]
    outsider_netns: str
    inet4_netns: str
    far_netns: str | None
    stubs: list[Stub] = field(default_factory=list)
    _saved_node_sysctls: dict[str, str] = field(default_factory=dict, repr=False)
    _torn_down: bool = field(default=False, repr=False)

    pod_pool: ClassVar[IPv6Network] = POD_POOL
    cali_mac: ClassVar[str] = CALI_MAC
    node_cali_link_local: ClassVar[IPv6Address] = NODE_CALI_LINK_LOCAL
    node_uplink_ifname: ClassVar[str] = NODE_UPLINK_IFNAME
    node_outsider_ifname: ClassVar[str] = NODE_OUTSIDER_IFNAME
    node_ipv4: ClassVar[IPv4Address] = NODE_IPV4
    node_ipv4_interface: ClassVar[IPv4Interface] = NODE_IPV4_INTERFACE
    node_uplink_ipv6: ClassVar[IPv6Address] = NODE_UPLINK_IPV6
    uplink_router_ipv4: ClassVar[IPv4Address] = UPLINK_ROUTER_IPV4
    uplink_router_ipv6: ClassVar[IPv6Address] = UPLINK_ROUTER_IPV6
    node_outsider_ipv6: ClassVar[IPv6Address] = NODE_OUTSIDER_IPV6
    outsider_ipv6: ClassVar[IPv6Address] = OUTSIDER_IPV6
    server_doc_ipv4: ClassVar[IPv4Address] = SERVER_DOC_IPV4
    server_private_ipv4: ClassVar[IPv4Address] = SERVER_PRIVATE_IPV4
    server_global_ipv4: ClassVar[IPv4Address] = SERVER_GLOBAL_IPV4
    server_ipv6: ClassVar[IPv6Address] = SERVER_IPV6
    inet4_server_ipv4: ClassVar[tuple[IPv4Address, ...]] = INET4_SERVER_IPV4
    far_server_ipv4: ClassVar[IPv4Address] = FAR_SERVER_IPV4
    far_server_ipv6: ClassVar[IPv6Address] = FAR_SERVER_IPV6
    far_link_mtu: ClassVar[int] = FAR_LINK_MTU

    def pod(self, index: int = 0) -> Pod:
        """Pod ``index`` (the first by default)."""
        return self.pods[index]

    @property
    def inet4_server_addresses(self) -> tuple[IPv4Address | IPv6Address, ...]:
        """Every server address hosted by inet4 (three IPv4, one IPv6)."""
        return (*INET4_SERVER_IPV4, SERVER_IPV6)

    @property
    def far_server_addresses(self) -> tuple[IPv4Address | IPv6Address, ...]:
        """The server addresses hosted by far (empty without the far hop)."""
        return (FAR_SERVER_IPV4, FAR_SERVER_IPV6) if self.far_netns else ()

    def namespaces(self) -> list[str]:
        """Every named namespace of this topology (the node's too when it is named)."""
        names = [p.netns for p in self.pods] + [self.outsider_netns, self.inet4_netns]
        names += [s.netns for s in self.stubs]
        if self.far_netns:
            names.append(self.far_netns)
        if self.node_netns:
            names.append(self.node_netns)
        return names

    def node_links(self) -> list[str]:
        """The links this topology created in the node."""
        return (
            [p.node_ifname for p in self.pods]
            + [NODE_OUTSIDER_IFNAME, NODE_UPLINK_IFNAME]
            + [s.node_ifname for s in self.stubs]
        )

    def add_stub(
        self,
        name: str,
        addresses: Sequence[IPInterface | str],
        node_addresses: Sequence[IPInterface | str],
    ) -> Stub:
        """Create namespace ``<prefix>stub<name>`` wired to the node by ``stub-<name>``.

        The stub gets ``addresses`` on its eth0 and a default route (per family)
        via the node's address of that family; the node gets ``node_addresses`` on
        its side. Torn down with the topology. ``name``: 1-10 of [a-z0-9].
        """
        if self._torn_down:
            raise TopologyError("topology is torn down")
        if not _STUB_NAME_RE.match(name):
            raise ValueError(f"stub name {name!r} must be 1-10 of [a-z0-9]")
        ours = tuple(ipaddress.ip_interface(a) for a in addresses)
        node_side = tuple(ipaddress.ip_interface(a) for a in node_addresses)
        stub_ns = namespace_name(self.prefix, STUB_ROLE + name)
        node_ifname = NODE_STUB_IFNAME_PREFIX + name
        _create_namespace(stub_ns)
        stub = Stub(name, stub_ns, node_ifname, ours, node_side)
        self.stubs.append(stub)
        _create_veth(self.node_netns, node_ifname, stub_ns, STUB_IFNAME)
        write_sysctls(self.node_netns, _ipv6_if_sysctls(node_ifname))
        write_sysctls(stub_ns, _ipv6_if_sysctls(STUB_IFNAME))
        with _ipr(self.node_netns) as ipr:
            index = _index(ipr, node_ifname)
            for iface in node_side:
                _add_address(ipr, index, iface)
            ipr.link("set", index=index, state="up")
        with _ipr(stub_ns) as ipr:
            index = _index(ipr, STUB_IFNAME)
            for iface in ours:
                _add_address(ipr, index, iface)
            ipr.link("set", index=index, state="up")
            for version in (4, 6):
                gateway = next((a.ip for a in node_side if a.version == version), None)
                if gateway is not None and any(a.version == version for a in ours):
                    dst = "0.0.0.0/0" if version == 4 else "::/0"
                    _add_route(ipr, dst, gateway=str(gateway), oif=index)
        _wait_until_ready(self.node_netns, [node_ifname], {})
        _wait_until_ready(stub_ns, None, {})
        return stub

    def teardown(self) -> None:
        """Remove everything this topology created; safe to call more than once.

        Processes still running in its namespaces are killed first (a process
        would otherwise keep a namespace, and its veths, alive).
        """
        if self.node_netns is None:
            _delete_links(None, self.node_links())
        for name in self.namespaces():
            _remove_namespace(name)
        if self.node_netns is None and self._saved_node_sysctls:
            write_sysctls(None, self._saved_node_sysctls)
            self._saved_node_sysctls = {}
        self._torn_down = True

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()


_NODE_SYSCTLS = {
    "net/ipv4/ip_forward": 1,
    "net/ipv6/conf/all/forwarding": 1,
    "net/ipv6/conf/all/accept_ra": 0,
    "net/ipv6/conf/default/accept_ra": 0,
}
_ROUTER_SYSCTLS = {"net/ipv4/ip_forward": 1, "net/ipv6/conf/all/forwarding": 1}


def _create_namespace(name: str) -> None:
    if netns_exists(name):
        raise TopologyError(f"namespace {name} already exists (a leftover? call cleanup_stale)")
    create_namespace(name)
    with _ipr(name) as ipr:
        ipr.link("set", index=_index(ipr, "lo"), state="up")


def _remove_namespace(name: str) -> None:
    kill_pids(pids_in_netns(name))
    if not netns_exists(name):
        return
    remove_namespace(name)


def _delete_links(ns: str | None, names: Sequence[str]) -> None:
    with _ipr(ns) as ipr:
        for name in names:
            for index in ipr.link_lookup(ifname=name):
                try:
                    ipr.link("del", index=index)
                except NetlinkError as exc:
                    if exc.code != errno.ENODEV:
                        raise


def build_topology(
    prefix: str = DEFAULT_PREFIX,
    *,
    pods: int = 1,
    far: bool = False,
    node_in_current_netns: bool = False,
) -> Topology:
    """Build the topology and return it once every link is up and addressed.

    ``node_in_current_netns``: the node is the calling thread's namespace (the test
    VM) instead of a new ``<prefix>node``; its forwarding and accept_ra sysctls are
    restored by teardown. Raises TopologyError if any of its namespaces (or, with
    the node here, its uplink) already exists; on any failure what was built is
    removed before the error propagates.
    """
    check_prefix(prefix)
    if not 1 <= pods <= MAX_PODS:
        raise ValueError(f"pods must be 1..{MAX_PODS}")
    node_ns = None if node_in_current_netns else namespace_name(prefix, NODE_ROLE)
    topo = Topology(
        prefix=prefix,
        node_netns=node_ns,
        pods=tuple(
            Pod(i, namespace_name(prefix, f"{POD_ROLE}{i}"), pod_address(i), cali_ifname(prefix, i))
            for i in range(pods)
        ),
        outsider_netns=namespace_name(prefix, OUTSIDER_ROLE),
        inet4_netns=namespace_name(prefix, INET4_ROLE),
        far_netns=namespace_name(prefix, FAR_ROLE) if far else None,
    )
    clashes = [n for n in topo.namespaces() if netns_exists(n)]
    if clashes:
        raise TopologyError(f"namespaces already exist: {', '.join(clashes)} (call cleanup_stale)")
    if node_ns is None:
        with _ipr(None) as ipr:
            taken = [n for n in topo.node_links() if ipr.link_lookup(ifname=n)]
        if taken:
            raise TopologyError(f"links already exist in this namespace: {', '.join(taken)}")
    created: list[str] = []
    try:
        for name in topo.namespaces():
            _create_namespace(name)
            created.append(name)
        _configure_node(topo)
        _build_uplink(topo)
        _build_outsider(topo)
        for pod in topo.pods:
            _build_pod(topo, pod)
        if topo.far_netns:
            _build_far(topo, topo.far_netns)
        _wait_until_ready(
            node_ns,
            None if node_ns else topo.node_links(),
            {p.node_ifname: NODE_CALI_LINK_LOCAL for p in topo.pods},
        )
        for name in topo.namespaces():
            if name != node_ns:
                _wait_until_ready(name, None, {})
    except BaseException:
        topo.teardown()
        raise
    return topo


def _configure_node(topo: Topology) -> None:
    if topo.node_netns is None:
        topo._saved_node_sysctls = read_sysctls(None, list(_NODE_SYSCTLS))
    write_sysctls(topo.node_netns, _NODE_SYSCTLS)


def _build_uplink(topo: Topology) -> None:
    node, inet4 = topo.node_netns, topo.inet4_netns
    _create_veth(node, NODE_UPLINK_IFNAME, inet4, INET4_NODE_IFNAME)
    write_sysctls(node, _ipv6_if_sysctls(NODE_UPLINK_IFNAME))
    write_sysctls(inet4, {**_ROUTER_SYSCTLS, **_ipv6_if_sysctls(INET4_NODE_IFNAME)})
    with _ipr(node) as ipr:
        index = _index(ipr, NODE_UPLINK_IFNAME)
        _add_address(ipr, index, NODE_IPV4_INTERFACE)
        _add_address(ipr, index, NODE_UPLINK_IPV6_INTERFACE)
        ipr.link("set", index=index, state="up")
        _add_route(ipr, "0.0.0.0/0", gateway=str(UPLINK_ROUTER_IPV4), oif=index)
        _add_route(ipr, "::/0", gateway=str(UPLINK_ROUTER_IPV6), oif=index)
    with _ipr(inet4) as ipr:
        index = _index(ipr, INET4_NODE_IFNAME)
        _add_address(ipr, index, UPLINK_ROUTER_IPV4_INTERFACE)
        _add_address(ipr, index, UPLINK_ROUTER_IPV6_INTERFACE)
        ipr.link("set", index=index, state="up")
        lo = _index(ipr, "lo")
        for server in topo.inet4_server_addresses:
            _add_address(ipr, lo, ipaddress.ip_interface(f"{server}/{server.max_prefixlen}"))
        # IPv6 comes back to the node by plain routing (baselines); IPv4 does not.
        for back in (POD_POOL, OUTSIDER_IPV6_INTERFACE.network):
            _add_route(ipr, str(back), gateway=str(NODE_UPLINK_IPV6), oif=index)


def _build_outsider(topo: Topology) -> None:
    node, outsider = topo.node_netns, topo.outsider_netns
    _create_veth(node, NODE_OUTSIDER_IFNAME, outsider, OUTSIDER_IFNAME)
    write_sysctls(node, _ipv6_if_sysctls(NODE_OUTSIDER_IFNAME))
    write_sysctls(outsider, _ipv6_if_sysctls(OUTSIDER_IFNAME))
    with _ipr(node) as ipr:
        index = _index(ipr, NODE_OUTSIDER_IFNAME)
        _add_address(ipr, index, NODE_OUTSIDER_IPV6_INTERFACE)
        ipr.link("set", index=index, state="up")
    with _ipr(outsider) as ipr:
        index = _index(ipr, OUTSIDER_IFNAME)
        _add_address(ipr, index, OUTSIDER_IPV6_INTERFACE)
        ipr.link("set", index=index, state="up")
        _add_route(ipr, "::/0", gateway=str(NODE_OUTSIDER_IPV6), oif=index)


def _build_pod(topo: Topology, pod: Pod) -> None:
    node = topo.node_netns
    _create_veth(node, pod.node_ifname, pod.netns, pod.ifname, here_mac=CALI_MAC)
    # What Calico's CNI plugin and Felix set on the host side of an IPv6 workload
    # veth; addr_gen_mode=0 makes sure the link-local is the EUI-64 one of CALI_MAC.
    write_sysctls(
        node,
        _ipv6_if_sysctls(pod.node_ifname, disable_ipv6=0, addr_gen_mode=0, proxy_ndp=1, forwarding=1),
    )
    write_sysctls(pod.netns, _ipv6_if_sysctls(pod.ifname))
    with _ipr(pod.netns) as ipr:
        index = _index(ipr, pod.ifname)
        _add_address(ipr, index, IPv6Interface(f"{pod.address}/128"))
        ipr.link("set", index=index, state="up")
        _add_route(ipr, "::/0", gateway=str(NODE_CALI_LINK_LOCAL), oif=index)
    with _ipr(node) as ipr:
        index = _index(ipr, pod.node_ifname)
        ipr.link("set", index=index, state="up")
        _add_route(ipr, f"{pod.address}/128", oif=index)


def _build_far(topo: Topology, far: str) -> None:
    inet4 = topo.inet4_netns
    _create_veth(inet4, INET4_FAR_IFNAME, far, FAR_IFNAME, mtu=FAR_LINK_MTU)
    write_sysctls(inet4, _ipv6_if_sysctls(INET4_FAR_IFNAME))
    write_sysctls(far, _ipv6_if_sysctls(FAR_IFNAME))
    with _ipr(inet4) as ipr:
        index = _index(ipr, INET4_FAR_IFNAME)
        _add_address(ipr, index, INET4_FAR_IPV4_INTERFACE)
        _add_address(ipr, index, INET4_FAR_IPV6_INTERFACE)
        ipr.link("set", index=index, state="up")
        _add_route(ipr, f"{FAR_SERVER_IPV4}/32", gateway=str(FAR_LINK_IPV4_INTERFACE.ip), oif=index)
        _add_route(ipr, f"{FAR_SERVER_IPV6}/128", gateway=str(FAR_LINK_IPV6_INTERFACE.ip), oif=index)
    with _ipr(far) as ipr:
        index = _index(ipr, FAR_IFNAME)
        _add_address(ipr, index, FAR_LINK_IPV4_INTERFACE)
        _add_address(ipr, index, FAR_LINK_IPV6_INTERFACE)
        ipr.link("set", index=index, state="up")
        lo = _index(ipr, "lo")
        _add_address(ipr, lo, IPv4Interface(f"{FAR_SERVER_IPV4}/32"))
        _add_address(ipr, lo, IPv6Interface(f"{FAR_SERVER_IPV6}/128"))
        _add_route(
            ipr,
            "0.0.0.0/0",
            gateway=str(INET4_FAR_IPV4_INTERFACE.ip),
            oif=index,
            metrics={"advmss": FAR_ADVMSS_IPV4},
        )
        _add_route(
            ipr,
            "::/0",
            gateway=str(INET4_FAR_IPV6_INTERFACE.ip),
            oif=index,
            metrics={"advmss": FAR_ADVMSS_IPV6},
        )


def cached_path_mtu(ns: str | None, dst: IPv4Address | IPv6Address | str) -> int | None:
    """The path MTU towards ``dst`` that namespace ``ns`` has learned (None if nothing learned).

    A value appears after an ICMP "fragmentation needed" or ICMPv6 "packet too big"
    reached the namespace: the proof that Path MTU discovery worked.
    """
    with _ipr(ns) as ipr:
        answers = ipr.route("get", dst=str(ipaddress.ip_address(dst)))
        for msg in answers:
            metrics = msg.get_attr("RTA_METRICS")
            mtu = metrics.get_attr("RTAX_MTU") if metrics is not None else None
            if mtu:
                return int(mtu)
    return None


def stale_namespaces(prefix: str) -> list[str]:
    """Namespaces in /run/netns that belong to a topology with exactly this prefix."""
    check_prefix(prefix)
    return [e for e in list_namespaces() if e.startswith(prefix) and _ROLE_RE.match(e[len(prefix) :])]


def cleanup_stale(prefix: str = DEFAULT_PREFIX, *, node_in_current_netns: bool = False) -> list[str]:
    """Remove what a topology with ``prefix`` left behind (say after a crash); return the namespaces.

    Kills the processes inside its namespaces and removes them; never touches a
    namespace of another prefix (a longer prefix such as 'fn64t-b-' is another
    topology). With ``node_in_current_netns``, also deletes the node links it
    would have created in the calling thread's namespace.
    """
    removed = stale_namespaces(prefix)
    for name in removed:
        _remove_namespace(name)
    if node_in_current_netns:
        ours = [NODE_UPLINK_IFNAME, NODE_OUTSIDER_IFNAME] + [cali_ifname(prefix, i) for i in range(MAX_PODS)]
        with _ipr(None) as ipr:
            present = [
                name
                for link in ipr.get_links()
                if (name := link.get_attr("IFLA_IFNAME")) in ours or name.startswith(NODE_STUB_IFNAME_PREFIX)
            ]
        _delete_links(None, present)
    return removed


@contextmanager
def topology(
    prefix: str = DEFAULT_PREFIX,
    *,
    pods: int = 1,
    far: bool = False,
    node_in_current_netns: bool = False,
) -> Iterator[Topology]:
    """``build_topology`` as a context manager that always tears down."""
    topo = build_topology(prefix, pods=pods, far=far, node_in_current_netns=node_in_current_netns)
    try:
        yield topo
    finally:
        topo.teardown()


def describe(topo: Topology) -> dict[str, Any]:
    """A JSON-friendly summary of a topology (names and addresses)."""
    return {
        "prefix": topo.prefix,
        "node_netns": topo.node_netns,
        "pods": [
            {"netns": p.netns, "address": str(p.address), "node_ifname": p.node_ifname} for p in topo.pods
        ],
        "outsider_netns": topo.outsider_netns,
        "inet4_netns": topo.inet4_netns,
        "far_netns": topo.far_netns,
        "node_ipv4": str(NODE_IPV4),
        "inet4_servers": [str(a) for a in topo.inet4_server_addresses],
        "far_servers": [str(a) for a in topo.far_server_addresses],
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``up`` builds a topology and leaves it; ``down``/``sweep`` remove one by prefix."""
    parser = argparse.ArgumentParser(prog="python -m testbed.topology")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="build a topology and leave it in place")
    up.add_argument("--prefix", default=DEFAULT_PREFIX)
    up.add_argument("--pods", type=int, default=1)
    up.add_argument("--far", action="store_true")
    up.add_argument("--node-here", action="store_true", help="the node is the current namespace")
    for name in ("down", "sweep"):
        cmd = sub.add_parser(name, help="remove the topology with this prefix")
        cmd.add_argument("--prefix", default=DEFAULT_PREFIX)
        cmd.add_argument("--node-here", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            topo = build_topology(
                args.prefix, pods=args.pods, far=args.far, node_in_current_netns=args.node_here
            )
            print(json.dumps(describe(topo), indent=2))
        else:
            removed = cleanup_stale(args.prefix, node_in_current_netns=args.node_here)
            print(json.dumps({"removed": removed}))
    except (TopologyError, NamespaceUnavailable, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
