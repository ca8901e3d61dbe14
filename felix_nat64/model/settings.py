"""NAT64 settings: what operators set, how it is read from Felix, validation.

Felix forwards every configuration key it does not know itself in
`ConfigUpdate`, whatever its source: `FELIX_NAT64...` environment variables
(lower-cased by Felix), the config file, and `config.projectcalico.org/NAT64...`
annotations on FelixConfiguration `node.<name>` and `default`. Only keys that
were set arrive, so the defaults live here.

A set of settings is accepted or rejected as a whole: one bad value keeps the
last good settings in force, so a typo never half-applies a change.
"""

from __future__ import annotations

import difflib
import ipaddress
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from felix_nat64.model import addressing, special_ipv4
from felix_nat64.model import ownership as own
from felix_nat64.model import values as v


class ConfigSourceView(Protocol):
    """One of Felix's configuration sources: its name and its raw values."""

    @property
    def name(self) -> str: ...

    @property
    def config(self) -> Mapping[str, str]: ...


class ConfigView(Protocol):
    """What settings are read from: Felix's resolved map and, when sent, each source's."""

    @property
    def config(self) -> Mapping[str, str]: ...

    @property
    def sources(self) -> Sequence[ConfigSourceView]: ...


# RFC 6146 section 4 and RFC 5382 REQ-5; Jool itself refuses anything shorter
# than its own minimums (TCP established 2 h, transitory 4 min, UDP 2 min).
DEFAULT_TCP_ESTABLISHED = 2 * 3600 + 4 * 60
DEFAULT_TCP_TRANSITORY = 4 * 60
DEFAULT_UDP = 5 * 60
DEFAULT_ICMP = 60

# kube-proxy's masquerade mark is one bit, `--iptables-masquerade-bit` (default
# 14, i.e. 0x4000); the kubelet's `--iptables-drop-bit` defaults to 15 (0x8000).
DEFAULT_KUBE_PROXY_MASQUERADE_BIT = 14
KUBELET_DROP_MARK = 0x8000
# Felix's default route tables when neither RouteTableRanges nor RouteTableRange
# is set (clientv3.DefaultFelixRouteTableRangeMin/Max, v3.26 to master).
DEFAULT_FELIX_ROUTE_TABLES: tuple[tuple[int, int], ...] = ((1, 250),)

JOOL_MAX_TIMEOUT = 0xFFFFFFFF // 1000  # Jool carries timeouts as u32 milliseconds

IPv4Net = ipaddress.IPv4Network
IPv6Net = ipaddress.IPv6Network
LINK_LOCAL4 = IPv4Net("169.254.0.0/16")
# Addresses inside 169.254.0.0/16 that NAT64Pool4CIDR must leave alone.
POOL4_FORBIDDEN = (
    (ipaddress.IPv4Address("169.254.169.254"), "the cloud metadata service"),
    (ipaddress.IPv4Address("169.254.1.1"), "Calico's gateway address for pods"),
)
# IPv6 ranges that can never be a NAT64 prefix, and why.
NOT_A_PREFIX = (
    (IPv6Net("ff00::/8"), "multicast (RFC 4291 section 2.7)"),
    (IPv6Net("fe80::/10"), "link-local (RFC 4291 section 2.5.6)"),
    (IPv6Net("::/96"), "IPv4-compatible, loopback or unspecified (RFC 4291 section 2.5.5.1)"),
    (IPv6Net("::ffff:0:0/96"), "IPv4-mapped (RFC 4291 section 2.5.5.2)"),
)
# Non-link-local addresses of cloud platform services (metadata, wire
# server) that pods must not reach with the node's address: Azure's
# WireServer (learn.microsoft.com, "What is IP address 168.63.129.16?"),
# Alibaba Cloud's metadata service (alibabacloud.com blog 594351 "Alibaba
# Cloud ECS Metadata, User Data, and Dynamic Data"; cloud-init's AliYun
# datasource), BytePlus/Volcengine's metadata service (docs.byteplus.com,
# "Viewing instance metadata"). AWS, GCP, Azure IMDS, Oracle, OpenStack and
# Tencent Cloud use link-local addresses, refused behind every prefix anyway.
DEFAULT_REFUSED_CIDRS = (IPv4Net("168.63.129.16/32"), IPv4Net("100.100.100.200/32"),
                         IPv4Net("100.96.0.96/32"))


@dataclass(frozen=True)
class Settings:
    """Validated felix-nat64 settings (every field has its default)."""

    enabled: bool = True
    prefixes: tuple[ipaddress.IPv6Network, ...] = ()
    snat_address: ipaddress.IPv4Address | None = None
    source_cidrs: tuple[ipaddress.IPv6Network, ...] | None = None
    port_range: v.PortRange | None = None
    pool4_ports: v.PortRange = v.PortRange(1024, 65535)
    mtu: int | None = None
    tcp_established_timeout: float = DEFAULT_TCP_ESTABLISHED
    tcp_transitory_timeout: float = DEFAULT_TCP_TRANSITORY
    udp_timeout: float = DEFAULT_UDP
    icmp_timeout: float = DEFAULT_ICMP
    pool4_cidr: ipaddress.IPv4Network = own.DEFAULT_POOL4_CIDR
    refused_cidrs: tuple[ipaddress.IPv4Network, ...] = DEFAULT_REFUSED_CIDRS
    firewall_mark: int = own.DEFAULT_FIREWALL_MARK
    routing_table: int = own.DEFAULT_ROUTING_TABLE
    rule_priority: int = own.DEFAULT_RULE_PRIORITY
    resync_interval: float = 30.0
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9096
    log_format: str = "keyvalue"
    log_level: str = "info"
    # Read from Felix's own parameters.
    hostname: str = ""
    interface_prefixes: tuple[str, ...] = ("cali",)
    felix_mark_mask: int = 0xFFFF0000
    felix_nft_mark_mask: int = 0xFFFF0000
    # "" when not set: Felix's default is Disabled up to v3.31 and Auto from v3.32.
    felix_nftables_mode: str = ""
    felix_route_table_ranges: tuple[tuple[int, int], ...] | None = None
    felix_route_table_range: tuple[int, int] | None = None
    felix_bpf_enabled: bool = False
    kube_proxy_masquerade_bit: int = DEFAULT_KUBE_PROXY_MASQUERADE_BIT

    @property
    def active(self) -> bool:
        """NAT64 is wanted: enabled and at least one prefix."""
        return self.enabled and bool(self.prefixes)


@dataclass(frozen=True)
class SettingSpec:
    """One setting: its key, where it lands in `Settings`, how to parse it."""

    key: str
    attr: str
    parse: Callable[[str], Any]
    help: str
    example: str
    felix_owned: bool = False  # a Felix parameter we read, not one of ours


def _prefixes(text: str) -> tuple[ipaddress.IPv6Network, ...]:
    items = v.split_list(text)
    nets: list[ipaddress.IPv6Network] = []
    for item in items:
        net = v.parse_ipv6_network(item)
        if net.prefixlen < 96:
            raise ValueError(
                f"{net} is shorter than /96: a NAT64 prefix must be /96 to /128 "
                "(the IPv4 address sits in its low 32 bits)"
            )
        _check_prefix(net)
        nets.append(net)
    nets.sort()
    _check_disjoint(nets, "destination")
    return tuple(nets)


def _check_prefix(net: IPv6Net) -> None:
    """Raises for a /96-or-longer range that cannot hold IPv4-embedded addresses."""
    for reserved, what in NOT_A_PREFIX:
        if net.subnet_of(reserved):
            raise ValueError(f"{net} is {what}: not usable as a NAT64 prefix")
    if (int(net.network_address) >> 56) & 0xFF:
        raise ValueError(f"{net} has a non-zero u octet (bits 64-71), which RFC 6052 section 2.2 requires "
                         "to be zero; pick a prefix whose 9th byte is 0")
    if special_ipv4.is_well_known(net):
        reachable = special_ipv4.reachable_behind(net)
        if not reachable:
            raise ValueError(f"{net} lies in the Well-Known Prefix 64:ff9b::/96 but only covers IPv4 "
                             "addresses "
                             "that are not globally reachable, which RFC 6052 section 3.1 forbids behind it: "
                             "every destination would be refused; use 64:ff9b::/96 or a network-specific "
                             "prefix")


def _check_disjoint(nets: list[ipaddress.IPv6Network], what: str) -> None:
    """Raises on duplicates or overlaps; `nets` sorted. CIDRs nest or are
    disjoint, so comparing each with the widest one still open suffices."""
    widest: ipaddress.IPv6Network | None = None
    for net in nets:
        if widest is not None and net.overlaps(widest):
            if net == widest:
                raise ValueError(f"{net} is listed twice")
            raise ValueError(f"{widest} and {net} overlap: list each {what} range once")
        if widest is None or int(net.broadcast_address) > int(widest.broadcast_address):
            widest = net


def _source_cidrs(text: str) -> tuple[ipaddress.IPv6Network, ...]:
    items = v.split_list(text)
    if not items:
        raise ValueError("empty list: leave the setting unset to use every IPv6 IP pool")
    nets = sorted(v.parse_ipv6_network(item) for item in items)
    _check_disjoint(nets, "source")
    return tuple(nets)


def _mtu(text: str) -> int:
    return v.parse_int(text, 1280, 65535)


def _timeout(minimum: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        seconds = v.parse_duration(text)
        if seconds < minimum:
            raise ValueError(
                f"{v.format_duration(seconds)} is below the minimum of {v.format_duration(minimum)}"
            )
        if seconds > JOOL_MAX_TIMEOUT:
            raise ValueError(f"{v.format_duration(seconds)} is above the maximum of "
                             f"{v.format_duration(JOOL_MAX_TIMEOUT)}")
        return seconds

    return parse


def _interval(text: str) -> float:
    seconds = v.parse_duration(text)
    if not 1 <= seconds <= 3600:
        raise ValueError("expected a duration from 1s to 1h")
    return seconds


def _pool4(text: str) -> ipaddress.IPv4Network:
    net = v.parse_ipv4_network(text.strip())
    if net.prefixlen > 28:
        raise ValueError(f"{net} is too small: at least a /28 is needed (one /28 per translator)")
    if net.is_multicast or net.is_loopback or net.network_address.packed[0] in (0, 255):
        raise ValueError(f"{net} is not a usable unicast range")
    if net.prefixlen < 16:
        raise ValueError(f"{net} is too large: a /16 at most (it is carved into one /28 per translator)")
    for address, what in POOL4_FORBIDDEN:
        if address in net:
            raise ValueError(f"{net} contains {address}, {what}; pick a range without it, e.g. "
                             "169.254.64.0/24")
    return net


def _refused_cidrs(text: str) -> tuple[ipaddress.IPv4Network, ...]:
    nets = sorted({v.parse_ipv4_network(item) for item in v.split_list(text)})
    return tuple(ipaddress.collapse_addresses(nets))


def _mark(text: str) -> int:
    return v.parse_int(text, 1, 0xFFFFFFFF)


def _table(text: str) -> int:
    table = v.parse_int(text, 1, 0xFFFFFFFF)
    if table in (253, 254, 255):
        raise ValueError(f"{table} is one of the kernel's own tables (default, main, local)")
    return table


def _priority(text: str) -> int:
    prio = v.parse_int(text, 1, 32765)
    return prio


def _port(text: str) -> int:
    port = v.parse_int(text, 0, 65535)
    if port in (9091, 9093, 9094, 9098, 9099):
        raise ValueError(f"port {port} is used by Calico; pick another (0 disables)")
    return port


def _host(text: str) -> str:
    host = text.strip()
    if host.lower() in ("", "localhost"):
        return "127.0.0.1"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError("expected an IP address to listen on, e.g. 127.0.0.1 or 0.0.0.0") from None
    return host


def _choice(*options: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in options:
            raise ValueError(f"expected one of: {', '.join(options)}")
        return value

    return parse


def _hostname(text: str) -> str:
    name = text.strip()
    if not name:
        raise ValueError("empty hostname")
    return name


def _iface_prefixes(text: str) -> tuple[str, ...]:
    items = tuple(v.split_list(text))
    if not items:
        raise ValueError("empty interface prefix list")
    for item in items:
        if len(item) > 14 or not item.isprintable() or any(c in item for c in '*"/'):
            raise ValueError(f"{item!r} is not a valid interface name prefix")
        # Felix matches workload interfaces by name prefix: such a prefix would
        # make it (and our steering rule) take the translator links for pods.
        if own.LINK_PREFIX.startswith(item) or item.startswith(own.LINK_PREFIX):
            raise ValueError(f"{item!r} matches felix-nat64's own translator links "
                             f"({own.LINK_PREFIX}<id>); Felix would treat them as workload interfaces")
    return items


def _felix_bool(text: str) -> bool:
    """A boolean as Felix reads it (config BoolParam: true, 1, yes, y, t); Felix
    replaces an invalid value by the default, false, so it is false here too."""
    return text.strip().lower() in ("true", "1", "yes", "y", "t")


def _nftables_mode(text: str) -> str:
    """Felix's NFTablesMode; an unknown value means Felix's default (unknown here)."""
    mode = text.strip().lower()
    return mode if mode in ("enabled", "disabled", "auto") else ""


def _table_range(text: str) -> tuple[int, int]:
    first, sep, last = text.strip().partition("-")
    if not sep:
        raise ValueError(f"{text.strip()!r} is not a range of route tables like 1-250")
    low = v.parse_int(first, 1, 0xFFFFFFFF)
    high = v.parse_int(last, 1, 0xFFFFFFFF)
    if low > high:
        raise ValueError(f"{low}-{high}: the first table is above the last")
    return low, high


def _table_ranges(text: str) -> tuple[tuple[int, int], ...]:
    ranges = tuple(_table_range(item) for item in v.split_list(text))
    if not ranges:
        raise ValueError("empty list of route table ranges")
    return ranges


def _masquerade_bit(text: str) -> int:
    return v.parse_int(text, 0, 31)


SPECS: tuple[SettingSpec, ...] = (
    SettingSpec("NAT64Prefixes", "prefixes", _prefixes,
                "IPv6 prefixes (/96 to /128) whose destinations are translated to the IPv4 "
                "address in their low 32 bits. Empty or unset: NAT64 is off.",
                "64:ff9b::/96,2001:db8:64::/96"),
    SettingSpec("NAT64Enabled", "enabled", v.parse_bool,
                "Turns NAT64 off (false) without removing the prefixes.", "false"),
    SettingSpec("NAT64SNATAddress", "snat_address", v.parse_ipv4_address,
                "IPv4 source address for translated traffic: one of this node's own, so set "
                "it per node (FelixConfiguration node.<name>), never globally, or every node's "
                "replies go to one node. Unset: masquerade to the address of the interface "
                "the traffic leaves by.", "192.0.2.10"),
    SettingSpec("NAT64SourceCIDRs", "source_cidrs", _source_cidrs,
                "IPv6 sources allowed to use NAT64. Unset: every IPv6 IP pool (minus pools "
                "inside a NAT64 prefix).", "fd00:10:244::/56"),
    SettingSpec("NAT64PortRange", "port_range", v.parse_port_range,
                "TCP and UDP source ports for the IPv4 leg after SNAT/masquerade. "
                "Unset: the kernel's choice.",
                "32768-65535"),
    SettingSpec("NAT64Pool4PortRange", "pool4_ports", v.parse_port_range,
                "TCP/UDP ports each translator address hands out (Jool's pool4); with the 8 "
                "addresses per translator this caps concurrent pod transport addresses per protocol.",
                "1024-65535"),
    SettingSpec("NAT64MTU", "mtu", _mtu,
                "MTU of the translator links (1280-65535). Unset: the "
                "pod network MTU Felix wrote to its MTU file, else 1500.", "1450"),
    SettingSpec("NAT64TCPEstablishedTimeout", "tcp_established_timeout",
                _timeout(2 * 3600), "Idle timeout of established TCP sessions (min 2h).", "2h4m"),
    SettingSpec("NAT64TCPTransitoryTimeout", "tcp_transitory_timeout",
                _timeout(4 * 60), "Timeout of TCP sessions opening or closing (min 4m).", "4m"),
    SettingSpec("NAT64UDPTimeout", "udp_timeout", _timeout(2 * 60),
                "Idle timeout of UDP sessions (min 2m).", "5m"),
    SettingSpec("NAT64ICMPTimeout", "icmp_timeout", _timeout(1),
                "Idle timeout of ICMP query sessions (min 1s).", "60s"),
    SettingSpec("NAT64Pool4CIDR", "pool4_cidr", _pool4,
                "Node-internal IPv4 range for the translators' links and pool4 (one /28 per "
                "translator; never leaves the node unmasqueraded). Should lie in 169.254.0.0/16; must "
                "not hold 169.254.169.254 or 169.254.1.1, nor overlap Calico IP pools, service CIDRs or "
                "node addresses.", "169.254.64.0/24"),
    SettingSpec("NAT64RefusedCIDRs", "refused_cidrs", _refused_cidrs,
                "IPv4 destinations refused behind every prefix, on top of the fixed ones (loopback, "
                "link-local, multicast, node addresses...). Setting it replaces the default, which "
                "covers cloud platform services outside 169.254.0.0/16; empty: none.",
                "168.63.129.16/32,100.100.100.200/32,203.0.113.0/24"),
    SettingSpec("NAT64FirewallMark", "firewall_mark", _mark,
                "Packet mark bits used to steer pod traffic to the translators; must not overlap "
                "Felix's IptablesMarkMask/NftablesMarkMask, kube-proxy's masquerade bit or the "
                "kubelet's drop bit 0x8000.", "0x1000"),
    SettingSpec("NAT64KubeProxyMasqueradeBit", "kube_proxy_masquerade_bit", _masquerade_bit,
                "kube-proxy's --iptables-masquerade-bit (0-31); NAT64FirewallMark must not use it.",
                "14"),
    SettingSpec("NAT64RoutingTable", "routing_table", _table,
                "Routing table holding the routes into the translators.", "6464"),
    SettingSpec("NAT64RoutingRulePriority", "rule_priority", _priority,
                "Priority of the fwmark routing rule.", "96"),
    SettingSpec("NAT64ResyncInterval", "resync_interval", _interval,
                "How often the kernel state is re-read and repaired (1s-1h).", "30s"),
    SettingSpec("NAT64MetricsHost", "metrics_host", _host,
                "Address the health and metrics server listens on.", "127.0.0.1"),
    SettingSpec("NAT64MetricsPort", "metrics_port", _port,
                "Port of the health and metrics server (0: off).", "9096"),
    SettingSpec("NAT64LogFormat", "log_format", _choice("keyvalue", "json"),
                "Log line format: keyvalue or json.", "json"),
    SettingSpec("NAT64LogLevel", "log_level", _choice("debug", "info", "warning", "error"),
                "Log level.", "info"),
    SettingSpec("FelixHostname", "hostname", _hostname,
                "Felix's node name (Felix parameter).", "node-1", felix_owned=True),
    SettingSpec("InterfacePrefix", "interface_prefixes", _iface_prefixes,
                "Workload interface name prefixes (Felix parameter).", "cali", felix_owned=True),
    SettingSpec("IptablesMarkMask", "felix_mark_mask", lambda t: v.parse_int(t, 0, 0xFFFFFFFF),
                "Felix's mark bits (Felix parameter).", "0xffff0000", felix_owned=True),
    SettingSpec("NftablesMarkMask", "felix_nft_mark_mask", lambda t: v.parse_int(t, 0, 0xFFFFFFFF),
                "Felix's mark bits in nftables mode (Felix parameter, v3.29+).", "0xffff0000",
                felix_owned=True),
    SettingSpec("NFTablesMode", "felix_nftables_mode", _nftables_mode,
                "Felix's nftables mode, which picks the mark mask in force (Felix parameter, "
                "v3.29+). Unset: both masks are checked.", "Enabled", felix_owned=True),
    SettingSpec("RouteTableRanges", "felix_route_table_ranges", _table_ranges,
                "Route tables Felix owns (Felix parameter); NAT64RoutingTable must be outside. "
                "Unset: RouteTableRange, else 1-250.", "1-250", felix_owned=True),
    SettingSpec("RouteTableRange", "felix_route_table_range", _table_range,
                "Felix's deprecated single route table range (Felix parameter).", "1-250",
                felix_owned=True),
    SettingSpec("BPFEnabled", "felix_bpf_enabled", _felix_bool,
                "Felix's eBPF dataplane (Felix parameter). felix-nat64 does not support it: with "
                "true it programs nothing and stays not ready.", "false", felix_owned=True),
)

SPECS_BY_LOWER: Mapping[str, SettingSpec] = {spec.key.lower(): spec for spec in SPECS}
OUR_PREFIX = "nat64"
MAX_SUGGESTIONS = 20


@dataclass(frozen=True)
class SettingError:
    """A value that was rejected, and why."""

    key: str
    value: str
    reason: str
    source: str = ""

    def __str__(self) -> str:
        where = f" (from {self.source})" if self.source else ""
        return f"{self.key}={self.value!r}{where}: {self.reason}"


@dataclass(frozen=True)
class SettingOrigin:
    """Where the value in force for a setting came from."""

    key: str
    raw_key: str
    value: str
    source: str


@dataclass(frozen=True)
class SettingsResult:
    """The outcome of reading one ConfigUpdate."""

    settings: Settings | None  # None when any value was rejected
    errors: tuple[SettingError, ...]
    origins: Mapping[str, SettingOrigin] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.settings is not None


# Felix's source names, highest priority first (config_params.go Source.String).
_SOURCE_RANKS: tuple[tuple[str, int], ...] = (
    ("internal override", 60),
    ("environment variable", 50),
    ("config file", 40),
    ("per-host", 30),
    ("selector", 20),
    ("global", 10),
    ("<default>", 0),
)


def source_rank(name: str) -> int:
    """Felix's precedence of a config source, from its name."""
    lowered = name.lower()
    for needle, rank in _SOURCE_RANKS:
        if needle in lowered:
            return rank
    return -1


def _ours(lower_key: str) -> bool:
    """Keys felix-nat64 reads (Felix's other parameters are Felix's business)."""
    return lower_key in SPECS_BY_LOWER or lower_key.startswith(OUR_PREFIX)


def _candidates(update: ConfigView) -> tuple[dict[str, SettingOrigin], list[SettingError]]:
    """The winning raw value per lower-cased key, following Felix's precedence."""
    errors: list[SettingError] = []
    winners: dict[str, tuple[int, SettingOrigin]] = {}
    if update.sources:
        # Per-source maps keep each key's original spelling and tell us where
        # the value came from; Felix's resolved map is only their merge.
        for src in update.sources:
            rank = source_rank(src.name)
            seen: dict[str, SettingOrigin] = {}
            for raw_key, value in src.config.items():
                lower = raw_key.lower()
                origin = SettingOrigin(lower, raw_key, value, src.name)
                prior = seen.get(lower)
                if prior is not None and prior.value != value and _ours(lower):
                    errors.append(SettingError(
                        raw_key, value,
                        f"also set as {prior.raw_key}={prior.value!r} in the same source; "
                        "set it once", src.name))
                seen[lower] = origin
            for lower, origin in seen.items():
                best = winners.get(lower)
                if best is None or rank > best[0]:
                    winners[lower] = (rank, origin)
    result = {lower: pair[1] for lower, pair in winners.items()}
    resolved_only: dict[str, SettingOrigin] = {}
    for raw_key, value in update.config.items():
        lower = raw_key.lower()
        if lower in result:
            continue
        # No per-source data for this key: case variants must agree.
        prior = resolved_only.get(lower)
        if prior is not None and prior.value != value and _ours(lower):
            errors.append(SettingError(raw_key, value,
                                       f"also set as {prior.raw_key}={prior.value!r}; set it once"))
        resolved_only[lower] = SettingOrigin(lower, raw_key, value, "")
    result.update(resolved_only)
    return result, errors


def resolve_settings(update: ConfigView, default_hostname: str | None = None) -> SettingsResult:
    """Reads and validates every felix-nat64 setting in Felix's configuration.

    Never raises on bad input: each rejected value becomes a SettingError.
    """
    candidates, errors = _candidates(update)
    origins: dict[str, SettingOrigin] = {}
    changes: dict[str, Any] = {}
    warnings: list[str] = []
    for lower, origin in sorted(candidates.items()):
        spec = SPECS_BY_LOWER.get(lower)
        if spec is None:
            if lower.startswith(OUR_PREFIX):
                # Suggestions cost a fuzzy match each: enough for typos, not for floods.
                close = difflib.get_close_matches(lower, list(SPECS_BY_LOWER), n=1) \
                    if len(errors) < MAX_SUGGESTIONS else []
                hint = f"; did you mean {SPECS_BY_LOWER[close[0]].key}?" if close else ""
                errors.append(SettingError(origin.raw_key, origin.value,
                                           f"unknown felix-nat64 setting{hint}", origin.source))
            continue
        # Felix's 'none' forces a zero value; for optional settings that means unset.
        if origin.value.strip().lower() == "none" and spec.attr in _OPTIONAL_ATTRS:
            origins[spec.key] = SettingOrigin(spec.key, origin.raw_key, origin.value, origin.source)
            continue
        try:
            changes[spec.attr] = spec.parse(origin.value)
        except ValueError as exc:
            errors.append(SettingError(spec.key, origin.value, str(exc), origin.source))
            continue
        origins[spec.key] = SettingOrigin(spec.key, origin.raw_key, origin.value, origin.source)
    if "hostname" not in changes:
        changes["hostname"] = default_hostname if default_hostname is not None else socket.gethostname()
    settings = replace(Settings(), **changes)
    errors.extend(_cross_check(settings, origins))
    errors.extend(_felix_cross_check(settings, origins))
    if settings.enabled and not settings.prefixes and "NAT64Enabled" in origins:
        warnings.append("NAT64Enabled is set but NAT64Prefixes is empty: NAT64 stays off")
    if not settings.pool4_cidr.subnet_of(LINK_LOCAL4):
        warnings.append(f"NAT64Pool4CIDR {settings.pool4_cidr} is outside 169.254.0.0/16: make sure nothing "
                        "on or beyond the node uses it (the node routes it to the translators, and refuses "
                        "what no translator holds)")
    if errors:
        return SettingsResult(None, tuple(errors), origins, tuple(warnings))
    return SettingsResult(settings, (), origins, tuple(warnings))


_OPTIONAL_ATTRS = frozenset({"snat_address", "source_cidrs", "port_range", "mtu", "prefixes"})


def _error_for(origins: Mapping[str, SettingOrigin], key: str, reason: str) -> SettingError:
    """An error naming the value in force for `key` and its source, if it was set."""
    origin = origins.get(key)
    return SettingError(key, origin.value if origin else "", reason, origin.source if origin else "")


def _cross_check(s: Settings, origins: Mapping[str, SettingOrigin]) -> list[SettingError]:
    errors: list[SettingError] = []

    def err(key: str, reason: str) -> None:
        errors.append(_error_for(origins, key, reason))

    if s.snat_address is not None and s.snat_address in s.pool4_cidr:
        err("NAT64SNATAddress", f"{s.snat_address} is inside NAT64Pool4CIDR {s.pool4_cidr}")
    shortfall = addressing.pool4_shortfall(s.prefixes, s.pool4_cidr)
    if shortfall:
        err("NAT64Pool4CIDR", shortfall)
    for prefix in s.prefixes:
        for cidr in s.source_cidrs or ():
            if prefix.overlaps(cidr):
                err("NAT64SourceCIDRs", f"{cidr} overlaps NAT64 prefix {prefix}")
    return errors


def felix_mark_masks(s: Settings) -> tuple[tuple[str, int], ...]:
    """Felix's mark masks that may be in force on this node, by name.

    Felix takes its marks from NftablesMarkMask in nftables mode and from
    IptablesMarkMask otherwise (config_params.go MarkMask()). With NFTablesMode
    Auto, or unset (Auto is the default from v3.32), the mode depends on how
    kube-proxy runs on the node, so both masks count.
    """
    if s.felix_nftables_mode == "enabled":
        return (("NftablesMarkMask", s.felix_nft_mark_mask),)
    if s.felix_nftables_mode == "disabled":
        return (("IptablesMarkMask", s.felix_mark_mask),)
    return (("IptablesMarkMask", s.felix_mark_mask), ("NftablesMarkMask", s.felix_nft_mark_mask))


def felix_route_tables(s: Settings) -> tuple[tuple[int, int], ...]:
    """The route tables Felix owns, as it resolves them (config_params.go
    RouteTableIndices): RouteTableRanges, else RouteTableRange, else 1-250."""
    if s.felix_route_table_ranges:
        return s.felix_route_table_ranges
    if s.felix_route_table_range is not None:
        return (s.felix_route_table_range,)
    return DEFAULT_FELIX_ROUTE_TABLES


def _felix_cross_check(s: Settings, origins: Mapping[str, SettingOrigin]) -> list[SettingError]:
    """Our marks and routing table against what Felix and kube-proxy own."""
    errors: list[SettingError] = []

    def err(key: str, reason: str) -> None:
        errors.append(_error_for(origins, key, reason))

    overlapping = [f"{name} {mask:#x}" for name, mask in felix_mark_masks(s) if s.firewall_mark & mask]
    if overlapping:
        err("NAT64FirewallMark", f"{s.firewall_mark:#x} overlaps Felix's {' and '.join(overlapping)}; "
                                 "pick bits outside it")
    masquerade = 1 << s.kube_proxy_masquerade_bit
    taken = []
    if s.firewall_mark & masquerade:
        taken.append(f"kube-proxy's masquerade mark {masquerade:#x} "
                     f"(NAT64KubeProxyMasqueradeBit {s.kube_proxy_masquerade_bit})")
    if s.firewall_mark & KUBELET_DROP_MARK:
        taken.append(f"the kubelet's drop mark {KUBELET_DROP_MARK:#x}")
    if taken:
        err("NAT64FirewallMark", f"{s.firewall_mark:#x} uses {' and '.join(taken)}; "
                                 "pick bits kube-proxy does not use")
    for low, high in felix_route_tables(s):
        if low <= s.routing_table <= high:
            err("NAT64RoutingTable", f"{s.routing_table} is inside Felix's route tables {low}-{high} "
                                     "(RouteTableRanges); pick a table outside them")
            break
    return errors
