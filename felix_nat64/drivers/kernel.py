"""The kernel dataplane: converges the node on a desired state.

Order matters so traffic never meets a half-built path. On the way up:
translators (namespace, link, Jool) first, then the node's routes and rule,
then the nftables table that starts steering pods into them. On the way
down the reverse: the table stops steering, then routes and rule go, then
the translators. A change does both: new objects come up in the first order
and old ones go in the second, so a prefix being removed loses its steering
before its route, and its route before its translator. Last, the node's
conntrack entries of pool4 blocks no longer in use are deleted.

Translators of different namespaces are independent: each converges on its
own (one thread in its namespace for links and sysctls, one for Jool), a
failing one does not stop the others, and every failure is reported. They
can converge in parallel (`parallelism`); the driver converges them one at a
time, which measured fastest (docs/architecture.md, "Applying the desired
state"). Every step reads what the kernel has, so applying the same state
twice changes nothing, a failed apply is finished by the next one, and a
restarted driver adopts what its predecessor left.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from pyroute2.netlink.exceptions import NetlinkError

from felix_nat64.drivers import discovery
from felix_nat64.drivers.api import ApplyOutcome, DataplaneError
from felix_nat64.drivers.conntrack import forget_blocks
from felix_nat64.drivers.discovery import FoundTranslator
from felix_nat64.drivers.netns.errors import describe
from felix_nat64.drivers.netns.links import TranslatorLinks, forwarding_problems
from felix_nat64.drivers.nft.ruleset import Ruleset, render
from felix_nat64.drivers.nft.table import NftError, NftTable
from felix_nat64.drivers.plan import DEFAULT_MTU, JoolConfig, Route, jool_config, node_routes
from felix_nat64.drivers.routing import NodeRouting, RuleSpec
from felix_nat64.model.state import DesiredState, Translator

DEFAULT_MTU_FILE = "/var/lib/calico/mtu"
# How many translators converge at once. Their work is mostly Python, which
# runs one thread at a time: measured in the test VM (2 vCPUs), 2, 4 or 8 at
# once made a 16-translator apply slower, not faster.
DEFAULT_PARALLELISM = 1
CT_TIMEOUTS_MISSING = (
    "this kernel has no nftables conntrack timeout objects (CONFIG_NF_CONNTRACK_TIMEOUT, nft_ct): "
    "NAT64 flows keep conntrack's own timeouts (UDP 30 s after one exchange, TCP 2 min after a close), "
    "shorter than the NAT64 session timeouts, so a mapping idle that long may change its public port"
)
T = TypeVar("T")
X = TypeVar("X")


class JoolDriver(Protocol):
    """Converges the Jool instance inside one translator namespace."""

    def ensure(self, namespace: str, config: JoolConfig) -> int: ...

    def remove(self, namespace: str) -> int: ...


class LinksDriver(Protocol):
    """Converges a translator's namespace and veth pair."""

    def ensure(self, t: Translator, mtu: int) -> int: ...

    def remove(self, found: FoundTranslator) -> int: ...


class RoutingDriver(Protocol):
    """Converges the node's fwmark rule and routes."""

    def apply(self, rule: RuleSpec | None, routes: Iterable[Route], *, prune: bool = True) -> int: ...


class TableDriver(Protocol):
    """Converges the nftables table (None: no table)."""

    def apply(self, desired: Ruleset | None) -> int: ...

    def ct_timeouts_supported(self) -> bool: ...


def pod_network_mtu(path: str = DEFAULT_MTU_FILE) -> int | None:
    """The MTU Felix computed for pod interfaces (it writes it for the CNI plugin)."""
    try:
        with open(path) as handle:
            value = int(handle.read().strip())
    except (OSError, ValueError):
        return None
    return value if 1280 <= value <= 65535 else None


def mtu_warnings(nat64_mtu: int | None, pod_mtu: int | None) -> list[str]:
    """A warning when NAT64MTU is larger than the pod MTU Felix reports."""
    if nat64_mtu is None or pod_mtu is None or nat64_mtu <= pod_mtu:
        return []
    return [f"NAT64MTU {nat64_mtu} exceeds the pod network MTU {pod_mtu} that Felix reports: translated "
            f"packets over {pod_mtu} bytes make the node send Packet Too Big, which felix-nat64 steers "
            "back through the translator, so the IPv4 sender learns the smaller MTU at the cost of a "
            f"round trip; set NAT64MTU to {pod_mtu} or less, or leave it unset"]


class KernelDataplane:
    """The `Dataplane` the driver loop applies desired states to."""

    def __init__(self, jool: JoolDriver, *, mtu_file: str = DEFAULT_MTU_FILE,
                 links: LinksDriver | None = None, routing: RoutingDriver | None = None,
                 nft: TableDriver | None = None,
                 find_translators: Callable[[], Sequence[FoundTranslator]] = discovery.translators,
                 check_forwarding: Callable[[], list[str]] = forwarding_problems,
                 parallelism: int = DEFAULT_PARALLELISM) -> None:
        self._jool = jool
        self._mtu_file = mtu_file
        self._links = links or TranslatorLinks()
        self._routing = routing or NodeRouting()
        self._nft = nft or NftTable()
        self._find = find_translators
        self._check_forwarding = check_forwarding
        self._parallelism = max(1, parallelism)

    def adopt(self) -> Mapping[ipaddress.IPv6Network, ipaddress.IPv4Network]:
        found = self._step("reading existing translators", self._find)
        return {f.parent: f.block for f in found if f.adoptable}  # type: ignore[misc]

    def mtu_for(self, desired: DesiredState) -> int:
        return desired.mtu or pod_network_mtu(self._mtu_file) or DEFAULT_MTU

    def apply(self, desired: DesiredState) -> ApplyOutcome:
        changes = 0
        warnings: list[str] = []
        # What exists before this apply: anything not wanted is stale (an
        # apply only creates wanted translators), and its blocks may be gone.
        found = self._step("translator discovery", self._find)
        if desired.active:
            problems = self._step("forwarding check", self._check_forwarding)
            if problems:
                raise DataplaneError("; ".join(problems))
            mtu = self.mtu_for(desired)
            warnings += mtu_warnings(desired.mtu, pod_network_mtu(self._mtu_file))
            rule = RuleSpec(desired.firewall_mark, desired.routing_table, desired.rule_priority)
            routes = node_routes(desired)
            changes += self._each(desired.translators, lambda t: f"translator {t.namespace}",
                                  lambda t: self._ensure_translator(t, desired, mtu))
            changes += self._step("node routing", self._routing.apply, rule, routes, prune=False)
            with_timeouts = self._step("nftables probe", self._nft.ct_timeouts_supported)
            if not with_timeouts:
                warnings.append(CT_TIMEOUTS_MISSING)
            changes += self._step("nftables table", self._nft.apply,
                                  render(desired, with_ct_timeouts=with_timeouts))
            changes += self._step("node routing", self._routing.apply, rule, routes)
        else:
            changes += self._step("nftables table", self._nft.apply, None)
            changes += self._step("node routing", self._routing.apply, None, ())
        wanted = {t.tid for t in desired.translators}
        stale = [f for f in found if f.tid not in wanted]
        changes += self._each(stale, lambda f: f"removing translator {f.tid}", self._remove_translator)
        gone = sorted({f.block for f in found if f.block} - set(desired.blocks.values()))
        try:
            changes += forget_blocks(gone)
        except (OSError, NetlinkError) as exc:
            # Not worth failing the apply for: the entries expire on their own.
            warnings.append(f"could not delete the conntrack entries of removed pool4 blocks "
                            f"{', '.join(map(str, gone))}: {describe(exc)}; they expire on their own")
        return ApplyOutcome(changes, tuple(warnings))

    def _ensure_translator(self, t: Translator, desired: DesiredState, mtu: int) -> int:
        changes = self._links.ensure(t, mtu)
        changes += self._jool.ensure(t.namespace, jool_config(t, desired))
        return changes

    def _remove_translator(self, found: FoundTranslator) -> int:
        changes = 0
        if found.namespace is not None:
            changes += self._jool.remove(found.namespace)
        return changes + self._links.remove(found)

    def _each(self, items: Sequence[X], what: Callable[[X], str], fn: Callable[[X], int]) -> int:
        """Runs fn on every item (`parallelism` at a time); every failure is
        reported, in the items' order, once all of them have finished."""
        if len(items) <= 1 or self._parallelism == 1:
            outcomes = [self._attempt(what(i), fn, i) for i in items]
        else:
            with ThreadPoolExecutor(max_workers=min(self._parallelism, len(items)),
                                    thread_name_prefix="translator") as pool:
                futures = [pool.submit(self._attempt, what(i), fn, i) for i in items]
            outcomes = [f.result() for f in futures]
        errors = [o for o in outcomes if isinstance(o, DataplaneError)]
        if errors:
            raise DataplaneError("; ".join(map(str, errors))) from errors[0]
        return sum(o for o in outcomes if isinstance(o, int))

    def _attempt(self, what: str, fn: Callable[[X], int], item: X) -> int | DataplaneError:
        try:
            return self._step(what, fn, item)
        except DataplaneError as exc:
            return exc

    @staticmethod
    def _step(what: str, fn: Callable[..., T], *args: object, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except DataplaneError:
            raise
        except NftError as exc:
            raise DataplaneError(f"{what}: {exc}") from exc
        except (OSError, NetlinkError, RuntimeError, TimeoutError) as exc:
            raise DataplaneError(f"{what}: {describe(exc)}") from exc
