"""The busy node: what observing and converging cost as Jool's tables fill.

Run inside the test VM by benchmarks.datapath (phase "busy node", `--busy`),
on the same bed as the rest of the benchmark. A live driver serves the node
with long UDP and TCP-transitory timeouts, so the sessions made to fill the
table last the whole run. The load generator (benchmarks/loadgen.c) fills
Jool from the pod, half UDP (one datagram per flow, to ports where the
IPv4 server drops it) and half TCP (whole connections, which Jool keeps
for the TCP transitory timeout once closed, as a node with connection churn
keeps them), to 1,000, then 10,000, then 100,000 sessions. At each size it
measures, with the table as it is:

- one metrics sample (what the stats-poller runs) and a scrape of /metrics;
- `felix-nat64 status` (its collection in this process, and the command);
- `felix-nat64 sessions --limit 100` (likewise);
- a no-op resync (an apply of the state already in force: nothing changes);
- a settings change on the live stream (the links' MTU) until the kernel has it;
- the driver's RSS;
- a session census (sessions per protocol and namespace: the one read that
  walks the table).

The new-connection rate against plain routing (NAT64/routed, interleaved
rounds) is measured on the empty table of a fresh translator and again with
the table full, so the two ratios come from the same run.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from benchmarks import datapath as dp
from benchmarks import report
from benchmarks.prepare import LOADGEN
from felix_nat64.dataplane.fold import desired_from
from testbed.netns_exec import popen_in_netns, run_command_in_netns, write_sysctls
from tests.vm.dataplane_fixtures import start_driver

SIZES = (1_000, 10_000, 100_000)
# Sessions made to fill the table must outlive the run, and no periodic
# resync may land inside a measurement (its cost is measured on its own).
BUSY_SETTINGS = {"NAT64UDPTimeout": "1h", "NAT64TCPTransitoryTimeout": "1h"}
FILL_TCP_PORT = 7100  # the fill's TCP server listens on 7100..7100+FILL_PORTS-1
FILL_UDP_PORT = 9000  # UDP fill datagrams go to 9000.. and are dropped by the server
FILL_PORTS = 8
UDP_FILL_RATE = 2000  # datagrams per second (the emulated path drops what it cannot take)
TCP_FILL_CONCURRENCY = 32
FILL_ROUNDS = 4  # passes over a range until Jool holds (nearly) every flow of it
# Two conntrack entries per flow (the IPv6 leg and the IPv4 leg): room for
# 100,000 sessions of which the TCP ones linger in TIME_WAIT for 2 minutes.
BUSY_CONNTRACK_MAX = 262_144
FILTER_TABLE = "fn64-busy"
FLAT_REPS = 7  # repetitions of a metrics sample, a scrape and status at each size


def log(message: str) -> None:
    dp.log(f"busy: {message}")


def timed(fn: Callable[[], Any], reps: int = 3) -> tuple[list[float], Any]:
    """Wall times of `reps` calls of fn, and the last result."""
    times: list[float] = []
    result: Any = None
    for _ in range(reps):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return times, result


# ---------------------------------------------------------------------------
# Filling the table
# ---------------------------------------------------------------------------

@contextlib.contextmanager
def fill_servers(bed: dp.Bed) -> Iterator[None]:
    """A TCP server on the fill ports, and the IPv4 server dropping UDP fill datagrams."""
    server = popen_in_netns(bed.inet4, [LOADGEN, "serve", str(FILL_TCP_PORT), "7200", str(FILL_PORTS)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert server.stdout is not None
    drop = (f"table inet {FILTER_TABLE} {{\n  chain input {{\n    type filter hook input priority 0;\n"
            f"    udp dport {FILL_UDP_PORT}-{FILL_UDP_PORT + FILL_PORTS - 1} drop\n  }}\n}}\n")
    try:
        if server.stdout.readline() != b"READY\n":
            raise RuntimeError("the fill server did not start")
        done = run_command_in_netns(bed.inet4, ["nft", "-f", "-"], input_text=drop, check=False, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"nft: {done.stderr}")
        yield
    finally:
        server.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(5)
        run_command_in_netns(bed.inet4, ["nft", "delete", "table", "inet", FILTER_TABLE], check=False,
                             timeout=60)


def jool_sessions() -> int:
    from felix_nat64.observe.sampler import sample_kernel  # noqa: PLC0415

    return sum(t.sessions for t in sample_kernel().translators)


def loadgen(bed: dp.Bed, *args: str, timeout: float) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(dp.run_in(bed.pod, [LOADGEN, *args], timeout=timeout))
    return out


def fill(bed: dp.Bed, kind: str, first: int, count: int) -> dict[str, float]:
    """Flows first..first+count-1 of one kind, in passes until Jool holds them."""
    target = nat64_server()
    passes = []
    for _ in range(FILL_ROUNDS):
        before = jool_sessions()
        if kind == "udp":
            out = loadgen(bed, "udpfill", target, str(FILL_UDP_PORT), str(first), str(count),
                          str(UDP_FILL_RATE), timeout=count / UDP_FILL_RATE * 3 + 120)
        else:
            out = loadgen(bed, "tcpfill", target, str(FILL_TCP_PORT), str(first), str(count),
                          str(TCP_FILL_CONCURRENCY), timeout=count / 20 + 300)
        added = jool_sessions() - before
        passes.append({"seconds": out["seconds"], "completed": out["completed"], "failed": out["failed"],
                       "added": added})
        log(f"{kind} flows {first}-{first + count - 1}: {out['completed']} done, {out['failed']} failed, "
            f"{out['seconds']:.1f}s; Jool +{added}")
        # Another pass only adds what the first lost; one that adds little ends it.
        if added <= count * 0.002 or (len(passes) == 1 and added >= count * 0.998):
            break
    return {"passes": len(passes), "seconds": sum(p["seconds"] for p in passes),
            "failed_last_pass": passes[-1]["failed"], "added": sum(p["added"] for p in passes)}


def nat64_server() -> str:
    return dp.DESTINATIONS["nat64"]


# ---------------------------------------------------------------------------
# Measuring at one size
# ---------------------------------------------------------------------------

METRICS_URL = "http://127.0.0.1:9096/metrics"  # the driver's default NAT64MetricsPort


def scrape_metrics() -> int:
    """One scrape of the driver's /metrics, as Prometheus does it; returns its size."""
    with urllib.request.urlopen(METRICS_URL, timeout=60) as resp:
        return len(resp.read())


def cli_seconds(*argv: str) -> tuple[float, str]:
    """Wall time of a felix-nat64 command (a fresh interpreter, as an operator runs it)."""
    command = os.path.join(os.path.dirname(sys.executable), "felix-nat64")
    t0 = time.perf_counter()
    done = subprocess.run([command, *argv], capture_output=True, text=True, check=False, timeout=600)
    elapsed = time.perf_counter() - t0
    if done.returncode not in (0, 4):
        raise RuntimeError(f"felix-nat64 {' '.join(argv)} failed ({done.returncode}): {done.stderr[-500:]}")
    return elapsed, done.stdout


def measure(bed: dp.Bed, desired: Any, reps: int) -> dict[str, Any]:
    """Every cost figure with the table as it is now."""
    from felix_nat64.cli import status as status_cli  # noqa: PLC0415
    from felix_nat64.cli.driver import build_dataplane  # noqa: PLC0415
    from felix_nat64.drivers.discovery import translators as discover  # noqa: PLC0415
    from felix_nat64.model.workloads import WorkloadIndex  # noqa: PLC0415
    from felix_nat64.observe.sampler import sample_kernel, take_census  # noqa: PLC0415
    from felix_nat64.observe.session_table import TableQuery, read_page  # noqa: PLC0415

    assert bed.driver is not None
    out: dict[str, Any] = {}
    # The figures that must not grow with the table are cheap and noisy
    # under emulation: more repetitions of them.
    flat_reps = max(reps, FLAT_REPS)
    sample_s, sample = timed(sample_kernel, flat_reps)
    out["sessions"] = sum(t.sessions for t in sample.translators)
    out["bib_entries"] = sum(t.bib_entries for t in sample.translators)
    out["sample_s"] = sample_s
    out["scrape_s"], _ = timed(scrape_metrics, flat_reps)
    out["status_collect_s"], _ = timed(lambda: status_cli.collect(bed.status_file(), kernel=True), flat_reps)
    out["status_cli_s"], _ = cli_seconds("status", "--status-file", bed.status_file())
    translators = [t for t in discover() if t.namespace]
    page_s, page = timed(lambda: read_page(translators, TableQuery(limit=100)), reps)
    out["sessions_page_s"] = page_s
    out["sessions_page_rows"] = len(page.rows)
    out["sessions_cli_s"], _ = cli_seconds("sessions", "--limit", "100", "--status-file", bed.status_file())
    dataplane = build_dataplane(None)
    resync: list[float] = []
    for _ in range(reps):
        seconds, changes = dp.timed_apply(dataplane, desired)
        if changes:
            raise RuntimeError(f"a no-op resync changed {changes} things")
        resync.append(seconds)
    out["resync_s"] = resync
    out["settings_change"] = settings_change(bed)
    out["rss_mb"] = dp.process_memory(bed.driver.felix.pid or 0)
    census_s, census = timed(lambda: take_census(WorkloadIndex()), 1)
    out["census_s"] = census_s
    out["census_sessions"] = census.sessions
    log(f"{out['sessions']:,} sessions: sample {report.median(sample_s):.3f}s, status "
        f"{report.median(out['status_collect_s']):.3f}s (cli {out['status_cli_s']:.1f}s), sessions page "
        f"{report.median(page_s):.3f}s (cli {out['sessions_cli_s']:.1f}s), resync "
        f"{report.median(resync):.3f}s, RSS {out['rss_mb']['VmRSS']:.1f} MB, census {census_s[0]:.1f}s")
    return out


def settings_change(bed: dp.Bed) -> list[dict[str, float]]:
    """The translator links' MTU changed on the live stream, and back."""
    assert bed.driver is not None
    link = dp.translator_link()
    runs = []
    for mtu in (1400, 1500):
        before = bed.driver.status().get("applies") or 0
        t0 = time.monotonic()
        bed.driver.felix.send(dp.config_frame(mtu=mtu, extra=BUSY_SETTINGS))
        while dp.link_mtu(link) != mtu:
            if time.monotonic() - t0 > 120:
                raise RuntimeError(f"MTU {mtu} never reached the kernel")
            time.sleep(0.002)
        in_kernel = time.monotonic() - t0
        dp.wait_status(bed.driver, lambda s, b=before: dp.applied_since(s, b), 120)  # type: ignore[misc]
        runs.append({"to_kernel_s": in_kernel, "to_applied_s": time.monotonic() - t0})
    return runs


def connection_rate(bed: dp.Bed, rounds: int, seconds: float) -> dict[str, list[dict[str, float]]]:
    """New TCP connections, NAT64 and routed, interleaved."""
    test = dp.Test("crr", lambda b, p: dp.load_crr(b, p, seconds=seconds))
    return dp.interleaved(bed, [test], [(p, p) for p in dp.PATHS], rounds)["crr"]


# ---------------------------------------------------------------------------
# The phase
# ---------------------------------------------------------------------------

def start_busy_driver(bed: dp.Bed) -> Any:
    """A fresh translator and driver (an empty table); returns the desired state it applies."""
    dp.stop_driver(bed)
    dp.cleanup_kernel()
    head, in_sync = dp.node_frames(extra=BUSY_SETTINGS)
    bed.driver = start_driver(head + in_sync, bed.status_file())
    dp.driver_ready(bed.driver)
    dp.check_paths(bed)
    return desired_from(head + in_sync, {})


def busy_node(bed: dp.Bed, sizes: Sequence[int] = SIZES, reps: int = 3, rounds: int = 3,
              crr_seconds: float = 4.0, saved: Callable[[dict[str, Any]], None] = lambda out: None
              ) -> dict[str, Any]:
    """The whole phase; `saved(out)` is called after each part, so a failure keeps what was measured."""
    out: dict[str, Any] = {"sizes": list(sizes), "settings": BUSY_SETTINGS, "levels": [],
                           "conntrack_max": BUSY_CONNTRACK_MAX}
    try:
        with fill_servers(bed):
            desired = start_busy_driver(bed)
            # After the driver's table has loaded conntrack, whose sysctls appear with it.
            write_sysctls(None, {"net/netfilter/nf_conntrack_max": BUSY_CONNTRACK_MAX})
            out["levels"].append({"target": 0, **measure(bed, desired, reps)})
            dp.flush_conntrack()
            out["crr_empty"] = connection_rate(bed, rounds, crr_seconds)
            saved(out)
            # The connection-rate runs left sessions behind: start again from an empty table.
            desired = start_busy_driver(bed)
            udp = tcp = 0
            for size in sizes:
                fills: dict[str, Any] = {}
                t0 = time.monotonic()
                for kind, have in (("udp", udp), ("tcp", tcp)):
                    want = size // 2 if kind == "udp" else size - size // 2
                    if want > have:
                        fills[kind] = fill(bed, kind, have, want - have)
                udp, tcp = size // 2, size - size // 2
                level = {"target": size, "fill": fills, "fill_s": time.monotonic() - t0}
                level.update(measure(bed, desired, reps))
                out["levels"].append(level)
                saved(out)
            dp.flush_conntrack()
            out["crr_full"] = connection_rate(bed, rounds, crr_seconds)
            out["crr_full_sessions"] = jool_sessions()
            saved(out)
    finally:
        dp.stop_driver(bed)
        dp.cleanup_kernel()
        with contextlib.suppress(OSError):
            write_sysctls(None, {"net/netfilter/nf_conntrack_max": dp.CONNTRACK_MAX})
    return out


def phase_main(bed: dp.Bed, conditions: dict[str, Any], json_path: str, sizes: Sequence[int],
               reps: int) -> None:
    """Runs the phase into `json_path` (its own file: a run of the busy node alone
    leaves the data path figures as they are), saving as it goes."""
    started = time.monotonic()
    last: dict[str, Any] = {}

    def saved(out: dict[str, Any]) -> None:
        last.update(out)
        wall = round(time.monotonic() - started, 1)
        dp.write_json(json_path, {"conditions": {**conditions, "busy_seconds": wall, "reps": reps}, **last})

    try:
        saved(busy_node(bed, sizes, reps=reps, saved=saved))
    except Exception as exc:  # recorded with what was measured, then reported by the caller
        saved({"errors": [f"busy node: {exc!r}"]})
        raise

