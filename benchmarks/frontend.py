"""Front-end benchmark: decode and fold a realistic Felix snapshot.

A Felix snapshot is mostly payloads felix-nat64 skips (policies, IP sets,
workload endpoints). This measures, in a fresh process so memory figures are
the driver's own, the messages per second the reader and the managers get
through and the process's peak RSS, then writes the figures as JSON.

    python -m benchmarks.frontend [--messages N] [--runs R] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from felix_nat64.dataplane.fold import fold_stream
from felix_nat64.testing.streams import StreamBuilder
from felix_nat64.wire.transport import fd_chunks

MESSAGES = 100_000


def build_snapshot(path: str, messages: int) -> dict[str, int]:
    """Writes a snapshot shaped like a busy cluster's: 40% policies, 30% IP
    sets, 27% local workload endpoints, the rest pools and hosts."""
    b = StreamBuilder("master")
    b.env_config(NAT64Prefixes="64:ff9b::/96,2001:db8:64::/96", FelixHostname="node-0")
    counts = {"policies": int(messages * 0.40), "ipsets": int(messages * 0.30),
              "workloads": int(messages * 0.27)}
    hosts = 1000
    pools = messages - 2 - sum(counts.values()) - hosts
    for i in range(counts["ipsets"]):
        b.ipset(f"s:{i:040x}", [f"10.{i >> 8 & 255}.{i & 255}.{j}/32" for j in range(i % 20 + 1)])
    for i in range(counts["policies"]):
        b.policy("default", f"knp.default.policy-{i}", rules=2 + i % 6)
    for i in range(counts["workloads"]):
        b.workload(f"ns-{i % 50}", f"pod-{i}", f"fd00:10:244::{i:x}/128", f"cali{i:011x}")
    for i in range(hosts):
        b.host(f"node-{i}", f"192.0.{i >> 8 & 255}.{i & 255}/16", f"2001:db8:1::{i:x}/64")
    for i in range(pools):
        b.pool(f"fd00:{i:x}::/64", masquerade=True)
    b.in_sync()
    b.write(path)
    counts.update(hosts=hosts, pools=pools, total=len(b.frames))
    return counts


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM: unlike ru_maxrss it does not carry the
    parent's high-water mark across exec)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(path: str) -> dict[str, Any]:
    """Runs in a fresh interpreter: read, decode, fold, calculate."""
    rss_before = peak_rss_mb()
    fd = os.open(path, os.O_RDONLY)
    start = time.perf_counter()
    stream = fold_stream(fd_chunks(fd), "node-0")
    folded = time.perf_counter()
    desired, why = stream.desired()
    done = time.perf_counter()
    os.close(fd)
    assert desired is not None and not stream.framing_error and not stream.undecodable, why
    counters = stream.counters
    return {
        "messages": counters.frames,
        "bytes": counters.bytes,
        "decode_fold_seconds": folded - start,
        "calculate_seconds": done - folded,
        "messages_per_second": counters.frames / (folded - start),
        "peak_rss_mb": peak_rss_mb(),
        "rss_after_imports_mb": rss_before,
        "translators": len(desired.translators),
        "sources": len(desired.sources),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=MESSAGES)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", default="docs/bench/frontend.json", help="where to write the figures")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "snapshot.stream")
        mix = build_snapshot(path, args.messages)
        size = os.path.getsize(path)
        runs = []
        for _ in range(args.runs):
            out = subprocess.run([sys.executable, "-m", "benchmarks.frontend", "--child", path],
                                 capture_output=True, text=True, check=True).stdout
            runs.append(json.loads(out))
    rates = [r["messages_per_second"] for r in runs]
    result = {
        "snapshot": {**mix, "bytes": size},
        "runs": runs,
        "median_messages_per_second": statistics.median(rates),
        "min_messages_per_second": min(rates),
        "max_peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "targets": {"messages_per_second": 200_000, "peak_rss_mb": 80},
        "conditions": {"python": platform.python_version(), "machine": platform.machine(),
                       "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d")},
    }
    print(f"snapshot: {mix['total']} messages, {size / 1e6:.1f} MB "
          f"({mix['policies']} policies, {mix['ipsets']} IP sets, {mix['workloads']} workloads, "
          f"{mix['hosts']} hosts, {mix['pools']} pools)")
    print(f"{'run':>4} {'msgs/s':>12} {'decode+fold s':>14} {'calc s':>8} {'peak RSS MB':>12}")
    for i, r in enumerate(runs):
        print(f"{i:>4} {r['messages_per_second']:>12,.0f} {r['decode_fold_seconds']:>14.3f} "
              f"{r['calculate_seconds']:>8.3f} {r['peak_rss_mb']:>12.1f}")
    print(f"median {result['median_messages_per_second']:,.0f} msgs/s (target >= 200,000); "
          f"peak RSS {result['max_peak_rss_mb']:.1f} MB (target < 80)")
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
