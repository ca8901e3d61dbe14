"""JoolInstances converging a Jool instance, against an in-memory Jool.

The in-memory Jool keeps pool4 per address and port, as the module does, and
journals every change; the real module is exercised in tests/vm. Here: what
is sent for each difference, that nothing is sent when nothing differs, and
how errors come out.
"""

from __future__ import annotations

import errno
import ipaddress
from dataclasses import replace
from typing import Any

import pytest

from felix_nat64.drivers.api import DataplaneError
from felix_nat64.drivers.jool.errors import JoolError, JoolNamespaceError, error_for
from felix_nat64.drivers.jool.instances import JoolInstances
from felix_nat64.drivers.jool.pool4diff import subtract
from felix_nat64.drivers.plan import JoolConfig, Pool4Entry, jool_config
from felix_nat64.model.desired import build_desired
from felix_nat64.model.ownership import JOOL_INSTANCE
from felix_nat64.model.settings import Settings
from felix_nat64.model.state import Inputs
from felix_nat64.model.values import PortRange

N4 = ipaddress.IPv4Network
N6 = ipaddress.IPv6Network
NS = "felix-nat64-test"
# What a new instance of this fake reports before any update (in ms): the
# timeouts felix-nat64's defaults ask for, and another MTU.
DEFAULTS: dict[str, Any] = {"tcp-est-timeout": 7_440_000, "tcp-trans-timeout": 240_000,
                            "udp-timeout": 300_000, "icmp-timeout": 60_000, "lowest-ipv6-mtu": 1280}


class InMemoryJool:
    """Instances by namespace and name; pool4 as port spans per (proto, address, mark)."""

    def __init__(self) -> None:
        self.instances: dict[tuple[str, str], dict[str, Any]] = {}
        self.journal: list[tuple[str, ...]] = []
        self.unreachable: dict[str, JoolError] = {}

    def open(self, namespace: str) -> Client:
        if namespace in self.unreachable:
            raise self.unreachable[namespace]
        return Client(self, namespace)


class Client:
    def __init__(self, jool: InMemoryJool, namespace: str) -> None:
        self.jool = jool
        self.ns = namespace

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def _get(self, name: str) -> dict[str, Any]:
        found = self.jool.instances.get((self.ns, name))
        if found is None:
            raise error_for(errno.ESRCH, "This namespace lacks an instance named 'x'.")
        return found

    def instance_exists(self, name: str) -> bool:
        return (self.ns, name) in self.jool.instances

    def instance_add(self, name: str, pool6: N6) -> None:
        if self.instance_exists(name):
            raise error_for(errno.EEXIST, "An instance by that name already exists.")
        self.jool.instances[(self.ns, name)] = {"pool6": pool6, "globals": dict(DEFAULTS), "pool4": {}}
        self.jool.journal.append(("instance add", str(pool6)))

    def instance_remove(self, name: str) -> None:
        self._get(name)
        del self.jool.instances[(self.ns, name)]
        self.jool.journal.append(("instance remove",))

    def global_list(self, name: str) -> dict[str, Any]:
        inst = self._get(name)
        return {"pool6": inst["pool6"], **inst["globals"]}

    def global_update(self, name: str, values: dict[str, Any]) -> None:
        self._get(name)["globals"].update(values)
        self.jool.journal.append(("global update", *sorted(values)))

    def pool4_list(self, name: str) -> tuple[Pool4Entry, ...]:
        pool4 = self._get(name)["pool4"]
        return tuple(Pool4Entry(proto, addr, lo, hi, mark)
                     for (proto, addr, mark), spans in sorted(pool4.items(), key=str) for lo, hi in spans)

    def pool4_add(self, name: str, entry: Pool4Entry, *, force: bool = False) -> None:
        assert force, "pool4 ranges overlap the namespace's ephemeral ports: FORCE is needed"
        pool4 = self._get(name)["pool4"]
        for addr in entry.prefix:
            key = (entry.proto, N4(addr), entry.mark)
            pool4[key] = sorted([*pool4.get(key, []), (entry.port_min, entry.port_max)])
        self.jool.journal.append(("pool4 add", str(entry.prefix), entry.proto,
                                  f"{entry.port_min}-{entry.port_max}"))

    def pool4_remove(self, name: str, entry: Pool4Entry) -> None:
        pool4 = self._get(name)["pool4"]
        for addr in entry.prefix:
            key = (entry.proto, N4(addr), entry.mark)
            pool4[key] = subtract(pool4.get(key, []), [(entry.port_min, entry.port_max)])
        self.jool.journal.append(("pool4 remove", str(entry.prefix), entry.proto,
                                  f"{entry.port_min}-{entry.port_max}"))


def config(**settings: Any) -> JoolConfig:
    s = replace(Settings(prefixes=(N6("64:ff9b::/96"),), hostname="node"), **settings)
    d = build_desired(Inputs(s))
    return jool_config(d.translators[0], d)


@pytest.fixture
def jool() -> InMemoryJool:
    return InMemoryJool()


def test_a_new_instance_gets_pool6_pool4_and_globals_and_a_second_ensure_sends_nothing(
        jool: InMemoryJool) -> None:
    driver = JoolInstances(jool.open)
    assert driver.ensure(NS, config()) == 4
    # The default globals (lowest-ipv6-mtu 1280 among them) are Jool's own:
    # no global update.
    assert jool.journal == [
        ("instance add", "64:ff9b::/96"),
        ("pool4 add", "169.254.64.8/29", "tcp", "1024-65535"),
        ("pool4 add", "169.254.64.8/29", "udp", "1024-65535"),
        ("pool4 add", "169.254.64.8/29", "icmp", "0-65535"),
    ]
    jool.journal.clear()
    assert driver.ensure(NS, config()) == 0
    assert jool.journal == []


def test_a_narrower_port_range_removes_only_the_ports_no_longer_wanted(jool: InMemoryJool) -> None:
    driver = JoolInstances(jool.open)
    driver.ensure(NS, config())
    jool.journal.clear()
    assert driver.ensure(NS, config(pool4_ports=PortRange(2000, 65535))) > 0
    # Per address, only 1024-1999 goes; nothing is added back, ICMP is untouched.
    assert {e[0] for e in jool.journal} == {"pool4 remove"}
    assert {(e[2], e[3]) for e in jool.journal} == {("tcp", "1024-1999"), ("udp", "1024-1999")}
    assert len(jool.journal) == 16  # 8 addresses, 2 protocols
    jool.journal.clear()
    assert driver.ensure(NS, config(pool4_ports=PortRange(2000, 65535))) == 0


def test_only_the_globals_that_differ_are_sent_in_one_update(jool: InMemoryJool) -> None:
    driver = JoolInstances(jool.open)
    driver.ensure(NS, config())
    jool.journal.clear()
    assert driver.ensure(NS, config(udp_timeout=600.0)) == 1
    assert jool.journal == [("global update", "udp-timeout")]


def test_an_instance_with_another_pool6_is_recreated(jool: InMemoryJool,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    client = jool.open(NS)
    client.instance_add(JOOL_INSTANCE, N6("2001:db8::/96"))
    jool.journal.clear()
    with caplog.at_level("WARNING", logger="felix_nat64"):
        JoolInstances(jool.open).ensure(NS, config())
    assert jool.journal[:2] == [("instance remove",), ("instance add", "64:ff9b::/96")]
    assert any(r.getMessage() == "jool instance has another pool6, recreating" for r in caplog.records)


def test_remove_takes_the_instance_away_once(jool: InMemoryJool) -> None:
    driver = JoolInstances(jool.open)
    driver.ensure(NS, config())
    assert driver.remove(NS) == 1
    assert driver.remove(NS) == 0
    assert jool.instances == {}


def test_a_namespace_that_cannot_be_entered_has_nothing_to_remove(jool: InMemoryJool) -> None:
    jool.unreachable[NS] = JoolNamespaceError(NS, OSError(errno.ENOENT, "it does not exist"))
    assert JoolInstances(jool.open).remove(NS) == 0


def test_jool_errors_become_dataplane_errors_naming_the_namespace(jool: InMemoryJool) -> None:
    jool.unreachable[NS] = error_for(errno.EPERM, "Operation not permitted")
    driver = JoolInstances(jool.open)
    with pytest.raises(DataplaneError, match=f"Jool in {NS}: Operation not permitted"):
        driver.ensure(NS, config())
    with pytest.raises(DataplaneError, match=f"Jool in {NS}: Operation not permitted"):
        driver.remove(NS)
