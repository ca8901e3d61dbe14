"""Bad settings: every setting, every kind of wrong value, and what the driver does about it.

For each bad value the driver must: reject the whole ConfigUpdate with an
error naming the key, the value and (when Felix says) the source; keep the
last good state in the kernel (the recording dataplane sees only good
states); report not-ready with the error text; count it in the metrics; and
log one line per bad value. Values that are valid apart from whitespace or
letter case must be accepted.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import queue
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from types import MappingProxyType

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import generate_latest

from felix_nat64.dataplane.loop import DataplaneLoop
from felix_nat64.dataplane.managers import FelixView
from felix_nat64.logs import JsonFormatter, KeyValueFormatter
from felix_nat64.model.desired import build_desired
from felix_nat64.model.settings import SPECS, Settings, resolve_settings
from felix_nat64.model.state import DesiredState, Inputs, Pool
from felix_nat64.observe.metrics import ApplyTimes, NAT64Collector, registry_for
from felix_nat64.observe.status import StatusBoard
from felix_nat64.wire import messages as m
from tests.fakes import RecordingDataplane

pytestmark = pytest.mark.reliability

N4 = ipaddress.IPv4Network
N6 = ipaddress.IPv6Network
HOSTNAME = "node-1"
GOOD = {"NAT64Prefixes": "64:ff9b::/96"}
GOOD_2 = {"NAT64Prefixes": "2001:db8:64::/96", "NAT64MTU": "1400"}
SPEC_KEYS = {spec.key for spec in SPECS}
# Felix's source names as they arrive in ConfigUpdate.source_to_raw_config.
SOURCES = ("environment variable", "config file", "datastore (per-host)", "datastore (global)")


# ---------------------------------------------------------------------------
# The catalogue of bad values: (key, value, words the reason must contain).

BAD_VALUES: tuple[tuple[str, str, str], ...] = (
    # NAT64Prefixes: wrong type, too short, wrong family, host bits, duplicates, overlaps
    ("NAT64Prefixes", "banana", "not an IPv6 CIDR"),
    ("NAT64Prefixes", "true", "not an IPv6 CIDR"),
    ("NAT64Prefixes", "64:ff9b::/64", "shorter than /96"),
    ("NAT64Prefixes", "64:ff9b::/95", "shorter than /96"),
    ("NAT64Prefixes", "::/0", "shorter than /96"),
    ("NAT64Prefixes", "2001:db8::/32,64:ff9b::/96", "shorter than /96"),
    ("NAT64Prefixes", "10.0.0.0/8", "IPv4 CIDR where an IPv6"),
    ("NAT64Prefixes", "64:ff9b::/96,192.0.2.0/24", "IPv4 CIDR where an IPv6"),
    ("NAT64Prefixes", "64:ff9b::1/96", "host bits set"),
    ("NAT64Prefixes", "64:ff9b::/129", "not an IPv6 CIDR"),
    ("NAT64Prefixes", "64:ff9b::/96/96", "not an IPv6 CIDR"),
    ("NAT64Prefixes", "64:ff9b::/96;2001:db8::/96", "not an IPv6 CIDR"),
    ("NAT64Prefixes", "64:ff9b::/96,64:ff9b::/96", "listed twice"),
    ("NAT64Prefixes", "64:ff9b::/96, 64:FF9B:0::/96", "listed twice"),
    ("NAT64Prefixes", "64:ff9b::/96,64:ff9b::800:0/104", "overlap"),
    ("NAT64Prefixes", "2001:db8::a00:0/104,2001:db8::a0a:a0a/128", "overlap"),
    ("NAT64Prefixes", "ff0e::/96", "multicast"),
    ("NAT64Prefixes", "fe80::/96", "link-local"),
    ("NAT64Prefixes", "::/96", "IPv4-compatible"),
    ("NAT64Prefixes", "::ffff:0:0/96", "IPv4-mapped"),
    ("NAT64Prefixes", "2001:db8:0:0:100::/96", "non-zero u octet"),
    ("NAT64Prefixes", "64:ff9b::a00:0/104", "not globally reachable"),
    # NAT64Enabled
    ("NAT64Enabled", "maybe", "expected a boolean"),
    ("NAT64Enabled", "2", "expected a boolean"),
    ("NAT64Enabled", "-1", "expected a boolean"),
    ("NAT64Enabled", "1.0", "expected a boolean"),
    ("NAT64Enabled", "", "expected a boolean"),
    ("NAT64Enabled", "   ", "expected a boolean"),
    # NAT64SNATAddress
    ("NAT64SNATAddress", "2001:db8::1", "IPv6 address where an IPv4"),
    ("NAT64SNATAddress", "192.0.2", "expected an IPv4 address"),
    ("NAT64SNATAddress", "192.0.2.10/32", "expected an IPv4 address"),
    ("NAT64SNATAddress", "300.1.1.1", "expected an IPv4 address"),
    ("NAT64SNATAddress", "", "expected an IPv4 address"),
    ("NAT64SNATAddress", "eth0", "expected an IPv4 address"),
    ("NAT64SNATAddress", "169.254.64.9", "inside NAT64Pool4CIDR"),
    # NAT64SourceCIDRs
    ("NAT64SourceCIDRs", "10.0.0.0/8", "IPv4 CIDR where an IPv6"),
    ("NAT64SourceCIDRs", "fd00::/64,10.0.0.0/8", "IPv4 CIDR where an IPv6"),
    ("NAT64SourceCIDRs", "", "empty list"),
    ("NAT64SourceCIDRs", ",", "empty list"),
    ("NAT64SourceCIDRs", " , ,", "empty list"),
    ("NAT64SourceCIDRs", "fd00::/64,fd00::/64", "listed twice"),
    ("NAT64SourceCIDRs", "fd00::/64 FD00:0::/64", "listed twice"),
    ("NAT64SourceCIDRs", "fd00::1/64", "host bits set"),
    ("NAT64SourceCIDRs", "pods", "not an IPv6 CIDR"),
    ("NAT64SourceCIDRs", "fd00::/64,64:ff9b::/64", "overlaps NAT64 prefix"),
    ("NAT64SourceCIDRs", "64:ff9b::/112", "overlaps NAT64 prefix"),
    ("NAT64SourceCIDRs", "::/0", "overlaps NAT64 prefix"),
    # NAT64PortRange
    ("NAT64PortRange", "65535-1024", "first port <= last port"),
    ("NAT64PortRange", "0-100", "1 <= first port"),
    ("NAT64PortRange", "1024-70000", "last port <= 65535"),
    ("NAT64PortRange", "80", "expected a port range"),
    ("NAT64PortRange", "a-b", "expected a port range"),
    ("NAT64PortRange", "1024--2048", "expected a port range"),
    ("NAT64PortRange", "1024-2048-4096", "expected a port range"),
    ("NAT64PortRange", "", "expected a port range"),
    # NAT64Pool4PortRange
    ("NAT64Pool4PortRange", "65535-1024", "first port <= last port"),
    ("NAT64Pool4PortRange", "0-65535", "1 <= first port"),
    ("NAT64Pool4PortRange", "1024-65536", "last port <= 65535"),
    ("NAT64Pool4PortRange", "1024", "expected a port range"),
    ("NAT64Pool4PortRange", "low-high", "expected a port range"),
    ("NAT64Pool4PortRange", "", "expected a port range"),
    # NAT64MTU
    ("NAT64MTU", "1000", "out of range"),
    ("NAT64MTU", "1279", "out of range"),
    ("NAT64MTU", "65536", "out of range"),
    ("NAT64MTU", "-1", "out of range"),
    ("NAT64MTU", "big", "expected an integer"),
    ("NAT64MTU", "1450.5", "expected an integer"),
    ("NAT64MTU", "1e3", "expected an integer"),
    ("NAT64MTU", "", "expected an integer"),
    ("NAT64MTU", "0x", "expected an integer"),
    # Session timeouts: below Jool's/RFC minimums, above Jool's u32 ms, not durations
    ("NAT64TCPEstablishedTimeout", "1h", "below the minimum of 2h"),
    ("NAT64TCPEstablishedTimeout", "7199", "below the minimum of 2h"),
    ("NAT64TCPEstablishedTimeout", "2000h", "above the maximum"),
    ("NAT64TCPEstablishedTimeout", "forever", "expected a duration"),
    ("NAT64TCPTransitoryTimeout", "1m", "below the minimum of 4m"),
    ("NAT64TCPTransitoryTimeout", "239.9s", "below the minimum of 4m"),
    ("NAT64TCPTransitoryTimeout", "", "expected a duration"),
    ("NAT64UDPTimeout", "30s", "below the minimum of 2m"),
    ("NAT64UDPTimeout", "5 minutes", "expected a duration"),
    ("NAT64UDPTimeout", "1200h", "above the maximum"),
    ("NAT64UDPTimeout", "5x", "expected a duration"),
    ("NAT64UDPTimeout", "1h-5m", "expected a duration"),
    ("NAT64ICMPTimeout", "0", "below the minimum of 1s"),
    ("NAT64ICMPTimeout", "999ms", "below the minimum of 1s"),
    ("NAT64ICMPTimeout", "-5", "non-negative"),
    ("NAT64ICMPTimeout", "nan", "non-negative, finite"),
    ("NAT64ICMPTimeout", "inf", "non-negative, finite"),
    ("NAT64ICMPTimeout", "1e999", "non-negative, finite"),
    # NAT64Pool4CIDR
    ("NAT64Pool4CIDR", "10.0.0.0/30", "too small"),
    ("NAT64Pool4CIDR", "10.0.0.0/29", "too small"),
    ("NAT64Pool4CIDR", "10.0.0.1/32", "too small"),
    ("NAT64Pool4CIDR", "fd00::/64", "IPv6 CIDR where an IPv4"),
    ("NAT64Pool4CIDR", "224.0.0.0/24", "not a usable unicast"),
    ("NAT64Pool4CIDR", "127.0.0.0/24", "not a usable unicast"),
    ("NAT64Pool4CIDR", "0.0.0.0/24", "not a usable unicast"),
    ("NAT64Pool4CIDR", "255.255.255.0/24", "not a usable unicast"),
    ("NAT64Pool4CIDR", "10.0.0.1/24", "host bits set"),
    ("NAT64Pool4CIDR", "banana", "not an IPv4 CIDR"),
    ("NAT64Pool4CIDR", "", "not an IPv4 CIDR"),
    ("NAT64Pool4CIDR", "169.254.169.0/24", "contains 169.254.169.254"),
    ("NAT64Pool4CIDR", "169.254.0.0/22", "contains 169.254.1.1"),
    # NAT64RefusedCIDRs
    ("NAT64RefusedCIDRs", "2001:db8::/32", "IPv6 CIDR where an IPv4"),
    ("NAT64RefusedCIDRs", "168.63.129.16/32,banana", "not an IPv4 CIDR"),
    ("NAT64RefusedCIDRs", "10.0.0.1/8", "host bits set"),
    # NAT64FirewallMark
    ("NAT64FirewallMark", "0x4000", "kube-proxy"),
    ("NAT64FirewallMark", "0x8000", "kube-proxy"),
    ("NAT64FirewallMark", "0xc000", "kube-proxy"),
    ("NAT64FirewallMark", "0x10000", "overlaps Felix's IptablesMarkMask"),
    ("NAT64FirewallMark", "0", "out of range"),
    ("NAT64FirewallMark", "-1", "out of range"),
    ("NAT64FirewallMark", "0x100000000", "out of range"),
    ("NAT64FirewallMark", "mark", "expected an integer"),
    ("NAT64FirewallMark", "", "expected an integer"),
    # NAT64RoutingTable
    ("NAT64RoutingTable", "253", "kernel's own tables"),
    ("NAT64RoutingTable", "254", "kernel's own tables"),
    ("NAT64RoutingTable", "255", "kernel's own tables"),
    ("NAT64RoutingTable", "0", "out of range"),
    ("NAT64RoutingTable", "4294967296", "out of range"),
    ("NAT64RoutingTable", "main", "expected an integer"),
    # NAT64RoutingRulePriority
    ("NAT64RoutingRulePriority", "0", "out of range"),
    ("NAT64RoutingRulePriority", "32766", "out of range"),
    ("NAT64RoutingRulePriority", "40000", "out of range"),
    ("NAT64RoutingRulePriority", "high", "expected an integer"),
    # NAT64ResyncInterval
    ("NAT64ResyncInterval", "0s", "1s to 1h"),
    ("NAT64ResyncInterval", "0.5s", "1s to 1h"),
    ("NAT64ResyncInterval", "3601", "1s to 1h"),
    ("NAT64ResyncInterval", "2h", "1s to 1h"),
    ("NAT64ResyncInterval", "-1", "non-negative"),
    ("NAT64ResyncInterval", "often", "expected a duration"),
    # NAT64MetricsHost
    ("NAT64MetricsHost", "my-host", "expected an IP address"),
    ("NAT64MetricsHost", "127.0.0.1:9096", "expected an IP address"),
    ("NAT64MetricsHost", "256.0.0.1", "expected an IP address"),
    ("NAT64MetricsHost", "*", "expected an IP address"),
    # NAT64MetricsPort
    ("NAT64MetricsPort", "9091", "used by Calico"),
    ("NAT64MetricsPort", "9099", "used by Calico"),
    ("NAT64MetricsPort", "70000", "out of range"),
    ("NAT64MetricsPort", "-1", "out of range"),
    ("NAT64MetricsPort", "http", "expected an integer"),
    # NAT64LogFormat / NAT64LogLevel
    ("NAT64LogFormat", "xml", "one of: keyvalue, json"),
    ("NAT64LogFormat", "", "one of: keyvalue, json"),
    ("NAT64LogFormat", "key value", "one of: keyvalue, json"),
    ("NAT64LogLevel", "verbose", "one of: debug, info, warning, error"),
    ("NAT64LogLevel", "critical", "one of: debug, info, warning, error"),
    ("NAT64LogLevel", "", "one of: debug, info, warning, error"),
    # Felix's own parameters that felix-nat64 reads
    ("FelixHostname", "", "empty hostname"),
    ("FelixHostname", "   ", "empty hostname"),
    ("InterfacePrefix", "", "empty interface prefix list"),
    ("InterfacePrefix", ",", "empty interface prefix list"),
    ("InterfacePrefix", "ca*li", "not a valid interface name prefix"),
    ("InterfacePrefix", 'ca"li', "not a valid interface name prefix"),
    ("InterfacePrefix", "ca/li", "not a valid interface name prefix"),
    ("InterfacePrefix", "a" * 15, "not a valid interface name prefix"),
    ("InterfacePrefix", "cali\x00", "not a valid interface name prefix"),
    ("IptablesMarkMask", "-1", "out of range"),
    ("IptablesMarkMask", "0x100000000", "out of range"),
    ("IptablesMarkMask", "mask", "expected an integer"),
    ("NftablesMarkMask", "-1", "out of range"),
    ("NftablesMarkMask", "mask", "expected an integer"),
    ("RouteTableRanges", "", "empty list of route table ranges"),
    ("RouteTableRanges", "1-", "expected an integer"),
    ("RouteTableRanges", "250-1", "first table is above the last"),
    ("RouteTableRange", "one-two", "expected an integer"),
    ("RouteTableRange", "5", "not a range of route tables"),
    ("InterfacePrefix", "fn64", "own translator links"),
    ("InterfacePrefix", "cali,f", "own translator links"),
    ("NAT64KubeProxyMasqueradeBit", "-1", "out of range"),
    ("NAT64KubeProxyMasqueradeBit", "32", "out of range"),
    ("NAT64KubeProxyMasqueradeBit", "bit", "expected an integer"),
    ("NAT64RoutingTable", "1", "inside Felix's route tables 1-250"),
    ("NAT64RoutingTable", "250", "inside Felix's route tables 1-250"),
)

# Errors that only exist in combination: (settings, key named, value named, reason words).
BAD_COMBINATIONS: tuple[tuple[dict[str, str], str, str, str], ...] = (
    ({"NAT64Prefixes": ",".join(f"2001:db8:{i:x}::/96" for i in range(17))},
     "NAT64Pool4CIDR", "", "holds 16 /28 blocks but the prefixes need 17 translators"),
    ({"NAT64Prefixes": "64:ff9b::/96,2001:db8:64::/96", "NAT64Pool4CIDR": "100.127.0.0/28"},
     "NAT64Pool4CIDR", "100.127.0.0/28", "holds 1 /28 blocks but the prefixes need 2 translators"),
    ({"NAT64Prefixes": "2001:db8:1::/96,2001:db8:2::/96,2001:db8:3::/96", "NAT64Pool4CIDR": "100.127.0.0/27"},
     "NAT64Pool4CIDR", "100.127.0.0/27", "holds 2 /28 blocks"),
    ({"NAT64Prefixes": "64:ff9b::/96", "NAT64SNATAddress": "100.127.0.5", "NAT64Pool4CIDR": "100.127.0.0/24"},
     "NAT64SNATAddress", "100.127.0.5", "inside NAT64Pool4CIDR 100.127.0.0/24"),
    ({"NAT64Prefixes": "64:ff9b::/96", "NAT64FirewallMark": "0x1000", "IptablesMarkMask": "0xff00"},
     "NAT64FirewallMark", "0x1000", "overlaps Felix's IptablesMarkMask 0xff00"),
    ({"NAT64Prefixes": "64:ff9b::/96", "NAT64FirewallMark": "0x1000", "NftablesMarkMask": "0xff00",
      "NFTablesMode": "Enabled"},
     "NAT64FirewallMark", "0x1000", "overlaps Felix's NftablesMarkMask 0xff00"),
    ({"NAT64Prefixes": "64:ff9b::/96", "NAT64FirewallMark": "0x2000", "NAT64KubeProxyMasqueradeBit": "13"},
     "NAT64FirewallMark", "0x2000", "masquerade mark 0x2000 (NAT64KubeProxyMasqueradeBit 13)"),
    ({"NAT64Prefixes": "64:ff9b::/96", "NAT64RoutingTable": "6464", "RouteTableRanges": "6000-7000"},
     "NAT64RoutingTable", "6464", "inside Felix's route tables 6000-7000"),
    ({"NAT64Prefixes": "64:ff9b::/96", "NAT64Prefix": "2001:db8::/96"},
     "NAT64Prefix", "2001:db8::/96", "unknown felix-nat64 setting; did you mean NAT64Prefixes?"),
    ({"NAT64Prefixes": "64:ff9b::/96", "NAT64MTU": "1400", "nat64mtu": "1500"},
     "nat64mtu", "1500", "set it once"),
)


def _config(values: Mapping[str, str], source: str | None = None) -> m.ConfigUpdate:
    """A ConfigUpdate as Felix sends it: the resolved map, plus the per-source map when known."""
    if source is None:
        return m.ConfigUpdate(MappingProxyType(dict(values)))
    raw = {k.lower(): v for k, v in values.items()} if source == "environment variable" else dict(values)
    return m.ConfigUpdate(MappingProxyType(dict(raw)), (m.RawConfigSource(source, MappingProxyType(raw)),))


def _with_good(key: str, value: str) -> dict[str, str]:
    values = dict(GOOD)
    values[key] = value
    return values


# ---------------------------------------------------------------------------
# The driver around the settings: loop, recording dataplane, status, metrics, logs.


class Driver:
    """A loop, a recording dataplane, the status board and the metrics collector, wired as in the driver."""

    def __init__(self) -> None:
        self.dataplane = RecordingDataplane()
        self.status = StatusBoard()
        self.loop = DataplaneLoop(queue.Queue(), self.dataplane, self.status,
                                  view=FelixView(default_hostname=HOSTNAME), clock=lambda: 0.0)
        self.metrics = NAT64Collector(self.status, lambda: None, ApplyTimes(), "n")

    def send(self, *events: m.FelixMessage) -> None:
        for event in events:
            self.loop.handle(event)
        self.loop.step()

    def metric(self, name: str) -> float:
        text = generate_latest(registry_for(self.metrics)).decode()
        match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
        assert match, f"{name} not exported"
        return float(match.group(1))


def expected_desired(values: Mapping[str, str], pools: tuple[Pool, ...] = ()) -> DesiredState:
    result = resolve_settings(_config(values), HOSTNAME)
    assert result.settings is not None, result.errors
    return build_desired(Inputs(result.settings, pools))


class RecordHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def settings_log() -> Iterator[list[logging.LogRecord]]:
    """Records of the `felix_nat64.settings` logger, whatever the process-wide log set-up."""
    logger = logging.getLogger("felix_nat64.settings")
    handler = RecordHandler()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def _check_rejected(driver: Driver, logs: list[logging.LogRecord], key: str, value: str, reason: str,
                    source: str, rejections: int, good: DesiredState) -> None:
    """Everything an operator must see for one rejected ConfigUpdate, and the kernel kept as it was."""
    result = driver.loop.view.settings.last_result
    assert result is not None and not result.ok
    # The error names key, value, source and reason.
    errors = [e for e in result.errors if e.key == key and e.value == value]
    assert len(errors) == 1 == len(result.errors), [str(e) for e in result.errors]
    error = errors[0]
    assert reason in error.reason, error.reason
    assert error.source == source
    text = str(error)
    assert text.startswith(f"{key}={value!r}") and reason in text
    assert (f"(from {source})" in text) == bool(source)
    # The kernel keeps the last good state: no apply with anything else.
    assert all(d == good for d in driver.dataplane.applied), "a rejected setting reached the dataplane"
    # Readiness says why.
    ready, reasons = driver.status.readiness()
    assert not ready and f"invalid settings: {text}" in reasons
    # Metrics count it.
    assert driver.metric("calico_nat64_settings_errors") == 1
    assert driver.metric("calico_nat64_settings_rejections_total") == rejections
    # One log line per bad value, naming key, value, source and reason; and one summary line.
    invalid = [r for r in logs if r.getMessage() == "invalid setting"]
    assert len(invalid) == 1
    fields = invalid[0].kv  # type: ignore[attr-defined]
    assert (fields["key"], fields["value"], fields["source"]) == (key, value, source or "unknown")
    assert reason in fields["reason"]
    for formatter in (KeyValueFormatter(), JsonFormatter()):
        line = formatter.format(invalid[0])
        assert "\n" not in line and key in line
    decoded = json.loads(JsonFormatter().format(invalid[0]))
    assert (decoded["key"], decoded["value"]) == (key, value) and reason in decoded["reason"]
    assert [r.levelno for r in invalid] == [logging.ERROR]
    assert sum(r.getMessage() == "settings rejected" for r in logs) == 1


BAD_CASES = [pytest.param(key, value, reason, id=f"{key}={value!r}") for key, value, reason in BAD_VALUES]
SOURCE_CHOICES = [pytest.param(None, id="resolved-only"), *(pytest.param(s, id=s) for s in SOURCES)]


# Settings no value of which is rejected: Felix itself replaces an invalid
# BPFEnabled or NFTablesMode by its default, and felix-nat64 reads them the same way.
NEVER_REJECTED = frozenset({"BPFEnabled", "NFTablesMode"})


def test_the_catalogue_covers_every_setting() -> None:
    assert {key for key, _, _ in BAD_VALUES} == SPEC_KEYS - NEVER_REJECTED


@pytest.mark.parametrize("source", SOURCE_CHOICES)
@pytest.mark.parametrize(("key", "value", "reason"), BAD_CASES)
def test_bad_value_after_good_settings_keeps_the_good_state_and_is_reported(
        key: str, value: str, reason: str, source: str | None, settings_log: list[logging.LogRecord],
        tally: Counter[str]) -> None:
    tally["settings.inputs"] += 1
    driver = Driver()
    driver.send(_config(GOOD, source), m.InSync())
    good = expected_desired(GOOD)
    assert driver.dataplane.applied == [good]
    assert driver.status.readiness() == (True, [])
    settings_log.clear()

    driver.send(_config(_with_good(key, value), source))
    if driver.dataplane.applied != [good]:
        tally["settings.wrong_changes"] += 1
    _check_rejected(driver, settings_log, key, value, reason, source or "", 1, good)
    assert driver.loop.view.settings.in_force == resolve_settings(_config(GOOD), HOSTNAME).settings

    # Fixing the value brings the driver back: the new good state is applied, readiness recovers.
    driver.send(_config(GOOD_2, source))
    assert driver.dataplane.applied == [good, expected_desired(GOOD_2)]
    assert driver.status.readiness() == (True, [])
    assert driver.metric("calico_nat64_settings_errors") == 0
    assert driver.metric("calico_nat64_settings_rejections_total") == 1
    tally["settings.applies_checked"] += len(driver.dataplane.applied)


@pytest.mark.parametrize(("key", "value", "reason"), BAD_CASES)
def test_bad_value_in_the_first_settings_leaves_the_kernel_untouched(
        key: str, value: str, reason: str, settings_log: list[logging.LogRecord],
        tally: Counter[str]) -> None:
    tally["settings.inputs"] += 1
    driver = Driver()
    driver.send(_config(_with_good(key, value), "datastore (per-host)"), m.InSync())
    if driver.dataplane.applied:
        tally["settings.wrong_changes"] += 1
    assert driver.dataplane.applied == [] and driver.dataplane.adopt_calls == 0
    _check_rejected(driver, settings_log, key, value, reason, "datastore (per-host)", 1, DesiredState())
    # A second bad update is a second rejection; the kernel is still untouched.
    driver.send(_config(_with_good(key, value), "datastore (per-host)"))
    assert driver.dataplane.applied == []
    assert driver.metric("calico_nat64_settings_rejections_total") == 2


@pytest.mark.parametrize(("values", "key", "value", "reason"),
                         [pytest.param(*case, id=case[1] + ":" + case[3][:40]) for case in BAD_COMBINATIONS])
def test_bad_combinations_are_rejected_naming_the_setting_at_fault(
        values: dict[str, str], key: str, value: str, reason: str, settings_log: list[logging.LogRecord],
        tally: Counter[str]) -> None:
    tally["settings.inputs"] += 1
    driver = Driver()
    driver.send(_config(GOOD), m.InSync())
    good = expected_desired(GOOD)
    settings_log.clear()
    driver.send(_config(values))
    if driver.dataplane.applied != [good]:
        tally["settings.wrong_changes"] += 1
    _check_rejected(driver, settings_log, key, value, reason, "", 1, good)


def test_several_bad_values_are_all_reported_at_once(settings_log: list[logging.LogRecord]) -> None:
    driver = Driver()
    bad = {"NAT64Prefixes": "64:ff9b::/64", "NAT64MTU": "1", "NAT64UDPTimeout": "1s", "NAT64LogLevel": "loud"}
    driver.send(_config(bad, "config file"), m.InSync())
    result = driver.loop.view.settings.last_result
    assert result is not None
    assert sorted((e.key, e.value, e.source) for e in result.errors) == sorted(
        (k, v, "config file") for k, v in bad.items())
    invalid = [r for r in settings_log if r.getMessage() == "invalid setting"]
    assert sorted(r.kv["key"] for r in invalid) == sorted(bad)  # type: ignore[attr-defined]
    assert driver.metric("calico_nat64_settings_errors") == 4
    ready, reasons = driver.status.readiness()
    assert not ready and all(str(e) in reasons[-1] for e in result.errors)
    assert driver.dataplane.applied == []


# ---------------------------------------------------------------------------
# Whitespace and case variants of valid values are accepted, with the same meaning.

GOOD_VALUES: dict[str, tuple[str, ...]] = {
    "NAT64Prefixes": ("64:ff9b::/96", "64:ff9b::/96,2001:db8:64::/96", "2001:db8::a00:0/104",
                      "64:ff9b::808:808"),
    "NAT64Enabled": ("true", "false", "yes", "off", "1", "t"),
    "NAT64SNATAddress": ("192.0.2.10",),
    "NAT64SourceCIDRs": ("fd00:10::/64", "fd00:10::/64,fd00:20::/64"),
    "NAT64PortRange": ("32768-65535", "1024:2048"),
    "NAT64Pool4PortRange": ("1024-65535", "2000:3000", "1-1"),
    "NAT64MTU": ("1450", "0x5aa", "1280", "65535"),
    "NAT64TCPEstablishedTimeout": ("2h4m", "3h", "7440", "2h"),
    "NAT64TCPTransitoryTimeout": ("4m", "300", "1h"),
    "NAT64UDPTimeout": ("5m", "2m30s", "120"),
    "NAT64ICMPTimeout": ("60s", "1.5s", "1500ms", "1"),
    "NAT64Pool4CIDR": ("169.254.64.0/24", "100.127.0.0/24", "10.99.0.0/28"),
    "NAT64RefusedCIDRs": ("168.63.129.16/32", "", "203.0.113.0/24,192.0.2.7"),
    "NAT64FirewallMark": ("0x1000", "4096", "0x200"),
    "NAT64RoutingTable": ("6464", "251", "0x1940", "252", "256"),
    "NAT64RoutingRulePriority": ("96", "1", "32765"),
    "NAT64ResyncInterval": ("30s", "1s", "1h", "5m"),
    "NAT64MetricsHost": ("127.0.0.1", "0.0.0.0", "::1", "fd00::1"),
    "NAT64MetricsPort": ("9096", "0", "65535"),
    "NAT64LogFormat": ("json", "keyvalue"),
    "NAT64LogLevel": ("debug", "info", "warning", "error"),
    "FelixHostname": ("node-1", "worker.example.com"),
    "InterfacePrefix": ("cali", "cali,tap", "cali tap"),
    "IptablesMarkMask": ("0xffff0000", "0xff000000", "4294901760"),
    "NftablesMarkMask": ("0xffff0000", "0xff000000", "4294901760"),
    "NFTablesMode": ("Enabled", "Disabled", "Auto"),
    "RouteTableRanges": ("1-250", "1-100,300-400", "1-100 300-400"),
    "RouteTableRange": ("1-250", "10-20"),
    "BPFEnabled": ("true", "false", "1", "0", "yes", "t"),
    "NAT64KubeProxyMasqueradeBit": ("14", "0", "31", "0x1f"),
}
# Values whose letter case is part of the value (names): a case variant is accepted as itself.
CASE_SENSITIVE = frozenset({"FelixHostname", "InterfacePrefix"})


def _meaning(key: str, value: object) -> object:
    # The listen address is kept as text; its meaning is the address.
    return ipaddress.ip_address(value) if key == "NAT64MetricsHost" else value  # type: ignore[arg-type]


def _variants(value: str) -> list[str]:
    return [f" {value} ", f"\t{value}\n", f"\u00a0{value}\u2003", value.upper(), value.lower(),
            value.swapcase(), f"  {value.upper()}\t"]


def _accepted(values: Mapping[str, str], source: str | None = None) -> Settings:
    result = resolve_settings(_config(values, source), HOSTNAME)
    assert result.ok, [str(e) for e in result.errors]
    assert result.settings is not None
    return result.settings


def test_the_good_values_cover_every_setting() -> None:
    assert set(GOOD_VALUES) == SPEC_KEYS


@pytest.mark.parametrize(("key", "value"), [pytest.param(k, v, id=f"{k}={v!r}")
                                             for k, vs in GOOD_VALUES.items() for v in vs])
def test_whitespace_and_case_variants_of_good_values_are_accepted(key: str, value: str,
                                                                  tally: Counter[str]) -> None:
    spec = next(s for s in SPECS if s.key == key)
    canonical = _meaning(key, getattr(_accepted({key: value}), spec.attr))
    for variant in _variants(value):
        tally["settings_variants.inputs"] += 1
        got = _meaning(key, getattr(_accepted({key: variant}), spec.attr))
        if key not in CASE_SENSITIVE or variant.strip() == value:
            assert got == canonical, (variant, got, canonical)
    for spelling in (key, key.lower(), key.upper(), key.swapcase()):
        for source in (None, *SOURCES):
            tally["settings_variants.inputs"] += 1
            assert _meaning(key, getattr(_accepted({spelling: value}, source), spec.attr)) == canonical


def test_none_unsets_the_optional_settings_in_any_case() -> None:
    for key, attr in (("NAT64SNATAddress", "snat_address"), ("NAT64SourceCIDRs", "source_cidrs"),
                      ("NAT64PortRange", "port_range"), ("NAT64MTU", "mtu"), ("NAT64Prefixes", "prefixes")):
        for spelling in ("none", "None", " NONE "):
            assert getattr(_accepted({key: spelling}), attr) == getattr(Settings(), attr)


def test_empty_prefix_list_turns_nat64_off_and_removes_our_state(tally: Counter[str]) -> None:
    """An empty NAT64Prefixes is not an error: NAT64 is off, and the kernel is told so."""
    tally["settings.inputs"] += 1
    driver = Driver()
    driver.send(_config(GOOD), m.InSync())
    for empty in ("", " ", ",", " , ", "none"):
        driver.send(_config({"NAT64Prefixes": empty}))
        assert driver.dataplane.applied[-1] == DesiredState()
        assert driver.status.readiness() == (True, [])
        driver.send(_config(GOOD))
    assert driver.dataplane.applied.count(DesiredState()) == 5


# ---------------------------------------------------------------------------
# IP pools overlapping a NAT64 prefix (not a settings error: pools come from Calico).


@pytest.mark.parametrize(("pool", "allowed_uses", "in_sources", "warning"), [
    pytest.param("64:ff9b::/96", (), False, None, id="pool-equal-to-prefix"),
    pytest.param("64:ff9b::/112", (), False, None, id="pool-inside-prefix"),
    pytest.param("64:ff9b::/64", (), False, "IP pool 64:ff9b::/64 contains NAT64 prefix 64:ff9b::/96",
                 id="big-pool-containing-prefix"),
    pytest.param("64:ff9b::/64", ("Tunnel",), False, None, id="big-non-workload-pool"),
    pytest.param("::/0", ("Workload",), False, "IP pool ::/0 contains NAT64 prefix", id="everything-pool"),
    pytest.param("fd00:10::/64", (), True, None, id="disjoint-pod-pool"),
])
def test_pool_overlapping_a_prefix_is_never_a_nat64_source(
        pool: str, allowed_uses: tuple[str, ...], in_sources: bool, warning: str | None,
        tally: Counter[str]) -> None:
    tally["settings_pools.inputs"] += 1
    driver = Driver()
    pod_pool = m.PoolUpdate("pods", N6("fd00:20::/64"), True, ("Workload",))
    other = m.PoolUpdate("other", ipaddress.ip_network(pool), False, allowed_uses)
    driver.send(_config(GOOD), pod_pool, other, m.InSync())
    (desired,) = driver.dataplane.applied
    assert N6("fd00:20::/64") in desired.sources
    assert (ipaddress.ip_network(pool) in desired.sources) == in_sources
    contains = [w for w in desired.warnings if "contains NAT64 prefix" in w]
    if warning is None:
        assert contains == []
    else:
        assert len(contains) == 1 and contains[0].startswith(warning)
        assert "list pod CIDRs in NAT64SourceCIDRs" in contains[0]
        assert driver.status.status.warnings == desired.warnings
        assert driver.metric("calico_nat64_config_warnings") >= 1
    assert driver.status.readiness() == (True, [])  # a warning, not an error
    pools = (Pool("other", ipaddress.ip_network(pool), False, allowed_uses),
             Pool("pods", N6("fd00:20::/64"), True, ("Workload",)))
    if desired != expected_desired(GOOD, pools):
        tally["settings_pools.wrong_changes"] += 1
    assert desired == expected_desired(GOOD, pools)
    tally["settings_pools.applies_checked"] += 1


def test_sources_listed_beside_a_big_pool_must_avoid_the_prefix() -> None:
    """The warning's advice works when followed, and a source overlapping the prefix is refused."""
    driver = Driver()
    big = m.PoolUpdate("big", N6("64:ff9b::/64"), False, ("Workload",))
    # The pods' part of the big pool, outside the prefix.
    good = {**GOOD, "NAT64SourceCIDRs": "64:ff9b:0:0:1::/80"}
    driver.send(_config(good), big, m.InSync())
    (desired,) = driver.dataplane.applied
    assert desired.sources == (N6("64:ff9b:0:0:1::/80"),)
    driver.send(_config({**GOOD, "NAT64SourceCIDRs": "64:ff9b::/64"}))
    assert driver.dataplane.applied == [desired]
    result = driver.loop.view.settings.last_result
    assert result is not None
    assert [str(e) for e in result.errors] == [
        "NAT64SourceCIDRs='64:ff9b::/64': 64:ff9b::/64 overlaps NAT64 prefix 64:ff9b::/96"]


def test_translator_count_limit_is_per_96_parent() -> None:
    sixteen = ",".join(f"2001:db8:{i:x}::/96" for i in range(16))
    assert len(expected_desired({"NAT64Prefixes": sixteen}).translators) == 16
    same_parent = ",".join(f"2001:db8::{i:x}00:0/104" for i in range(40))
    desired = expected_desired({"NAT64Prefixes": same_parent, "NAT64Pool4CIDR": "100.127.0.0/28"})
    assert len(desired.translators) == 1 and len(desired.translators[0].prefixes) == 40


# ---------------------------------------------------------------------------
# Random values for every setting: never a crash, always a precise error or a typed value.

NUMBERISH = st.one_of(
    st.from_regex(r"\A[-+]?(0x)?[0-9a-f]{1,40}(\.[0-9]{1,6})?(h|m|s|ms)?\Z"),
    # Past 308 digits a number overflows a float (found once: test_found_bugs.py).
    st.builds(lambda digits, n, unit: digits * n + unit, st.sampled_from(["9", "1", "0"]),
              st.integers(300, 400), st.sampled_from(["", "s", "m", "h", "ms", ".5s"])),
)
NETISH = st.one_of(
    st.ip_addresses().map(str),
    st.builds(lambda a, n: f"{a}/{n}", st.ip_addresses(), st.integers(-1, 130)),
)
VALUES = st.one_of(NUMBERISH, NETISH, st.text(max_size=48),
                   st.lists(NETISH, max_size=4).map(",".join),
                   st.sampled_from(["", " ", "none", "true", "false", "0", "1", "-1", "0x", "localhost"]))
KEYS = st.one_of(st.sampled_from(sorted(SPEC_KEYS)), st.sampled_from(sorted(SPEC_KEYS)).map(str.lower),
                 st.text(max_size=20), st.text(max_size=12).map(lambda s: "NAT64" + s))


WRAPPERS = (lambda v: v, lambda v: f" {v} ", lambda v: f"{v}\t", str.upper)


@st.composite
def mostly_good_settings(draw: st.DrawFn) -> dict[str, str]:
    """Several of our settings with good values in any spelling; half the time one random value among them."""
    values: dict[str, str] = {}
    keys = draw(st.lists(st.sampled_from(sorted(SPEC_KEYS)), unique=True, max_size=8))
    random_one = draw(st.integers(0, 2 * len(keys)))  # an index past the end: all good
    for i, key in enumerate(keys):
        value = draw(VALUES) if i == random_one else draw(st.sampled_from(GOOD_VALUES[key]))
        if key not in CASE_SENSITIVE:
            value = draw(st.sampled_from(WRAPPERS))(value)
        values[draw(st.sampled_from([key, key.lower(), key.upper()]))] = value
    return values


@given(values=st.one_of(mostly_good_settings(), st.dictionaries(KEYS, VALUES, max_size=6)),
       source=st.sampled_from([None, *SOURCES]))
def test_random_settings_never_crash_and_every_rejection_names_key_and_value(
        values: dict[str, str], source: str | None, tally: Counter[str]) -> None:
    tally["settings_random.inputs"] += 1
    update = _config(values, source)
    try:
        result = resolve_settings(update, HOSTNAME)
    except Exception:
        tally["settings_random.crashes"] += 1
        raise
    assert result.ok == (not result.errors) == (result.settings is not None)
    lowered = {k.lower(): (k, v) for k, v in values.items()}
    for error in result.errors:
        assert error.reason and str(error).startswith(f"{error.key}={error.value!r}")
        assert (error.source == (source or "")) or error.source == ""
        named = error.key.lower() in lowered or error.key in SPEC_KEYS
        assert named, f"error names a key that was not sent: {error}"
        if error.key.lower() in lowered and error.value:
            assert error.value in {v for k, v in values.items() if k.lower() == error.key.lower()}
    if result.ok:
        tally["settings_random.accepted"] += 1
        assert result.settings is not None
        for key, (_, value) in lowered.items():
            spec = next((s for s in SPECS if s.key.lower() == key), None)
            if spec is not None and value.strip().lower() != "none":
                assert getattr(result.settings, spec.attr) == spec.parse(value)
    else:
        tally["settings_random.rejected"] += 1
    # Through the loop: a rejected update is never applied; an accepted one is applied as computed.
    driver = Driver()
    driver.send(update, m.InSync())
    if result.ok:
        assert result.settings is not None
        # With Calico's eBPF dataplane nothing is programmed at all.
        expected = [] if result.settings.felix_bpf_enabled else [build_desired(Inputs(result.settings))]
        if driver.dataplane.applied != expected:
            tally["settings_random.wrong_changes"] += 1
        assert driver.dataplane.applied == expected
        tally["settings_random.applies_checked"] += 1
    else:
        if driver.dataplane.applied:
            tally["settings_random.wrong_changes"] += 1
        assert driver.dataplane.applied == []
        assert not driver.status.readiness()[0]
