"""Doing things inside a named network namespace: threads, sockets, sysctls, commands.

A network namespace is a property of a thread in Linux, and a socket keeps the
namespace it was created in for its whole life. So work runs on a fresh thread
that enters the namespace, does its work (creates sockets, writes
/proc/sys/net, runs an event loop) and ends: the product's own
`NamespaceExecutor` (felix_nat64/drivers/netns/executor.py); the rest of the
process is never moved. Commands run through nsenter(1), which enters the
namespace and execs, so the process id returned is the command's own.

Everywhere in this module a namespace name of ``None`` means "the namespace of
the calling thread": that is how a topology whose node is the current namespace
(the whole test VM) is driven with the same code as a throwaway node namespace.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from felix_nat64.drivers.netns import executor
from felix_nat64.drivers.netns.executor import NamespaceUnavailable, run_in_namespace
from felix_nat64.drivers.netns.namespaces import read_sysctl, write_sysctl

NETNS_DIR = Path(executor.NETNS_DIR)

T = TypeVar("T")


def netns_path(name: str) -> Path:
    """Path of the bind mount that keeps the named namespace alive (as `ip netns` makes it)."""
    return Path(executor.netns_path(name))


def netns_exists(name: str) -> bool:
    """True when /run/netns/NAME exists."""
    return netns_path(name).exists()


def _require(name: str) -> None:
    if not netns_exists(name):
        raise NamespaceUnavailable(name, errno.ENOENT, "it does not exist")


def run_in_netns(netns: str | None, fn: Callable[[], T], *, timeout: float = 60.0) -> T:
    """Run ``fn()`` in a fresh thread inside ``netns`` and return its result or raise its exception.

    With ``netns=None`` ``fn`` runs in the calling thread. ``fn`` must bound its own
    waits: after ``timeout`` seconds this raises TimeoutError and abandons the thread
    (a daemon thread, so it never blocks interpreter exit).
    """
    if netns is None:
        return fn()
    return run_in_namespace(netns, fn, timeout=timeout)


def socket_in_netns(netns: str | None, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A new socket that lives in ``netns`` (it may be used from any thread afterwards)."""
    return run_in_netns(netns, lambda: socket.socket(family, kind, proto), timeout=10.0)


def write_sysctls(netns: str | None, values: Mapping[str, str | int]) -> None:
    """Write each ``key -> value`` (keys like ``net/ipv4/ip_forward``) inside ``netns``, in order."""

    def write() -> None:
        for key, value in values.items():
            write_sysctl(key, str(value))

    run_in_netns(netns, write, timeout=10.0)


def read_sysctls(netns: str | None, keys: Sequence[str]) -> dict[str, str]:
    """Current values of ``keys`` inside ``netns`` (stripped strings)."""
    return run_in_netns(netns, lambda: {key: read_sysctl(key) for key in keys}, timeout=10.0)


def command_in_netns(netns: str | None, argv: Sequence[str]) -> list[str]:
    """``argv`` prefixed so that it runs inside ``netns`` (unchanged for None)."""
    if netns is None:
        return list(argv)
    return ["nsenter", f"--net={netns_path(netns)}", "--", *argv]


def popen_in_netns(netns: str | None, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start ``argv`` inside ``netns``; keyword arguments go to subprocess.Popen.

    The child's pid is the command's own (nsenter execs it), so it can be signalled
    directly. With ``netns=None`` the child inherits the calling thread's namespace.
    """
    if netns is not None:
        _require(netns)
    return subprocess.Popen(command_in_netns(netns, argv), **kwargs)


def run_command_in_netns(
    netns: str | None,
    argv: Sequence[str],
    *,
    timeout: float = 30.0,
    input_text: str | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` inside ``netns`` to completion and capture its output as text.

    Raises subprocess.CalledProcessError (with the output) on a non-zero exit when
    ``check`` is true, and subprocess.TimeoutExpired after ``timeout`` seconds.
    """
    if netns is not None:
        _require(netns)
    return subprocess.run(
        command_in_netns(netns, argv),
        input=input_text,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
    )


def pids_in_netns(name: str) -> list[int]:
    """Processes whose network namespace is the named one (this process excluded)."""
    try:
        target = os.stat(netns_path(name))
    except FileNotFoundError:
        return []
    found: list[int] = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:  # the process ended or is not ours to look at
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            found.append(int(entry))
    return found


def kill_pids(pids: Sequence[int], *, grace: float = 2.0) -> None:
    """SIGTERM each pid, wait up to ``grace`` seconds, then SIGKILL the ones still alive."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if _alive(pid)]
        if alive:
            time.sleep(0.02)
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    # A zombie child of ours still has a /proc entry: reap it if it is ours.
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError, ProcessLookupError):
        return False
    return state != "Z"
