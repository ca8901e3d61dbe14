"""Shared fixtures for tests of the whole NAT64 data path in the VM.

The VM's own network namespace is the node; the driver runs there exactly
as Felix runs it (felix-nat64-driver, stream on fd 3).
"""

from __future__ import annotations

import collections
import contextlib
import ipaddress
import json
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from felix_nat64.drivers.discovery import discover
from felix_nat64.drivers.jool import JoolWorker
from felix_nat64.drivers.jool.codec import JoolHeader, Reply
from felix_nat64.testing.streams import StreamBuilder
from felix_nat64.wire.framing import FrameDecoder, encode_frame
from testbed import topology as topo_mod
from testbed.felix import FelixSimulator
from testbed.traffic import ServerProcess, start_server

NSP = "2001:db8:64::/96"
WKP = "64:ff9b::/96"
READY_TIMEOUT = 300.0  # Python starts slowly under emulation on a busy host


def nat64(prefix: str, ipv4: str) -> str:
    """The IPv6 address under a /96 prefix that stands for `ipv4`."""
    net = ipaddress.IPv6Network(prefix)
    return str(ipaddress.IPv6Address(int(net.network_address) | int(ipaddress.IPv4Address(ipv4))))


def node_stream(prefixes: str = f"{WKP},{NSP}", felix_version: str = "master",
                extra: Mapping[str, str] | None = None, pools: tuple[str, ...] = (WKP, NSP),
                workloads: Sequence[tuple[str, str, str]] = (),
                more: Callable[[StreamBuilder], object] | None = None) -> bytes:
    """What Felix sends for the simulated node (settings as FELIX_* environment),
    with a workload endpoint for each (namespace, pod, IPv6 address) given;
    `more` adds messages to the snapshot before InSync."""
    b = StreamBuilder(felix_version)
    env = {"nat64prefixes": prefixes, "felixhostname": "node-1", "nat64resyncinterval": "2s",
           **{k.lower(): v for k, v in (extra or {}).items()}}
    b.config({"environment variable": env})
    b.host("node-1", "192.0.2.1/24", "2001:db8:1::1/64")
    b.host("node-2", "192.0.2.2/24", "2001:db8:1::2/64")
    b.pool("fd00:10:244::/64", masquerade=True)
    for cover in pools:
        b.pool(cover)
    for i, (namespace, pod, address) in enumerate(workloads):
        b.workload(namespace, pod, f"{address}/128", f"cali{i:011x}")
    if more is not None:
        more(b)
    b.in_sync()
    return b.data()


@dataclass
class RunningDriver:
    felix: FelixSimulator
    status_file: str

    def status(self) -> dict[str, Any]:
        try:
            with open(self.status_file) as handle:
                data: dict[str, Any] = json.load(handle)
                return data
        except (OSError, ValueError):
            return {}

    def wait_ready(self, timeout: float = READY_TIMEOUT, since: float = 0.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = self.status()
            if status.get("ready") and status.get("pid") == self.felix.pid and \
                    (status.get("last_success_at") or 0) >= since:
                return status
            if not self.felix.running():
                break
            time.sleep(0.2)
        raise AssertionError(f"driver not ready: {status.get('not_ready_reasons')}\n{self.felix.output}")

    def stop(self) -> int:
        return self.felix.terminate() if self.felix.running() else 0


def start_driver(stream: bytes, status_file: str) -> RunningDriver:
    if os.path.exists(status_file):
        os.unlink(status_file)
    felix = FelixSimulator(env={"FELIX_NAT64_STATUS_FILE": status_file}).start()
    felix.send(stream)
    return RunningDriver(felix, status_file)


@contextlib.contextmanager
def ready_driver(stream: bytes, status_file: str) -> Iterator[RunningDriver]:
    """A driver fed `stream`, once it is ready; stopped on the way out."""
    d = start_driver(stream, status_file)
    try:
        d.wait_ready()
        yield d
    finally:
        d.stop()


@dataclass
class Node:
    topo: topo_mod.Topology
    servers: tuple[ServerProcess, ...]
    status_file: str


@contextlib.contextmanager
def simulated_node() -> Iterator[Node]:
    """Builds the node's topology and servers; removes them afterwards."""
    topo_mod.cleanup_stale(node_in_current_netns=True)
    topo = topo_mod.build_topology(pods=2, far=True, node_in_current_netns=True)
    servers = (start_server(topo.inet4_netns, topo.inet4_server_addresses, wait=False),
               start_server(topo.far_netns, topo.far_server_addresses, wait=False))
    try:
        for s in servers:
            s.wait_ready(120)
        with tempfile.TemporaryDirectory() as tmp:
            yield Node(topo, servers, os.path.join(tmp, "status.json"))
    finally:
        for s in servers:
            s.stop()
        topo.teardown()


def kernel_leftovers() -> list[str]:
    """Every felix-nat64 object still in the kernel."""
    return discover().objects


def stream_frames(data: bytes) -> list[bytes]:
    """The whole frames (header included) of a recorded stream."""
    decoder = FrameDecoder()
    bodies = decoder.feed(data)
    decoder.finish()
    return [encode_frame(body) for body in bodies]


class CountingTransport:
    """Passes requests through and counts them per command (to prove paging)."""

    def __init__(self, inner: JoolWorker) -> None:
        self.inner = inner
        self.requests: collections.Counter[int] = collections.Counter()

    def exchange(self, cmd: int, header: JoolHeader, attrs: bytes, op: str) -> Reply:
        self.requests[cmd] += 1
        return self.inner.exchange(cmd, header, attrs, op)

    def close(self) -> None:
        self.inner.close()


METRICS = "http://127.0.0.1:9096"  # where node_stream() drivers serve health and metrics


def scrape(path: str = "/metrics") -> tuple[int, str]:
    """HTTP status and body of one of the driver's health/metrics endpoints."""
    try:
        with urllib.request.urlopen(METRICS + path, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not (line.startswith(name + "{") or line.startswith(name + " ")):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total
