"""A pure-Python client for Jool 4.1's Generic Netlink API (NAT64 instances).

    from felix_nat64.drivers.jool import JoolClient

    with JoolClient.open("felix-nat64-1a2b3c4d") as jool:   # a worker thread in that netns
        if not jool.instance_exists("felix-nat64"):
            jool.instance_add("felix-nat64", IPv6Network("64:ff9b::/96"))
        jool.pool4_add("felix-nat64", Pool4Entry("tcp", IPv4Network("192.0.2.1/32"), 1024, 65535))

Modules: constants (Jool's enums), codec (bytes), global_config (globals by
CLI name), entries (returned rows), errors, version (which module is
loaded), transport (the pyroute2 socket), client (operations), worker (the
namespace thread).
"""

from felix_nat64.drivers.jool.client import JoolClient
from felix_nat64.drivers.jool.constants import SessionTimer, TcpState
from felix_nat64.drivers.jool.entries import BibEntry, InstanceInfo, SessionEntry, Taddr4, Taddr6
from felix_nat64.drivers.jool.errors import (
    JoolError,
    JoolExists,
    JoolNamespaceError,
    JoolNotFound,
    JoolNotLoaded,
    JoolProtocolError,
    JoolVersionUnsupported,
)
from felix_nat64.drivers.jool.global_config import GlobalValue
from felix_nat64.drivers.jool.version import JoolVersion, module_version
from felix_nat64.drivers.jool.worker import JoolWorker

__all__ = [
    "BibEntry",
    "GlobalValue",
    "InstanceInfo",
    "JoolClient",
    "JoolError",
    "JoolExists",
    "JoolNamespaceError",
    "JoolNotFound",
    "JoolNotLoaded",
    "JoolProtocolError",
    "JoolVersion",
    "JoolVersionUnsupported",
    "JoolWorker",
    "SessionEntry",
    "SessionTimer",
    "Taddr4",
    "Taddr6",
    "TcpState",
    "module_version",
]
