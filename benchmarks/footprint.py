"""The driver's memory and CPU on a node, run inside the test VM.

What a node pays for felix-nat64-driver, next to the second Felix that runs
it: resident memory and CPU time of the driver process, read from /proc, in
three phases on the simulated node of the VM tests (two translators on the
real Jool module, fed by the Felix simulator exactly as Felix feeds it):

- start: from exec to ready (the first apply after InSync);
- idle: a quiet node for `--idle` seconds with the default
  NAT64ResyncInterval (30 s), so the periodic re-read of the kernel and the
  metrics sampler are included;
- snapshot: Felix's 100k-message snapshot of a busy cluster
  (`python -m benchmarks.prepare` builds it), from the first byte to ready.

    python -m testbed.vm .venv/bin/python -m benchmarks.footprint [--idle 120]

Under qemu TCG every instruction costs several times what it does on
hardware, so the CPU figures are upper bounds. Results go to
docs/bench/footprint.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

from benchmarks.datapath import (
    Bed,
    bed_up,
    cleanup_kernel,
    driver_ready,
    log,
    node_frames,
    stop_driver,
    write_json,
)
from benchmarks.prepare import SNAPSHOT
from testbed.vm import in_vm
from tests.vm.dataplane_fixtures import start_driver

DEFAULT_JSON = "docs/bench/footprint.json"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Sample:
    """One look at the driver process."""

    cpu_s: float  # user + system time since exec
    rss_mb: float
    peak_rss_mb: float
    threads: int


def sample(pid: int) -> Sample:
    with open(f"/proc/{pid}/stat") as handle:
        # Fields after the command name, which may contain spaces: state is
        # field 3, utime 14 and stime 15 (proc(5)).
        fields = handle.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    status: dict[str, str] = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            status[key] = value.strip()
    return Sample(cpu_s=cpu, rss_mb=int(status["VmRSS"].split()[0]) / 1024,
                  peak_rss_mb=int(status["VmHWM"].split()[0]) / 1024, threads=int(status["Threads"]))


def steady_node(bed: Bed, idle: float) -> dict[str, Any]:
    """Start to ready with two translators, then a quiet node."""
    cleanup_kernel()
    head, in_sync = node_frames(extra={"nat64resyncinterval": "30s"})
    t0 = time.monotonic()
    driver = start_driver(head + in_sync, bed.status_file())
    bed.driver = driver
    driver_ready(driver)
    to_ready = time.monotonic() - t0
    pid = driver.felix.pid or 0
    ready = sample(pid)
    applies_before = driver.status().get("applies") or 0
    time.sleep(idle)
    after = sample(pid)
    applies = (driver.status().get("applies") or 0) - applies_before
    stop_driver(bed)
    idle_cpu = after.cpu_s - ready.cpu_s
    log(f"start -> ready {to_ready:.1f}s, {ready.cpu_s:.2f} CPU s, RSS {ready.rss_mb:.1f} MB; "
        f"idle {idle:.0f}s: {idle_cpu:.2f} CPU s ({1000 * idle_cpu / idle:.0f} millicores), "
        f"RSS {after.rss_mb:.1f} MB (peak {after.peak_rss_mb:.1f}), {applies} resync applies")
    return {"start_to_ready_s": to_ready, "ready": asdict(ready), "idle_s": idle, "after_idle": asdict(after),
            "idle_cpu_s": idle_cpu, "idle_millicores": 1000 * idle_cpu / idle, "resync_applies": applies}


def busy_cluster_snapshot(bed: Bed) -> dict[str, Any]:
    """Felix's 100k-message snapshot (policies, IP sets, endpoints, hosts, pools) to ready."""
    cleanup_kernel()
    with open(SNAPSHOT, "rb") as handle:
        data = handle.read()
    driver = start_driver(b"", bed.status_file())
    bed.driver = driver
    time.sleep(0.5)
    pid = driver.felix.pid or 0
    before = sample(pid)
    t0 = time.monotonic()
    driver.felix.send(data)
    status = driver_ready(driver, timeout=600)
    to_ready = time.monotonic() - t0
    after = sample(pid)
    stop_driver(bed)
    cleanup_kernel()
    frames = (status.get("stream") or {}).get("frames", 0)
    cpu = after.cpu_s - before.cpu_s
    log(f"100k snapshot: {frames} frames to ready in {to_ready:.1f}s, {cpu:.2f} CPU s, "
        f"RSS {after.rss_mb:.1f} MB (peak {after.peak_rss_mb:.1f})")
    return {"frames": frames, "bytes": len(data), "to_ready_s": to_ready, "cpu_s": cpu,
            "before": asdict(before), "after": asdict(after)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--idle", type=float, default=120.0, help="seconds of quiet node to measure")
    parser.add_argument("--json", default=DEFAULT_JSON)
    args = parser.parse_args(argv)
    if not in_vm():
        print("benchmarks.footprint needs the real Jool module: run it in the test VM:\n"
              "    python -m testbed.vm .venv/bin/python -m benchmarks.footprint", file=sys.stderr)
        return 2
    if not os.path.exists(SNAPSHOT):
        print(f"{SNAPSHOT} is missing: run python -m benchmarks.prepare first", file=sys.stderr)
        return 2
    result: dict[str, Any] = {"conditions": {
        "date": time.strftime("%Y-%m-%d %H:%M"), "python": platform.python_version(),
        "kernel": platform.release(), "cpus": os.cpu_count(),
        "emulation": "qemu TCG (no KVM), 2 vCPUs, shared with the host's other work",
        "felix": "the Felix simulator (testbed.felix), the calico-node stand-in's Felix",
    }}
    with bed_up() as bed:
        result["steady"] = steady_node(bed, args.idle)
        result["snapshot"] = busy_cluster_snapshot(bed)
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
