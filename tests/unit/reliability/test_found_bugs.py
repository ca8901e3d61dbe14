"""Defects found by the reliability suite, each shown by a test that fails until the code is fixed.

Every test states the input, what is expected, and what the code did when the
defect was found (commit 6698373). Once the code is fixed the test passes and
stays as a regression test.
"""

from __future__ import annotations

import ipaddress
import queue
import tracemalloc
from types import MappingProxyType

import pytest

from felix_nat64.dataplane.loop import DataplaneLoop
from felix_nat64.dataplane.managers import FelixView
from felix_nat64.drivers.nft.ruleset import render
from felix_nat64.model.desired import build_desired
from felix_nat64.model.settings import resolve_settings
from felix_nat64.model.state import Inputs
from felix_nat64.observe.status import StatusBoard
from felix_nat64.wire import felixbackend_pb2 as pb
from felix_nat64.wire import messages as m
from felix_nat64.wire.framing import encode_frame
from felix_nat64.wire.transport import StreamCounters, pump
from tests.fakes import RecordingDataplane

pytestmark = [pytest.mark.reliability, pytest.mark.found_bug]

N4 = ipaddress.IPv4Network
N6 = ipaddress.IPv6Network
HOSTNAME = "node-1"
TIMEOUT_KEYS = ("NAT64TCPEstablishedTimeout", "NAT64TCPTransitoryTimeout", "NAT64UDPTimeout",
                "NAT64ICMPTimeout")


def _config(**values: str) -> m.ConfigUpdate:
    return m.ConfigUpdate(MappingProxyType(values))


# -- 1. An over-long duration crashes settings validation and the driver loop -------------------
# felix_nat64/model/settings.py `_timeout` formats the rejected value with
# values.format_duration, which calls int() on it; a duration of 309 or more
# digits parses to float('inf'), so int() raises OverflowError, which
# resolve_settings (documented "never raises") does not catch. The exception
# leaves DataplaneLoop.handle and ends the loop thread.


@pytest.mark.parametrize("key", TIMEOUT_KEYS)
def test_overlong_duration_is_rejected_not_raised(key: str) -> None:
    value = "9" * 400 + "s"
    result = resolve_settings(_config(**{key: value}), HOSTNAME)  # as found: OverflowError
    assert not result.ok
    (error,) = result.errors
    assert (error.key, error.value) == (key, value) and error.reason


def test_overlong_duration_does_not_stop_the_driver_loop() -> None:
    dataplane = RecordingDataplane()
    status = StatusBoard()
    loop = DataplaneLoop(queue.Queue(), dataplane, status, view=FelixView(default_hostname=HOSTNAME))
    loop.handle(_config(NAT64Prefixes="64:ff9b::/96"))
    loop.handle(m.InSync())
    loop.step()
    # As found, this raised OverflowError out of handle(), which ended the loop thread.
    loop.handle(_config(NAT64Prefixes="64:ff9b::/96", NAT64UDPTimeout="9" * 400 + "m"))
    loop.step()
    assert len(dataplane.applied) == 1
    ready, reasons = status.readiness()
    assert not ready and "NAT64UDPTimeout" in reasons[0]


# -- 2. Overlapping NAT64SourceCIDRs are accepted but nftables refuses them ---------------------
# felix_nat64/model/settings.py `_source_cidrs` rejects exact duplicates only.
# The CIDRs become the elements of the interval set `sources6`
# (drivers/nft/ruleset.py render), and nftables refuses overlapping elements
# in an interval set ("Error: conflicting intervals specified"), so every
# apply fails and the driver retries forever with NAT64 down. Either the
# setting is rejected naming key and value, or the set holds disjoint ranges.


@pytest.mark.parametrize("sources", ["fd00::/48,fd00::/64", "fd00:10::/64,fd00:10::1/128",
                                     "fd00::/8,fd00:1::/64"])
def test_overlapping_source_cidrs_are_rejected_or_merged(sources: str) -> None:
    result = resolve_settings(_config(NAT64Prefixes="64:ff9b::/96", NAT64SourceCIDRs=sources), HOSTNAME)
    if not result.ok:
        assert [(e.key, e.value) for e in result.errors] == [("NAT64SourceCIDRs", sources)]
        return
    assert result.settings is not None
    desired = build_desired(Inputs(result.settings))
    elements = [N6(e["prefix"]["addr"] + "/" + str(e["prefix"]["len"])) if isinstance(e, dict) else N6(e)
                for e in render(desired).elements["sources6"]]
    overlapping = [(a, b) for i, a in enumerate(elements) for b in elements[i + 1:] if a.overlaps(b)]
    assert overlapping == [], f"nftables will refuse the interval set sources6: {overlapping}"


# -- 3. The cost of a recalculation grows with the size of NAT64Pool4CIDR -------------------------
# felix_nat64/model/desired.py allocate_blocks builds
# `list(pool4_cidr.subnets(new_prefix=28))`: every /28 of the range, on every
# recalculation. settings.py `_pool4` sets no upper bound on the range, so
# NAT64Pool4CIDR=10.0.0.0/8 (accepted) costs about 12 s and 200 MB per
# recalculation, and 128.0.0.0/1 (accepted) would need 2^27 blocks, tens of GB.
# Either such ranges are rejected naming the key, or the calculation costs
# the same whatever the range's size.


def _peak_of_build(pool4: str) -> int | None:
    result = resolve_settings(_config(NAT64Prefixes="64:ff9b::/96", NAT64Pool4CIDR=pool4), HOSTNAME)
    if not result.ok:
        assert [e.key for e in result.errors] == ["NAT64Pool4CIDR"]
        return None
    assert result.settings is not None
    tracemalloc.start()
    try:
        build_desired(Inputs(result.settings))
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_large_pool4_range_is_rejected_or_costs_no_more_than_a_small_one() -> None:
    small = _peak_of_build("169.254.64.0/24")
    assert small is not None
    large = _peak_of_build("10.0.0.0/12")  # 65536 blocks; as found, about 12 MB and 0.5 s
    if large is not None:
        assert large <= 4 * small + 256 * 1024, f"{large} bytes to allocate one translator in a /12"


# -- 4. Complete frames before a corrupt length are lost or kept depending on read size --------
# felix_nat64/wire/framing.py FrameDecoder.feed raises FramingError as soon as
# it meets a length above the cap, dropping the complete frames it already
# collected in the same call. The same bytes therefore give different
# messages depending on where reads split them (the class promises "whatever
# the read boundaries"): with one read, `felix-nat64 render` of a small
# recording whose last header is corrupt shows no settings, pools or InSync
# at all; read frame by frame, it shows them.


def test_frames_before_a_corrupt_length_do_not_depend_on_read_boundaries() -> None:
    frames = [
        encode_frame(pb.ToDataplane(config_update=pb.ConfigUpdate(config={"NAT64Prefixes": "64:ff9b::/96"}))
                     .SerializeToString()),
        encode_frame(pb.ToDataplane(in_sync=pb.InSync()).SerializeToString()),
    ]
    corrupt = (2**63).to_bytes(8, "little")

    def run(chunks: list[bytes]) -> tuple[list[object], str]:
        events: list[object] = []
        error = pump(iter(chunks), events.append, StreamCounters())
        return events, error

    by_frame, error_by_frame = run([*frames, corrupt])
    one_read, error_one_read = run([b"".join(frames) + corrupt])
    assert error_by_frame == error_one_read and "exceeds" in error_one_read
    assert len(by_frame) == 2
    assert one_read == by_frame  # as found: [] with one read


# -- 5. NAT64MetricsHost accepts "localhost" but not "Localhost" --------------------------------
# felix_nat64/model/settings.py `_host` compares the stripped text with
# "localhost" without lower-casing it, so a case variant of a valid value is
# rejected ("expected an IP address to listen on"). Host names are
# case-insensitive; every other setting accepts case variants.


@pytest.mark.parametrize("value", ["Localhost", "LOCALHOST", " LocalHost "])
def test_case_variants_of_localhost_are_accepted(value: str) -> None:
    result = resolve_settings(_config(NAT64MetricsHost=value), HOSTNAME)
    assert result.ok, [str(e) for e in result.errors]
    assert result.settings is not None and result.settings.metrics_host == "127.0.0.1"


# -- 6. A case conflict in a Felix parameter felix-nat64 does not read rejects its settings -----
# felix_nat64/model/settings.py `_candidates` reports "set it once" for any
# two spellings of one key with different values, before checking whether
# the key is one felix-nat64 reads. A conflict in, say, LogSeverityScreen
# (Felix's business) therefore rejects all NAT64 settings and keeps NAT64 off
# or stale. Felix's resolved map has one spelling per parameter, but
# per-source maps (FelixConfiguration annotations, config files) can carry
# two. Only keys in SPECS, or starting with NAT64, should be checked.


@pytest.mark.parametrize("source", [None, "config file"])
def test_case_conflict_in_a_key_we_do_not_read_is_ignored(source: str | None) -> None:
    values = {"NAT64Prefixes": "64:ff9b::/96", "LogSeverityScreen": "Info", "logseverityscreen": "Debug"}
    if source is None:
        update = m.ConfigUpdate(MappingProxyType(values))
    else:
        update = m.ConfigUpdate(MappingProxyType({}), (m.RawConfigSource(source, MappingProxyType(values)),))
    result = resolve_settings(update, HOSTNAME)
    assert result.ok, [str(e) for e in result.errors]
