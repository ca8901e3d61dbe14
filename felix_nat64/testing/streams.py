"""Builds Felix `ToDataplane` streams, as Felix of a given version writes them.

Tests, benchmarks and the demo drive felix-nat64 with these, exactly as
Felix would: framed messages in Felix's order (ConfigUpdate first, then the
snapshot, then one InSync, then incremental updates).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from felix_nat64.testing import protowire as pw
from felix_nat64.wire import felixbackend_pb2 as pb
from felix_nat64.wire.framing import encode_frame

# Felix's config source numbers changed in v3.32 (selector-scoped config was
# inserted); the names did not.
_SOURCES_V331 = {"<default>": 0, "datastore (global)": 1, "datastore (per-host)": 2,
                 "config file": 3, "environment variable": 4, "internal override": 5}
_SOURCES_V332 = {"<default>": 0, "datastore (global)": 1, "datastore (per-selector)": 2,
                 "datastore (per-host)": 3, "config file": 4, "environment variable": 5,
                 "internal override": 6}
_PRECEDENCE = ("internal override", "environment variable", "config file", "datastore (per-host)",
               "datastore (per-selector)", "datastore (global)", "<default>")

# How each Calico line sends host metadata.
FELIX_VERSIONS = ("v3.26", "v3.29", "v3.32", "master")


@dataclass
class StreamBuilder:
    """Accumulates framed messages; `data()` returns the stream bytes."""

    felix_version: str = "master"
    frames: list[bytes] = field(default_factory=list)
    _seq: int = 0

    def __post_init__(self) -> None:
        if self.felix_version not in FELIX_VERSIONS:
            raise ValueError(f"unknown Felix version {self.felix_version!r}: one of {FELIX_VERSIONS}")

    # -- framing --------------------------------------------------------------

    def _add(self, msg: pb.ToDataplane) -> StreamBuilder:
        msg.sequence_number = self._seq
        self._seq += 1
        self.frames.append(encode_frame(msg.SerializeToString(deterministic=True)))
        return self

    def raw_frame(self, body: bytes) -> StreamBuilder:
        """Appends an arbitrary frame body (for malformed-input tests)."""
        self.frames.append(encode_frame(body))
        return self

    def raw_bytes(self, data: bytes) -> StreamBuilder:
        """Appends bytes outside any framing (for framing-error tests)."""
        self.frames.append(data)
        return self

    def opaque(self, field_number: int, body: bytes) -> StreamBuilder:
        """A payload written field by field, as Felix (Go) writes it: one
        felix-nat64 does not declare (policy, IP set, ...), or one whose
        undeclared fields it must step over (workload endpoints)."""
        frame = pw.uint(15, self._seq) + pw.length_delimited(field_number, body)
        if field_number < 15:  # Go writes fields in number order
            frame = pw.length_delimited(field_number, body) + pw.uint(15, self._seq)
        self._seq += 1
        self.frames.append(encode_frame(frame))
        return self

    def data(self) -> bytes:
        return b"".join(self.frames)

    def write(self, path: str) -> None:
        with open(path, "wb") as handle:
            handle.write(self.data())

    # -- Felix messages -------------------------------------------------------

    def config(self, by_source: Mapping[str, Mapping[str, str]] | None = None,
               resolved_only: Mapping[str, str] | None = None) -> StreamBuilder:
        """A ConfigUpdate; `by_source` maps Felix source names to raw values.

        The resolved map is computed with Felix's precedence; keys differing
        only in case are resolved by lower-cased name, as Felix does.
        """
        msg = pb.ToDataplane()
        cu = msg.config_update
        if by_source:
            numbers = _SOURCES_V331 if self.felix_version in ("v3.26", "v3.29") else _SOURCES_V332
            winners: dict[str, tuple[str, str]] = {}
            for source in reversed(_PRECEDENCE):
                for raw_key, value in by_source.get(source, {}).items():
                    winners[raw_key.lower()] = (raw_key, value)
            for source, values in by_source.items():
                if source not in numbers:
                    raise ValueError(f"unknown Felix config source {source!r}")
                raw = cu.source_to_raw_config[numbers[source]]
                raw.source = source
                raw.config.update(values)
            for raw_key, value in winners.values():
                cu.config[raw_key] = value
        if resolved_only:
            cu.config.update(resolved_only)
        return self._add(msg)

    def env_config(self, **values: str) -> StreamBuilder:
        """Settings as FELIX_* environment variables (Felix lower-cases the keys)."""
        return self.config({"environment variable": {k.lower(): v for k, v in values.items()}})

    def pool(self, cidr: str, masquerade: bool = False, allowed_uses: Iterable[str] = (),
             pool_id: str | None = None) -> StreamBuilder:
        msg = pb.ToDataplane()
        upd = msg.ipam_pool_update
        upd.id = pool_id or cidr.replace("/", "-")
        upd.pool.cidr = cidr
        upd.pool.masquerade = masquerade
        if self.felix_version in ("v3.32", "master"):
            upd.pool.allowed_uses.extend(list(allowed_uses) or ["Workload", "Tunnel"])
        return self._add(msg)

    def remove_pool(self, cidr_or_id: str) -> StreamBuilder:
        msg = pb.ToDataplane()
        msg.ipam_pool_remove.id = cidr_or_id.replace("/", "-")
        return self._add(msg)

    def host(self, hostname: str, ipv4: str | None = None, ipv6: str | None = None,
             asnumber: str = "", labels: Mapping[str, str] | None = None) -> StreamBuilder:
        """Host metadata as this Felix version sends it (addresses as CIDRs or bare)."""
        v4_bare = str(ipaddress.ip_interface(ipv4).ip) if ipv4 else ""
        if self.felix_version == "master":
            msg = pb.ToDataplane()
            h = msg.host_metadata_update
            h.hostname = hostname
            h.ipv4_addr = ipv4 or ""
            h.ipv6_addr = ipv6 or ""
            h.asnumber = asnumber
            h.labels.update(labels or {})
            return self._add(msg)
        msg = pb.ToDataplane()
        msg.host_metadata_update.hostname = hostname
        msg.host_metadata_update.ipv4_addr = v4_bare
        self._add(msg)
        if ipv6:
            msg = pb.ToDataplane()
            msg.host_metadata_v6_update.hostname = hostname
            msg.host_metadata_v6_update.ipv6_addr = str(ipaddress.ip_interface(ipv6).ip)
            self._add(msg)
        if self.felix_version in ("v3.29", "v3.32"):
            msg = pb.ToDataplane()
            h4 = msg.host_metadata_v4v6_update
            h4.hostname = hostname
            h4.ipv4_addr = ipv4 or ""
            h4.ipv6_addr = ipv6 or ""
            h4.asnumber = asnumber
            h4.labels.update(labels or {})
            self._add(msg)
        return self

    def remove_host(self, hostname: str, had_ipv6: bool = True) -> StreamBuilder:
        msg = pb.ToDataplane()
        msg.host_metadata_remove.hostname = hostname
        self._add(msg)
        if self.felix_version == "master":
            return self
        if had_ipv6:
            msg = pb.ToDataplane()
            msg.host_metadata_v6_remove.hostname = hostname
            self._add(msg)
        if self.felix_version in ("v3.29", "v3.32"):
            msg = pb.ToDataplane()
            msg.host_metadata_v4v6_remove.hostname = hostname
            self._add(msg)
        return self

    def vtep(self, node: str, ipv4: str, parent_device_ip: str,
             mac: str = "66:aa:bb:cc:dd:01") -> StreamBuilder:
        """A VXLAN tunnel endpoint, with the fields felix-nat64 does not read too."""
        body = pw.string(1, node) + pw.string(2, mac) + pw.string(3, ipv4) + pw.string(4, parent_device_ip)
        return self.opaque(25, body)

    def remove_vtep(self, node: str) -> StreamBuilder:
        return self.opaque(26, pw.string(1, node))

    def wireguard(self, hostname: str, ipv4: str, public_key: str = "a2V5") -> StreamBuilder:
        return self.opaque(27, pw.string(1, hostname) + pw.string(2, public_key) + pw.string(3, ipv4))

    def remove_wireguard(self, hostname: str) -> StreamBuilder:
        return self.opaque(28, pw.string(1, hostname))

    def service_cidrs(self, cluster: Iterable[str] = (), external: Iterable[str] = (),
                      loadbalancer: Iterable[str] = ()) -> StreamBuilder:
        """BGPConfiguration's service CIDRs (GlobalBGPConfigUpdate)."""
        body = pw.strings(1, cluster) + pw.strings(2, external) + pw.strings(3, loadbalancer)
        return self.opaque(29, body)

    def in_sync(self) -> StreamBuilder:
        msg = pb.ToDataplane()
        msg.in_sync.SetInParent()
        return self._add(msg)

    # -- payloads felix-nat64 skips (field numbers as in Felix) -----------------

    def policy(self, tier: str, name: str, rules: int = 4) -> StreamBuilder:
        """An ActivePolicyUpdate (field 7) with `rules` inbound and outbound rules."""
        rule = b"".join((
            pw.string(1, "allow"), pw.uint(2, 6),
            pw.message(5, pw.strings(1, ["10.0.0.0/8", "fd00::/8"])),
            pw.message(20, pw.uint(1, 443)),
            pw.string(40, f"rule-{name}"),
        ))
        policy = b"".join((
            pw.message(2, *([rule] * rules)), pw.message(3, *([rule] * rules)),
            pw.string(6, "k8s-namespace == 'default'"),
        ))
        return self.opaque(7, pw.message(1, pw.string(1, tier), pw.string(2, name)) + pw.message(2, policy))

    def ipset(self, set_id: str, members: Iterable[str]) -> StreamBuilder:
        """An IPSetUpdate (field 2)."""
        return self.opaque(2, pw.string(1, set_id) + pw.strings(2, members) + pw.uint(3, 0))

    # -- workload endpoints: felix-nat64 reads their ids and IPv6 nets only -----

    def workload(self, namespace: str, pod: str, ipv6: str | Iterable[str], iface: str, *,
                 ipv4: Iterable[str] = (), endpoint: str = "eth0") -> StreamBuilder:
        """A WorkloadEndpointUpdate (field 11) as Felix writes it, with the
        fields felix-nat64 does not declare (state, name, MAC, profiles, IPv4
        nets, a tier) around the ones it reads."""
        nets = [ipv6] if isinstance(ipv6, str) else list(ipv6)
        tier = pw.message(7, pw.string(1, "default"), pw.strings(2, [f"{namespace}/knp.default.allow"]))
        body = b"".join((
            pw.string(1, "active"), pw.string(2, iface), pw.string(3, "ee:ee:ee:ee:ee:ee"),
            pw.strings(4, [f"kns.{namespace}", "ksa.default"]), pw.strings(5, ipv4), pw.strings(6, nets),
            tier,
        ))
        return self.opaque(11, _endpoint_id(namespace, pod, endpoint) + pw.message(5, body))

    def remove_workload(self, namespace: str, pod: str, endpoint: str = "eth0") -> StreamBuilder:
        """A WorkloadEndpointRemove (field 12)."""
        return self.opaque(12, _endpoint_id(namespace, pod, endpoint))


def _endpoint_id(namespace: str, pod: str, endpoint: str) -> bytes:
    return pw.message(1, pw.string(2, "k8s"), pw.string(3, f"{namespace}/{pod}"), pw.string(4, endpoint))
