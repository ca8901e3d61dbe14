"""Bad input on the Felix stream: nothing crashes and the dataplane is never changed wrongly.

Streams are generated (random bytes, random protobuf, structured Felix
messages in any order with unknown fields and garbage mixed in), cut into
reads at random boundaries and fed through `pump`, `FelixView` and a
`DataplaneLoop` driving a recording dataplane. Every apply is compared with
an independent model: plain dicts of pools and hosts, the last accepted
settings, and `build_desired` on them.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import queue
import struct
import threading
import tracemalloc
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from felix_nat64.dataplane.loop import DataplaneLoop, LoopOptions, StreamEnd
from felix_nat64.dataplane.managers import FelixView
from felix_nat64.model.desired import DesiredStateError, build_desired
from felix_nat64.model.settings import Settings, resolve_settings
from felix_nat64.model.state import DesiredState, Host, Inputs, Pool, TunnelAddress
from felix_nat64.model.workloads import Workload
from felix_nat64.observe.status import StatusBoard
from felix_nat64.testing import protowire as pw
from felix_nat64.wire import felixbackend_pb2 as pb
from felix_nat64.wire import messages as m
from felix_nat64.wire.framing import MAX_FRAME_BYTES, FrameDecoder, FramingError, encode_frame
from felix_nat64.wire.transport import StreamCounters, StreamReader, pump
from tests.fakes import RecordingDataplane

pytestmark = pytest.mark.reliability

N4 = ipaddress.IPv4Network
N6 = ipaddress.IPv6Network
A4 = ipaddress.IPv4Address
A6 = ipaddress.IPv6Address

HOSTNAME = "node-1"
SMALL_CAP = 4096  # a frame cap small enough for generated lengths to cross it cheaply
EXAMPLES = settings().max_examples  # from the profile loaded in conftest
USED_FIELDS = sorted(m.USED_PAYLOADS)
SKIPPED_FIELDS = sorted(m.SKIPPED_PAYLOAD_NAMES)
# With a frozen clock no periodic resync or retry ever falls due, so every
# apply seen is one that the messages called for.
FROZEN_CLOCK = 1000.0
NO_WAIT = LoopOptions(coalesce_seconds=0.0, max_coalesce_seconds=0.0)


# ---------------------------------------------------------------------------
# The recording dataplane and the independent model.


@dataclass
class Model:
    """What the driver should believe, folded with plain dict logic."""

    in_sync: bool = False
    settings: Settings | None = None
    last_config_ok: bool | None = None
    pools: dict[str, Pool] = field(default_factory=dict)
    hosts: dict[str, tuple[A4 | None, A6 | None]] = field(default_factory=dict)
    # Pods by endpoint: they only name sessions, never change the desired state.
    endpoints: dict[m.EndpointId, tuple[str, tuple[N6, ...]]] = field(default_factory=dict)
    tunnels: dict[tuple[str, str], tuple[A4, ...]] = field(default_factory=dict)
    services: tuple[N4 | N6, ...] = ()

    def fold(self, event: object) -> None:
        if isinstance(event, m.InSync):
            self.in_sync = True
        elif isinstance(event, m.ConfigUpdate):
            result = resolve_settings(event, HOSTNAME)
            self.last_config_ok = result.ok
            if result.ok:
                self.settings = result.settings
        elif isinstance(event, m.PoolUpdate):
            self.pools[event.pool_id] = Pool(event.pool_id, event.cidr, event.masquerade, event.allowed_uses)
        elif isinstance(event, m.PoolRemove):
            self.pools.pop(event.pool_id, None)
        elif isinstance(event, m.HostUpdate):
            v4, v6 = self.hosts.get(event.hostname, (None, None))
            self.hosts[event.hostname] = (event.ipv4 if event.sets_ipv4 else v4,
                                          event.ipv6 if event.sets_ipv6 else v6)
        elif isinstance(event, m.HostRemove):
            if event.ipv6_only:
                if event.hostname in self.hosts:
                    self.hosts[event.hostname] = (self.hosts[event.hostname][0], None)
            else:
                self.hosts.pop(event.hostname, None)
        elif isinstance(event, m.EndpointUpdate):
            nets = []
            for text in event.ipv6_nets:
                with contextlib.suppress(ValueError):
                    net = ipaddress.ip_network(text.strip(), strict=False)
                    if net.version == 6:
                        nets.append(net)
            self.endpoints[event.endpoint_id] = (event.endpoint_id.workload, tuple(nets[:8]))
        elif isinstance(event, m.EndpointRemove):
            self.endpoints.pop(event.endpoint_id, None)
        elif isinstance(event, m.TunnelUpdate):
            self.tunnels[(event.hostname, event.kind)] = event.addresses
        elif isinstance(event, m.TunnelRemove):
            self.tunnels.pop((event.hostname, event.kind), None)
        elif isinstance(event, m.ServiceCidrs):
            self.services = event.cidrs
        else:
            assert isinstance(event, m.Undecodable), f"pump emitted {event!r}"

    def desired(self, previous_blocks: Mapping[N6, N4]) -> DesiredState | None:
        """The state the kernel must be given now, or None if nothing may be applied."""
        if not self.in_sync or self.settings is None:
            return None
        inputs = Inputs(
            self.settings,
            tuple(self.pools[k] for k in sorted(self.pools)),
            tuple(Host(name, *self.hosts[name]) for name in sorted(self.hosts)),
            dict(previous_blocks),
            tuple(sorted({TunnelAddress(h, k, a) for (h, k), addrs in self.tunnels.items() for a in addrs})),
            tuple(sorted(self.services, key=str)),
        )
        try:
            return build_desired(inputs)
        except DesiredStateError:
            return None


class Checker:
    """Steps a loop and checks each step against the model; counts what it saw."""

    def __init__(self, tally: Counter[str], prefix: str) -> None:
        self.tally = tally
        self.prefix = prefix
        self.dataplane = RecordingDataplane()
        self.status = StatusBoard()
        self.loop = DataplaneLoop(queue.Queue(), self.dataplane, self.status,
                                  view=FelixView(default_hostname=HOSTNAME), options=NO_WAIT,
                                  clock=lambda: FROZEN_CLOCK, wall_clock=lambda: FROZEN_CLOCK)
        self.model = Model()
        self.applied: DesiredState | None = None

    def handle(self, event: m.FelixMessage | m.Undecodable) -> None:
        self.loop.handle(event)
        self.model.fold(event)

    def step(self) -> None:
        before = len(self.dataplane.applied)
        self.loop.step()
        new = list(self.dataplane.applied[before:])
        previous = self.applied.blocks if self.applied is not None else {}
        expected = self.model.desired(previous)
        self.tally[f"{self.prefix}.steps_checked"] += 1
        if expected is None or expected == self.applied:
            wrong = new != []
            want: list[DesiredState] = []
        else:
            want = [expected]
            wrong = new != want
        if wrong:
            self.tally[f"{self.prefix}.wrong_changes"] += 1
        assert not wrong, (f"dataplane got {len(new)} applies, model wanted {len(want)}; "
                           f"in_sync={self.model.in_sync} settings_ok={self.model.last_config_ok}")
        if new:
            self.tally[f"{self.prefix}.applies_checked"] += 1
            self.applied = new[-1]
        if not self.model.in_sync:
            assert self.dataplane.adopt_calls == 0, "the kernel was read before InSync"
        if self.model.last_config_ok is False:
            ready, reasons = self.status.readiness()
            assert not ready and any(r.startswith("invalid settings: ") for r in reasons), reasons

    def final_check(self) -> None:
        view = self.loop.view
        assert view.in_sync == self.model.in_sync
        assert view.pools.pools == self.model.pools
        assert {h: (x.ipv4, x.ipv6) for h, x in view.hosts.hosts.items()} == self.model.hosts
        assert view.settings.in_force == self.model.settings
        assert {k: (e.workload, e.ipv6) for k, e in view.endpoints.endpoints.items()} == {
            k: (Workload.from_workload_id(w), nets) for k, (w, nets) in self.model.endpoints.items()}


@contextlib.contextmanager
def counting_crashes(tally: Counter[str], prefix: str) -> Iterator[None]:
    """Counts an exception escaping the code under test (a crash), then lets it fail the test."""
    tally[f"{prefix}.inputs"] += 1
    try:
        yield
    except AssertionError:
        raise
    except Exception:
        tally[f"{prefix}.crashes"] += 1
        raise


def pump_all(chunks: Sequence[bytes], cap: int = MAX_FRAME_BYTES) -> tuple[list[Any], StreamCounters, str]:
    events: list[Any] = []
    counters = StreamCounters()
    error = pump(iter(chunks), events.append, counters, cap)
    assert isinstance(error, str)
    return events, counters, error


def split(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


# ---------------------------------------------------------------------------
# Frames: what each generated frame must decode to.


@dataclass(frozen=True)
class Frame:
    """One frame body and what `pump` must emit for it.

    kind: "exact" (emits `message`), "undecodable" (an Undecodable for
    payload `field_number`), "config" (a ConfigUpdate that resolves as
    `config_ok`, to `settings` when good), "none" (nothing: a payload we skip),
    "one" (exactly one event for used payload `field_number`, any content),
    "any" (garbage: at most one event).
    """

    body: bytes
    kind: str
    message: object = None
    field_number: int | None = None
    config_ok: bool | None = None
    settings: Settings | None = None

    def check(self, events: list[Any]) -> None:
        if self.kind == "exact":
            assert events == [self.message], (events, self.message)
        elif self.kind == "undecodable":
            assert len(events) == 1 and isinstance(events[0], m.Undecodable), events
            assert events[0].used and events[0].field_number == self.field_number, events
        elif self.kind == "config":
            assert len(events) == 1 and isinstance(events[0], m.ConfigUpdate), events
            result = resolve_settings(events[0], HOSTNAME)
            assert result.ok == self.config_ok, result.errors
            if self.config_ok:
                assert result.settings == self.settings
        elif self.kind == "none":
            assert events == []
        elif self.kind == "one":
            assert len(events) == 1, events
            ev = events[0]
            if isinstance(ev, m.Undecodable):
                # Endpoints only name pods: a broken one is not a payload NAT64 needs.
                needed = self.field_number not in m.NAMING_PAYLOADS
                assert ev.used == needed and ev.field_number == self.field_number, ev
            else:
                assert isinstance(ev, m.FelixMessage), ev  # type: ignore[arg-type]
        else:
            assert len(events) <= 1, events
            for ev in events:
                assert isinstance(ev, m.FelixMessage | m.Undecodable), ev
                if isinstance(ev, m.Undecodable):
                    assert ev.used == (ev.field_number not in m.NAMING_PAYLOADS), ev


# Hypothesis draws early entries of a list more often: the common cases come first.
GOOD_CONFIGS: tuple[dict[str, str], ...] = (
    {"NAT64Prefixes": "64:ff9b::/96"},
    {},
    {"NAT64Prefixes": "64:ff9b::/96,2001:db8:64::/96", "NAT64MTU": "1400"},
    {"NAT64Prefixes": "2001:db8:64::a00:0/104", "NAT64SourceCIDRs": "fd00:10::/64"},
    {"NAT64Prefixes": "64:ff9b::/96", "NAT64Enabled": "false"},
    {"NAT64Prefixes": " 64:FF9B::/96 ", "NAT64Pool4CIDR": "100.127.0.0/24",
     "NAT64SNATAddress": "192.0.2.10", "NAT64PortRange": "32768-65535", "NAT64Pool4PortRange": "2000-3000"},
    {"NAT64Prefixes": "2001:db8:1::/96,2001:db8:2::/96,2001:db8:3::/96",
     "NAT64Pool4CIDR": "169.254.70.0/26", "NAT64ResyncInterval": "1s"},
)
BAD_CONFIGS: tuple[dict[str, str], ...] = (
    {"NAT64Prefixes": "64:ff9b::/64"},
    {"NAT64Prefixes": "64:ff9b::/96", "NAT64MTU": "1"},
    {"NAT64Prefixes": "64:ff9b::/96", "NAT64SourceCIDRs": "64:ff9b::/64"},
    {"NAT64Prefixes": ",".join(f"2001:db8:{i:x}::/96" for i in range(17))},
    {"NAT64Prefix": "64:ff9b::/96"},
    {"NAT64Prefixes": "64:ff9b::/96", "NAT64FirewallMark": "0x4000"},
    {"NAT64Prefixes": "10.0.0.0/8"},
    {"NAT64Prefixes": "64:ff9b::/96", "NAT64UDPTimeout": "5 minutes"},
)
# Felix's own parameters: forwarded in every ConfigUpdate, none of them ours. One spelling
# each, as Felix's resolved map has (case conflicts are in test_found_bugs.py).
FELIX_KEYS = ("LogSeverityScreen", "IPv6Support", "MetadataAddr", "ReportingIntervalSecs",
              "DataplaneDriver", "UseInternalDataplaneDriver", "HealthEnabled")
SOURCE_STYLES = {"env": ("environment variable", 5), "host": ("datastore (per-host)", 3),
                 "global": ("datastore (global)", 1)}


def _canonical(values: Mapping[str, str]) -> Settings | None:
    return resolve_settings(m.ConfigUpdate(MappingProxyType(dict(values))), HOSTNAME).settings


@st.composite
def config_frames(draw: st.DrawFn) -> tuple[int, bytes, Frame]:
    good = draw(st.booleans())
    values = draw(st.sampled_from(GOOD_CONFIGS if good else BAD_CONFIGS))
    style = draw(st.sampled_from(["resolved", *SOURCE_STYLES]))
    junk = draw(st.dictionaries(st.sampled_from(FELIX_KEYS), st.text(max_size=12), max_size=4))
    msg = pb.ToDataplane()
    cu = msg.config_update
    cu.SetInParent()
    if style == "resolved":
        cu.config.update(values)
    else:
        name, number = SOURCE_STYLES[style]
        raw_values = {k.lower(): v for k, v in values.items()} if style == "env" else dict(values)
        raw = cu.source_to_raw_config[number]
        raw.source = name
        raw.config.update(raw_values)
        cu.config.update(raw_values)
    cu.config.update(junk)
    frame = Frame(b"", "config", config_ok=good, settings=_canonical(values) if good else None)
    return 13, cu.SerializeToString(deterministic=True), frame


POOL_CIDRS: dict[str, N4 | N6 | None] = {
    "fd00:10::/64": N6("fd00:10::/64"),
    "fd00:20::/56": N6("fd00:20::/56"),
    "10.244.0.0/16": N4("10.244.0.0/16"),
    "64:ff9b::/96": N6("64:ff9b::/96"),  # the disabled pool covering the prefix
    "64:ff9b::/64": N6("64:ff9b::/64"),  # a big pool containing the prefix
    "2001:db8:64::/112": N6("2001:db8:64::/112"),  # a pool inside the second prefix
    "fd00:30::1/64": N6("fd00:30::/64"),  # host bits: Felix's value is taken leniently
    " 10.1.0.0/16 ": N4("10.1.0.0/16"),
    "not-a-cidr": None,
    "": None,
    "10.0.0.0/33": None,
}
POOL_IDS = ("p0", "p1", "p2", "p3")
USES = ((), ("Workload",), ("Tunnel",), ("Workload", "Tunnel"), ("LoadBalancer",))


@st.composite
def pool_frames(draw: st.DrawFn) -> tuple[int, bytes, Frame]:
    seq = draw(seqs)
    if draw(st.integers(0, 3)) == 0:
        pool_id = draw(st.sampled_from([*POOL_IDS, "p-unknown", ""]))
        msg = pb.IPAMPoolRemove(id=pool_id)
        return 17, msg.SerializeToString(), Frame(b"", "exact", m.PoolRemove(pool_id, seq))
    pool_id = draw(st.sampled_from(POOL_IDS))
    text = draw(st.sampled_from(list(POOL_CIDRS)))
    masquerade = draw(st.booleans())
    uses = draw(st.sampled_from(USES))
    upd = pb.IPAMPoolUpdate(id=pool_id)
    upd.pool.cidr = text
    upd.pool.masquerade = masquerade
    upd.pool.allowed_uses.extend(uses)
    cidr = POOL_CIDRS[text]
    if cidr is None:
        return 16, upd.SerializeToString(), Frame(b"", "undecodable", field_number=16)
    expected = m.PoolUpdate(pool_id, cidr, masquerade, uses, seq)
    return 16, upd.SerializeToString(), Frame(b"", "exact", expected)


V4_TEXTS: dict[str, A4 | bool | None] = {
    "10.0.0.1": A4("10.0.0.1"), "": None, "10.0.0.2/32": A4("10.0.0.2"),
    "192.168.5.7/24": A4("192.168.5.7"), "203.0.113.9": A4("203.0.113.9"),
    "fd00::9": False, "999.1.1.1": False,
}
V6_TEXTS: dict[str, A6 | bool | None] = {
    "fd00::1/128": A6("fd00::1"), "": None, "2001:db8::7": A6("2001:db8::7"),
    "fd00:1::5/64": A6("fd00:1::5"), "10.0.0.1": False, "zz::1": False,
}
_KNOWN_HOSTS = st.sampled_from(["node-1", "node-2", "node-3"])
HOSTNAMES = st.one_of(_KNOWN_HOSTS, _KNOWN_HOSTS, _KNOWN_HOSTS, st.text(max_size=20))
LABELS = st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3)
seqs = st.integers(0, 2**64 - 1)


@st.composite
def host_frames(draw: st.DrawFn) -> tuple[int, bytes, Frame]:
    seq = draw(seqs)
    number = draw(st.sampled_from([14, 36, 35, 37, 18, 38]))
    name = draw(HOSTNAMES)
    if number in (18, 36, 38):
        cls = {18: pb.HostMetadataRemove, 36: pb.HostMetadataV6Remove, 38: pb.HostMetadataV4V6Remove}[number]
        body = cls(hostname=name).SerializeToString()
        return number, body, Frame(b"", "exact", m.HostRemove(name, ipv6_only=number == 36, seq=seq))
    v6_text = draw(st.sampled_from(list(V6_TEXTS)))
    v6 = V6_TEXTS[v6_text]
    if number == 35:
        body = pb.HostMetadataV6Update(hostname=name, ipv6_addr=v6_text).SerializeToString()
        if v6 is False:
            return 35, body, Frame(b"", "undecodable", field_number=35)
        expected = m.HostUpdate(name, None, v6, sets_ipv4=False, sets_ipv6=True,  # type: ignore[arg-type]
                                variant="host_metadata_v6_update", seq=seq)
        return 35, body, Frame(b"", "exact", expected)
    v4_text = draw(st.sampled_from(list(V4_TEXTS)))
    v4 = V4_TEXTS[v4_text]
    labels = draw(LABELS)
    cls = pb.HostMetadataUpdate if number == 14 else pb.HostMetadataV4V6Update
    asnumber = draw(st.sampled_from(["", "64512"]))
    msg = cls(hostname=name, ipv4_addr=v4_text, ipv6_addr=v6_text, asnumber=asnumber)
    msg.labels.update(labels)
    body = msg.SerializeToString(deterministic=True)
    if v4 is False or v6 is False:
        return number, body, Frame(b"", "undecodable", field_number=number)
    expected = m.HostUpdate(
        name, v4, v6,  # type: ignore[arg-type]
        sets_ipv4=True, sets_ipv6=True if number == 37 else bool(v6_text),
        variant="host_metadata_update" if number == 14 else "host_metadata_v4v6_update",
        labels=MappingProxyType(dict(labels)), seq=seq)
    return number, body, Frame(b"", "exact", expected)


def in_sync_frames() -> st.SearchStrategy[tuple[int, bytes, Frame]]:
    return seqs.map(lambda seq: (1, b"", Frame(b"", "exact", m.InSync(seq))))


# -- protobuf-shaped garbage ---------------------------------------------------

FIELD_NUMBERS = st.one_of(st.sampled_from([*USED_FIELDS, 15, *SKIPPED_FIELDS[:6], 39, 99]),
                          st.integers(1, 2**29 - 1))
INTERESTING_TEXT = st.sampled_from(["64:ff9b::/96", "fd00::/64", "10.0.0.1", "fd00::1", "node-1",
                                    "nat64prefixes", "NAT64MTU", "p0", "Workload", "none", ""])
TEXT_BYTES = st.one_of(INTERESTING_TEXT, st.text(max_size=24)).map(str.encode)


def _scalar_fields() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.builds(lambda n, v: pw.key(n, 0) + pw.varint(v), FIELD_NUMBERS, st.integers(0, 2**64 - 1)),
        st.builds(lambda n, v: pw.key(n, 1) + v, FIELD_NUMBERS, st.binary(min_size=8, max_size=8)),
        st.builds(lambda n, v: pw.key(n, 5) + v, FIELD_NUMBERS, st.binary(min_size=4, max_size=4)),
        st.builds(pw.length_delimited, FIELD_NUMBERS, st.one_of(TEXT_BYTES, st.binary(max_size=24))),
    )


def _corrupt_fields() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.builds(pw.key, FIELD_NUMBERS, st.sampled_from([3, 4, 6, 7])),  # groups and unknown wire types
        st.builds(lambda n, k, b: pw.key(n, 2) + pw.varint(len(b) + k) + b,  # length past the end
                  FIELD_NUMBERS, st.integers(1, 2**40), st.binary(max_size=8)),
        st.just(b"\x80" * 11 + b"\x01"),  # an overlong varint tag
        st.just(b"\x00"),  # field number 0
        st.binary(min_size=1, max_size=6),
    )


protobuf_messages = st.recursive(
    st.lists(_scalar_fields(), max_size=5).map(b"".join),
    lambda inner: st.lists(
        st.one_of(_scalar_fields(), st.builds(pw.length_delimited, FIELD_NUMBERS, inner)), max_size=5,
    ).map(b"".join),
    max_leaves=24,
)
maybe_corrupt_messages = st.one_of(
    protobuf_messages,
    st.builds(lambda a, c, b: a + c + b, protobuf_messages, _corrupt_fields(), protobuf_messages),
    st.builds(lambda msg, cut: msg[: cut % (len(msg) + 1)], protobuf_messages, st.integers(0, 10**6)),
)


@st.composite
def garbage_frames(draw: st.DrawFn) -> Frame:
    """Garbage inside a used payload, inside a skipped one, or a whole random frame body."""
    choice = draw(st.integers(0, 2))
    seq = pw.uint(15, draw(seqs))
    if choice == 0:
        number = draw(st.sampled_from(USED_FIELDS))
        body = pw.length_delimited(number, draw(maybe_corrupt_messages)) + seq
        return Frame(body, "one", field_number=number)
    if choice == 1:
        number = draw(st.one_of(st.sampled_from(SKIPPED_FIELDS), st.integers(39, 2**29 - 1)))
        inner = draw(st.one_of(maybe_corrupt_messages, st.binary(max_size=64)))
        payload = pw.length_delimited(number, inner)
        body = payload + seq if number >= 15 else seq + payload
        return Frame(body, "none")
    return Frame(draw(st.one_of(maybe_corrupt_messages, st.binary(max_size=64))), "any")


# -- unknown fields a future Felix may add -------------------------------------

UNKNOWN_NUMBERS = st.integers(100, 2**29 - 1)  # beyond every field our schema declares


def _unknown_fields(numbers: st.SearchStrategy[int]) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.builds(lambda n, v: pw.key(n, 0) + pw.varint(v), numbers, st.integers(0, 2**64 - 1)),
        st.builds(lambda n, v: pw.key(n, 1) + v, numbers, st.binary(min_size=8, max_size=8)),
        st.builds(lambda n, v: pw.key(n, 5) + v, numbers, st.binary(min_size=4, max_size=4)),
        st.builds(pw.length_delimited, numbers, st.one_of(protobuf_messages, st.binary(max_size=16))),
    )


TOP_LEVEL_UNKNOWN = st.one_of(
    _unknown_fields(UNKNOWN_NUMBERS),
    st.builds(pw.length_delimited, st.sampled_from(SKIPPED_FIELDS), protobuf_messages),
)


@st.composite
def structured_frames(draw: st.DrawFn) -> Frame:
    """A well-formed Felix message, maybe with unknown fields, fields in any order."""
    number, sub, frame = draw(st.one_of(host_frames(), pool_frames(), host_frames(), in_sync_frames(),
                                        pool_frames(), host_frames(), config_frames()))
    seq = frame.message.seq if isinstance(frame.message, m.FelixMessage) else draw(seqs)  # type: ignore[arg-type]
    if draw(st.booleans()):
        inner = draw(st.lists(_unknown_fields(UNKNOWN_NUMBERS), max_size=3))
        at = draw(st.integers(0, len(inner)))
        sub = b"".join(inner[:at]) + sub + b"".join(inner[at:])
        extra = draw(st.lists(TOP_LEVEL_UNKNOWN, max_size=3))
        parts = [pw.length_delimited(number, sub), pw.uint(15, seq), *extra]
        order = draw(st.permutations(range(len(parts))))
        body = b"".join(parts[i] for i in order)
    else:
        body = pw.uint(15, seq) + pw.length_delimited(number, sub)
    return Frame(body, frame.kind, frame.message, frame.field_number, frame.config_ok, frame.settings)


_one_frame = st.one_of(structured_frames(), structured_frames(), structured_frames(), garbage_frames())


@st.composite
def frames_strategy(draw: st.DrawFn) -> list[Frame]:
    """Any order at all, or (half the time) Felix's order: config, snapshot, InSync, updates,
    sometimes cut before the InSync (Felix stopped in the middle of its snapshot)."""
    # Sizes drawn uniformly: long sequences are where order and coalescing matter.
    frames = [draw(_one_frame) for _ in range(draw(st.integers(0, 30)))]
    if draw(st.booleans()):
        _, sub, config = draw(config_frames().filter(lambda c: bool(c[2].config_ok)))
        at = draw(st.integers(0, len(frames)))
        snapshot, updates = frames[:at], frames[at:]
        sync = Frame(pw.length_delimited(1, b""), "exact", m.InSync(0))
        frames = [Frame(pw.length_delimited(13, sub), "config", config_ok=True, settings=config.settings),
                  *snapshot]
        if draw(st.integers(0, 3)):
            frames += [sync, *updates]
    return frames


# ---------------------------------------------------------------------------
# Properties.


@given(frames=frames_strategy(), cuts=st.lists(st.integers(0, 10**6), max_size=12),
       steps=st.lists(st.booleans(), min_size=30, max_size=30))
def test_any_message_sequence_is_handled_and_applied_exactly_as_the_model_says(
        frames: list[Frame], cuts: list[int], steps: list[bool], tally: Counter[str]) -> None:
    """Structured messages in any order with garbage mixed in: decode as expected,
    the same whatever the read boundaries, and every apply equals the model's."""
    with counting_crashes(tally, "stream"):
        tally["stream.frames"] += len(frames)
        per_frame: list[list[Any]] = []
        for frame in frames:
            events, _, error = pump_all([encode_frame(frame.body)])
            assert error == ""
            frame.check(events)
            per_frame.append(events)
        expected_events = [ev for evs in per_frame for ev in evs]
        data = b"".join(encode_frame(f.body) for f in frames)
        whole, whole_counters, error = pump_all([data])
        assert error == "" and whole == expected_events
        pieces, piece_counters, error = pump_all(split(data, cuts))
        assert error == "" and pieces == expected_events
        assert whole_counters == piece_counters
        assert whole_counters.frames == len(frames)

        checker = Checker(tally, "stream")
        for event, step_now in zip(expected_events, steps + [False] * len(expected_events), strict=False):
            checker.handle(event)
            if step_now:
                checker.step()
        checker.step()
        checker.step()  # nothing new arrived: a second step must not apply again
        checker.final_check()


def _frame_oracle(data: bytes, cap: int) -> tuple[list[bytes], str, int]:
    """Independent framing: the frame bodies, then '', 'exceeds' or 'inside' and the offset."""
    pos = 0
    bodies: list[bytes] = []
    while len(data) - pos >= 8:
        (length,) = struct.unpack_from("<Q", data, pos)
        if length > cap:
            return bodies, "exceeds", pos
        if pos + 8 + length > len(data):
            return bodies, "inside", pos
        bodies.append(data[pos + 8 : pos + 8 + length])
        pos += 8 + length
    return bodies, ("inside" if pos < len(data) else ""), pos


framed_random = st.builds(
    lambda bodies, tail: b"".join(encode_frame(b) for b in bodies) + tail,
    st.lists(st.one_of(st.binary(max_size=48), maybe_corrupt_messages), max_size=12),
    st.one_of(
        st.just(b""),
        st.binary(max_size=24),  # a partial header or a truncated frame, or more garbage
        st.builds(lambda n, b: struct.pack("<Q", n) + b, st.integers(SMALL_CAP + 1, 2**64 - 1),
                  st.binary(max_size=16)),
        st.builds(lambda n, b: struct.pack("<Q", n) + b[: max(0, n - 1)], st.integers(1, SMALL_CAP),
                  st.binary(max_size=64)),
    ),
)


@given(data=st.one_of(st.binary(max_size=512), framed_random),
       cuts=st.lists(st.integers(0, 10**6), max_size=8))
def test_random_bytes_never_crash_and_framing_errors_end_the_stream(
        data: bytes, cuts: list[int], tally: Counter[str]) -> None:
    """`pump` returns '' exactly for well-framed input, otherwise the framing error at the right offset."""
    with counting_crashes(tally, "bytes"):
        bodies, verdict, offset = _frame_oracle(data, SMALL_CAP)
        events, counters, error = pump_all(split(data, cuts), SMALL_CAP)
        if verdict == "":
            assert error == ""
            assert counters.frames == len(bodies)
        elif verdict == "exceeds":
            assert "exceeds the 4096-byte cap" in error and f"stream offset {offset}" in error, error
            assert counters.frames <= len(bodies)
            tally["bytes.framing_errors"] += 1
        else:
            assert "stream ended inside a frame" in error and f"stream offset {offset}" in error, error
            assert counters.frames == len(bodies)
            tally["bytes.framing_errors"] += 1
        # Whatever was emitted is a prefix of what the frames decode to one by one.
        one_by_one = [ev for body in bodies[: counters.frames] for ev in pump_all([encode_frame(body)])[0]]
        assert events == one_by_one
        checker = Checker(tally, "bytes")
        for event in events:
            checker.handle(event)
        checker.step()


@given(body=st.one_of(
    maybe_corrupt_messages,
    st.builds(lambda n, msg, seq: pw.length_delimited(n, msg) + seq,
              st.sampled_from(USED_FIELDS), maybe_corrupt_messages, st.builds(pw.uint, st.just(15), seqs)),
))
def test_random_protobuf_in_any_payload_is_handled_or_ignored(body: bytes, tally: Counter[str]) -> None:
    """Random fields, wire types and nesting: decoded, counted as undecodable, or skipped; never fatal."""
    with counting_crashes(tally, "protobuf"):
        events, counters, error = pump_all([encode_frame(body)])
        assert error == "" and counters.frames == 1 and len(events) <= 1
        undecodable = counters.undecodable_used + counters.undecodable_other
        assert sum(counters.by_payload.values()) + undecodable == 1
        for event in events:
            assert isinstance(event, m.FelixMessage | m.Undecodable)
            if isinstance(event, m.Undecodable):
                tally["protobuf.undecodable_used"] += 1
            else:
                tally["protobuf.decoded"] += 1
        checker = Checker(tally, "protobuf")
        for event in [*events, m.InSync()]:
            checker.handle(event)
        checker.step()


# -- malformed framing through the real reader thread and loop -----------------


class WatchedQueue(queue.Queue[Any]):
    """Counts StreamEnds put and events taken; notes, for every apply, how many
    events the loop had taken, and which applies came after it took the end."""

    def __init__(self, dataplane: RecordingDataplane) -> None:
        super().__init__()
        self.ends_put = 0
        self.taken = 0
        self.end_taken = threading.Event()
        self.positions: list[int] = []
        self.after_end: list[DesiredState] = []
        dataplane.on_apply.append(self._applying)

    def _applying(self, desired: DesiredState) -> None:
        self.positions.append(self.taken)
        if self.end_taken.is_set():
            self.after_end.append(desired)

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if isinstance(item, StreamEnd):
            self.ends_put += 1
        super().put(item, block, timeout)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        item = super().get(block, timeout)
        if isinstance(item, StreamEnd):
            self.end_taken.set()
        else:
            self.taken += 1
        return item


bad_tails = st.one_of(
    st.builds(lambda n, b: (struct.pack("<Q", n) + b, "exceeds"),
              st.integers(MAX_FRAME_BYTES + 1, 2**64 - 1), st.binary(max_size=64)),
    st.builds(lambda b: (b, "inside"), st.binary(min_size=1, max_size=7)),
    st.builds(lambda n, b: (struct.pack("<Q", n) + b[: n - 1], "inside"),
              st.integers(1, 64), st.binary(max_size=64)),
)


@settings(max_examples=max(20, EXAMPLES // 4))
@given(frames=frames_strategy(), at=st.integers(0, 40), tail=bad_tails,
       cuts=st.lists(st.integers(0, 10**6), max_size=6))
def test_malformed_framing_ends_the_session_once_and_nothing_is_applied_after(
        frames: list[Frame], at: int, tail: tuple[bytes, str], cuts: list[int], tally: Counter[str]) -> None:
    """Reader thread and loop as in the driver: one StreamEnd with the error, no apply after it,
    and every apply before it equal to the model's state after exactly the events taken so far."""
    with counting_crashes(tally, "session"):
        bad, verdict = tail
        first, later = frames[:at], frames[at:]
        events_of = [pump_all([encode_frame(f.body)])[0] for f in frames]
        expected_events = [ev for evs in events_of for ev in evs]
        model = Model()
        for ev in expected_events[: sum(len(evs) for evs in events_of[:at])]:
            model.fold(ev)
        apply_expected = model.in_sync and model.settings is not None
        valid_first = b"".join(encode_frame(f.body) for f in first)
        valid_later = b"".join(encode_frame(f.body) for f in later)

        dataplane = RecordingDataplane()
        events = WatchedQueue(dataplane)
        waited: list[bool] = []

        def chunks() -> Iterator[bytes]:
            yield from split(valid_first, cuts)
            if apply_expected:  # let the loop apply the first part before the stream breaks
                waited.append(dataplane.applied_event.wait(10))
            if verdict == "inside":
                yield valid_later + bad  # later messages and the break arrive in one read
            else:
                yield valid_later
                yield bad

        status = StatusBoard()
        loop = DataplaneLoop(events, dataplane, status, view=FelixView(default_hostname=HOSTNAME),
                             options=NO_WAIT, clock=lambda: FROZEN_CLOCK, wall_clock=lambda: FROZEN_CLOCK)
        reader = StreamReader(chunks(), events, status.stream, StreamEnd)
        # If the loop failed to stop on its own, this ends it (and the count of ends fails the test).
        watchdog = threading.Timer(30, lambda: events.put(StreamEnd("watchdog: the loop did not stop")))
        watchdog.start()
        reader.start()
        try:
            end = loop.run()
        finally:
            watchdog.cancel()
        reader.join(10)
        assert not reader.is_alive()
        assert waited == ([True] if apply_expected else []), "the loop never applied the valid stream"
        word = "exceeds the 67108864-byte cap" if verdict == "exceeds" else "stream ended inside a frame"
        offset = len(valid_first) + len(valid_later)
        assert word in end.error and f"stream offset {offset}" in end.error, end.error
        assert events.ends_put == 1 and events.empty()
        assert events.taken == len(expected_events)
        assert events.after_end == [], "the dataplane was changed after the framing error"
        prefix_model = Model()
        folded = 0
        previous: Mapping[N6, N4] = {}
        for desired, position in zip(dataplane.applied, events.positions, strict=True):
            while folded < position:
                prefix_model.fold(expected_events[folded])
                folded += 1
            want = prefix_model.desired(previous)
            if desired != want:
                tally["session.wrong_changes"] += 1
            assert desired == want, f"apply after {position} events differs from the model's state"
            previous = desired.blocks
            tally["session.applies_checked"] += 1


# -- explicit adversarial cases -------------------------------------------------


def _peak_bytes(fn: Any) -> tuple[Any, int]:
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_frame_header_claiming_two_to_the_63_bytes_fails_before_allocating(tally: Counter[str]) -> None:
    with counting_crashes(tally, "oversize"):
        prefix = encode_frame(pb.ToDataplane(in_sync=pb.InSync()).SerializeToString())
        data = prefix + struct.pack("<Q", 2**63) + b"\x00" * 1024
        (_, _, error), peak = _peak_bytes(lambda: pump_all([data]))
        assert "frame length 9223372036854775808 bytes" in error and "exceeds" in error
        assert f"stream offset {len(prefix)}" in error
        assert peak < 256 * 1024, f"{peak} bytes allocated for a frame that was refused"
        decoder = FrameDecoder()  # the error comes from this read, or at the latest the next call
        with pytest.raises(FramingError, match="exceeds the 67108864-byte cap"):
            decoder.feed(data)
            decoder.finish()


def test_frame_at_the_cap_with_little_data_buffers_only_what_arrived(tally: Counter[str]) -> None:
    with counting_crashes(tally, "oversize"):
        data = struct.pack("<Q", MAX_FRAME_BYTES) + b"\x0a" * 4096
        (events, _, error), peak = _peak_bytes(lambda: pump_all([data[:5], data[5:100], data[100:]]))
        assert events == [] and "stream ended inside a frame: 4104 bytes" in error
        assert peak < 512 * 1024, f"{peak} bytes allocated for 4 KiB of input"
        _, _, error = pump_all([struct.pack("<Q", MAX_FRAME_BYTES + 1)])
        assert "exceeds the 67108864-byte cap" in error


def test_config_update_with_100k_keys(tally: Counter[str]) -> None:
    with counting_crashes(tally, "huge_map"):
        msg = pb.ToDataplane(sequence_number=1)
        cu = msg.config_update
        cu.config.update({f"FelixParameter{i}": f"value-{i}" for i in range(100_000)})
        cu.config["NAT64Prefixes"] = "64:ff9b::/96"
        raw = cu.source_to_raw_config[3]
        raw.source = "datastore (per-host)"
        raw.config.update({f"Param{i}": "x" * (i % 17) for i in range(100_000)})
        raw.config["NAT64Prefixes"] = "64:ff9b::/96"
        in_sync = pb.ToDataplane(in_sync=pb.InSync())
        data = encode_frame(msg.SerializeToString()) + encode_frame(in_sync.SerializeToString())
        assert len(data) > 3_000_000
        events, _, error = pump_all([data[i : i + 65536] for i in range(0, len(data), 65536)])
        assert error == "" and len(events) == 2
        checker = Checker(tally, "huge_map")
        for event in events:
            checker.handle(event)
        checker.step()
        desired, = checker.dataplane.applied
        assert [str(t.parent) for t in desired.translators] == ["64:ff9b::/96"]


def test_many_hosts_then_removes_in_every_wire_variant(tally: Counter[str]) -> None:
    with counting_crashes(tally, "many_hosts"):
        checker = Checker(tally, "many_hosts")
        config = pb.ToDataplane()
        config.config_update.config["NAT64Prefixes"] = "2001:db8:64::/96"
        msgs = [config, pb.ToDataplane(in_sync=pb.InSync())]
        names = [f"node-{i}" for i in range(3000)]
        for i, name in enumerate(names):
            v4 = f"198.51.{i // 250}.{i % 250 + 1}"
            kind = i % 3
            if kind == 0:
                msgs.append(pb.ToDataplane(host_metadata_update=pb.HostMetadataUpdate(
                    hostname=name, ipv4_addr=v4 + "/24", ipv6_addr=f"fd00::{i + 1:x}/64")))
            elif kind == 1:
                msgs.append(pb.ToDataplane(host_metadata_update=pb.HostMetadataUpdate(
                    hostname=name, ipv4_addr=v4)))
                msgs.append(pb.ToDataplane(host_metadata_v6_update=pb.HostMetadataV6Update(
                    hostname=name, ipv6_addr=f"fd00::{i + 1:x}")))
            else:
                msgs.append(pb.ToDataplane(host_metadata_v4v6_update=pb.HostMetadataV4V6Update(
                    hostname=name, ipv4_addr=v4 + "/24", ipv6_addr=f"fd00::{i + 1:x}/64")))
        data = b"".join(encode_frame(x.SerializeToString()) for x in msgs)
        events, _, error = pump_all([data])
        assert error == ""
        for event in events:
            checker.handle(event)
        checker.step()
        desired = checker.applied
        assert desired is not None
        refused_for_nodes = [r for r in desired.refused if r.reason.startswith("address of Calico node")]
        assert len(refused_for_nodes) == len(names)
        removes = []
        for i, name in enumerate(names):
            removes.append([pb.ToDataplane(host_metadata_remove=pb.HostMetadataRemove(hostname=name)),
                            pb.ToDataplane(host_metadata_v6_remove=pb.HostMetadataV6Remove(hostname=name)),
                            pb.ToDataplane(host_metadata_v4v6_remove=pb.HostMetadataV4V6Remove(hostname=name)),
                            ][i % 3])
        removes.append(pb.ToDataplane(host_metadata_remove=pb.HostMetadataRemove(hostname="never-seen")))
        events, _, error = pump_all([b"".join(encode_frame(x.SerializeToString()) for x in removes)])
        assert error == ""
        for event in events:
            checker.handle(event)
        checker.step()
        checker.final_check()
        # A v6-only remove keeps the node's IPv4 address (and its refusal); the others drop the node.
        kept = {name for i, name in enumerate(names) if i % 3 == 1}
        assert set(checker.loop.view.hosts.hosts) == kept
        assert all(h.ipv6 is None for h in checker.loop.view.hosts.hosts.values())
        assert checker.applied is not None
        node_refusals = [r for r in checker.applied.refused if r.reason.startswith("address of Calico node")]
        assert len(node_refusals) == len(kept)


def test_out_of_order_messages_only_apply_after_in_sync_with_good_settings(tally: Counter[str]) -> None:
    with counting_crashes(tally, "out_of_order"):
        checker = Checker(tally, "out_of_order")
        pool = m.PoolUpdate("p0", N6("fd00:10::/64"), False)
        host = m.HostUpdate("node-2", A4("10.0.0.2"), None, True, False, "host_metadata_update")
        for event in (pool, m.PoolRemove("never-existed"), m.HostRemove("ghost"),
                      m.HostRemove("ghost", ipv6_only=True), host):
            checker.handle(event)  # all before any ConfigUpdate
            checker.step()
        assert checker.dataplane.applied == []
        checker.handle(m.InSync())  # InSync before any ConfigUpdate: still nothing to apply
        checker.step()
        assert checker.dataplane.applied == [] and checker.loop.view.settings.in_force is None
        checker.handle(m.ConfigUpdate(MappingProxyType({"NAT64Prefixes": "64:ff9b::/64"})))  # rejected
        checker.step()
        assert checker.dataplane.applied == []
        checker.handle(m.ConfigUpdate(MappingProxyType({"NAT64Prefixes": "64:ff9b::/96"})))
        checker.step()
        assert len(checker.dataplane.applied) == 1
        assert checker.applied is not None and checker.applied.sources == (N6("fd00:10::/64"),)
        for _ in range(3):  # more InSyncs change nothing
            checker.handle(m.InSync())
            checker.step()
        assert len(checker.dataplane.applied) == 1
        checker.final_check()
