"""Felix-style rulesets for the simulated node, in both of Felix's Linux dataplane modes.

felix-nat64 shares a node with Calico Felix, so tests need a node that carries
the rules Felix would program there. This module renders those rules from a
small description (``FelixSpec``: workload interfaces with their egress policy,
IP pools) and loads them into the calling thread's network namespace or a
named one:

nftables mode (``Mode.NFTABLES``)
    tables ``ip calico`` and ``ip6 calico``. Base chains are named
    ``<table>-<HOOK>`` (``raw-PREROUTING``, ``mangle-POSTROUTING``,
    ``filter-FORWARD``, ``nat-POSTROUTING``...) at Felix's priorities (raw -300,
    mangle -150, filter 0, dstnat -100, srcnat + 10); regular chains carry the
    same ``<table>-`` prefix (``filter-cali-FORWARD``). Workload dispatch goes
    through verdict maps keyed by interface name; the IP pools are interval
    sets ``cali40...``/``cali60...``.
iptables mode (``Mode.IPTABLES``)
    rules written with iptables-nft (so the kernel holds nf_tables tables
    ``ip filter``, ``ip6 nat``...): ``cali-*`` chains hooked from the built-in
    chains by "cali:" tagged rules, workload dispatch as Felix's shallow
    prefix tree of ``-i caliXXX -g cali-fw-caliXXX`` rules, and the pools as
    ipsets ``cali40...``/``cali60...`` (made with the ``ipset`` tool).

Both modes come from one model, the way Felix renders one set of chains for
either backend. What is modelled is what Felix programs on a node with IPv6
workloads, no encapsulation, no host endpoints and default settings: mark
bits allocated from ``IptablesMarkMask``/``NftablesMarkMask`` 0xffff0000
(accept 0x10000, pass 0x20000, drop 0x40000, scratch 0x80000 and 0x100000),
the mark-clearing and RPF rules in raw PREROUTING, conntrack shortcuts in
mangle PREROUTING, per-endpoint from-/to- chains with one policy tier and the
Kubernetes namespace/service-account profiles, the "Policy explicitly accepted
packet." rules that end filter FORWARD, and natOutgoing
(``cali-nat-outgoing``: masquerade sources in masquerading pools going to
destinations outside all pools). Rule comments are "cali:" plus a hash of the
rule, as Felix tags its rules; the hashes are this module's own.

``FelixDataplane`` installs a spec, changes it the way Felix applies an update
(only the chains that changed), rewrites everything the way Felix's periodic
resync may (``resync``), and removes it; ``snapshot`` returns the text of
everything Felix owns in that mode, for before/after comparisons.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import ipaddress
import json
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Network, IPv6Network
from typing import TYPE_CHECKING, Any, Literal

from testbed.netns_exec import run_command_in_netns

if TYPE_CHECKING:
    from testbed.topology import Topology

Network = IPv4Network | IPv6Network

# --- Felix's names and numbers ------------------------------------------------------
CHAIN_PREFIX = "cali-"
WORKLOAD_IFACE_PREFIX = "cali"
NFT_TABLE = "calico"
MARK_MASK = 0xFFFF0000
MARK_ACCEPT = 0x10000
MARK_PASS = 0x20000
MARK_DROP = 0x40000
MARK_SCRATCH0 = 0x80000
MARK_SCRATCH1 = 0x100000
ALL_MARK_BITS = MARK_ACCEPT | MARK_PASS | MARK_SCRATCH0 | MARK_SCRATCH1
VXLAN_PORT = 4789
PROTO_IPIP = 4
# ICMPv6 that a workload may always send to its router (MLD, RS, NS, NA).
ICMPV6_ROUTER_TYPES = (130, 131, 132, 133, 135, 136)
IPSET_MAX_SIZE = 1048576
IPSET_NAME_MAX = 31
IPTABLES_CHAIN_NAME_MAX = 28
NFT_CHAIN_NAME_MAX = 256
MASQ_POOLS_SET = "masq-ipam-pools"
# The "all pools" set was renamed in Calico v3.32; both names are in the field.
ALL_POOLS_SET_BEFORE_3_32 = "all-ipam-pools"
ALL_POOLS_SET_FROM_3_32 = "network-ip-pools"
DEFAULT_TIER = "default"
NAT64_WELL_KNOWN_PREFIX = IPv6Network("64:ff9b::/96")

TABLES = ("raw", "mangle", "filter", "nat")
IPTABLES_TOOLS = {4: ("iptables-nft-restore", "iptables-nft-save", "iptables-nft"),
                  6: ("ip6tables-nft-restore", "ip6tables-nft-save", "ip6tables-nft")}

# nftables mode: Felix's base chains, (type, hook, priority), one set per family.
_NFT_BASE_CHAINS: dict[tuple[str, str], tuple[str, str, int]] = {
    ("raw", "PREROUTING"): ("filter", "prerouting", -300),
    ("raw", "OUTPUT"): ("filter", "output", -300),
    ("mangle", "PREROUTING"): ("filter", "prerouting", -150),
    ("mangle", "INPUT"): ("filter", "input", -150),
    ("mangle", "FORWARD"): ("filter", "forward", -150),
    ("mangle", "OUTPUT"): ("route", "output", -150),
    ("mangle", "POSTROUTING"): ("filter", "postrouting", -150),
    ("filter", "INPUT"): ("filter", "input", 0),
    ("filter", "FORWARD"): ("filter", "forward", 0),
    ("filter", "OUTPUT"): ("filter", "output", 0),
    ("nat", "PREROUTING"): ("nat", "prerouting", -100),
    ("nat", "INPUT"): ("nat", "input", -100),
    ("nat", "OUTPUT"): ("nat", "output", 110),
    ("nat", "POSTROUTING"): ("nat", "postrouting", 110),
}
_BUILTIN_CHAINS = {
    "raw": ("PREROUTING", "OUTPUT"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
}


class Mode(enum.Enum):
    """Felix's Linux dataplane mode (FelixConfiguration ``nftablesMode``)."""

    NFTABLES = "nftables"
    IPTABLES = "iptables"


class FelixRulesError(RuntimeError):
    """A Felix-style ruleset could not be loaded, changed or removed; quotes the tool's output."""


# --- what the node runs -------------------------------------------------------------------


@dataclass(frozen=True)
class EgressPolicy:
    """A workload's egress policy, as one Calico NetworkPolicy in tier "default" renders.

    Allow-all has no policy at all (only the namespace profile, which allows);
    otherwise a policy chain drops the ``denied`` destinations and then allows
    everything else, or (``deny_all``) allows nothing so the end of the tier drops.
    """

    denied: tuple[Network, ...] = ()
    deny_all: bool = False

    @property
    def allows_all(self) -> bool:
        """True when no policy applies to the workload."""
        return not self.denied and not self.deny_all


ALLOW_ALL = EgressPolicy()
DENY_ALL_EGRESS = EgressPolicy(deny_all=True)


def deny_egress_to(*cidrs: Network | str) -> EgressPolicy:
    """A policy that drops egress to ``cidrs`` and allows the rest."""
    if not cidrs:
        raise ValueError("deny_egress_to needs at least one CIDR")
    return EgressPolicy(denied=tuple(ipaddress.ip_network(c) for c in cidrs))


@dataclass(frozen=True)
class Pool:
    """A Calico IP pool as Felix's masquerade manager sees it.

    Every pool, disabled ones included, is in the "all pools" set: a disabled
    pool that covers a NAT64 prefix is what keeps natOutgoing from
    masquerading pod traffic to that prefix. ``masquerade`` is natOutgoing.
    """

    cidr: Network
    masquerade: bool = False
    disabled: bool = False


@dataclass(frozen=True)
class Workload:
    """A local workload endpoint: its node-side interface and egress policy."""

    ifname: str
    egress: EgressPolicy = ALLOW_ALL
    k8s_namespace: str = "default"

    def __post_init__(self) -> None:
        if not self.ifname.startswith(WORKLOAD_IFACE_PREFIX) or len(self.ifname) > 15:
            raise ValueError(f"workload interface {self.ifname!r} must be cali... and at most 15 characters")


@dataclass(frozen=True)
class FelixSpec:
    """Everything the rendered ruleset depends on.

    ``forward_policy`` is the policy of the iptables ``FORWARD`` chains (ip and
    ip6) in iptables mode. Felix never sets it; ``"accept"`` is the kernel's
    default and what a node without Docker has, ``"drop"`` is what Docker (and
    so many Kubernetes nodes) sets. ``all_pools_set`` picks the name of the
    "all pools" set: ``all-ipam-pools`` up to Calico v3.31, ``network-ip-pools``
    from v3.32.
    """

    mode: Mode
    workloads: tuple[Workload, ...] = ()
    pools: tuple[Pool, ...] = ()
    forward_policy: Literal["accept", "drop"] = "accept"
    all_pools_set: str = ALL_POOLS_SET_BEFORE_3_32

    def __post_init__(self) -> None:
        names = [w.ifname for w in self.workloads]
        if len(set(names)) != len(names):
            raise ValueError("workload interface names must be unique")
        if self.forward_policy not in ("accept", "drop"):
            raise ValueError("forward_policy must be 'accept' or 'drop'")
        if self.forward_policy == "drop" and self.mode is not Mode.IPTABLES:
            raise ValueError("forward_policy only applies to iptables mode (Felix's own chains accept)")
        if self.all_pools_set not in (ALL_POOLS_SET_BEFORE_3_32, ALL_POOLS_SET_FROM_3_32):
            raise ValueError(f"unknown all-pools set name {self.all_pools_set!r}")

    def with_egress(self, ifname: str, policy: EgressPolicy) -> FelixSpec:
        """The same spec with workload ``ifname``'s egress policy replaced."""
        if ifname not in {w.ifname for w in self.workloads}:
            raise KeyError(f"no workload with interface {ifname}")
        return replace(self, workloads=tuple(
            replace(w, egress=policy) if w.ifname == ifname else w for w in self.workloads))


def node_spec(
    topo: Topology,
    mode: Mode,
    *,
    masquerade: bool = True,
    covering: Sequence[IPv6Network | str] = (NAT64_WELL_KNOWN_PREFIX,),
    egress: Mapping[int, EgressPolicy] | None = None,
    forward_policy: Literal["accept", "drop"] = "accept",
    all_pools_set: str = ALL_POOLS_SET_BEFORE_3_32,
) -> FelixSpec:
    """The spec for a simulated node: every pod is a workload, the pod pool is a pool
    (natOutgoing per ``masquerade``) and each ``covering`` prefix is a disabled pool.

    ``egress`` maps a pod index to its egress policy (allow-all for the others).
    """
    policies = egress or {}
    workloads = tuple(Workload(p.node_ifname, policies.get(p.index, ALLOW_ALL)) for p in topo.pods)
    pools = (Pool(topo.pod_pool, masquerade=masquerade),
             *(Pool(IPv6Network(c), disabled=True) for c in covering))
    return FelixSpec(mode, workloads, pools, forward_policy, all_pools_set)


# --- the rule model -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Ctx:
    """Where a rule is rendered: IP version and (for nftables names) the table."""

    version: int
    table: str

    @property
    def ip(self) -> str:
        return "ip" if self.version == 4 else "ip6"

    def nft_name(self, name: str) -> str:
        # nftables mode keeps Felix's four tables apart by prefixing the names.
        return f"{self.table}-{name}"


def ipset_name(version: int, set_id: str) -> str:
    """Felix's name of a main IP set, e.g. cali60masq-ipam-pools."""
    return f"cali{version}0{set_id}"[:IPSET_NAME_MAX]


class _Term:
    """One match or action of a rule, rendered for either backend."""

    def nft(self, ctx: _Ctx) -> str:
        raise NotImplementedError

    def ipt(self, ctx: _Ctx) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class _Iface(_Term):
    inbound: bool
    name: str
    wildcard: bool = False

    def nft(self, ctx: _Ctx) -> str:
        return f'{"iifname" if self.inbound else "oifname"} "{self.name}{"*" if self.wildcard else ""}"'

    def ipt(self, ctx: _Ctx) -> str:
        return f'{"-i" if self.inbound else "-o"} {self.name}{"+" if self.wildcard else ""}'


@dataclass(frozen=True)
class _Mark(_Term):
    value: int
    mask: int

    def nft(self, ctx: _Ctx) -> str:
        return f"meta mark & 0x{self.mask:08x} == 0x{self.value:08x}"

    def ipt(self, ctx: _Ctx) -> str:
        return f"-m mark --mark {self.value:#x}/{self.mask:#x}"


def _bit_set(bit: int) -> _Mark:
    return _Mark(bit, bit)


def _bit_clear(bit: int) -> _Mark:
    return _Mark(0, bit)


@dataclass(frozen=True)
class _CtState(_Term):
    states: tuple[str, ...]

    def nft(self, ctx: _Ctx) -> str:
        return "ct state " + ",".join(s.lower() for s in self.states)

    def ipt(self, ctx: _Ctx) -> str:
        return "-m conntrack --ctstate " + ",".join(s.upper() for s in self.states)


@dataclass(frozen=True)
class _CtDnat(_Term):
    negate: bool = False

    def nft(self, ctx: _Ctx) -> str:
        return "ct status != dnat" if self.negate else "ct status dnat"

    def ipt(self, ctx: _Ctx) -> str:
        return f"-m conntrack {'! ' if self.negate else ''}--ctstate DNAT"


@dataclass(frozen=True)
class _InSet(_Term):
    source: bool
    set_id: str
    negate: bool = False

    def nft(self, ctx: _Ctx) -> str:
        op = "!= " if self.negate else ""
        return f"{ctx.ip} {'saddr' if self.source else 'daddr'} {op}@{ipset_name(ctx.version, self.set_id)}"

    def ipt(self, ctx: _Ctx) -> str:
        neg = "! " if self.negate else ""
        direction = "src" if self.source else "dst"
        return f"-m set {neg}--match-set {ipset_name(ctx.version, self.set_id)} {direction}"


@dataclass(frozen=True)
class _DstNet(_Term):
    net: Network

    def nft(self, ctx: _Ctx) -> str:
        return f"{ctx.ip} daddr {self.net}"

    def ipt(self, ctx: _Ctx) -> str:
        return f"-d {self.net}"


@dataclass(frozen=True)
class _UdpDport(_Term):
    port: int

    def nft(self, ctx: _Ctx) -> str:
        return f"udp dport {self.port}"

    def ipt(self, ctx: _Ctx) -> str:
        return f"-p udp -m udp --dport {self.port}"


@dataclass(frozen=True)
class _Proto(_Term):
    number: int

    def nft(self, ctx: _Ctx) -> str:
        return f"meta l4proto {self.number}"

    def ipt(self, ctx: _Ctx) -> str:
        return f"-p {self.number}"


@dataclass(frozen=True)
class _Icmp6Type(_Term):
    icmp_type: int

    def nft(self, ctx: _Ctx) -> str:
        return f"icmpv6 type {self.icmp_type}"

    def ipt(self, ctx: _Ctx) -> str:
        return f"-p ipv6-icmp -m icmp6 --icmpv6-type {self.icmp_type}"


@dataclass(frozen=True)
class _RpfFailed(_Term):
    """Strict reverse-path check (the route back must use the same interface and mark)."""

    def nft(self, ctx: _Ctx) -> str:
        return "fib saddr . mark . iif oif 0"

    def ipt(self, ctx: _Ctx) -> str:
        return "-m rpfilter --validmark --invert"


@dataclass(frozen=True)
class _Vmap(_Term):
    """nftables only: dispatch on the interface name through a verdict map."""

    inbound: bool
    map_name: str

    def nft(self, ctx: _Ctx) -> str:
        return f'{"iifname" if self.inbound else "oifname"} vmap @{ctx.nft_name(self.map_name)}'

    def ipt(self, ctx: _Ctx) -> str:
        raise FelixRulesError("verdict maps exist only in nftables mode")


@dataclass(frozen=True)
class _Verdict(_Term):
    kind: Literal["accept", "drop", "return"]

    def nft(self, ctx: _Ctx) -> str:
        return self.kind

    def ipt(self, ctx: _Ctx) -> str:
        return "-j " + self.kind.upper()


ACCEPT = _Verdict("accept")
DROP = _Verdict("drop")
RETURN = _Verdict("return")


@dataclass(frozen=True)
class _Jump(_Term):
    chain: str
    goto: bool = False

    def nft(self, ctx: _Ctx) -> str:
        return f"{'goto' if self.goto else 'jump'} {ctx.nft_name(self.chain)}"

    def ipt(self, ctx: _Ctx) -> str:
        return f"{'-g' if self.goto else '-j'} {self.chain}"


@dataclass(frozen=True)
class _SetMark(_Term):
    bits: int

    def nft(self, ctx: _Ctx) -> str:
        return f"meta mark set meta mark | 0x{self.bits:08x}"

    def ipt(self, ctx: _Ctx) -> str:
        return f"-j MARK --set-xmark {self.bits:#x}/{self.bits:#x}"


@dataclass(frozen=True)
class _ClearMark(_Term):
    bits: int

    def nft(self, ctx: _Ctx) -> str:
        return f"meta mark set meta mark & 0x{~self.bits & 0xFFFFFFFF:08x}"

    def ipt(self, ctx: _Ctx) -> str:
        return f"-j MARK --set-xmark 0x0/{self.bits:#x}"


@dataclass(frozen=True)
class _Masquerade(_Term):
    def nft(self, ctx: _Ctx) -> str:
        return "masquerade fully-random"

    def ipt(self, ctx: _Ctx) -> str:
        return "-j MASQUERADE --random-fully"


@dataclass(frozen=True)
class _Rule:
    matches: tuple[_Term, ...] = ()
    action: _Term | None = None
    comment: str = ""


def _rule(*matches: _Term, action: _Term | None, comment: str = "") -> _Rule:
    return _Rule(tuple(matches), action, comment)


@dataclass(frozen=True)
class _Chain:
    name: str
    rules: tuple[_Rule, ...] = ()


@dataclass(frozen=True)
class _Hook:
    """Felix's rules in a built-in (base) chain: inserted at the top, appended at the end."""

    chain: str
    inserted: tuple[_Rule, ...] = ()
    appended: tuple[_Rule, ...] = ()


@dataclass(frozen=True)
class _Table:
    name: str
    hooks: tuple[_Hook, ...]
    chains: tuple[_Chain, ...]


@dataclass(frozen=True)
class _Family:
    """Everything Felix programs for one IP version."""

    version: int
    tables: tuple[_Table, ...]
    sets: tuple[tuple[str, tuple[Network, ...]], ...]
    # nftables mode: verdict map name -> ((interface, chain it goes to), ...), in the filter table.
    maps: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()


def length_limited(prefix: str, suffix: str, max_len: int) -> str:
    """``prefix + suffix``, or when that is too long ``prefix + "_" + hash(suffix)`` cut to
    ``max_len``: how Felix keeps chain names within iptables' 28 characters."""
    if not suffix:
        suffix = "_"
    total = len(prefix) + len(suffix)
    if total > max_len or (total == max_len and suffix.startswith("_")):
        digest = base64.urlsafe_b64encode(hashlib.sha256(suffix.encode()).digest()).decode().rstrip("=")
        return prefix + "_" + digest[: max_len - 1 - len(prefix)]
    return prefix + suffix


# --- the ruleset Felix renders ---------------------------------------------------------------


class _Names:
    def __init__(self, mode: Mode) -> None:
        self.max_len = IPTABLES_CHAIN_NAME_MAX if mode is Mode.IPTABLES else NFT_CHAIN_NAME_MAX

    def from_endpoint(self, ifname: str) -> str:
        return length_limited("cali-fw-", ifname, self.max_len)

    def to_endpoint(self, ifname: str) -> str:
        return length_limited("cali-tw-", ifname, self.max_len)

    def egress_policy(self, w: Workload) -> str:
        # A NetworkPolicy's id is np/<namespace>/<name>; one policy per workload here.
        return length_limited("cali-po-", f"np/{w.k8s_namespace}/egress-{w.ifname}", self.max_len)

    def profile(self, inbound: bool, profile: str) -> str:
        return length_limited("cali-pri-" if inbound else "cali-pro-", profile, self.max_len)


def _profiles(w: Workload) -> tuple[str, str]:
    # What Kubernetes gives every pod: its namespace's and its service account's profile.
    return f"kns.{w.k8s_namespace}", f"ksa.{w.k8s_namespace}.default"


def _endpoint_chain(names: _Names, w: Workload, version: int, inbound: bool) -> list[_Chain]:
    """The from- (egress) or to- (ingress) chain of one workload, and its policy chain."""
    rules = [
        _rule(_CtState(("RELATED", "ESTABLISHED")), action=ACCEPT),
        _rule(_CtState(("INVALID",)), action=DROP),
        # Policy chains report their verdict in these bits: start with them clear.
        _rule(action=_ClearMark(MARK_ACCEPT | MARK_PASS)),
    ]
    extra: list[_Chain] = []
    if not inbound:
        # Encapsulated packets from a workload could bypass its egress policy.
        rules += [
            _rule(_UdpDport(VXLAN_PORT), action=DROP,
                  comment="Drop VXLAN encapped packets originating in workloads"),
            _rule(_Proto(PROTO_IPIP), action=DROP,
                  comment="Drop IPinIP encapped packets originating in workloads"),
        ]
        if not w.egress.allows_all:
            policy = names.egress_policy(w)
            rules += [
                _rule(action=_ClearMark(MARK_PASS), comment=f"Start of tier {DEFAULT_TIER}"),
                _rule(_bit_clear(MARK_PASS), action=_Jump(policy)),
                _rule(_bit_set(MARK_ACCEPT), action=RETURN, comment="Return if policy accepted"),
                _rule(_bit_clear(MARK_PASS), action=DROP,
                      comment=f"End of tier {DEFAULT_TIER}. Drop if no policies passed packet"),
            ]
            extra.append(_policy_chain(policy, w.egress, version))
    for profile in _profiles(w):
        rules += [
            _rule(action=_Jump(names.profile(inbound, profile))),
            _rule(_bit_set(MARK_ACCEPT), action=RETURN, comment="Return if profile accepted"),
        ]
    rules.append(_rule(action=DROP, comment="Drop if no profiles matched"))
    name = names.to_endpoint(w.ifname) if inbound else names.from_endpoint(w.ifname)
    return [_Chain(name, tuple(rules)), *extra]


def _policy_chain(name: str, policy: EgressPolicy, version: int) -> _Chain:
    rules: list[_Rule] = []
    for net in policy.denied:
        if net.version != version:
            continue  # Felix renders each rule only for its own IP version
        rules += [_rule(_DstNet(net), action=_SetMark(MARK_DROP)),
                  _rule(_bit_set(MARK_DROP), action=DROP)]
    if not policy.deny_all:
        rules += [_rule(action=_SetMark(MARK_ACCEPT)), _rule(_bit_set(MARK_ACCEPT), action=RETURN)]
    return _Chain(name, tuple(rules))


def _allow_profile(name: str) -> _Chain:
    return _Chain(name, (_rule(action=_SetMark(MARK_ACCEPT)), _rule(_bit_set(MARK_ACCEPT), action=RETURN)))


def _dispatch_tree(
    root: str, ifnames: Sequence[str], inbound: bool, target: Any
) -> list[_Chain]:
    """Felix's iptables dispatch: names sharing the character after their common prefix
    go to a child chain, a lone name gets a rule in the root; unknown interfaces drop."""
    names = sorted(ifnames)
    common = _common_prefix(names)
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(name[: len(common) + 1], []).append(name)
    unknown = _rule(action=DROP, comment="Unknown interface")
    root_rules: list[_Rule] = []
    children: list[_Chain] = []
    for prefix, members in groups.items():
        if len(members) == 1:
            root_rules.append(_rule(_Iface(inbound, members[0]), action=_Jump(target(members[0]), goto=True)))
            continue
        child = f"{root}-{prefix[len(common):]}"
        root_rules.append(_rule(_Iface(inbound, prefix, wildcard=True), action=_Jump(child, goto=True)))
        children.append(_Chain(child, (
            *(_rule(_Iface(inbound, m), action=_Jump(target(m), goto=True)) for m in members), unknown)))
    return [*children, _Chain(root, (*root_rules, unknown))]


def _common_prefix(names: Sequence[str]) -> str:
    if not names:
        return ""
    first, last = min(names), max(names)
    n = 0
    while n < min(len(first), len(last)) and first[n] == last[n]:
        n += 1
    return first[:n]


def _build(spec: FelixSpec, version: int) -> _Family:
    names = _Names(spec.mode)
    wl = sorted(spec.workloads, key=lambda w: w.ifname)
    any_wl = _Iface(True, WORKLOAD_IFACE_PREFIX, wildcard=True)
    to_wl = _Iface(False, WORKLOAD_IFACE_PREFIX, wildcard=True)
    empty = ("cali-from-host-endpoint", "cali-to-host-endpoint")

    raw = _Table("raw", (
        _Hook("PREROUTING", (_rule(action=_Jump("cali-PREROUTING")),)),
        _Hook("OUTPUT", (_rule(action=_Jump("cali-OUTPUT")),)),
    ), (
        _Chain("cali-PREROUTING", (
            # Another program's rules may have left our bits set.
            _rule(action=_ClearMark(ALL_MARK_BITS)),
            _rule(any_wl, action=_SetMark(MARK_SCRATCH0)),
            _rule(_bit_set(MARK_SCRATCH0), action=_Jump("cali-rpf-skip")),
            # Workloads may not spoof their source address.
            _rule(_bit_set(MARK_SCRATCH0), _RpfFailed(), action=DROP),
            _rule(_bit_clear(MARK_SCRATCH0), action=_Jump("cali-from-host-endpoint")),
            _rule(_bit_set(MARK_ACCEPT), action=ACCEPT),
        )),
        _Chain("cali-OUTPUT", (
            _rule(action=_ClearMark(ALL_MARK_BITS)),
            _rule(action=_Jump("cali-to-host-endpoint")),
            _rule(_bit_set(MARK_ACCEPT), action=ACCEPT),
        )),
        _Chain("cali-rpf-skip"),
        *(_Chain(n) for n in empty),
    ))

    mangle = _Table("mangle", (
        _Hook("PREROUTING", (_rule(action=_Jump("cali-PREROUTING")),)),
        _Hook("POSTROUTING", (_rule(action=_Jump("cali-POSTROUTING")),)),
    ), (
        _Chain("cali-PREROUTING", (
            _rule(_CtState(("RELATED", "ESTABLISHED")), action=ACCEPT),
            _rule(_bit_set(MARK_ACCEPT), action=ACCEPT),
            _rule(action=_Jump("cali-from-host-endpoint")),
            _rule(_bit_set(MARK_ACCEPT), action=ACCEPT, comment="Host endpoint policy accepted packet."),
        )),
        _Chain("cali-POSTROUTING", (
            _rule(_bit_set(MARK_ACCEPT), action=RETURN),
            _rule(action=_ClearMark(ALL_MARK_BITS)),
            _rule(_CtDnat(), action=_Jump("cali-to-host-endpoint")),
            _rule(_bit_set(MARK_ACCEPT), action=RETURN, comment="Host endpoint policy accepted packet."),
        )),
        *(_Chain(n) for n in empty),
    ))

    wl_to_host: list[_Rule] = []
    if version == 6:
        # A workload may always do neighbour discovery and MLD with its router.
        wl_to_host += [_rule(_Icmp6Type(t), action=ACCEPT) for t in ICMPV6_ROUTER_TYPES]
    wl_to_host += [_rule(action=_Jump("cali-from-wl-dispatch")),
                   _rule(action=ACCEPT, comment="Configured DefaultEndpointToHostAction")]

    endpoint_chains: list[_Chain] = []
    profiles: dict[str, _Chain] = {}
    for w in wl:
        for inbound in (False, True):
            endpoint_chains += _endpoint_chain(names, w, version, inbound)
            ns_profile, sa_profile = _profiles(w)
            profiles.setdefault(names.profile(inbound, ns_profile),
                                _allow_profile(names.profile(inbound, ns_profile)))
            # A service account profile carries labels only: an empty chain.
            sa_chain = names.profile(inbound, sa_profile)
            profiles.setdefault(sa_chain, _Chain(sa_chain))

    maps: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()
    if spec.mode is Mode.NFTABLES:
        unknown = _rule(action=DROP, comment="Unknown interface")
        dispatch = [
            _Chain(root, (_rule(_Vmap(inbound, root), action=None), unknown))
            for root, inbound in (("cali-from-wl-dispatch", True), ("cali-to-wl-dispatch", False))
        ]
        maps = (
            ("cali-from-wl-dispatch", tuple((w.ifname, names.from_endpoint(w.ifname)) for w in wl)),
            ("cali-to-wl-dispatch", tuple((w.ifname, names.to_endpoint(w.ifname)) for w in wl)),
        )
    else:
        ifnames = [w.ifname for w in wl]
        dispatch = [*_dispatch_tree("cali-from-wl-dispatch", ifnames, True, names.from_endpoint),
                    *_dispatch_tree("cali-to-wl-dispatch", ifnames, False, names.to_endpoint)]

    filter_ = _Table("filter", (
        _Hook("INPUT", (_rule(action=_Jump("cali-INPUT")),)),
        _Hook("FORWARD", (_rule(action=_Jump("cali-FORWARD")),), (
            _rule(_bit_set(MARK_ACCEPT), action=ACCEPT, comment="Policy explicitly accepted packet."),
            # Tells mangle POSTROUTING that this was forwarded, not host, traffic.
            _rule(action=_SetMark(MARK_ACCEPT)),
        )),
        _Hook("OUTPUT", (_rule(action=_Jump("cali-OUTPUT")),)),
    ), (
        _Chain("cali-FORWARD", (
            _rule(action=_ClearMark(ALL_MARK_BITS & ~MARK_ACCEPT)),
            _rule(_bit_clear(MARK_ACCEPT), action=_Jump("cali-from-hep-forward")),
            _rule(any_wl, action=_Jump("cali-from-wl-dispatch")),
            _rule(to_wl, action=_Jump("cali-to-wl-dispatch")),
            _rule(action=_Jump("cali-to-hep-forward")),
            _rule(action=_Jump("cali-cidr-block")),
        )),
        _Chain("cali-INPUT", (
            _rule(any_wl, action=_Jump("cali-wl-to-host", goto=True)),
            _rule(_bit_set(MARK_ACCEPT), action=ACCEPT),
            _rule(action=_ClearMark(ALL_MARK_BITS)),
            _rule(action=_Jump("cali-from-host-endpoint")),
            _rule(_bit_set(MARK_ACCEPT), action=ACCEPT, comment="Host endpoint policy accepted packet."),
        )),
        _Chain("cali-OUTPUT", (
            _rule(_bit_set(MARK_ACCEPT), action=ACCEPT),
            # The host may always talk to its workloads.
            _rule(to_wl, action=RETURN),
            _rule(action=_ClearMark(ALL_MARK_BITS)),
            _rule(_CtDnat(negate=True), action=_Jump("cali-to-host-endpoint")),
            _rule(_bit_set(MARK_ACCEPT), action=ACCEPT, comment="Host endpoint policy accepted packet."),
        )),
        _Chain("cali-wl-to-host", tuple(wl_to_host)),
        *dispatch,
        *endpoint_chains,
        *profiles.values(),
        *(_Chain(n) for n in ("cali-from-hep-forward", "cali-to-hep-forward", "cali-cidr-block", *empty)),
    ))

    pools = [p for p in spec.pools if p.cidr.version == version]
    masq_pools = tuple(p.cidr for p in pools if p.masquerade)
    nat_outgoing: tuple[_Rule, ...] = ()
    if masq_pools:
        nat_outgoing = (_rule(_InSet(True, MASQ_POOLS_SET), _InSet(False, spec.all_pools_set, negate=True),
                              action=_Masquerade()),)
    nat = _Table("nat", (
        _Hook("PREROUTING", (_rule(action=_Jump("cali-PREROUTING")),)),
        # Appended, not inserted: kube-proxy's masquerade must run first.
        _Hook("POSTROUTING", (), (_rule(action=_Jump("cali-POSTROUTING")),)),
        _Hook("OUTPUT", (_rule(action=_Jump("cali-OUTPUT")),)),
    ), (
        _Chain("cali-PREROUTING", (_rule(action=_Jump("cali-fip-dnat")),)),
        _Chain("cali-POSTROUTING", (_rule(action=_Jump("cali-fip-snat")),
                                    _rule(action=_Jump("cali-nat-outgoing")))),
        _Chain("cali-OUTPUT", (_rule(action=_Jump("cali-fip-dnat")),)),
        _Chain("cali-nat-outgoing", nat_outgoing),
        _Chain("cali-fip-dnat"),
        _Chain("cali-fip-snat"),
    ))

    sets = (
        (spec.all_pools_set, tuple(p.cidr for p in pools)),
        (MASQ_POOLS_SET, masq_pools),
    )
    return _Family(version, (raw, mangle, filter_, nat), sets, maps)


def _hashes(chain: str, rules: Sequence[str]) -> list[str]:
    # Each rule's tag depends on its chain, its predecessors and its content, like Felix's.
    out, prev = [], chain
    for text in rules:
        digest = hashlib.sha224(f"{prev}\x00{text}".encode()).digest()
        prev = base64.urlsafe_b64encode(digest).decode()[:16]
        out.append(prev)
    return out


# --- nftables mode -----------------------------------------------------------------------------


def _nft_rule_texts(ctx: _Ctx, chain: str, rules: Sequence[_Rule]) -> list[str]:
    bodies = []
    for r in rules:
        parts = [m.nft(ctx) for m in r.matches]
        if r.action is not None:
            parts += ["counter", r.action.nft(ctx)]
        bodies.append(" ".join(parts))
    out = []
    for body, tag, r in zip(bodies, _hashes(ctx.nft_name(chain), bodies), rules, strict=True):
        text = f"cali:{tag};" + (f" {r.comment}" if r.comment else "")
        out.append(f'{body} comment "{text}"')
    return out


def _nft_chains(fam: _Family) -> dict[str, tuple[tuple[str, str, int] | None, list[str]]]:
    """Full nftables chain name -> (base chain spec or None, rule texts)."""
    chains: dict[str, tuple[tuple[str, str, int] | None, list[str]]] = {}
    for table in fam.tables:
        ctx = _Ctx(fam.version, table.name)
        hooks = {h.chain: h for h in table.hooks}
        for (tname, hook), base in _NFT_BASE_CHAINS.items():
            if tname != table.name:
                continue
            h = hooks.get(hook, _Hook(hook))
            chains[ctx.nft_name(hook)] = (base, _nft_rule_texts(ctx, hook, (*h.inserted, *h.appended)))
        for chain in table.chains:
            chains[ctx.nft_name(chain.name)] = (None, _nft_rule_texts(ctx, chain.name, chain.rules))
    return chains


def _nft_script(old: _Family | None, new: _Family | None, *, recreate: bool = False) -> str:
    """An nft script (one transaction) that takes Felix's table for this family from
    ``old`` to ``new``: chains whose rules differ are flushed and refilled, as Felix does."""
    fam = new or old
    assert fam is not None
    t = f"{'ip' if fam.version == 4 else 'ip6'} {NFT_TABLE}"
    if new is None:
        return f"delete table {t}\n"
    addr_type = "ipv4_addr" if new.version == 4 else "ipv6_addr"
    lines = [f"add table {t}"]
    if recreate:
        # Felix's recovery path: drop the table and rebuild it in the same transaction.
        lines += [f"delete table {t}", f"add table {t}"]
        old = None
    old_chains = _nft_chains(old) if old else {}
    new_chains = _nft_chains(new)
    old_sets = dict(old.sets) if old else {}
    old_maps = dict(old.maps) if old else {}
    for set_id, members in new.sets:
        name = ipset_name(new.version, set_id)
        lines.append(f"add set {t} {name} {{ type {addr_type}; flags interval; }}")
        before = old_sets.get(set_id, ())
        gone = [str(m) for m in before if m not in members]
        added = [str(m) for m in members if m not in before]
        if gone:
            lines.append(f"delete element {t} {name} {{ {', '.join(gone)} }}")
        if added:
            lines.append(f"add element {t} {name} {{ {', '.join(added)} }}")
    for name, _ in new.maps:
        lines.append(f"add map {t} filter-{name} {{ type ifname : verdict; }}")
    for name, (base, _) in new_chains.items():
        if base is None:
            lines.append(f"add chain {t} {name}")
        else:
            ctype, hook, prio = base
            spec = f"type {ctype} hook {hook} priority {prio}; policy accept;"
            lines.append(f"add chain {t} {name} {{ {spec} }}")
    changed_maps = [(n, e) for n, e in new.maps if old_maps.get(n) != e]
    # Map elements go first: they may refer to chains that are about to change or go.
    lines += [f"flush map {t} filter-{n}" for n, _ in changed_maps if n in old_maps]
    for name, (_, rules) in new_chains.items():
        if name in old_chains and old_chains[name][1] == rules:
            continue
        if name in old_chains:
            lines.append(f"flush chain {t} {name}")
        lines += [f"add rule {t} {name} {r}" for r in rules]
    for name, elems in changed_maps:
        if elems:
            body = ", ".join(f'"{ifname}" : goto filter-{chain}' for ifname, chain in elems)
            lines.append(f"add element {t} filter-{name} {{ {body} }}")
    lines += [f"delete chain {t} {name}" for name in old_chains if name not in new_chains]
    return "\n".join(lines) + "\n"


# --- iptables mode ------------------------------------------------------------------------------


def _ipt_rule(ctx: _Ctx, chain: str, rule: _Rule, tag: str) -> str:
    parts = [f'-m comment --comment "cali:{tag}"']
    if rule.comment:
        parts.append(f'-m comment --comment "{rule.comment}"')
    parts += [m.ipt(ctx) for m in rule.matches]
    if rule.action is not None:
        parts.append(rule.action.ipt(ctx))
    return f"{chain} " + " ".join(parts)


def _ipt_bodies(ctx: _Ctx, chain: str, rules: Sequence[_Rule]) -> list[str]:
    plain = [" ".join([*(m.ipt(ctx) for m in r.matches), r.action.ipt(ctx) if r.action else "",
                       r.comment]) for r in rules]
    return [_ipt_rule(ctx, chain, r, tag) for r, tag in zip(rules, _hashes(chain, plain), strict=True)]


def _ipt_hook_rules(ctx: _Ctx, hook: _Hook) -> tuple[list[str], list[str]]:
    rules = _ipt_bodies(ctx, hook.chain, (*hook.inserted, *hook.appended))
    return rules[: len(hook.inserted)], rules[len(hook.inserted):]


def _ipt_script(
    old: _Table | None, new: _Table | None, version: int, *, force: bool = False
) -> str:
    """An iptables-restore --noflush script (one transaction) for one table: forward
    references empty the changed ``cali-`` chains, then their rules are written again."""
    table = new or old
    assert table is not None
    ctx = _Ctx(version, table.name)
    old_chains = {c.name: _ipt_bodies(ctx, c.name, c.rules) for c in old.chains} if old else {}
    new_chains = {c.name: _ipt_bodies(ctx, c.name, c.rules) for c in new.chains} if new else {}
    old_hooks = {h.chain: _ipt_hook_rules(ctx, h) for h in old.hooks} if old else {}
    new_hooks = {h.chain: _ipt_hook_rules(ctx, h) for h in new.hooks} if new else {}
    dirty = [n for n, rules in new_chains.items() if force or old_chains.get(n) != rules]
    gone = [n for n in old_chains if n not in new_chains]
    lines = [f"*{table.name}"]
    lines += [f":{n} - [0:0]" for n in (*dirty, *gone)]
    for chain in sorted(set(old_hooks) | set(new_hooks)):
        before, after = old_hooks.get(chain, ([], [])), new_hooks.get(chain, ([], []))
        if before == after and not force:
            continue
        lines += [f"-D {r}" for r in (*before[0], *before[1])]
        lines += [f"-I {chain} {i} {r.split(' ', 1)[1]}" for i, r in enumerate(after[0], start=1)]
        lines += [f"-A {r}" for r in after[1]]
    for name in dirty:
        lines += [f"-A {r}" for r in new_chains[name]]
    lines += [f"-X {n}" for n in gone]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def _ipset_script(fam: _Family, old: _Family | None, *, force: bool = False) -> str:
    """``ipset restore`` input. As Felix does, a set that exists changes member by
    member; ``force`` rebuilds every set in a temporary set and swaps it in (Felix's
    way of replacing a set it must recreate)."""
    family = "inet" if fam.version == 4 else "inet6"
    old_sets = dict(old.sets) if old else {}
    lines: list[str] = []
    for set_id, members in fam.sets:
        name = ipset_name(fam.version, set_id)
        header = f"hash:net family {family} maxelem {IPSET_MAX_SIZE}"
        if set_id not in old_sets:
            lines.append(f"create {name} {header}")
            lines += [f"add {name} {m}" for m in members]
        elif force:
            temp = f"cali{fam.version}t0"
            lines.append(f"create {temp} {header}")
            lines += [f"add {temp} {m}" for m in members]
            lines += [f"swap {name} {temp}", f"destroy {temp}"]
        else:
            lines += [f"del {name} {m} --exist" for m in old_sets[set_id] if m not in members]
            lines += [f"add {name} {m}" for m in members if m not in old_sets[set_id]]
    return "\n".join(lines) + ("\n" if lines else "")


# --- loading ----------------------------------------------------------------------------------


def _run(netns: str | None, argv: Sequence[str], script: str | None = None) -> str:
    try:
        done = run_command_in_netns(netns, argv, input_text=script)
    except FileNotFoundError as exc:
        raise FelixRulesError(f"{argv[0]} is missing: run scripts/install-system-deps.sh") from exc
    except subprocess.CalledProcessError as exc:
        shown = ""
        if script:
            numbered = [f"{i:4} {line}" for i, line in enumerate(script.splitlines(), start=1)]
            shown = "\n" + "\n".join(numbered[:400])
        raise FelixRulesError(f"{' '.join(argv)} failed ({exc.returncode}): "
                              f"{(exc.stderr or exc.stdout or '').strip()}{shown}") from None
    return done.stdout


def _require(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise FelixRulesError(f"missing {', '.join(missing)}: run scripts/install-system-deps.sh")


def _nft_json(netns: str | None, what: str) -> list[dict[str, Any]] | None:
    try:
        out = run_command_in_netns(netns, ["nft", "-j", "list", *what.split()], check=False)
    except FileNotFoundError as exc:
        raise FelixRulesError("nft is missing: run scripts/install-system-deps.sh") from exc
    if out.returncode != 0:
        return None
    items: list[dict[str, Any]] = json.loads(out.stdout).get("nftables", [])
    return items


def _nft_list(netns: str | None, what: str) -> str:
    out = run_command_in_netns(netns, ["nft", "list", *what.split()], check=False)
    return out.stdout if out.returncode == 0 else ""


@dataclass(eq=False)
class FelixDataplane:
    """Felix's rules for one spec in one namespace (None: the calling thread's).

    Everything it creates is what Felix owns in that mode and nothing else:
    nftables mode, the tables ``ip calico`` and ``ip6 calico``; iptables mode,
    the ``cali-`` chains, the "cali:" tagged rules in the built-in chains, the
    ``cali4*``/``cali6*`` ipsets and (variant) the FORWARD policy.
    """

    spec: FelixSpec
    netns: str | None = None
    _installed: bool = field(default=False, repr=False)

    @property
    def mode(self) -> Mode:
        return self.spec.mode

    @property
    def _where(self) -> str:
        return self.netns or "this namespace"

    def _families(self, spec: FelixSpec | None = None) -> list[_Family]:
        return [_build(spec or self.spec, v) for v in (4, 6)]

    def install(self) -> None:
        """Load the whole ruleset. Raises FelixRulesError if Felix's objects already exist."""
        if self.mode is Mode.NFTABLES:
            _require("nft")
            for fam in self._families():
                name = f"{'ip' if fam.version == 4 else 'ip6'} {NFT_TABLE}"
                if _nft_json(self.netns, f"table {name}") is not None:
                    raise FelixRulesError(f"table {name} already exists in {self._where}")
                _run(self.netns, ["nft", "-f", "-"], _nft_script(None, fam))
        else:
            _require("iptables-nft-restore", "ip6tables-nft-restore", "ipset")
            if self._ipt_chains() or self._cali_ipsets():
                raise FelixRulesError(f"cali- chains or ipsets already exist in {self._where}")
            for fam in self._families():
                _run(self.netns, ["ipset", "restore"], _ipset_script(fam, None))
                restore = IPTABLES_TOOLS[fam.version][0]
                for table in fam.tables:
                    _run(self.netns, [restore, "--noflush"], _ipt_script(None, table, fam.version))
                if self.spec.forward_policy == "drop":
                    cli = IPTABLES_TOOLS[fam.version][2]
                    _run(self.netns, [cli, "-t", "filter", "-P", "FORWARD", "DROP"])
        self._installed = True

    def update(self, spec: FelixSpec) -> None:
        """Move to ``spec`` the way Felix applies an update: only chains, sets and maps
        that differ are rewritten, each family's tables in one transaction."""
        if spec.mode is not self.mode or spec.forward_policy != self.spec.forward_policy:
            raise ValueError("update cannot change the mode or the FORWARD policy")
        for old, new in zip(self._families(), self._families(spec), strict=True):
            if self.mode is Mode.NFTABLES:
                _run(self.netns, ["nft", "-f", "-"], _nft_script(old, new))
            else:
                script = _ipset_script(new, old)
                if script:
                    _run(self.netns, ["ipset", "restore"], script)
                restore = IPTABLES_TOOLS[new.version][0]
                for old_t, new_t in zip(old.tables, new.tables, strict=True):
                    if old_t != new_t:
                        _run(self.netns, [restore, "--noflush"], _ipt_script(old_t, new_t, new.version))
        self.spec = spec

    def set_egress_policy(self, ifname: str, policy: EgressPolicy) -> None:
        """Give workload ``ifname`` a new egress policy (e.g. ``deny_egress_to(cidr)``)."""
        self.update(self.spec.with_egress(ifname, policy))

    def resync(self, *, recreate: bool = False) -> None:
        """Rewrite everything as Felix's periodic resync does when it finds its state off.

        nftables mode: one transaction per family that flushes every chain and set
        and writes them again, or with ``recreate`` deletes and rebuilds the whole
        table. iptables mode: per table, one iptables-restore that empties every
        ``cali-`` chain, takes its hook rules out of the built-in chains and puts
        everything back; the ipsets are rebuilt and swapped in.
        """
        for fam in self._families():
            if self.mode is Mode.NFTABLES:
                script = _nft_script(fam, fam, recreate=recreate)
                if not recreate:
                    script = _nft_force_refill(script, fam)
                _run(self.netns, ["nft", "-f", "-"], script)
            else:
                _run(self.netns, ["ipset", "restore"], _ipset_script(fam, fam, force=True))
                restore = IPTABLES_TOOLS[fam.version][0]
                for table in fam.tables:
                    script = _ipt_script(table, table, fam.version, force=True)
                    _run(self.netns, [restore, "--noflush"], script)

    def remove(self) -> None:
        """Remove everything Felix owns in this mode; see ``remove_felix_rules``."""
        remove_felix_rules(self.mode, self.netns, restore_forward_policy=self.spec.forward_policy == "drop")
        self._installed = False

    def snapshot(self) -> dict[str, str]:
        """The kernel's text of every table (and ipset) Felix owns in this mode, by name."""
        return felix_snapshot(self.mode, self.netns)

    def _ipt_chains(self) -> list[str]:
        found = []
        for v in (4, 6):
            for table in TABLES:
                text = _run(self.netns, [IPTABLES_TOOLS[v][1], "-t", table])
                found += [line[1:].split()[0] for line in text.splitlines() if line.startswith(":cali-")]
        return found

    def _cali_ipsets(self) -> list[str]:
        return _cali_ipsets(self.netns)

    def __enter__(self) -> FelixDataplane:
        if not self._installed:
            self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def _nft_force_refill(script: str, fam: _Family) -> str:
    """Turn a no-change script into Felix's full rewrite: every chain flushed and refilled,
    every set and map emptied and refilled."""
    t = f"{'ip' if fam.version == 4 else 'ip6'} {NFT_TABLE}"
    lines = [line for line in script.splitlines() if line.startswith(("add table", "add set", "add map",
                                                                       "add chain"))]
    for set_id, members in fam.sets:
        name = ipset_name(fam.version, set_id)
        lines.append(f"flush set {t} {name}")
        if members:
            lines.append(f"add element {t} {name} {{ {', '.join(str(m) for m in members)} }}")
    lines += [f"flush map {t} filter-{name}" for name, _ in fam.maps]
    for name, (_, rules) in _nft_chains(fam).items():
        lines.append(f"flush chain {t} {name}")
        lines += [f"add rule {t} {name} {r}" for r in rules]
    for name, elems in fam.maps:
        if elems:
            body = ", ".join(f'"{ifname}" : goto filter-{chain}' for ifname, chain in elems)
            lines.append(f"add element {t} filter-{name} {{ {body} }}")
    return "\n".join(lines) + "\n"


def _cali_ipsets(netns: str | None) -> list[str]:
    if shutil.which("ipset") is None:
        return []
    out = _run(netns, ["ipset", "list", "-n"])
    return sorted(n for n in out.split() if n.startswith(("cali4", "cali6")))


def felix_snapshot(mode: Mode, netns: str | None = None) -> dict[str, str]:
    """Text of everything Felix owns in ``mode`` in ``netns``, keyed by table (or "ipsets").

    iptables mode lists each table twice, as nft and as iptables-nft-save show it.

    Absent tables map to "". Two snapshots compare equal exactly when nothing of
    Felix's changed, byte for byte (rule counters included; ipsets are listed
    without their random hash seed, members sorted).
    """
    if mode is Mode.NFTABLES:
        return {f"{fam} {NFT_TABLE}": _nft_list(netns, f"table {fam} {NFT_TABLE}") for fam in ("ip", "ip6")}
    snap = {}
    for version, fam in ((4, "ip"), (6, "ip6")):
        for table in TABLES:
            listed = _nft_list(netns, f"table {fam} {table}")
            snap[f"{fam} {table}"] = listed
            # nft shows iptables-nft's xt matches (comments, sets) only by name; the
            # save tool shows them in full (and an empty skeleton for an absent table).
            saved = _run(netns, [IPTABLES_TOOLS[version][1], "-t", table]).splitlines() if listed else []
            snap[f"{fam} {table} (iptables-save)"] = "".join(
                line + "\n" for line in saved if not line.startswith("#"))
    sets = []
    for name in _cali_ipsets(netns):
        header, *members = _run(netns, ["ipset", "save", name]).splitlines()
        # A rebuilt set gets a fresh random hash seed, which also reorders its
        # listing; neither is content.
        sets += [re.sub(r" initval 0x[0-9a-f]+", "", header), *sorted(members)]
    snap["ipsets"] = "".join(line + "\n" for line in sets)
    return snap


def remove_felix_rules(mode: Mode, netns: str | None = None, *, restore_forward_policy: bool = False) -> None:
    """Remove whatever Felix-style rules of ``mode`` exist in ``netns`` (also leftovers of a
    crashed test); doing nothing when there are none.

    nftables mode deletes ``ip calico`` and ``ip6 calico``. iptables mode deletes the
    "cali:" tagged rules from the built-in chains, the ``cali-`` chains and the
    ``cali4*``/``cali6*`` ipsets; ``restore_forward_policy`` sets FORWARD back to
    ACCEPT. An iptables-nft table left with no rules, no chains of its own and only
    ACCEPT policies is deleted too: it filters nothing, and iptables-nft makes it
    again when next used, so the namespace ends as it was before ``install``.
    """
    if mode is Mode.NFTABLES:
        for fam in ("ip", "ip6"):
            if _nft_json(netns, f"table {fam} {NFT_TABLE}") is not None:
                _run(netns, ["nft", "delete", "table", fam, NFT_TABLE])
        return
    for version in (4, 6):
        restore, save, cli = IPTABLES_TOOLS[version]
        if restore_forward_policy:
            _run(netns, [cli, "-t", "filter", "-P", "FORWARD", "ACCEPT"])
        for table in TABLES:
            text = _run(netns, [save, "-t", table])
            ours = [line[1:].split()[0] for line in text.splitlines() if line.startswith(":cali-")]
            hooks = [line for line in text.splitlines() if line.startswith("-A ") and '"cali:' in line
                     and not line.split()[1].startswith(CHAIN_PREFIX)]
            if not ours and not hooks:
                continue
            script = [f"*{table}", *(f"-D {line[3:]}" for line in hooks), *(f"-F {c}" for c in ours),
                      *(f"-X {c}" for c in ours), "COMMIT"]
            _run(netns, [restore, "--noflush"], "\n".join(script) + "\n")
    for name in _cali_ipsets(netns):
        _run(netns, ["ipset", "destroy", name])
    for fam in ("ip", "ip6"):
        for table in TABLES:
            items = _nft_json(netns, f"table {fam} {table}")
            if items is not None and _is_idle_iptables_table(items):
                _run(netns, ["nft", "delete", "table", fam, table])


def _is_idle_iptables_table(items: Iterable[dict[str, Any]]) -> bool:
    for item in items:
        if "rule" in item or "set" in item or "map" in item:
            return False
        chain = item.get("chain")
        if chain is not None and (chain.get("hook") is None or chain.get("policy", "accept") != "accept"):
            return False
    return True


@contextmanager
def felix_dataplane(spec: FelixSpec, netns: str | None = None) -> Iterator[FelixDataplane]:
    """Install ``spec`` in ``netns`` for the ``with`` block and always remove it afterwards."""
    dataplane = FelixDataplane(spec, netns)
    dataplane.install()
    try:
        yield dataplane
    finally:
        dataplane.remove()
