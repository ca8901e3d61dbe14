"""Which Jool module is loaded, and whether this client can talk to it.

Jool replies echo the request header, so the module's version cannot be
learnt over netlink: it comes from sysfs. The client then sends that same
version in every request header, which satisfies every 4.1 release from 4.1.9
on (they compare major.minor only).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from felix_nat64.drivers.jool.errors import JoolNotLoaded, JoolVersionUnsupported

SYSFS_VERSION = "/sys/module/jool/version"

# 4.1.0-4.1.4 lack the header magic, 4.1.0-4.1.8 number the stats (and, before
# 4.1.2, the globals) differently and demand an exact version match; the 4.2
# development line calls itself 4.1.255 but renumbers the enums.
MIN_REVISION = 9
DEV_LINE_REVISION = 255
SUPPORTED = "Jool 4.1.9 and later 4.1.x releases (not the 4.2 development line, which reports 4.1.255)"

_VERSION_RE = re.compile(r"^\s*(\d+)\.(\d+)\.(\d+)(?:\.(\d+))?")


@dataclass(frozen=True, order=True)
class JoolVersion:
    major: int
    minor: int
    revision: int
    dev: int = 0

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.revision}.{self.dev}"

    @property
    def wire(self) -> int:
        """xlat_version(): the value joolnlhdr.version carries (big-endian on the wire)."""
        return (self.major << 24) | (self.minor << 16) | (self.revision << 8) | self.dev

    @property
    def supported(self) -> bool:
        return (self.major, self.minor) == (4, 1) and MIN_REVISION <= self.revision < DEV_LINE_REVISION


def parse_version(text: str) -> JoolVersion:
    """Parses MODULE_VERSION's "4.1.9.0" (a missing fourth part means 0)."""
    match = _VERSION_RE.match(text)
    if match is None:
        raise JoolVersionUnsupported(repr(text.strip()), SUPPORTED)
    parts = [int(p) if p is not None else 0 for p in match.groups()]
    if any(p > 255 for p in parts):
        raise JoolVersionUnsupported(text.strip(), SUPPORTED)
    return JoolVersion(*parts)


def check_supported(version: JoolVersion) -> JoolVersion:
    """Returns `version`, or raises JoolVersionUnsupported saying what was found."""
    if not version.supported:
        raise JoolVersionUnsupported(str(version), SUPPORTED)
    return version


def module_version(path: str = SYSFS_VERSION) -> JoolVersion:
    """The loaded module's version, checked. Raises JoolNotLoaded if the
    module is not loaded and JoolVersionUnsupported if it is not usable."""
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise JoolNotLoaded(f"{path} does not exist") from None
    return check_supported(parse_version(text))
