"""The built image's userland on the real Jool module, run as the kubelet runs the pod.

Runs in the test VM with the image's root filesystem attached as a disk
(`make image-check`: python -m testbed.vm --disk out/image/rootfs-*.ext4 ...).
Each container gets the chart's volumes, a read-only root, its own PID and
mount namespaces (tini is PID 1) and the node's network (testbed.container).
Its calico-node is the TEST STAND-IN (testbed/calico_node_standin.py), which
streams the demo's settings; the node, the servers and the traffic checks are
the demo's (felix_nat64/cli/demo.py, testbed.topology).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from felix_nat64.cli.demo import Demo, demo_stream
from felix_nat64.drivers.discovery import namespaces
from felix_nat64.model.ownership import NFT_FAMILY, NFT_TABLE
from testbed import topology as topo_mod
from testbed.container import Container, Mount, image_disk
from testbed.image import ROOTFS_LABEL, Build, last_build
from testbed.traffic import ServerProcess, start_server
from testbed.vm import in_vm

pytestmark = pytest.mark.vm

PREFIX = "fn64img-"
STANDIN_DIR = "/etc/felix-nat64-standin"
READY_TIMEOUT = 240.0
# The main container's environment in the chart (templates/_helpers.tpl,
# felix-nat64.felixEnv) that this Felix stand-in reads, and its stream.
FELIX_ENV = {
    "NODENAME": "node-1",
    "FELIX_FELIXHOSTNAME": "node-1",
    "FELIX_USEINTERNALDATAPLANEDRIVER": "false",
    "FELIX_DATAPLANEDRIVER": "felix-nat64-driver",
    "FELIX_NAT64_STANDIN_STREAM": f"{STANDIN_DIR}/stream",
}


@pytest.fixture(scope="module", autouse=True)
def in_the_vm() -> None:
    if not in_vm():
        pytest.fail("tests/image/vm run in the test VM with the image's disk: make image-check",
                    pytrace=False)


@pytest.fixture(scope="module")
def build() -> Build:
    return last_build()


@pytest.fixture(scope="module")
def image(build: Build) -> Iterator[Path]:
    with image_disk(ROOTFS_LABEL) as lower:
        assert (lower / "opt" / "felix-nat64" / "bin" / "felix-nat64-driver").exists()
        yield lower


def image_env(build: Build, **extra: str) -> dict[str, str]:
    env = dict(item.split("=", 1) for item in build.config["Env"])
    return {**env, **extra}


def command(build: Build, *args: str) -> list[str]:
    """ENTRYPOINT plus `args`, or plus CMD when there are none (as the chart's `args` do)."""
    return [*build.config["Entrypoint"], *(args or build.config["Cmd"])]


def run_to_end(image: Path, build: Build, args: list[str], mounts: list[Mount], log: Path) -> tuple[int, str]:
    with Container(image, command(build, *args), image_env(build), mounts, log) as ctr:
        code = ctr.wait(180)
        assert code is not None, f"{args} did not finish:\n{ctr.output()}"
        return code, ctr.output()


def test_init_container_loads_jool_or_reports_why(image: Path, build: Build, tmp_path: Path) -> None:
    kernel = os.uname().release
    unloaded = subprocess.run(["rmmod", "jool"], capture_output=True, text=True, check=False)
    assert unloaded.returncode == 0, unloaded.stderr
    nothing = tmp_path / "no-modules"
    nothing.mkdir()
    code, out = run_to_end(image, build, ["felix-nat64-modprobe"],
                           [Mount("/lib/modules", str(nothing), readonly=True)], tmp_path / "a.log")
    assert code == 1
    assert f"/lib/modules/{kernel} does not exist: the node's /lib/modules is not mounted here" in out
    (nothing / kernel).mkdir()
    code, out = run_to_end(image, build, ["felix-nat64-modprobe"],
                           [Mount("/lib/modules", str(nothing), readonly=True)], tmp_path / "b.log")
    assert code == 1
    assert f"this node has no jool kernel module for kernel {kernel}" in out
    assert f"apt-get install jool-dkms linux-headers-{kernel}" in out
    assert not Path("/sys/module/jool").exists()
    real = [Mount("/lib/modules", "/lib/modules", readonly=True)]
    code, out = run_to_end(image, build, ["felix-nat64-modprobe"], real, tmp_path / "c.log")
    assert (code, Path("/sys/module/jool").exists()) == (0, True), out
    version = Path("/sys/module/jool/version").read_text().strip()
    assert f"felix-nat64: loaded jool {version}" in out
    code, out = run_to_end(image, build, ["felix-nat64-modprobe"], real, tmp_path / "d.log")
    assert code == 0 and f"jool {version} is already loaded" in out


@dataclass
class Node:
    topo: topo_mod.Topology
    server: ServerProcess
    state: Path  # the chart's state volume (/var/run/felix-nat64)
    mounts: list[Mount]

    def status(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads((self.state / "status.json").read_text())
        except (OSError, ValueError):
            return {}
        return data


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """The demo's node (this VM's namespace), its IPv4-only servers, and the pod's volumes."""
    work = tmp_path_factory.mktemp("pod")
    dirs = {name: work / name for name in ("state", "calico", "standin")}
    for path in dirs.values():
        path.mkdir()
    (dirs["standin"] / "stream").write_bytes(demo_stream())
    topo_mod.cleanup_stale(PREFIX, node_in_current_netns=True)
    topo = topo_mod.build_topology(PREFIX, node_in_current_netns=True)
    server = start_server(topo.inet4_netns, topo.inet4_server_addresses)
    # The chart's volumes (templates/daemonset.yaml), plus the stand-in's stream.
    mounts = [Mount("/run/netns", "/run/netns", shared=True),
              Mount("/var/run/felix-nat64", str(dirs["state"])), Mount("/tmp"),
              Mount("/var/lib/calico", str(dirs["calico"]), readonly=True),
              Mount(STANDIN_DIR, str(dirs["standin"]), readonly=True)]
    try:
        yield Node(topo, server, dirs["state"], mounts)
    finally:
        server.stop()
        # Whatever a failed test left: the development install removes it.
        subprocess.run(["felix-nat64", "cleanup", "--force"], capture_output=True, check=False)
        topo.teardown()


@pytest.fixture(scope="module")
def felix(image: Path, build: Build, node: Node,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    """The main container: tini, felix-nat64-felix, the stand-in Felix, the driver."""
    log = tmp_path_factory.mktemp("felix") / "container.log"
    ctr = Container(image, command(build), image_env(build, **FELIX_ENV), node.mounts, log).start()
    try:
        yield ctr
    finally:
        ctr.remove()


def wait_ready(node: Node, ctr: Container, not_pid: int | None = None) -> dict[str, Any]:
    deadline = time.monotonic() + READY_TIMEOUT
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = node.status()
        if status.get("ready") and status.get("pid") != not_pid:
            return status
        assert ctr.running(), f"the container exited:\n{ctr.output()}"
        time.sleep(0.5)
    raise AssertionError(f"not ready: {status.get('not_ready_reasons')}\n{ctr.output()}")


def standin_felix(ctr: Container) -> int:
    (pid,) = [pid for pid, cmd in ctr.process_tree() if cmd.endswith("calico-node -felix")]
    return pid


def test_the_demos_traffic_passes_through_the_image(node: Node, felix: Container) -> None:
    status = wait_ready(node, felix)
    tree = [cmd for _, cmd in felix.process_tree()]
    assert tree[0] == "/usr/bin/tini -- felix-nat64-felix", tree
    assert any(cmd.endswith("/usr/local/bin/calico-node -felix") for cmd in tree), tree
    assert any("felix-nat64-driver" in cmd for cmd in tree), tree
    assert status["settings"]["prefixes"] == ["64:ff9b::/96", "2001:db8:64::/96"]
    assert Demo().traffic(node.topo)
    # The operator's commands, run in the container as `kubectl exec` runs them.
    shown = felix.exec(["felix-nat64", "status"])
    assert shown.returncode == 0, shown.stdout + shown.stderr
    sessions = felix.exec(["felix-nat64", "sessions"])
    assert sessions.returncode == 0 and "198.51.100.10" in sessions.stdout, sessions.stdout + sessions.stderr


def test_exit_129_restarts_felix_and_the_driver(node: Node, felix: Container) -> None:
    before = wait_ready(node, felix)
    pid1 = felix.pid1()
    os.kill(standin_felix(felix), signal.SIGHUP)  # Felix's "reload config": it exits with 129
    after = wait_ready(node, felix, not_pid=before["pid"])
    assert felix.pid1() == pid1, "the container restarted instead of Felix"
    out = felix.output()
    assert "exiting with 129 for the config change" in out
    assert "felix-nat64: Felix restarts to apply a configuration change" in out
    assert after["in_sync"] and after["last_apply"]["ok"]
    assert Demo().traffic(node.topo)


def nat64_kernel_state() -> dict[str, Any]:
    table = subprocess.run(["nft", "list", "table", NFT_FAMILY, NFT_TABLE], capture_output=True, check=False)
    return {"nft_table": table.returncode == 0, "translators": namespaces()}


def test_sigterm_stops_felix_and_the_driver_and_leaves_the_dataplane(node: Node, felix: Container) -> None:
    wait_ready(node, felix)
    before = nat64_kernel_state()
    assert before["nft_table"] and len(before["translators"]) == 2, before
    felix.kill(signal.SIGTERM)
    code = felix.wait(30)
    out = felix.output()
    assert code == 1, out  # Felix's status after a signal (logrus Fatal), passed on by the wrapper and tini
    assert 'event="Felix stream ended; exiting (dataplane left as is)" reason="terminated by SIGTERM"' in out
    assert "driver exited with status 0" in out
    assert "restarts to apply" not in out.split("shutting down (signal SIGTERM)")[-1]
    assert nat64_kernel_state() == before
    # With no driver running, the translators keep translating.
    assert Demo().traffic(node.topo)


def test_cleanup_mode_removes_everything(image: Path, build: Build, node: Node, tmp_path: Path) -> None:
    assert nat64_kernel_state()["translators"], "nothing to clean: the earlier tests did not run"
    args = ["felix-nat64-run-once", "felix-nat64", "cleanup", "--force"]
    # The chart's cleanup mode mounts /run/netns, the state directory and /tmp.
    log = tmp_path / "cleanup.log"
    with Container(image, command(build, *args), image_env(build), node.mounts[:3], log) as ctr:
        deadline = time.monotonic() + 180
        while ctr.exec(["test", "-e", "/tmp/felix-nat64-run-once.done"]).returncode != 0:
            assert ctr.running() and time.monotonic() < deadline, ctr.output()
            time.sleep(1)
        ctr.kill(signal.SIGTERM)
        assert ctr.wait(30) is not None
    assert nat64_kernel_state() == {"nft_table": False, "translators": []}
    assert "idling until the pod is deleted" in ctr.output()
