"""Scenario files (YAML/JSON) to Felix streams and back, for users and tests.

A scenario lists what Felix would send, in Felix's order:

    felix_version: master            # v3.26 | v3.29 | v3.32 | master
    config:                          # raw values by Felix source name
      environment variable: {nat64prefixes: "64:ff9b::/96"}
      datastore (global): {NAT64UDPTimeout: "10m"}
    pools: [{cidr: "fd00:10:244::/64", masquerade: true}]
    hosts: [{hostname: node-1, ipv4: 192.0.2.1/24, ipv6: "2001:db8::1/64"}]
    skipped: {policies: 100, ipsets: 20, workloads: 30}   # filler we skip
    in_sync: true
    after_sync:                      # incremental updates, in order
      - pool: {cidr: "fd00:20::/64"}
      - remove_pool: "fd00:20::/64"
      - host: {hostname: node-2, ipv4: 192.0.2.2}
      - remove_host: node-2
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError

from felix_nat64.testing.streams import FELIX_VERSIONS, StreamBuilder
from felix_nat64.wire import felixbackend_pb2 as pb
from felix_nat64.wire.framing import FrameDecoder, FramingError
from felix_nat64.wire.messages import Undecodable, decode_frame, payload_name

_TOP_KEYS = {"felix_version", "config", "resolved_config", "pools", "hosts", "skipped", "in_sync",
             "after_sync"}
_STEP_KEYS = {"pool", "remove_pool", "host", "remove_host", "config", "in_sync"}


class ScenarioError(ValueError):
    """The scenario does not describe a Felix stream."""


def build_scenario(scenario: Any) -> bytes:
    """The framed stream a scenario describes."""
    if not isinstance(scenario, Mapping):
        raise ScenarioError("expected a mapping at the top level")
    unknown = set(scenario) - _TOP_KEYS
    if unknown:
        raise ScenarioError(f"unknown keys {sorted(unknown)}; known: {sorted(_TOP_KEYS)}")
    version = str(scenario.get("felix_version", "master"))
    if version not in FELIX_VERSIONS:
        raise ScenarioError(f"felix_version {version!r} is not one of {list(FELIX_VERSIONS)}")
    b = StreamBuilder(version)
    _config(b, scenario.get("config") or {}, scenario.get("resolved_config"))
    skipped = scenario.get("skipped") or {}
    _filler(b, skipped)
    for item in _list(scenario, "hosts"):
        _host(b, item)
    for item in _list(scenario, "pools"):
        _pool(b, item)
    if scenario.get("in_sync", True):
        b.in_sync()
    for step in _list(scenario, "after_sync"):
        if not isinstance(step, Mapping) or len(step) != 1 or next(iter(step)) not in _STEP_KEYS:
            raise ScenarioError(f"after_sync step {step!r}: expected one of {sorted(_STEP_KEYS)}")
        (kind, arg), = step.items()
        if kind == "pool":
            _pool(b, arg)
        elif kind == "remove_pool":
            b.remove_pool(str(arg))
        elif kind == "host":
            _host(b, arg)
        elif kind == "remove_host":
            b.remove_host(str(arg))
        elif kind == "config":
            _config(b, arg, None)
        elif kind == "in_sync":
            b.in_sync()
    return b.data()


def _list(scenario: Mapping[str, Any], key: str) -> list[Any]:
    value = scenario.get(key) or []
    if not isinstance(value, list):
        raise ScenarioError(f"{key}: expected a list")
    return value


def _config(b: StreamBuilder, by_source: Any, resolved: Any) -> None:
    if not isinstance(by_source, Mapping) or not all(isinstance(v, Mapping) for v in by_source.values()):
        raise ScenarioError("config: expected a mapping of Felix source name to key/value mapping")
    as_str = {str(src): {str(k): str(v) for k, v in values.items()} for src, values in by_source.items()}
    try:
        b.config(as_str, {str(k): str(v) for k, v in (resolved or {}).items()})
    except ValueError as exc:
        raise ScenarioError(f"config: {exc}") from None


def _pool(b: StreamBuilder, item: Any) -> None:
    if not isinstance(item, Mapping) or "cidr" not in item:
        raise ScenarioError(f"pool {item!r}: expected a mapping with a cidr")
    b.pool(str(item["cidr"]), bool(item.get("masquerade", False)),
           [str(u) for u in item.get("allowed_uses", [])], item.get("id"))


def _host(b: StreamBuilder, item: Any) -> None:
    if not isinstance(item, Mapping) or "hostname" not in item:
        raise ScenarioError(f"host {item!r}: expected a mapping with a hostname")
    try:
        b.host(str(item["hostname"]), item.get("ipv4"), item.get("ipv6"), str(item.get("asnumber", "")),
               {str(k): str(v) for k, v in (item.get("labels") or {}).items()})
    except ValueError as exc:
        raise ScenarioError(f"host {item['hostname']}: {exc}") from None


def _filler(b: StreamBuilder, skipped: Any) -> None:
    if not isinstance(skipped, Mapping):
        raise ScenarioError("skipped: expected a mapping of kind to count")
    for kind, count in skipped.items():
        for i in range(int(count)):
            if kind == "policies":
                b.policy("default", f"policy-{i}")
            elif kind == "ipsets":
                b.ipset(f"s:{i:040d}", [f"10.{i >> 8 & 255}.{i & 255}.{j}/32" for j in range(8)])
            elif kind == "workloads":
                b.workload("default", f"pod-{i}", f"fd00:10:244::{i:x}/128", f"cali{i:011x}")
            else:
                raise ScenarioError(f"skipped: unknown kind {kind!r} (policies, ipsets, workloads)")


def dump_stream(data: bytes, include_skipped: bool = False) -> Iterator[dict[str, Any]]:
    """One JSON-ready dict per frame (and one for a framing error)."""
    decoder = FrameDecoder()
    frames = decoder.feed(data)  # the frames before any corruption
    error: str | None = None
    try:
        decoder.finish()
    except FramingError as exc:
        error = str(exc)
    for index, body in enumerate(frames):
        number, decoded = decode_frame(body)
        if decoded is None:
            if include_skipped:
                yield {"frame": index, "payload": payload_name(number), "skipped": True,
                       "bytes": len(body)}
            continue
        if isinstance(decoded, Undecodable) and decoded.field_number is None:
            yield {"frame": index, "error": decoded.error}
            continue
        # Shown as Felix sent it, field by field, with why felix-nat64 cannot use it if so.
        entry: dict[str, Any] = {"frame": index, "payload": payload_name(number)}
        msg = _parsed(body)
        if msg is not None:
            entry["message"] = json_format.MessageToDict(msg, preserving_proto_field_name=True)
        if isinstance(decoded, Undecodable):
            entry["error"] = decoded.error
        yield entry
    if error:
        yield {"error": error}


def _parsed(body: bytes) -> pb.ToDataplane | None:
    msg = pb.ToDataplane()
    try:
        msg.ParseFromString(body)
    except DecodeError:
        return None
    return msg
