"""The kernel dataplane: converges the node on a desired state.

Order matters so traffic never meets a half-built path: translators
(namespace, link, Jool) first, then the node's routes and rule, then the
nftables table that starts steering pods into them; on removal the reverse.
Every step reads what the kernel has, so applying the same state twice
changes nothing, and a restarted driver adopts what its predecessor left.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from typing import Protocol, TypeVar

from pyroute2.netlink.exceptions import NetlinkError

from felix_nat64.drivers.api import ApplyOutcome, DataplaneError
from felix_nat64.drivers.netns.errors import describe
from felix_nat64.drivers.netns.links import FoundTranslator, TranslatorLinks, discover, forwarding_problems
from felix_nat64.drivers.netns.worker import namespace_exists
from felix_nat64.drivers.nft.ruleset import render
from felix_nat64.drivers.nft.table import NftError, NftTable
from felix_nat64.drivers.plan import DEFAULT_MTU, JoolConfig, jool_config, node_routes
from felix_nat64.drivers.routing import NodeRouting, RuleSpec
from felix_nat64.logs import EventLogger
from felix_nat64.model.state import DesiredState, Translator

DEFAULT_MTU_FILE = "/var/lib/calico/mtu"
T = TypeVar("T")


class JoolDriver(Protocol):
    """Converges the Jool instance inside one translator namespace."""

    def ensure(self, namespace: str, config: JoolConfig) -> int: ...

    def remove(self, namespace: str) -> int: ...


def pod_network_mtu(path: str = DEFAULT_MTU_FILE) -> int | None:
    """The MTU Felix computed for pod interfaces (it writes it for the CNI plugin)."""
    try:
        with open(path) as handle:
            value = int(handle.read().strip())
    except (OSError, ValueError):
        return None
    return value if 1280 <= value <= 65535 else None


class KernelDataplane:
    """The `Dataplane` the driver loop applies desired states to."""

    def __init__(self, jool: JoolDriver, *, mtu_file: str = DEFAULT_MTU_FILE,
                 links: TranslatorLinks | None = None, routing: NodeRouting | None = None,
                 nft: NftTable | None = None) -> None:
        self._jool = jool
        self._mtu_file = mtu_file
        self._links = links or TranslatorLinks()
        self._routing = routing or NodeRouting()
        self._nft = nft or NftTable()
        self._log = EventLogger("kernel")

    def adopt(self) -> Mapping[ipaddress.IPv6Network, ipaddress.IPv4Network]:
        try:
            found = discover()
        except (OSError, NetlinkError) as exc:
            raise DataplaneError(f"reading existing translators failed: {describe(exc)}") from exc
        return {f.parent: f.block for f in found if f.parent is not None and f.block is not None
                and f.namespace is not None}

    def mtu_for(self, desired: DesiredState) -> int:
        return desired.mtu or pod_network_mtu(self._mtu_file) or DEFAULT_MTU

    def apply(self, desired: DesiredState) -> ApplyOutcome:
        changes = 0
        if desired.active:
            problems = forwarding_problems()
            if problems:
                raise DataplaneError("; ".join(problems))
            mtu = self.mtu_for(desired)
            for t in desired.translators:
                changes += self._step(f"translator {t.namespace}", self._ensure_translator, t, desired, mtu)
            rule = RuleSpec(desired.firewall_mark, desired.routing_table, desired.rule_priority)
            changes += self._step("node routing", self._routing.apply, rule, node_routes(desired))
            changes += self._step("nftables table", self._nft.apply, render(desired))
        else:
            changes += self._step("nftables table", self._nft.apply, None)
            changes += self._step("node routing", self._routing.apply, None, ())
        wanted = {t.tid for t in desired.translators}
        for found in self._step("translator discovery", discover):
            if found.tid not in wanted:
                changes += self._step(f"removing translator {found.tid}", self._remove_translator, found)
        return ApplyOutcome(changes)

    def _ensure_translator(self, t: Translator, desired: DesiredState, mtu: int) -> int:
        changes = self._links.ensure(t, mtu)
        changes += self._jool.ensure(t.namespace, jool_config(t, desired, mtu))
        return changes

    def _remove_translator(self, found: FoundTranslator) -> int:
        changes = 0
        if found.namespace is not None and namespace_exists(found.namespace):
            changes += self._jool.remove(found.namespace)
        return changes + self._links.remove(found)

    def _step(self, what: str, fn: Callable[..., T], *args: object) -> T:
        try:
            return fn(*args)
        except DataplaneError:
            raise
        except NftError as exc:
            raise DataplaneError(f"{what}: {exc}") from exc
        except (OSError, NetlinkError, RuntimeError, TimeoutError) as exc:
            raise DataplaneError(f"{what}: {describe(exc)}") from exc
