"""Doing things inside a named network namespace: threads, sockets, sysctls, commands.

A network namespace is a property of a thread in Linux, and a socket keeps the
namespace it was created in for its whole life. So the cheapest reliable way to
act inside a namespace from Python is a fresh thread that enters it with
setns(2), does its work (creates sockets, writes /proc/sys/net, runs an event
loop) and ends; the rest of the process is never moved. Commands run through
nsenter(1), which enters the namespace and execs, so the process id returned is
the command's own.

Everywhere in this module a namespace name of ``None`` means "the namespace of
the calling thread": that is how a topology whose node is the current namespace
(the whole test VM) is driven with the same code as a throwaway node namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000

T = TypeVar("T")

_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(RuntimeError):
    """A namespace is missing or cannot be entered."""


def netns_path(name: str) -> Path:
    """Path of the bind mount that keeps the named namespace alive (as `ip netns` makes it)."""
    if "/" in name or not name or name in (".", ".."):
        raise NetnsError(f"not a namespace name: {name!r}")
    return NETNS_DIR / name


def netns_exists(name: str) -> bool:
    """True when /run/netns/NAME exists."""
    return netns_path(name).exists()


def enter_netns(name: str | None) -> None:
    """Move the calling thread (only it) into the named namespace; None does nothing."""
    if name is None:
        return
    path = netns_path(name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetnsError(f"network namespace {name} does not exist ({path} is missing)") from None
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise NetnsError(f"setns into {name} failed: {os.strerror(err)}")
    finally:
        os.close(fd)


@dataclass
class _Outcome(Generic[T]):
    value: T | None = None
    error: BaseException | None = None
    done: bool = False


def run_in_netns(netns: str | None, fn: Callable[[], T], *, timeout: float = 60.0) -> T:
    """Run ``fn()`` in a fresh thread inside ``netns`` and return its result or raise its exception.

    With ``netns=None`` ``fn`` runs in the calling thread. ``fn`` must bound its own
    waits: after ``timeout`` seconds this raises TimeoutError and abandons the thread
    (a daemon thread, so it never blocks interpreter exit).
    """
    if netns is None:
        return fn()
    outcome: _Outcome[T] = _Outcome()

    def body() -> None:
        try:
            enter_netns(netns)
            outcome.value = fn()
        except BaseException as exc:  # handed to the caller, which re-raises it
            outcome.error = exc
        finally:
            outcome.done = True

    thread = threading.Thread(target=body, name=f"netns:{netns}", daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome.done:
        raise TimeoutError(f"work in namespace {netns} did not finish within {timeout}s")
    if outcome.error is not None:
        raise outcome.error
    return outcome.value  # type: ignore[return-value]  # set whenever no error was raised


def socket_in_netns(netns: str | None, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A new socket that lives in ``netns`` (it may be used from any thread afterwards)."""
    return run_in_netns(netns, lambda: socket.socket(family, kind, proto), timeout=10.0)


def _sysctl_path(key: str) -> Path:
    # Keys are slash-separated below /proc/sys, e.g. "net/ipv6/conf/eth0/forwarding":
    # slashes keep interface names with dots unambiguous.
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"bad sysctl key {key!r}")
    return Path("/proc/sys").joinpath(*parts)


def write_sysctls(netns: str | None, values: Mapping[str, str | int]) -> None:
    """Write each ``key -> value`` (keys like ``net/ipv4/ip_forward``) inside ``netns``, in order."""

    def write() -> None:
        for key, value in values.items():
            _sysctl_path(key).write_text(f"{value}\n")

    run_in_netns(netns, write, timeout=10.0)


def read_sysctls(netns: str | None, keys: Sequence[str]) -> dict[str, str]:
    """Current values of ``keys`` inside ``netns`` (stripped strings)."""

    def read() -> dict[str, str]:
        return {key: _sysctl_path(key).read_text().strip() for key in keys}

    return run_in_netns(netns, read, timeout=10.0)


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
    if netns is not None and not netns_exists(netns):
        raise NetnsError(f"network namespace {netns} does not exist")
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
    if netns is not None and not netns_exists(netns):
        raise NetnsError(f"network namespace {netns} does not exist")
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
