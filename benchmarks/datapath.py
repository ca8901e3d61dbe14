"""Data path and control plane benchmark, run inside the test VM.

The VM is the node. Its pods reach the IPv4 server 198.51.100.10 through the
NAT64 (pod -> cali veth -> node -> translator namespace with Jool -> node ->
uplink) and the IPv6 server 2001:db8:2::10 by plain routing over the same
pod veth and uplink. Every data path figure is measured on both paths in the
same run, interleaved (A B, then B A, ...), so that the ratio between them
survives the noise of an emulated machine shared with other work.

    python -m testbed.vm .venv/bin/python -m benchmarks.datapath [--rounds N] [--levers]

`python -m benchmarks.prepare` must have built the load generator and the
100k-message snapshot first (`make bench` does all of it). Results go to
docs/bench/datapath.json (and docs/bench/levers.json with --levers);
`python -m benchmarks.report` prints the table and draws the plot.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import platform
import select
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks import report
from benchmarks.prepare import LOADGEN, SNAPSHOT
from felix_nat64.dataplane.fold import desired_from
from felix_nat64.model.ownership import (
    NFT_FAMILY,
    NFT_TABLE,
    NS_LINK_NAME,
    ROUTE_PROTO,
    namespace_name,
    node_link_name,
    translator_id,
)
from felix_nat64.testing.streams import StreamBuilder
from testbed import topology as topo_mod
from testbed.netns_exec import (
    popen_in_netns,
    run_command_in_netns,
    socket_in_netns,
    write_sysctls,
)
from testbed.vm import in_vm
from tests.vm.dataplane_fixtures import NSP, WKP, RunningDriver, nat64, start_driver

SERVER_V4 = "198.51.100.10"
SERVER_V6 = str(topo_mod.SERVER_IPV6)
DESTINATIONS = {"nat64": nat64(NSP, SERVER_V4), "routed": SERVER_V6}
PATHS = ("nat64", "routed")
# One iperf3 server per path, each bound to its server address: a UDP test's
# replies must leave from the address the client sent to, or the node's
# masquerade of the translated leg would not take them for the flow's replies.
IPERF_PORTS = {"nat64": 5201, "routed": 5202}
IPERF_BIND = {"nat64": SERVER_V4, "routed": SERVER_V6}
LOAD_PORT = 7001
POD_POOL = "fd00:10:244::/64"
# What kube-proxy sets on a 2-core node (max(131072, 32768 per core), buckets max/4):
# the node's conntrack table is sized by Kubernetes, not by felix-nat64.
CONNTRACK_MAX = 131072
CONNTRACK_BUCKETS = CONNTRACK_MAX // 4
DEFAULT_JSON = "docs/bench/datapath.json"
BUSY_JSON = "docs/bench/busy.json"
LEVERS_JSON = "docs/bench/levers.json"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Streams
# ---------------------------------------------------------------------------

def node_frames(*, prefixes: Sequence[str] = (WKP, NSP), pools: int = 1, mtu: int | None = None,
                extra: dict[str, str] | None = None, felix_version: str = "master") -> tuple[bytes, bytes]:
    """What Felix sends for the simulated node: (everything up to InSync, the InSync frame).

    `pools` IPv6 IP pools: the pod pool plus pools-1 others, as a cluster with
    many pools would have."""
    b = StreamBuilder(felix_version)
    b.config({"environment variable": config_values(prefixes=prefixes, mtu=mtu, extra=extra)})
    b.host("node-1", "192.0.2.1/24", "2001:db8:1::1/64")
    b.host("node-2", "192.0.2.2/24", "2001:db8:1::2/64")
    b.pool(POD_POOL, masquerade=True)
    for i in range(1, pools):
        b.pool(f"fd00:{i:x}::/64", masquerade=True)
    for prefix in prefixes:
        b.pool(prefix)  # a disabled pool covering each prefix, as the docs ask
    head = b.data()
    b.in_sync()
    return head, b.data()[len(head):]


def config_values(*, prefixes: Sequence[str] = (WKP, NSP), mtu: int | None = None,
                  extra: dict[str, str] | None = None) -> dict[str, str]:
    values = {"nat64prefixes": ",".join(prefixes), "felixhostname": "node-1",
              # Long resync: a periodic re-apply must not land inside a measurement.
              # Its cost is measured on its own (apply scaling, "resync").
              "nat64resyncinterval": "1h"}
    if mtu is not None:
        values["nat64mtu"] = str(mtu)
    values.update({k.lower(): v for k, v in (extra or {}).items()})
    return values


def config_frame(**kwargs: Any) -> bytes:
    """A ConfigUpdate alone, as Felix would send it again on a live stream."""
    b = StreamBuilder("master")
    b.config({"environment variable": config_values(**kwargs)})
    return b.data()


# ---------------------------------------------------------------------------
# The bed: topology, servers, driver
# ---------------------------------------------------------------------------

@dataclass
class Bed:
    topo: topo_mod.Topology
    servers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    driver: RunningDriver | None = None
    status_dir: str = ""

    @property
    def pod(self) -> str:
        return self.topo.pod(0).netns

    @property
    def inet4(self) -> str:
        return self.topo.inet4_netns

    def status_file(self) -> str:
        return os.path.join(self.status_dir, "status.json")


def run_in(ns: str | None, argv: Sequence[str], timeout: float = 60.0) -> str:
    done = run_command_in_netns(ns, list(argv), timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return done.stdout


def start_servers(bed: Bed) -> None:
    iperfs = [popen_in_netns(bed.inet4, ["iperf3", "-s", "-p", str(IPERF_PORTS[p]), "-B", IPERF_BIND[p]],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for p in PATHS]
    load = popen_in_netns(bed.inet4, [LOADGEN, "serve", str(LOAD_PORT), "7200"],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    bed.servers += [*iperfs, load]
    assert load.stdout is not None
    ready, _, _ = select.select([load.stdout], [], [], 60)
    if not ready or load.stdout.readline() != b"READY\n":
        raise RuntimeError("the load generator's server did not start")


def stop_servers(bed: Bed) -> None:
    for proc in bed.servers:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
    bed.servers.clear()


def size_conntrack() -> None:
    with contextlib.suppress(OSError), open("/sys/module/nf_conntrack/parameters/hashsize", "w") as handle:
        handle.write(str(CONNTRACK_BUCKETS))
    write_sysctls(None, {"net/netfilter/nf_conntrack_max": CONNTRACK_MAX})


def udp_probe(ns: str, dst: str, port: int, timeout: float, interval: float = 0.01) -> float | None:
    """Seconds until a UDP echo from `ns` to `dst` first comes back (None: never)."""
    sock = socket_in_netns(ns, socket.AF_INET6, socket.SOCK_DGRAM)
    start = time.monotonic()
    with sock:
        sock.settimeout(interval)
        while time.monotonic() - start < timeout:
            with contextlib.suppress(OSError):
                sock.sendto(b"probe-0123456789", (dst, port))
            with contextlib.suppress(OSError):
                data, _ = sock.recvfrom(2048)
                if data == b"probe-0123456789":
                    return time.monotonic() - start
    return None


def path_state() -> str:
    """What the kernel holds for the NAT64 path, for an error message when a probe fails."""
    def cmd(argv: Sequence[str], ns: str | None = None) -> str:
        done = run_command_in_netns(ns, list(argv), check=False, timeout=60)
        return f"$ {' '.join(argv)}\n{(done.stdout + done.stderr).strip()}"

    return "\n".join([
        cmd(["nft", "list", "table", NFT_FAMILY, NFT_TABLE]),
        cmd(["ip", "-6", "rule"]),
        cmd(["ip", "-6", "route", "show", "table", "all", "proto", str(ROUTE_PROTO)]),
        cmd(["ip", "route", "show", "proto", str(ROUTE_PROTO)]),
        cmd(["ip", "-br", "addr"], translator_namespace()),
        cmd(["conntrack", "-L"]),
    ])


def check_paths(bed: Bed, timeout: float = 30) -> None:
    for path in PATHS:
        if udp_probe(bed.pod, DESTINATIONS[path], LOAD_PORT, timeout=timeout) is None:
            raise RuntimeError(f"the {path} path does not work\n{path_state()}")


def driver_ready(driver: RunningDriver, timeout: float = 300.0) -> dict[str, Any]:
    return driver.wait_ready(timeout=timeout)


def stop_driver(bed: Bed) -> None:
    if bed.driver is not None:
        bed.driver.stop()
        bed.driver = None


def cleanup_kernel() -> None:
    """Removes every felix-nat64 object (what `felix-nat64 cleanup --force` does)."""
    from felix_nat64.cli.driver import build_dataplane  # noqa: PLC0415
    from felix_nat64.model.state import DesiredState  # noqa: PLC0415

    build_dataplane(None).apply(DesiredState())


def process_memory(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of a process, in MB."""
    out: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
    return out


def translator_link(prefix: str = NSP) -> str:
    return node_link_name(translator_id(ipaddress.IPv6Network(prefix)))


def translator_namespace(prefix: str = NSP) -> str:
    return namespace_name(translator_id(ipaddress.IPv6Network(prefix)))


def link_mtu(name: str) -> int | None:
    from pyroute2 import IPRoute  # noqa: PLC0415

    with IPRoute() as ipr:
        indexes = ipr.link_lookup(ifname=name)
        return int(ipr.link("get", index=indexes[0])[0].get("mtu")) if indexes else None


# ---------------------------------------------------------------------------
# Data path tests (each returns a dict of figures for one run on one path)
# ---------------------------------------------------------------------------

def iperf_tcp(bed: Bed, path: str, *, streams: int, seconds: int, reverse: bool = False) -> dict[str, float]:
    argv = ["iperf3", "-c", DESTINATIONS[path], "-p", str(IPERF_PORTS[path]), "-t", str(seconds), "-O", "1",
            "-P", str(streams), "-J", "--connect-timeout", "5000"]
    if reverse:
        argv.append("-R")
    result = json.loads(run_in(bed.pod, argv, timeout=seconds + 60))
    end = result["end"]
    return {"gbit_s": end["sum_received"]["bits_per_second"] / 1e9,
            "retransmits": float(end["sum_sent"].get("retransmits", 0))}


def iperf_udp(bed: Bed, path: str, *, seconds: int, size: int = 64,
              reverse: bool = False) -> dict[str, float]:
    argv = ["iperf3", "-c", DESTINATIONS[path], "-p", str(IPERF_PORTS[path]), "-u", "-b", "0",
            "-l", str(size), "-t", str(seconds), "-J", "--connect-timeout", "5000"]
    if reverse:
        argv.append("-R")
    result = json.loads(run_in(bed.pod, argv, timeout=seconds + 60))
    # The receiver's view: packets up to the highest sequence number seen, minus the gaps.
    total = result["end"].get("sum_received") or result["end"]["sum"]
    received = total["packets"] - total["lost_packets"]
    return {"kpps": received / total["seconds"] / 1e3, "loss_percent": float(total["lost_percent"])}


def load_crr(bed: Bed, path: str, *, seconds: float, concurrency: int = 32) -> dict[str, float]:
    out = json.loads(run_in(bed.pod, [LOADGEN, "crr", DESTINATIONS[path], str(LOAD_PORT), str(concurrency),
                                      str(seconds)], timeout=seconds + 30))
    return {"conn_s": out["rate"], "p50_ms": out["p50_us"] / 1e3, "p99_ms": out["p99_us"] / 1e3,
            "failed": float(out["failed"]), "completed": float(out["completed"])}


def load_udp_rr(bed: Bed, path: str, *, seconds: float) -> dict[str, float]:
    out = json.loads(run_in(bed.pod, [LOADGEN, "udprr", DESTINATIONS[path], str(LOAD_PORT), str(seconds)],
                            timeout=seconds + 30))
    return {"p50_ms": out["p50_us"] / 1e3, "p99_ms": out["p99_us"] / 1e3, "tps": out["rate"],
            "lost": float(out["lost"])}


@dataclass(frozen=True)
class Test:
    name: str
    run: Callable[[Bed, str], dict[str, float]]


def data_path_tests(seconds: int) -> list[Test]:
    short = max(2, seconds - 1)
    return [
        Test("tcp_1", lambda bed, p: iperf_tcp(bed, p, streams=1, seconds=seconds)),
        Test("tcp_4", lambda bed, p: iperf_tcp(bed, p, streams=4, seconds=seconds)),
        Test("tcp_1_down", lambda bed, p: iperf_tcp(bed, p, streams=1, seconds=seconds, reverse=True)),
        Test("udp_up", lambda bed, p: iperf_udp(bed, p, seconds=short)),
        Test("udp_down", lambda bed, p: iperf_udp(bed, p, seconds=short, reverse=True)),
        Test("crr", lambda bed, p: load_crr(bed, p, seconds=short)),
        Test("udp_rr", lambda bed, p: load_udp_rr(bed, p, seconds=short)),
    ]


def flush_conntrack() -> None:
    # Each connection-rate run starts from the same conntrack table on either path.
    subprocess.run(["conntrack", "-F"], capture_output=True, check=False, timeout=60)


def run_variant(bed: Bed, test: Test, path: str, retries: int = 2) -> dict[str, float]:
    for attempt in range(retries + 1):
        try:
            if test.name == "crr":
                flush_conntrack()
            return test.run(bed, path)
        except (RuntimeError, subprocess.TimeoutExpired, ValueError, KeyError) as exc:
            log(f"{test.name} on {path} failed (attempt {attempt + 1}): {exc}")
            # An iperf3 server left busy by a failed client: start the servers again.
            stop_servers(bed)
            start_servers(bed)
            time.sleep(1)
    raise RuntimeError(f"{test.name} on {path} kept failing")


Results = dict[str, dict[str, list[dict[str, float]]]]


def interleaved(bed: Bed, tests: Sequence[Test], variants: Sequence[tuple[str, str]], rounds: int,
                switch: Callable[[str], None] = lambda variant: None) -> Results:
    """Runs every test on every variant (label, path), rotating the order each round.

    `switch(label)` puts the kernel in the state a variant needs (levers on/off)."""
    results: Results = {t.name: {v: [] for v, _ in variants} for t in tests}
    for r in range(rounds):
        order = list(variants[r % len(variants):]) + list(variants[:r % len(variants)])
        for test in tests:
            for label, path in order:
                switch(label)
                figures = run_variant(bed, test, path)
                results[test.name][label].append(figures)
                log(f"round {r + 1}/{rounds} {test.name:<10} {label:<14} "
                    + " ".join(f"{k}={v:.4g}" for k, v in figures.items()))
    return results


# ---------------------------------------------------------------------------
# Control plane
# ---------------------------------------------------------------------------

def wait_status(driver: RunningDriver, check: Callable[[dict[str, Any]], bool],
                timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = driver.status()
        if status.get("pid") == driver.felix.pid and check(status):
            return status
        if not driver.felix.running():
            raise RuntimeError(f"driver exited:\n{driver.felix.output[-2000:]}")
        time.sleep(0.05)
    raise RuntimeError(f"driver status not reached in {timeout}s: {driver.status().get('not_ready_reasons')}")


def applied_since(status: dict[str, Any], applies_before: int) -> bool:
    return bool((status.get("applies") or 0) > applies_before and status.get("ready"))


def control_plane(bed: Bed, reps: int, insync_reps: int) -> dict[str, Any]:
    """InSync to a working data path (`insync_reps` cold starts after the first
    one after boot), and a settings change to applied (the first `reps`
    starts), on a live stream."""
    insync: list[dict[str, float]] = []
    settings: list[dict[str, float]] = []
    idle_rss: list[dict[str, float]] = []
    link = translator_link()
    for rep in range(max(reps, insync_reps + 1)):
        cleanup_kernel()
        head, in_sync = node_frames()
        driver = start_driver(head, bed.status_file())
        bed.driver = driver
        # Everything before InSync is folded; the process is long started.
        wait_status(driver, lambda s: s.get("settings_ok") is True, 300)
        time.sleep(1.0)
        t0 = time.monotonic()
        driver.felix.send(in_sync)
        working = udp_probe(bed.pod, DESTINATIONS["nat64"], LOAD_PORT, timeout=60)
        if working is None:
            raise RuntimeError(f"the NAT64 path never worked after InSync\n{path_state()}")
        status = driver_ready(driver)
        elapsed_to_ready = time.monotonic() - t0
        last = status.get("last_apply") or {}
        # The first apply after the VM boots also loads the nf_tables expression
        # modules and warms every cache; the report shows it apart.
        insync.append({"to_working_s": working, "to_ready_s": elapsed_to_ready,
                       "first_apply_s": float(last.get("duration_seconds", 0.0)),
                       "first_after_boot": float(rep == 0)})
        log(f"InSync -> working {working:.3f}s (ready {elapsed_to_ready:.3f}s, "
            f"apply {insync[-1]['first_apply_s']:.3f}s)")
        time.sleep(2.0)
        idle_rss.append(process_memory(driver.felix.pid or 0))
        if rep >= reps:
            stop_driver(bed)
            continue
        # A settings change on the live stream: the translator links' MTU.
        for mtu in (1400, 1500):
            before = (driver.status().get("applies") or 0)
            t0 = time.monotonic()
            driver.felix.send(config_frame(mtu=mtu))
            while link_mtu(link) != mtu:
                if time.monotonic() - t0 > 60:
                    raise RuntimeError(f"MTU {mtu} never applied")
                time.sleep(0.002)
            in_kernel = time.monotonic() - t0
            status = wait_status(driver, lambda s, b=before: applied_since(s, b), 60)
            settings.append({"to_kernel_s": in_kernel, "to_applied_s": time.monotonic() - t0,
                             "apply_s": float((status.get("last_apply") or {}).get("duration_seconds", 0.0))})
            log(f"settings change (MTU {mtu}) in kernel after {in_kernel:.3f}s, "
                f"applied {settings[-1]['to_applied_s']:.3f}s")
        stop_driver(bed)
    return {"insync_to_working": insync, "settings_change": settings, "idle_rss": idle_rss}


def snapshot_rss(bed: Bed) -> dict[str, Any]:
    """Driver memory after Felix's 100k-message snapshot (policies, IP sets, endpoints...)."""
    cleanup_kernel()
    with open(SNAPSHOT, "rb") as handle:
        data = handle.read()
    driver = start_driver(b"", bed.status_file())
    bed.driver = driver
    time.sleep(0.5)
    t0 = time.monotonic()
    driver.felix.send(data)
    sent = time.monotonic() - t0
    status = driver_ready(driver, timeout=600)
    ready = time.monotonic() - t0
    time.sleep(2.0)
    memory = process_memory(driver.felix.pid or 0)
    frames = (status.get("stream") or {}).get("frames", 0)
    stop_driver(bed)
    cleanup_kernel()
    log(f"100k snapshot: {frames} frames, sent in {sent:.1f}s, ready after {ready:.1f}s, "
        f"RSS {memory['VmRSS']:.1f} MB (peak {memory['VmHWM']:.1f} MB)")
    return {"frames": frames, "bytes": len(data), "send_s": sent, "to_ready_s": ready,
            "rss_mb": memory["VmRSS"], "peak_rss_mb": memory["VmHWM"]}


def timed_apply(dataplane: Any, desired: Any) -> tuple[float, int]:
    t0 = time.perf_counter()
    outcome = dataplane.apply(desired)
    return time.perf_counter() - t0, outcome.changes


def desired_for(*, pools: int = 1, prefixes: Sequence[str] = (WKP, NSP), extra: dict[str, str] | None = None
                ) -> Any:
    head, in_sync = node_frames(prefixes=prefixes, pools=pools, extra=extra)
    return desired_from(head + in_sync, {})


def apply_scaling(reps: int) -> dict[str, Any]:
    """Apply time (cold, no-op resync, one change) as pools and prefixes grow."""
    from felix_nat64.cli.driver import build_dataplane  # noqa: PLC0415
    from felix_nat64.model.desired import build_desired  # noqa: PLC0415,F401

    dataplane = build_dataplane(None)
    out: dict[str, Any] = {"pools": [], "prefixes": []}
    for pools in (1, 10, 100, 1000):
        cleanup_kernel()
        t0 = time.perf_counter()
        desired = desired_for(pools=pools)
        calc = time.perf_counter() - t0
        bigger = desired_for(pools=pools + 1)
        cold, _ = timed_apply(dataplane, desired)
        resync = [timed_apply(dataplane, desired)[0] for _ in range(reps)]
        change = []
        for _ in range(reps):
            change.append(timed_apply(dataplane, bigger)[0])
            change.append(timed_apply(dataplane, desired)[0])
        out["pools"].append({"n": pools, "calc_s": calc, "cold_s": cold, "resync_s": resync,
                             "change_s": change})
        log(f"pools={pools}: cold {cold:.3f}s, resync {report.median(resync):.3f}s, "
            f"change {report.median(change):.3f}s")
    wide = {"NAT64Pool4CIDR": "169.254.64.0/22"}  # 64 blocks: room for 17 translators
    for count in (1, 2, 4, 8, 16):
        cleanup_kernel()
        prefixes = [f"2001:db8:64:{i:x}::/96" for i in range(count)]
        desired = desired_for(prefixes=prefixes, extra=wide)
        more = desired_for(prefixes=[*prefixes, "2001:db8:64:ff::/96"], extra=wide)
        cold, _ = timed_apply(dataplane, desired)
        resync = [timed_apply(dataplane, desired)[0] for _ in range(reps)]
        add, _ = timed_apply(dataplane, more)
        remove, _ = timed_apply(dataplane, desired)
        out["prefixes"].append({"n": count, "cold_s": cold, "resync_s": resync, "add_one_s": add,
                                "remove_one_s": remove})
        log(f"prefixes={count}: cold {cold:.3f}s, resync {report.median(resync):.3f}s, add one {add:.3f}s")
    cleanup_kernel()
    return out


def stats_sample_cost() -> dict[str, float]:
    """What one metrics sample costs with the sessions the connection-rate runs left."""
    from felix_nat64.observe.sampler import sample_kernel  # noqa: PLC0415

    t0 = time.perf_counter()
    sample = sample_kernel()
    elapsed = time.perf_counter() - t0
    sessions = sum(t.sessions for t in sample.translators)
    return {"seconds": elapsed, "sessions": float(sessions)}


# ---------------------------------------------------------------------------
# Levers: kernel settings tried on the NAT64 path, switched per measurement
# ---------------------------------------------------------------------------

BENCH_TABLE = "fn64-bench"


def nft(script: str) -> None:
    done = subprocess.run(["nft", "-f", "-"], input=script, capture_output=True, text=True, check=False,
                          timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"nft failed: {done.stderr.strip()}\n{script}")


def drop_bench_table() -> None:
    subprocess.run(["nft", "delete", "table", "inet", BENCH_TABLE], capture_output=True, check=False,
                   timeout=60)


def flowtable(devices: Sequence[str], *, ipv6_leg: bool = False) -> str:
    """A flowtable for the translated IPv4 leg (and, to size what it would give, the IPv6 leg).

    Its forward chain runs after felix-nat64's (priority 10 > 0), so every
    packet that is not yet offloaded meets felix-nat64's checks first."""
    rules = ['meta nfproto ipv4 iifname "fn64-*" meta l4proto { tcp, udp } flow add @fastpath',
             'meta nfproto ipv4 oifname "fn64-*" meta l4proto { tcp, udp } flow add @fastpath']
    if ipv6_leg:
        rules.append('meta nfproto ipv6 oifname "fn64-*" meta l4proto { tcp, udp } flow add @fastpath')
    return (f"table inet {BENCH_TABLE} {{\n"
            f"  flowtable fastpath {{ hook ingress priority 0; "
            f"devices = {{ {', '.join(json.dumps(d) for d in devices)} }}; }}\n"
            f"  chain forward {{ type filter hook forward priority 10; policy accept;\n"
            + "".join(f"    {r}\n" for r in rules) + "  }\n}\n")


def set_gro(on: bool) -> None:
    state = "on" if on else "off"
    subprocess.run(["ethtool", "-K", translator_link(), "gro", state], capture_output=True, check=False)
    run_command_in_netns(translator_namespace(), ["ethtool", "-K", NS_LINK_NAME, "gro", state], check=False)


@dataclass(frozen=True)
class Lever:
    name: str
    what: str
    tests: tuple[str, ...]
    on: Callable[[Bed], None]
    off: Callable[[Bed], None]


def levers(bed: Bed) -> list[Lever]:
    link = translator_link()
    uplink = topo_mod.NODE_UPLINK_IFNAME
    cali = bed.topo.pod(0).node_ifname

    def snat(on: bool) -> Callable[[Bed], None]:
        def switch(b: Bed) -> None:
            assert b.driver is not None
            extra = {"NAT64SNATAddress": str(topo_mod.NODE_IPV4)} if on else {}
            before = b.driver.status().get("applies") or 0
            b.driver.felix.send(config_frame(extra=extra))
            wait_status(b.driver, lambda s: applied_since(s, before), 60)
        return switch

    return [
        Lever("flowtable_v4", f"nftables flowtable on the IPv4 leg ({link} and {uplink})",
              ("tcp_1", "tcp_1_down", "udp_up", "crr", "udp_rr"),
              lambda b: nft(flowtable([link, uplink])), lambda b: drop_bench_table()),
        Lever("flowtable_v4_translator_only", f"flowtable on the IPv4 leg, translator link {link} only",
              ("tcp_1", "tcp_1_down"),
              lambda b: nft(flowtable([link])), lambda b: drop_bench_table()),
        Lever("flowtable_both_legs", f"flowtable on both legs ({cali}, {link}, {uplink}): bypasses Calico "
              "policy on the IPv6 leg, measured only to size what that gives up",
              ("tcp_1", "udp_rr"),
              lambda b: nft(flowtable([cali, link, uplink], ipv6_leg=True)), lambda b: drop_bench_table()),
        Lever("gro_on", "rx-gro on both ends of the translator veth (NAPI mode)",
              ("tcp_1", "udp_up", "udp_rr"),
              lambda b: set_gro(True), lambda b: set_gro(False)),
        Lever("snat", "SNAT to the node address (NAT64SNATAddress) instead of masquerade",
              ("crr",), snat(True), snat(False)),
    ]


def run_levers(bed: Bed, tests: Sequence[Test], rounds: int, only: Sequence[str], out: dict[str, Any],
               saved: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Measures each lever into `out` (calling `saved()` after each one) and returns it."""
    by_name = {t.name: t for t in tests}
    for lever in levers(bed):
        if only and lever.name not in only:
            continue
        log(f"lever {lever.name}: {lever.what}")
        state = {"on": False}

        def switch(label: str, lever: Lever = lever, state: dict[str, bool] = state) -> None:
            want = label == "nat64+lever"
            if want != state["on"]:
                (lever.on if want else lever.off)(bed)
                state["on"] = want

        variants = [("routed", "routed"), ("nat64", "nat64"), ("nat64+lever", "nat64")]
        try:
            results = interleaved(bed, [by_name[n] for n in lever.tests], variants, rounds, switch)
        finally:
            # Only when on: switching a setting off that is off already sends
            # Felix's settings unchanged, and the driver rightly applies nothing.
            switch("nat64")
        out[lever.name] = {"what": lever.what, "results": results}
        saved()
    return out


def pool4_exhaustion(bed: Bed, seconds: float) -> dict[str, Any]:
    """Connection rate with a pool4 of 8 x 256 ports: Jool keeps each closed TCP
    session for 4 minutes, so the run fails once 2,048 transport addresses are taken."""
    assert bed.driver is not None
    small = {"NAT64Pool4PortRange": "65280-65535"}
    before = bed.driver.status().get("applies") or 0
    bed.driver.felix.send(config_frame(extra=small))
    wait_status(bed.driver, lambda s: applied_since(s, before), 60)
    try:
        flush_conntrack()
        result = load_crr(bed, "nat64", seconds=seconds)
    finally:
        before = bed.driver.status().get("applies") or 0
        bed.driver.felix.send(config_frame())
        wait_status(bed.driver, lambda s: applied_since(s, before), 60)
    log(f"pool4 of 2048 TCP transport addresses: {result}")
    return {"transport_addresses": 8 * 256, "seconds": seconds, **result}


# ---------------------------------------------------------------------------
# Diagnostics recorded with the results
# ---------------------------------------------------------------------------

def diagnostics() -> dict[str, Any]:
    def cmd(argv: Sequence[str], ns: str | None = None) -> str:
        done = run_command_in_netns(ns, list(argv), check=False, timeout=60)
        return (done.stdout + done.stderr).strip()

    link = translator_link()
    ns = translator_namespace()
    features = cmd(["ethtool", "-k", link])
    wanted = ("tcp-segmentation-offload", "generic-segmentation-offload", "generic-receive-offload",
              "rx-gro-list", "tx-checksumming")
    return {
        "kernel": platform.release(),
        "jool": open("/sys/module/jool/version").read().strip() if os.path.exists("/sys/module/jool/version")
        else "",
        "translator_link_features": [line.strip() for line in features.splitlines()
                                     if line.strip().startswith(wanted)],
        "translator_namespace_conntrack": cmd(["conntrack", "-C"], ns),
        "nf_conntrack_max": cmd(["sysctl", "-n", "net.netfilter.nf_conntrack_max"]),
        "cpus": os.cpu_count(),
        "memory_mb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 20),
    }


# ---------------------------------------------------------------------------

@contextlib.contextmanager
def bed_up() -> Iterator[Bed]:
    topo_mod.cleanup_stale(node_in_current_netns=True)
    topo = topo_mod.build_topology(pods=1, node_in_current_netns=True)
    bed = Bed(topo, status_dir=tempfile.mkdtemp(prefix="fn64-bench-"))
    try:
        start_servers(bed)
        yield bed
    finally:
        stop_driver(bed)
        stop_servers(bed)
        drop_bench_table()
        with contextlib.suppress(Exception):
            cleanup_kernel()
        topo.teardown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per data path test")
    parser.add_argument("--seconds", type=int, default=5, help="length of each bulk transfer")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each control plane figure")
    parser.add_argument("--json", default=DEFAULT_JSON)
    parser.add_argument("--levers", action="store_true",
                        help="also measure the levers (docs/bench/levers.json)")
    parser.add_argument("--lever", action="append", default=[], help="only this lever (repeatable)")
    parser.add_argument("--lever-rounds", type=int, default=3)
    parser.add_argument("--levers-json", default=LEVERS_JSON)
    parser.add_argument("--pool4-exhaustion", action="store_true",
                        help="with --lever: also the pool4 exhaustion run (always run with --levers alone)")
    parser.add_argument("--insync-reps", type=int, default=10,
                        help="cold starts timed from InSync to a working path, besides the first after boot")
    parser.add_argument("--skip-busy", action="store_true",
                        help="leave out the busy node (a full Jool table)")
    parser.add_argument("--busy-sizes", default="1000,10000,100000",
                        help="session table sizes of the busy node, comma-separated")
    parser.add_argument("--only-busy", action="store_true", help="the busy node alone")
    parser.add_argument("--busy-json", default=BUSY_JSON)
    parser.add_argument("--merge", action="store_true",
                        help=f"keep the parts of {DEFAULT_JSON} this run leaves out")
    parser.add_argument("--skip-control", action="store_true", help="data path only")
    parser.add_argument("--skip-datapath", action="store_true", help="control plane only")
    parser.add_argument("--tests", default="", help="comma-separated data path tests to run (default all)")
    args = parser.parse_args(argv)
    if not in_vm():
        print("benchmarks.datapath needs the real Jool module: run it in the test VM:\n"
              "    python -m testbed.vm .venv/bin/python -m benchmarks.datapath", file=sys.stderr)
        return 2
    for needed in (LOADGEN, SNAPSHOT):
        if not os.path.exists(needed):
            print(f"{needed} is missing: run python -m benchmarks.prepare first", file=sys.stderr)
            return 2
    started = time.monotonic()
    result: dict[str, Any] = {"conditions": {
        "date": time.strftime("%Y-%m-%d %H:%M"), "python": platform.python_version(),
        "rounds": args.rounds, "seconds": args.seconds, "reps": args.reps,
        "emulation": "qemu TCG (no KVM), 2 vCPUs, shared with the host's other work",
        "conntrack_max": CONNTRACK_MAX, "driver_resync": "1h during measurements",
        "paths": {"nat64": f"pod -> {DESTINATIONS['nat64']} (198.51.100.10 through the translator)",
                  "routed": f"pod -> {SERVER_V6} by plain IPv6 routing over the same pod veth and uplink"},
    }}
    tests = data_path_tests(args.seconds)
    if args.tests:
        wanted = set(args.tests.split(","))
        tests = [t for t in tests if t.name in wanted]
    lever_result: dict[str, Any] = {"conditions": result["conditions"], "levers": {}}

    def phase(name: str, fn: Callable[[], None]) -> None:
        """Runs one part; a failure is recorded and the other parts still run."""
        log(name)
        try:
            fn()
        except Exception as exc:  # recorded in the results, which say what is missing
            log(f"{name} failed: {exc!r}\n{traceback.format_exc()}")
            result.setdefault("errors", []).append(f"{name}: {exc!r}")
        result["conditions"]["wall_seconds"] = round(time.monotonic() - started, 1)
        if not args.only_busy:  # the busy node has a file of its own
            write_json(args.json, result)

    if not (args.skip_datapath or args.only_busy):
        # Before the first phase rewrites it: the report sets the last
        # run's figures beside the new ones.
        keep_previous(args.json)
    if args.merge and os.path.exists(args.json):
        with open(args.json) as handle:
            kept = json.load(handle)
        result = {**kept, "conditions": {**kept.get("conditions", {}), **result["conditions"],
                                         "merged_from": kept.get("conditions", {}).get("date", "?")}}
        result.pop("errors", None)
    with bed_up() as bed:
        if not (args.skip_control or args.only_busy):
            def control() -> None:
                result["control"] = control_plane(bed, args.reps, args.insync_reps)
                result["control"]["snapshot"] = snapshot_rss(bed)

            def scaling() -> None:
                result["scaling"] = apply_scaling(args.reps)

            phase("control plane: InSync to working, settings change, memory", control)
            phase("apply scaling", scaling)
        if not args.skip_busy:
            from benchmarks import busy  # noqa: PLC0415 (it imports this module)

            sizes = [int(s) for s in args.busy_sizes.split(",") if s]
            phase("busy node: costs as Jool's tables fill",
                  lambda: busy.phase_main(bed, result["conditions"], args.busy_json, sizes, args.reps))
        if args.only_busy:
            return finish(result)
        if args.skip_datapath and not args.levers:
            return finish(result)
        cleanup_kernel()
        head, in_sync = node_frames()
        bed.driver = start_driver(head + in_sync, bed.status_file())
        driver_ready(bed.driver)
        size_conntrack()
        check_paths(bed)
        result["conditions"]["kernel"] = diagnostics()
        log(f"bed ready: {json.dumps(result['conditions']['kernel'])}")
        if not args.skip_datapath:
            def datapath() -> None:
                result["datapath"] = interleaved(bed, tests, [(p, p) for p in PATHS], args.rounds)
                result["stats_sample"] = stats_sample_cost()
                log(f"one metrics sample: {result['stats_sample']}")

            phase("data path, NAT64 against routed", datapath)
        if args.levers:
            def lever_phase() -> None:
                run_levers(bed, data_path_tests(args.seconds), args.lever_rounds, args.lever,
                           lever_result["levers"], lambda: write_json(args.levers_json, lever_result))
                if not args.lever or args.pool4_exhaustion:
                    lever_result["pool4_exhaustion"] = pool4_exhaustion(bed, seconds=8)
                write_json(args.levers_json, lever_result)

            phase("levers", lever_phase)
    return finish(result)


PREVIOUS_SUFFIX = "-previous.json"


def previous_path(path: str) -> str:
    return path.removesuffix(".json") + PREVIOUS_SUFFIX


def keep_previous(path: str) -> None:
    """Keeps the last run's data path and control plane figures beside the
    new ones: the report shows both. A run without data path figures
    replaces nothing."""
    try:
        with open(path) as handle:
            last = json.load(handle)
    except (OSError, ValueError):
        return
    if last.get("datapath"):
        kept = {k: last[k] for k in ("conditions", "datapath", "control", "scaling") if k in last}
        write_json(previous_path(path), kept)


def finish(result: dict[str, Any]) -> int:
    print(report.render_text(report.summarize(result)))
    return 1 if result.get("errors") else 0


def write_json(path: str, data: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(data, handle, indent=2)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
