"""Shared set-up for the fault, restart, security, coexistence and load tests.

They are part of the VM tier (tests/vm/conftest.py stops a run outside the
VM with the command to use: they are never skipped), use the same simulated
node as tests/vm (this VM's own namespace with two pods, an IPv4 uplink and
IPv4-only servers), and carry the `reliability` marker:

    .venv/bin/python -m testbed.vm .venv/bin/pytest -q tests/vm/reliability
    .venv/bin/python -m testbed.vm .venv/bin/pytest -q tests/vm -m reliability

The default sizes keep all of them to a few minutes of guest time;
FELIX_NAT64_SOAK=1 runs the long variants. Each test records its figures
(repair times, datagrams lost, flows held...) with `record()`; they are
printed at the end of the run and written as JSON to FELIX_NAT64_VM_REPORT
when that names a file.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from felix_nat64.drivers.netns.namespaces import namespace_exists
from felix_nat64.model.ownership import JOOL_INSTANCE, NS_LINK_NAME, is_our_route
from testbed.netns_exec import socket_in_netns
from tests.vm.dataplane_fixtures import Node, RunningDriver, kernel_leftovers, start_driver

HERE = Path(__file__).resolve().parent
SOAK = os.environ.get("FELIX_NAT64_SOAK") == "1"
REPORT_ENV = "FELIX_NAT64_VM_REPORT"


def _under(item: pytest.Item, directory: Path) -> bool:
    return Path(str(item.path)).resolve().is_relative_to(directory)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The rest of tests/vm first, so their module drivers are gone before these tests
    # start from a clean kernel on the shared node (tests/conftest.py).
    items.sort(key=lambda item: _under(item, HERE))


def pod(node: Node, index: int = 0) -> str:
    return node.topo.pod(index).netns


# ---------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------

FIGURES: dict[str, dict[str, Any]] = {}


def record(section: str, key: str, value: Any) -> None:
    """Keeps one figure for the end-of-run summary (and the JSON report)."""
    FIGURES.setdefault(section, {})[key] = value


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not FIGURES:
        return
    terminalreporter.section(f"reliability VM figures ({'soak' if SOAK else 'default'} size)")
    for section, values in sorted(FIGURES.items()):
        for key, value in values.items():
            text = json.dumps(value, sort_keys=True, default=str)
            terminalreporter.write_line(f"{section}.{key} = {text}")
    path = os.environ.get(REPORT_ENV)
    if path:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump({"soak": SOAK, "figures": FIGURES}, handle, indent=2, sort_keys=True, default=str)
            handle.write("\n")


# ---------------------------------------------------------------------------
# Drivers, and a clean kernel around each test
# ---------------------------------------------------------------------------


def clean_kernel() -> int:
    """Removes every felix-nat64 object, as `felix-nat64 cleanup --force` does
    (same code, without a Python start); returns the kernel changes made."""
    from felix_nat64.cli.driver import build_dataplane  # noqa: PLC0415
    from felix_nat64.model.state import DesiredState  # noqa: PLC0415

    changes = build_dataplane(None).apply(DesiredState()).changes
    assert kernel_leftovers() == []
    return changes


def cleanup_cli() -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["felix-nat64", "cleanup", "--force"], capture_output=True, text=True,
                          check=False, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@dataclass
class DriverPool:
    """Drivers started by one test (or module); all stopped at its end."""

    node: Node
    started: list[RunningDriver] = field(default_factory=list)

    def start(self, stream: bytes) -> RunningDriver:
        driver = start_driver(stream, self.node.status_file)
        self.started.append(driver)
        return driver

    def stop_all(self) -> None:
        for driver in self.started:
            if driver.felix.running():
                driver.stop()


@contextlib.contextmanager
def driver_pool(node: Node, *, cli_cleanup: bool = False) -> Iterator[DriverPool]:
    """Starts from a kernel without felix-nat64 objects and leaves it so."""
    clean_kernel()
    pool = DriverPool(node)
    try:
        yield pool
    finally:
        pool.stop_all()
        if cli_cleanup:
            cleanup_cli()
        else:
            clean_kernel()
        assert kernel_leftovers() == []


@contextlib.contextmanager
def ready_driver(node: Node, stream: bytes) -> Iterator[RunningDriver]:
    """One driver, ready, on a kernel that starts and ends without our objects."""
    with driver_pool(node) as pool:
        driver = pool.start(stream)
        driver.wait_ready()
        yield driver


@pytest.fixture
def drivers(node: Node) -> Iterator[DriverPool]:
    with driver_pool(node) as pool:
        yield pool


@pytest.fixture(scope="module", autouse=True)
def cleanup_at_module_end(node: Node) -> Iterator[None]:
    """Each module ends with the real `felix-nat64 cleanup --force`."""
    yield
    cleanup_cli()
    assert kernel_leftovers() == []


# ---------------------------------------------------------------------------
# Reading the kernel
# ---------------------------------------------------------------------------


def run(*argv: str, check: bool = True, timeout: float = 60) -> str:
    done = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def jool_cli(namespace: str | None, *args: str, check: bool = True) -> str:
    """The jool tool (the independent oracle) inside a translator namespace."""
    prefix = ["ip", "netns", "exec", namespace] if namespace else []
    return run(*prefix, "jool", *args, check=check)


def jool_rows(namespace: str | None, *args: str) -> list[dict[str, str]]:
    return list(csv.DictReader(jool_cli(namespace, *args, "--csv").splitlines()))


def jool_stats(namespace: str) -> dict[str, int]:
    from felix_nat64.drivers.jool.client import JoolClient  # noqa: PLC0415

    with JoolClient.open(namespace) as jool:
        return jool.stats(JOOL_INSTANCE)


def _link_state(namespace: str | None, ifname: str) -> dict[str, Any]:
    argv = ["ip", "-j", "-d", *(["-n", namespace] if namespace else []), "addr", "show", "dev", ifname]
    link = json.loads(run(*argv))[0]
    ours = {"fe80::1", "fe80::2"}
    addrs = sorted(f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", [])
                   if not a["local"].startswith("fe80:") or a["local"] in ours)
    return {"mtu": link["mtu"], "up": "UP" in link["flags"], "alias": link.get("ifalias", ""),
            "kind": link.get("linkinfo", {}).get("info_kind"), "addresses": addrs}


def _routes(namespace: str | None) -> list[str]:
    out = []
    for family in ("-4", "-6"):
        where = ["-n", namespace] if namespace else []
        for r in json.loads(run("ip", "-j", family, *where, "route", "show", "table", "all") or "[]"):
            if is_our_route(r.get("protocol")):
                out.append(f"{r['dst']} via {r.get('gateway')} dev {r.get('dev')} "
                           f"table {r.get('table', 'main')}")
    return sorted(out)


def _strip(value: Any) -> Any:
    """An nftables JSON listing without handles and counter values."""
    if isinstance(value, dict):
        return {k: (0 if k in ("packets", "bytes") else _strip(v)) for k, v in value.items() if k != "handle"}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _nft_table() -> Any:
    done = subprocess.run(["nft", "-j", "list", "table", "inet", "felix-nat64"], capture_output=True,
                          text=True, check=False, timeout=60)
    if done.returncode != 0:
        return None
    return [item for item in _strip(json.loads(done.stdout)["nftables"]) if "metainfo" not in item]


def _fwmark_rules() -> list[str]:
    return sorted(f"{r.get('priority')} fwmark {r.get('fwmark')} lookup {r.get('table')}"
                  for r in json.loads(run("ip", "-j", "-6", "rule", "show") or "[]") if "fwmark" in r)


def kernel_state() -> dict[str, Any]:
    """Everything felix-nat64 programs, read back with the kernel's own tools
    (ip, nft, jool, sysctl), without what changes on every creation
    (interface indexes, kernel-made link-local addresses, counter values)."""
    from felix_nat64.drivers.discovery import discover  # noqa: PLC0415

    inv = discover().to_json()
    state: dict[str, Any] = {
        "objects": sorted(inv["objects"]),
        "fwmark_rules": _fwmark_rules(),
        "node_routes": _routes(None),
        "nft": _nft_table(),
        "translators": {},
    }
    # Jool lists the instances of every namespace; the namespace column is a
    # kernel pointer, so only how many distinct ones there are is compared.
    rows = [line.split(",") for line in jool_cli(None, "instance", "display", "--csv",
                                                 "--no-headers").splitlines() if line]
    state["jool_instances"] = sorted(f"{r[1]} {r[2]}" for r in rows)
    state["jool_instance_namespaces"] = len({r[0] for r in rows})
    for t in inv["translators"]:
        ns, link = t["namespace"], t["node_link"]
        entry: dict[str, Any] = {"parent": t["parent"], "block": t["block"], "namespace": ns}
        if link:
            entry["node_link"] = _link_state(None, link)
            entry["node_link_forwarding"] = run("sysctl", "-n", f"net.ipv4.conf.{link}.forwarding").strip()
        if ns and namespace_exists(ns):
            entry["ns_link"] = _link_state(ns, NS_LINK_NAME)
            entry["ns_routes"] = _routes(ns)
            entry["ns_forwarding"] = run("ip", "netns", "exec", ns, "sysctl", "-n",
                                         "net.ipv4.conf.all.forwarding",
                                         "net.ipv6.conf.all.forwarding").split()
            entry["jool_status"] = jool_cli(ns, "-i", JOOL_INSTANCE, "instance", "status",
                                            check=False).strip()
            if "Running" in entry["jool_status"]:
                entry["pool4"] = sorted(
                    row for proto in ("--tcp", "--udp", "--icmp")
                    for row in jool_cli(ns, "-i", JOOL_INSTANCE, "pool4", "display", proto, "--csv",
                                        "--no-headers").splitlines())
                entry["globals"] = jool_rows(ns, "-i", JOOL_INSTANCE, "global", "display")
        state["translators"][t["id"]] = entry
    return state


def state_difference(have: dict[str, Any], want: dict[str, Any]) -> str:
    """A readable list of the parts of two kernel_state() results that differ."""
    lines = []
    for key in sorted(set(have) | set(want)):
        if key == "translators":
            for tid in sorted(set(have[key]) | set(want[key])):
                a, b = have[key].get(tid, {}), want[key].get(tid, {})
                for sub in sorted(set(a) | set(b)):
                    if a.get(sub) != b.get(sub):
                        lines.append(f"translator {tid} {sub}: have {a.get(sub)!r}, want {b.get(sub)!r}")
        elif have.get(key) != want.get(key):
            lines.append(f"{key}: have {have.get(key)!r}, want {want.get(key)!r}")
    return "\n".join(lines) or "no difference"


# ---------------------------------------------------------------------------
# The driver's own view: status file, logs, metrics
# ---------------------------------------------------------------------------

_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def log_events(output: str, event: str) -> list[dict[str, str]]:
    """The key=value log lines of one event, as dicts (values unquoted)."""
    found = []
    for line in output.splitlines():
        fields = {k: (json.loads(v) if v.startswith('"') else v) for k, v in _FIELD.findall(line)}
        if fields.get("event") == event:
            found.append(fields)
    return found


def log_time(fields: dict[str, str]) -> float:
    """The wall-clock time of a log line (millisecond precision)."""
    stamp = fields["time"]
    whole = time.mktime(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    return whole + int(stamp[20:23]) / 1000


def wait_for(predicate: Any, timeout: float, interval: float = 0.1, what: str = "condition") -> float:
    """Polls until `predicate()` is true; returns the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what} not reached within {timeout}s")
        time.sleep(interval)
    return time.monotonic() - start





def status_json(node: Node) -> dict[str, Any]:
    """`felix-nat64 status --json` (driver status file and kernel sample)."""
    done = subprocess.run(["felix-nat64", "status", "--json", "--status-file", node.status_file],
                          capture_output=True, text=True, check=False, timeout=300)
    assert done.stdout, done.stderr
    data: dict[str, Any] = json.loads(done.stdout)
    data["exit_code"] = done.returncode
    return data


def sessions_json(*args: str) -> dict[str, Any]:
    done = subprocess.run(["felix-nat64", "sessions", "--json", "--limit", "100000", *args],
                          capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stderr
    data: dict[str, Any] = json.loads(done.stdout)
    return data


# ---------------------------------------------------------------------------
# A steady UDP flow
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class UdpReport:
    sent: int
    received: int
    lost: tuple[float, ...]  # when each lost datagram was sent, in seconds since start
    send_errors: tuple[str, ...]
    seen: frozenset[tuple[str, int]]  # the source (address, port) the server saw

    @property
    def lost_count(self) -> int:
        return len(self.lost)


class UdpStream:
    """One UDP session: a datagram every `interval` from one fixed source port
    to the echo server, counting the replies that never come back.

    The server reports the source it saw; one value for the whole run means
    the same Jool BIB entry and the same conntrack entry carried every
    datagram.
    """

    def __init__(self, netns: str, dst: str, port: int = 8081, *, source_port: int,
                 interval: float = 0.1, reply_timeout: float = 2.0) -> None:
        self.netns = netns
        self.dst = dst
        self.port = port
        self.source_port = source_port
        self.interval = interval
        self.reply_timeout = reply_timeout
        self._token = secrets.token_hex(4)
        self._sock: socket.socket | None = None
        self._sent: dict[int, float] = {}
        self._replied: set[int] = set()
        self._seen: set[tuple[str, int]] = set()
        self._errors: list[str] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._start = 0.0

    def start(self) -> UdpStream:
        sock = socket_in_netns(self.netns, socket.AF_INET6, socket.SOCK_DGRAM)
        sock.bind(("::", self.source_port))
        sock.connect((self.dst, self.port))
        sock.settimeout(0.2)
        self._sock = sock
        self._start = time.monotonic()
        self._threads = [threading.Thread(target=self._send, daemon=True, name="udp-send"),
                         threading.Thread(target=self._receive, daemon=True, name="udp-receive")]
        for thread in self._threads:
            thread.start()
        return self

    def _send(self) -> None:
        assert self._sock is not None
        seq = 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            with self._lock:
                self._sent[seq] = time.monotonic() - self._start
            try:
                self._sock.send(f"{self._token} {seq}".encode())
            except OSError as exc:
                with self._lock:
                    self._errors.append(f"{seq}: {exc}")
            seq += 1
            next_at += self.interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def _receive(self) -> None:
        assert self._sock is not None
        deadline: float | None = None
        while deadline is None or time.monotonic() < deadline:
            if deadline is None and self._stop.is_set():
                deadline = time.monotonic() + self.reply_timeout  # stragglers
            try:
                data = self._sock.recv(2048)
            except TimeoutError:
                continue
            except OSError as exc:
                with self._lock:
                    self._errors.append(f"receive: {exc}")
                continue
            header, _, body = data.partition(b"\n")
            parts, words = header.decode().split(), body.decode().split()
            if len(words) == 2 and words[0] == self._token and len(parts) == 3:
                with self._lock:
                    self._replied.add(int(words[1]))
                    self._seen.add((parts[1], int(parts[2])))

    def stop(self) -> UdpReport:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.reply_timeout + 5)
        if self._sock is not None:
            self._sock.close()
        with self._lock:
            lost = tuple(sorted(t for seq, t in self._sent.items() if seq not in self._replied))
            return UdpReport(len(self._sent), len(self._replied), lost, tuple(self._errors),
                             frozenset(self._seen))


def quick_state() -> dict[str, Any]:
    """A cheap in-process reading of the same objects as kernel_state(), for
    polling: inventory, our nftables table as the driver compares it, and
    each translator's Jool instance, pool4, globals, link state and sysctl."""
    from felix_nat64.drivers.discovery import discover  # noqa: PLC0415
    from felix_nat64.drivers.jool.client import JoolClient  # noqa: PLC0415
    from felix_nat64.drivers.jool.errors import JoolError  # noqa: PLC0415
    from felix_nat64.drivers.nft.table import Nft, view_of_kernel  # noqa: PLC0415

    inv = discover().to_json()
    items = Nft().list_table()
    state: dict[str, Any] = {"objects": sorted(inv["objects"]),
                             "nft": None if items is None else view_of_kernel(items)}
    for t in inv["translators"]:
        entry: dict[str, Any] = {"parent": t["parent"], "block": t["block"]}
        link = t["node_link"]
        if link:
            with open(f"/sys/class/net/{link}/flags") as handle:
                entry["up"] = int(handle.read(), 16) & 1
            with open(f"/proc/sys/net/ipv4/conf/{link}/forwarding") as handle:
                entry["forwarding"] = handle.read().strip()
        if t["namespace"]:
            try:
                with JoolClient.open(t["namespace"]) as jool:
                    if jool.instance_exists(JOOL_INSTANCE):
                        entry["pool4"] = sorted(map(str, jool.pool4_list(JOOL_INSTANCE)))
                        entry["globals"] = {k: str(v) for k, v in jool.global_list(JOOL_INSTANCE).items()}
            except JoolError as exc:
                entry["jool_error"] = str(exc)
        state[f"translator {t['id']}"] = entry
    return state
