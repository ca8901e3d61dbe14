"""Builds what the in-VM benchmark needs, on the host (fast) rather than in the VM.

- out/bench/fn64load: the connection-rate and UDP request/response load
  generator (benchmarks/loadgen.c), compiled with the system C compiler;
  the VM shares the host's root filesystem, so the guest runs it as is.
- out/bench/snapshot-100k.stream: the 100,000-message Felix snapshot of
  benchmarks/frontend.py, fed to a live driver to measure its memory.

    python -m benchmarks.prepare
"""

from __future__ import annotations

import os
import subprocess
import sys

from benchmarks.frontend import MESSAGES, build_snapshot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "out", "bench")
LOADGEN_SOURCE = os.path.join(ROOT, "benchmarks", "loadgen.c")
LOADGEN = os.path.join(OUT, "fn64load")
SNAPSHOT = os.path.join(OUT, "snapshot-100k.stream")


def build_loadgen() -> None:
    if os.path.exists(LOADGEN) and os.path.getmtime(LOADGEN) >= os.path.getmtime(LOADGEN_SOURCE):
        return
    os.makedirs(OUT, exist_ok=True)
    subprocess.run(["cc", "-O2", "-Wall", "-Wextra", "-o", LOADGEN, LOADGEN_SOURCE], check=True)


def build_stream() -> None:
    if os.path.exists(SNAPSHOT):
        return
    os.makedirs(OUT, exist_ok=True)
    tmp = SNAPSHOT + ".tmp"
    build_snapshot(tmp, MESSAGES)
    os.replace(tmp, SNAPSHOT)


def main() -> int:
    build_loadgen()
    build_stream()
    print(f"built {os.path.relpath(LOADGEN, ROOT)} and {os.path.relpath(SNAPSHOT, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
