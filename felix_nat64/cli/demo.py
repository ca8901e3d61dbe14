"""`felix-nat64 demo`: an IPv6-only pod reaches an IPv4-only server through NAT64.

It builds a simulated Calico node (a pod attached like Calico attaches pods,
an IPv4-only "internet" behind the node's uplink), runs felix-nat64-driver
exactly as Felix runs it, and shows the pod fetching a page from an IPv4
server, a refused destination, Jool's sessions and the nftables counters.
Where the Jool module cannot be loaded, the demo runs inside a VM whose
kernel has it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

from felix_nat64.cli import exitcodes
from felix_nat64.cli.errors import CliError

PREFIXES = "64:ff9b::/96,2001:db8:64::/96"
NSP_SERVER = "2001:db8:64::c633:640a"  # 2001:db8:64::198.51.100.10
WKP_PRIVATE = "64:ff9b::a00:a"  # 64:ff9b::10.0.0.10


def demo_stream() -> bytes:
    """What Felix sends on the demo's node: the prefixes as a FelixConfiguration annotation, the pools."""
    from felix_nat64.testing.streams import StreamBuilder  # noqa: PLC0415

    b = StreamBuilder("master")
    b.config({"datastore (global)": {"NAT64Prefixes": PREFIXES},
              "environment variable": {"felixhostname": "node-1", "nat64metricsport": "0"}})
    b.host("node-1", "192.0.2.1/24", "2001:db8:1::1/64")
    for pool, masq in (("fd00:10:244::/64", True), ("64:ff9b::/96", False), ("2001:db8:64::/96", False)):
        b.pool(pool, masquerade=masq)
    b.in_sync()
    return b.data()


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="live end-to-end demo on a simulated Calico node (boots a VM if Jool is not loadable here)",
        description="Builds a simulated Calico node with an IPv6-only pod and an IPv4-only server, "
                    "runs the driver as Felix would with NAT64Prefixes=" + PREFIXES + ", and shows "
                    "the pod fetching a page from [2001:db8:64::198.51.100.10], a refused private "
                    "destination behind the well-known prefix, Jool's sessions and the counters. "
                    "Needs root.",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--here", action="store_true", help="run on this kernel (Jool must be loadable)")
    where.add_argument("--vm", action="store_true", help="run inside the test VM")
    p.set_defaults(func=run)


def _jool_loadable() -> bool:
    if os.path.exists("/sys/module/jool"):
        return True
    done = subprocess.run(["modprobe", "jool"], capture_output=True, check=False)
    return done.returncode == 0 and os.path.exists("/sys/module/jool")


TESTBED_MISSING = (
    "the demo runs on felix-nat64's test bed (the 'testbed' package), which is not installed: it "
    "is a development tool, not part of the product. From a clone of the repository run 'make demo' "
    "(it installs everything), or 'pip install -e ./testbed' into this environment"
)


def _require_testbed() -> None:
    try:
        import testbed  # noqa: F401, PLC0415
    except ImportError:
        raise CliError(TESTBED_MISSING, exitcodes.FAILURE) from None


def run(args: argparse.Namespace) -> int:
    _require_testbed()
    if os.geteuid() != 0:
        raise CliError("the demo builds network namespaces: run it as root (sudo make demo)")
    if args.vm or (not args.here and not _jool_loadable()):
        if not args.vm:
            print("Jool cannot be loaded into this kernel: running the demo in a VM that has it "
                  "(about 30 s to boot)...", flush=True)
        return subprocess.run([sys.executable, "-m", "testbed.vm",
                               sys.executable, "-m", "felix_nat64.cli.main", "demo", "--here"],
                              check=False).returncode
    if not _jool_loadable():
        raise CliError("Jool is not loaded and 'modprobe jool' failed: install jool-dkms, or run "
                       "'felix-nat64 demo --vm'")
    return Demo().run()


class Demo:
    """The demo's steps, each narrated."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:5.1f}s] {text}", flush=True)

    def run(self) -> int:
        # Imported here: these need root, the kernel libraries and Jool.
        from testbed import topology as topo_mod  # noqa: PLC0415
        from testbed.traffic import start_server  # noqa: PLC0415

        in_vm = os.environ.get("FELIX_NAT64_IN_VM") == "1"
        prefix = "fn64demo-"
        topo_mod.cleanup_stale(prefix, node_in_current_netns=in_vm)
        self.say("building a simulated Calico node: an IPv6-only pod (fd00:10:244::10 on a cali "
                 "interface), an uplink with IPv4 192.0.2.1, IPv4-only servers behind it")
        topo = topo_mod.build_topology(prefix, node_in_current_netns=in_vm)
        try:
            server = start_server(topo.inet4_netns, topo.inet4_server_addresses)
            try:
                return self._with_node(topo, in_vm)
            finally:
                server.stop()
        finally:
            topo.teardown()

    def _with_node(self, topo: Any, in_vm: bool) -> int:
        from testbed.felix import FelixSimulator, driver_command  # noqa: PLC0415
        from testbed.netns_exec import command_in_netns  # noqa: PLC0415

        with tempfile.TemporaryDirectory() as tmp:
            status_file = os.path.join(tmp, "status.json")
            self.say("Felix's view: FelixConfiguration annotation config.projectcalico.org/NAT64Prefixes="
                     f"{PREFIXES}; IP pools fd00:10:244::/64 (natOutgoing) and disabled pools covering "
                     "both prefixes")
            felix = FelixSimulator(env={"FELIX_NAT64_STATUS_FILE": status_file},
                                   command=command_in_netns(topo.node_netns, driver_command())).start()
            try:
                felix.send(demo_stream())
                sent = time.monotonic()
                self.say("felix-nat64-driver started as Felix starts it (stream on fd 3); waiting "
                         "for it to apply...")
                self._wait_ready(status_file, felix)
                self.say(f"ready {time.monotonic() - sent:.1f}s after InSync")
                ok = self.traffic(topo)
                self._show(topo, ["felix-nat64", "sessions"], "Jool's sessions (felix-nat64 sessions):")
                self._show(topo, ["felix-nat64", "status", "--status-file", status_file],
                           "felix-nat64 status:")
            finally:
                if felix.running():
                    felix.terminate()
            self.say("removing everything felix-nat64 created (felix-nat64 cleanup --force)")
            self._show(topo, ["felix-nat64", "cleanup", "--force"], "")
        self.say("demo " + ("succeeded" if ok else "FAILED"))
        return exitcodes.OK if ok else exitcodes.FAILURE

    def _wait_ready(self, status_file: str, felix: Any, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError), open(status_file) as handle:
                status = json.load(handle)
                if status.get("ready"):
                    return
            if not felix.running():
                raise CliError(f"the driver exited:\n{felix.output}")
            time.sleep(0.2)
        raise CliError(f"the driver did not become ready within {timeout:.0f}s:\n{felix.output}")

    def traffic(self, topo: Any) -> bool:
        """The demo's checks from the topology's pod; True when every one passed."""
        from testbed.traffic import ping, tcp_request, udp_exchange  # noqa: PLC0415

        pod = topo.pod().netns
        ok = True
        r = tcp_request(pod, NSP_SERVER, response_bytes=2048, timeout=20)
        if r.ok:
            self.say(f"pod -> http://[{NSP_SERVER}]:8080/  (2001:db8:64::198.51.100.10): "
                     f"{r.bytes_received} bytes received; the IPv4-only server saw source "
                     f"{r.seen_source} (the node's IPv4)")
        else:
            ok = False
            self.say(f"pod -> http://[{NSP_SERVER}]:8080/ FAILED: {r.error}")
        u = udp_exchange(pod, NSP_SERVER, count=3, reply_timeout=5)
        self.say(f"pod -> UDP echo at [{NSP_SERVER}]:8081: {u.received}/{u.sent} replies, server saw "
                 f"{u.seen_source}")
        ok = ok and u.ok
        p = ping(pod, NSP_SERVER, count=3, reply_timeout=5)
        self.say(f"pod -> ping {NSP_SERVER}: {p.received}/{p.sent} replies")
        ok = ok and p.ok
        refused = ping(pod, WKP_PRIVATE, count=1, reply_timeout=3)
        verdict = "; ".join(refused.errors) or "no answer"
        if any("unreachable (code 1)" in e for e in refused.errors):
            verdict = "the node answered ICMPv6 'administratively prohibited'"
        self.say(f"pod -> ping {WKP_PRIVATE} (64:ff9b::10.0.0.10, private IPv4 behind the well-known "
                 f"prefix): refused as RFC 6052 requires — {verdict}")
        return ok and not refused.ok

    def _show(self, topo: Any, argv: list[str], title: str) -> None:
        if title:
            self.say(title)
        from testbed.netns_exec import command_in_netns  # noqa: PLC0415

        done = subprocess.run(command_in_netns(topo.node_netns, argv), capture_output=True, text=True,
                              check=False)
        for line in (done.stdout + done.stderr).rstrip().splitlines():
            print(f"    {line}", flush=True)


