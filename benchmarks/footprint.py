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

With `--image` it measures instead the built image's own userland (`make
image`), on this host: the image's entrypoint under buildah's chroot
isolation in a throwaway network namespace, its calico-node being the TEST
STAND-IN that streams a recorded stream to the image's driver. There is no
Jool module here, so NAT64 stays off (no translators) in both phases, the
node's stream and the 100k-message snapshot. Results go to
docs/bench/footprint-image.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import secrets
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
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
from felix_nat64.testing.streams import StreamBuilder
from testbed.image import last_build
from testbed.vm import in_vm
from tests.vm.dataplane_fixtures import start_driver

DEFAULT_JSON = "docs/bench/footprint.json"
IMAGE_JSON = "docs/bench/footprint-image.json"
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


# ---------------------------------------------------------------------------
# The built image, under its calico-node stand-in, on this host
# ---------------------------------------------------------------------------

STANDIN_STARTED = re.compile(r"started \S*felix-nat64-driver \(pid (\d+)\)")
# The driver's /var/run/felix-nat64/status.json; /var/run is an absolute link
# to /run, which /proc/<pid>/root would resolve on this host, not in the image.
STATUS_IN_IMAGE = "run/felix-nat64/status.json"


def nat64_off_config() -> bytes:
    """Felix's first message for a node with NAT64 off (no Jool on this host)."""
    return StreamBuilder().env_config(FelixHostname="node-0", NAT64ResyncInterval="30s").data()


def without_nat64(stream: bytes) -> bytes:
    """`stream` with its first frame, Felix's ConfigUpdate, replaced by one with NAT64 off."""
    (length,) = struct.unpack_from("<Q", stream)
    return nat64_off_config() + stream[8 + length:]


@dataclass
class ImageRun:
    process: subprocess.Popen[bytes]
    log: Path
    driver_pid: int = 0


@contextmanager
def image_driver(image: str, stream: bytes) -> Iterator[ImageRun]:
    """The image's entrypoint in a throwaway network namespace, its stand-in Felix streaming `stream`."""
    ns = f"fn64fp-{secrets.token_hex(3)}"
    with tempfile.TemporaryDirectory(prefix="fn64-footprint-") as tmp:
        standin = Path(tmp) / "standin"
        standin.mkdir()
        (standin / "stream").write_bytes(stream)
        log_path = Path(tmp) / "container.log"
        subprocess.run(["ip", "netns", "add", ns], check=True)
        container = subprocess.run(["buildah", "from", "--pull=never", image], check=True,
                                   capture_output=True, text=True).stdout.strip()
        env = {"NODENAME": "node-0", "FELIX_FELIXHOSTNAME": "node-0",
               "FELIX_USEINTERNALDATAPLANEDRIVER": "false",
               "FELIX_DATAPLANEDRIVER": "felix-nat64-driver", "TINI_SUBREAPER": "1",
               "FELIX_NAT64_STANDIN_STREAM": "/etc/felix-nat64-standin/stream"}
        argv = ["ip", "netns", "exec", ns, "buildah", "run", "--isolation", "chroot",
                "--cap-add", "CAP_NET_ADMIN,CAP_SYS_ADMIN,CAP_DAC_OVERRIDE",
                "-v", f"{standin}:/etc/felix-nat64-standin:ro",
                *(a for k, v in env.items() for a in ("-e", f"{k}={v}")),
                container, "--", "/usr/bin/tini", "--", "felix-nat64-felix"]
        with open(log_path, "wb") as log:
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        run = ImageRun(process, log_path)
        try:
            yield run
        finally:
            _stop_image_driver(run)
            subprocess.run(["buildah", "rm", container], capture_output=True, check=False)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def _stop_image_driver(run: ImageRun) -> None:
    """SIGTERM to the stand-in Felix, which stops its driver, as the kubelet's would reach it."""
    if run.driver_pid:
        try:
            with open(f"/proc/{run.driver_pid}/stat") as handle:
                felix = int(handle.read().rsplit(")", 1)[1].split()[1])
            os.kill(felix, signal.SIGTERM)
        except (OSError, ValueError):
            pass
    try:
        run.process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(run.process.pid, signal.SIGKILL)
        run.process.wait(10)


def image_driver_ready(run: ImageRun, timeout: float) -> dict[str, Any]:
    """Waits for the stand-in to start the driver and for the driver to be ready."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if run.process.poll() is not None:
            raise RuntimeError(f"the image's Felix exited:\n{run.log.read_text()[-3000:]}")
        if not run.driver_pid:
            found = STANDIN_STARTED.search(run.log.read_text(errors="replace"))
            run.driver_pid = int(found.group(1)) if found else 0
        if run.driver_pid:
            try:
                status: dict[str, Any] = json.loads(
                    Path(f"/proc/{run.driver_pid}/root/{STATUS_IN_IMAGE}").read_text())
            except (OSError, ValueError):
                status = {}
            if status.get("ready"):
                return status
        time.sleep(0.1)
    raise RuntimeError(f"the image's driver was not ready in {timeout}s:\n{run.log.read_text()[-3000:]}")


def image_phase(image: str, stream: bytes, idle: float) -> dict[str, Any]:
    t0 = time.monotonic()
    with image_driver(image, stream) as run:
        status = image_driver_ready(run, timeout=300)
        to_ready = time.monotonic() - t0
        ready = sample(run.driver_pid)
        time.sleep(idle)
        after = sample(run.driver_pid)
    frames = (status.get("stream") or {}).get("frames", 0)
    log(f"image: {frames} frames, ready after {to_ready:.1f}s, {ready.cpu_s:.2f} CPU s, "
        f"RSS {ready.rss_mb:.1f} MB; "
        f"idle {idle:.0f}s: {after.cpu_s - ready.cpu_s:.2f} CPU s, RSS {after.rss_mb:.1f} MB "
        f"(peak {after.peak_rss_mb:.1f})")
    return {"frames": frames, "to_ready_s": to_ready, "ready": asdict(ready), "idle_s": idle,
            "after_idle": asdict(after), "idle_cpu_s": after.cpu_s - ready.cpu_s,
            "idle_millicores": 1000 * (after.cpu_s - ready.cpu_s) / idle}


def image_footprint(idle: float) -> dict[str, Any]:
    build = last_build()
    node = StreamBuilder().env_config(FelixHostname="node-0", NAT64ResyncInterval="30s")
    node.host("node-0", "192.0.2.1/24", "2001:db8:1::1/64")
    node.pool("fd00:10:244::/64", masquerade=True).in_sync()
    with open(SNAPSHOT, "rb") as handle:
        snapshot = without_nat64(handle.read())
    return {"conditions": {
        "date": time.strftime("%Y-%m-%d %H:%M"), "image": build.name, "kernel": platform.release(),
        "cpus": os.cpu_count(), "where": "this host, buildah run --isolation chroot, no Jool: NAT64 off",
        "felix": "the image's calico-node TEST STAND-IN (testbed/calico_node_standin.py)",
    }, "node": image_phase(build.name, node.data(), idle),
        "snapshot": image_phase(build.name, snapshot, idle)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--idle", type=float, default=120.0, help="seconds of quiet node to measure")
    parser.add_argument("--json", default="")
    parser.add_argument("--image", action="store_true",
                        help="measure the built image's driver under its calico-node stand-in, on this host")
    args = parser.parse_args(argv)
    if not os.path.exists(SNAPSHOT):
        print(f"{SNAPSHOT} is missing: run python -m benchmarks.prepare first", file=sys.stderr)
        return 2
    if args.image:
        write_json(args.json or IMAGE_JSON, image_footprint(args.idle))
        return 0
    if not in_vm():
        print("benchmarks.footprint needs the real Jool module: run it in the test VM:\n"
              "    python -m testbed.vm .venv/bin/python -m benchmarks.footprint", file=sys.stderr)
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
    write_json(args.json or DEFAULT_JSON, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
