"""Parsers for the value formats felix-nat64 settings accept.

Each parser takes the raw string Felix forwarded and returns a typed value or
raises ValueError with a message that says what was expected.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

_TRUE = frozenset({"true", "t", "1", "yes", "y", "on", "enabled"})
_FALSE = frozenset({"false", "f", "0", "no", "n", "off", "disabled", "none"})


def parse_bool(text: str) -> bool:
    """Felix-style booleans (true/false/1/0/t/f) plus yes/no and on/off."""
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError("expected a boolean (true or false)")


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s)")


def parse_duration(text: str) -> float:
    """Seconds from '300', '300s', '5m', '2h4m' or '1.5s' (Go duration style)."""
    value = text.strip().lower()
    if not value:
        raise ValueError("expected a duration such as 300s, 5m or 2h4m")
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if not 0 <= seconds < float("inf"):  # also rejects NaN
            raise ValueError("a duration must be a non-negative, finite number of seconds")
        return seconds
    pos = 0
    total = 0.0
    for match in _DURATION_PART.finditer(value):
        if match.start() != pos:
            break
        number, unit = float(match.group(1)), match.group(2)
        total += number * {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}[unit]
        pos = match.end()
    if pos != len(value):
        raise ValueError("expected a duration such as 300s, 5m or 2h4m (units h, m, s, ms)")
    if not total < float("inf"):
        raise ValueError("a duration must be finite")
    return total


def format_duration(seconds: float) -> str:
    """The shortest Go-style spelling of a whole number of seconds."""
    whole = int(seconds)
    if whole != seconds:
        return f"{seconds}s"
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = []
    if hours:
        parts.append(f"{hours}h")
    if minutes:
        parts.append(f"{minutes}m")
    if secs or not parts:
        parts.append(f"{secs}s")
    return "".join(parts)


def parse_int(text: str, minimum: int, maximum: int) -> int:
    """An integer in [minimum, maximum]; accepts 0x-prefixed hex."""
    value = text.strip().lower()
    try:
        number = int(value, 16) if value.startswith("0x") else int(value, 10)
    except ValueError:
        raise ValueError(f"expected an integer between {minimum} and {maximum}") from None
    if not minimum <= number <= maximum:
        raise ValueError(f"{number} is out of range: expected {minimum} to {maximum}")
    return number


@dataclass(frozen=True, order=True)
class PortRange:
    """An inclusive range of TCP/UDP ports."""

    first: int
    last: int

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"


def parse_port_range(text: str) -> PortRange:
    """'1024-65535' or Felix's '1024:65535' form."""
    value = text.strip()
    parts = re.split(r"\s*[-:]\s*", value)
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ValueError("expected a port range such as 1024-65535")
    first, last = int(parts[0]), int(parts[1])
    if not 1 <= first <= last <= 65535:
        raise ValueError("expected 1 <= first port <= last port <= 65535")
    return PortRange(first, last)


def split_list(text: str) -> list[str]:
    """Comma- (or whitespace-) separated items, blanks dropped."""
    return [item for item in re.split(r"[,\s]+", text.strip()) if item]


def parse_ipv6_network(item: str) -> ipaddress.IPv6Network:
    """An IPv6 CIDR with no host bits set."""
    try:
        net = ipaddress.ip_network(item, strict=True)
    except ValueError as exc:
        if "has host bits set" in str(exc):
            raise ValueError(f"{item} has host bits set (did you mean "
                             f"{ipaddress.ip_network(item, strict=False)}?)") from None
        raise ValueError(f"{item} is not an IPv6 CIDR") from None
    if not isinstance(net, ipaddress.IPv6Network):
        raise ValueError(f"{item} is an IPv4 CIDR where an IPv6 one is expected")
    return net


def parse_ipv4_network(item: str) -> ipaddress.IPv4Network:
    """An IPv4 CIDR with no host bits set."""
    try:
        net = ipaddress.ip_network(item, strict=True)
    except ValueError as exc:
        if "has host bits set" in str(exc):
            raise ValueError(f"{item} has host bits set") from None
        raise ValueError(f"{item} is not an IPv4 CIDR") from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise ValueError(f"{item} is an IPv6 CIDR where an IPv4 one is expected")
    return net


def parse_ipv4_address(text: str) -> ipaddress.IPv4Address:
    """A single IPv4 address."""
    try:
        addr = ipaddress.ip_address(text.strip())
    except ValueError:
        raise ValueError("expected an IPv4 address such as 192.0.2.10") from None
    if not isinstance(addr, ipaddress.IPv4Address):
        raise ValueError("an IPv6 address where an IPv4 address is expected")
    return addr
