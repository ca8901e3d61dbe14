"""What a user installs: the wheel with only its runtime requirements.

A fresh venv without system site-packages gets the wheel (no extras) and, as
its only Debian module, python3-nftables (libnftables' bindings exist only as
a Debian package). Every command must start there, and the driver must run as
Felix runs it: decode a recorded stream from fd 3 and program the kernel of a
throwaway node namespace as far as this kernel allows (Jool is only in the VM,
so the apply stops at the first Jool instance, with the error saying so).
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from felix_nat64.cli.main import build_parser
from felix_nat64.drivers.discovery import namespaces
from testbed.felix import FelixSimulator
from testbed.netns_exec import command_in_netns

REPO = Path(__file__).resolve().parents[2]
STREAM = REPO / "examples" / "two-prefixes.stream"
DEBIAN_NFTABLES = Path("/usr/lib/python3/dist-packages/nftables")
# Modules of the test bed: none may reach the product's wheel.
TESTBED_MODULES = {"testbed", "tests", "topology", "traffic", "calico_rules", "vm", "netns_exec", "felix",
                   "container", "image", "calico_node_standin", "fakes"}
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class RuntimeEnv:
    wheel: Path
    venv: Path

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)

    def env(self, **extra: str) -> dict[str, str]:
        """Nothing from the test's own environment: no PYTHONPATH, no dev venv on PATH."""
        return {"PATH": f"{self.venv / 'bin'}:{CLEAN_PATH}", "HOME": "/root", "LANG": "C.UTF-8", **extra}

    def run(self, *argv: str, netns: str | None = None, **kw: Any) -> subprocess.CompletedProcess[str]:
        cmd = command_in_netns(netns, [self.bin(argv[0]), *argv[1:]])
        return subprocess.run(cmd, env=self.env(), capture_output=True, text=True, check=False,
                              cwd=REPO, timeout=120, **kw)


def _pip(*args: str, python: str = sys.executable) -> None:
    # The machine's own pip settings (index, certificates) apply: this is `pip install`.
    done = subprocess.run([python, "-m", "pip", "--disable-pip-version-check", *args],
                          capture_output=True, text=True, check=False, timeout=600)
    assert done.returncode == 0, f"pip {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"


def _tracked_copy(dest: Path) -> Path:
    """The files git tracks, as they are in the working tree. setuptools
    builds through build/lib and never empties it, so a wheel built in the
    checkout itself would also carry modules since moved or deleted."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True,
                            timeout=60).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():  # a file deleted but not yet committed is not part of the tree
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory, root: None) -> RuntimeEnv:
    work = tmp_path_factory.mktemp("runtime")
    _pip("wheel", "--no-deps", "--quiet", "--wheel-dir", str(work / "dist"), str(_tracked_copy(work / "src")))
    (wheel,) = (work / "dist").glob("felix_nat64-*.whl")
    venv = work / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True, timeout=120)
    _pip("install", "--quiet", str(wheel), python=str(venv / "bin" / "python"))
    # Only Debian's nftables package becomes importable, through a directory
    # that holds nothing else.
    only = work / "debian-nftables-only"
    only.mkdir()
    (only / "nftables").symlink_to(DEBIAN_NFTABLES)
    site = subprocess.run([str(venv / "bin" / "python"), "-c",
                           "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "debian-nftables.pth").write_text(f"{only}\n")
    return RuntimeEnv(wheel, venv)


def test_the_environment_has_only_the_runtime_requirements(runtime: RuntimeEnv) -> None:
    probe = (
        "import importlib.util, json, sys\n"
        "names = ['nftables', 'google.protobuf', 'pyroute2', 'prometheus_client', 'felix_nat64',\n"
        "         'yaml', 'testbed', 'jsonschema', 'grpc_tools', 'pytest', 'hypothesis']\n"
        "print(json.dumps({'found': {n: importlib.util.find_spec(n) is not None for n in names},\n"
        "                  'path': sys.path}))\n"
    )
    done = subprocess.run([runtime.bin("python"), "-c", probe], env=runtime.env(), capture_output=True,
                          text=True, check=True, cwd="/")
    seen = json.loads(done.stdout)
    assert seen["found"] == {
        "nftables": True, "google.protobuf": True, "pyroute2": True, "prometheus_client": True,
        "felix_nat64": True, "yaml": False, "testbed": False, "jsonschema": False,
        "grpc_tools": False, "pytest": False, "hypothesis": False,
    }
    assert not [p for p in seen["path"] if p.startswith("/usr/lib/python3/dist-packages")]


def test_the_wheel_holds_the_product_and_no_test_bed(runtime: RuntimeEnv) -> None:
    with zipfile.ZipFile(runtime.wheel) as wheel:
        names = wheel.namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"felix_nat64"}
    modules = {Path(n).stem for n in names if n.endswith(".py")}
    modules |= {part for n in names for part in n.split("/")[:-1]}
    assert modules & TESTBED_MODULES == set()
    # The product's testing helpers are only what `render` and `stream` run on.
    assert {Path(n).name for n in names if n.startswith("felix_nat64/testing/")} == {
        "__init__.py", "protowire.py", "scenario.py", "streams.py"}
    assert "felix_nat64/cli/entry.py" in names
    assert "felix_nat64/wire/felixbackend_pb2.py" in names


def test_version_and_render(runtime: RuntimeEnv) -> None:
    from felix_nat64 import __version__  # noqa: PLC0415

    done = runtime.run("felix-nat64", "--version")
    assert (done.returncode, done.stdout.strip()) == (0, f"felix-nat64 {__version__}"), done.stderr
    done = runtime.run("felix-nat64", "render", str(STREAM))
    assert done.returncode == 0, done.stderr
    rendered = json.loads(done.stdout)
    assert rendered["settings"]["ok"] and rendered["settings"]["in_force"]["prefixes"] == [
        "64:ff9b::/96", "2001:db8:64::/96"]
    assert len(rendered["desired"]["translators"]) == 2


def _commands() -> list[list[str]]:
    """Every command and subcommand of `felix-nat64`, from its own parser."""
    found: list[list[str]] = []

    def walk(parser: Any, path: list[str]) -> None:
        found.append(path)
        for action in parser._actions:  # argparse keeps subparsers only here
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    walk(child, [*path, name])

    walk(build_parser(), [])
    return found


@pytest.mark.parametrize("command", _commands(), ids=lambda c: " ".join(c) or "felix-nat64")
def test_every_command_starts(runtime: RuntimeEnv, command: list[str]) -> None:
    done = runtime.run("felix-nat64", *command, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: felix-nat64"), done.stdout


def test_json_scenarios_need_no_extra(runtime: RuntimeEnv, tmp_path: Path) -> None:
    import yaml  # noqa: PLC0415 - the development side converts the example

    scenario = tmp_path / "two-prefixes.json"
    scenario.write_text(json.dumps(yaml.safe_load((REPO / "examples" / "two-prefixes.yaml").read_text())))
    done = runtime.run("felix-nat64", "stream", "build", str(scenario), "-o", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out").read_bytes() == STREAM.read_bytes()


def test_commands_needing_the_development_extras_say_what_to_install(runtime: RuntimeEnv,
                                                                     tmp_path: Path) -> None:
    scenario = tmp_path / "s.yaml"
    scenario.write_text((REPO / "examples" / "two-prefixes.yaml").read_text())
    done = runtime.run("felix-nat64", "stream", "build", str(scenario), "-o", str(tmp_path / "out"))
    assert done.returncode == 1
    assert "pip install 'felix-nat64[scenarios]'" in done.stderr and "as JSON" in done.stderr
    done = runtime.run("felix-nat64", "demo", "--here")
    assert done.returncode == 1
    assert "'testbed' package" in done.stderr and "make demo" in done.stderr


@pytest.fixture
def node_netns(root: None) -> Iterator[str]:
    """A throwaway namespace that plays a Calico node (forwarding on, as Calico sets it)."""
    name = f"fn64h-rt-{secrets.token_hex(3)}"
    before = set(namespaces())
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv4.ip_forward=1",
                        "net.ipv6.conf.all.forwarding=1"], check=True)
        yield name
    finally:
        # The driver's translator namespaces are machine-wide names: remove ours.
        for leftover in set(namespaces()) - before:
            subprocess.run(["ip", "netns", "del", leftover], check=False)
        subprocess.run(["ip", "netns", "del", name], check=False)


def _status(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data


def test_driver_runs_as_felix_runs_it(runtime: RuntimeEnv, node_netns: str, tmp_path: Path) -> None:
    status_file = tmp_path / "status.json"
    # Felix execs the driver by name with a clean environment of its own.
    command = ["/usr/bin/env", "-i", *(f"{k}={v}" for k, v in runtime.env().items()),
               f"FELIX_NAT64_STATUS_FILE={status_file}",
               *command_in_netns(node_netns, [runtime.bin("felix-nat64-driver")])]
    with FelixSimulator(command=command) as felix:
        felix.send(STREAM.read_bytes())
        deadline = time.monotonic() + 60
        status: dict[str, Any] = {}
        while time.monotonic() < deadline and felix.running():
            status = _status(status_file)
            if status.get("apply_failures"):
                break
            time.sleep(0.2)
        assert status.get("in_sync") is True, felix.output
        # Decoded: the stream's every frame, settings in force, two translators planned.
        assert status["stream"]["frames"] == 48 and status["stream"]["undecodable_used"] == 0
        assert status["settings_ok"]
        assert status["settings"]["prefixes"] == ["64:ff9b::/96", "2001:db8:64::/96"]
        assert len(status["desired"]["translators"]) == 2
        # Applied on the kernel until Jool, which only the VM has.
        assert "Jool kernel module not loaded" in status["last_error"], status["last_error"]
        first = status["desired"]["translators"][0]
        assert first["namespace"] in namespaces()
        links = subprocess.run(["ip", "-n", node_netns, "-o", "link", "show", first["node_link"]],
                               capture_output=True, text=True, check=False)
        assert links.returncode == 0, links.stderr
        # The operator's commands work beside it in the same environment.
        shown = runtime.run("felix-nat64", "status", "--status-file", str(status_file), netns=node_netns)
        assert shown.returncode == 4, shown.stdout + shown.stderr
        listed = runtime.run("felix-nat64", "cleanup", "--json", netns=node_netns)
        assert listed.returncode == 0, listed.stderr
        assert any(first["namespace"] in obj for obj in json.loads(listed.stdout)["objects"])
        assert felix.terminate() == 0
    assert "Felix stream ended; exiting (dataplane left as is)" in felix.output
