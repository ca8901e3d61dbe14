"""Running work inside a named network namespace, on a thread of its own.

A network namespace belongs to a thread in Linux: setns(2) moves only the
calling thread. Several interfaces act in the namespace of the calling
thread rather than of a socket: /proc/sys/net, ethtool, Jool's Generic
Netlink handlers, and every socket, which keeps the namespace of the thread
that opened it. So work for a namespace runs on a dedicated thread that has
entered it, and the rest of the process never moves. The driver never forks
(docs/architecture.md, "Threads"), so this is also how it opens sockets in
other namespaces.

This is the one place that enters namespaces: the netns driver, the Jool
client and the test bed all build on `NamespaceExecutor`.
"""

from __future__ import annotations

import ctypes
import errno
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

T = TypeVar("T")

# Where named namespaces are bind-mounted, as `ip netns add` does.
NETNS_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000  # setns(2)/unshare(2) flag for a network namespace
CALL_TIMEOUT = 30.0

_libc = ctypes.CDLL(None, use_errno=True)
_Job = tuple[Callable[[], Any], "Future[Any]"]


class NamespaceUnavailable(OSError):
    """The named namespace does not exist or cannot be entered."""

    def __init__(self, name: str, code: int, reason: str) -> None:
        super().__init__(code, f"cannot enter network namespace {name!r}: {reason}")
        self.netns = name
        self.reason = reason


class ExecutorClosed(RuntimeError):
    """Work was handed to an executor that has been closed."""


def netns_path(name: str) -> str:
    """The bind mount that keeps namespace `name` alive; rejects names that
    are not a single path component."""
    if not name or "/" in name or name in (".", ".."):
        raise NamespaceUnavailable(name, errno.EINVAL, "not a namespace name")
    return os.path.join(NETNS_DIR, name)


def enter_namespace(name: str) -> None:
    """Moves the calling thread (only) into /run/netns/NAME. Python 3.11 has
    no os.setns, hence libc."""
    path = netns_path(name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        reason = "it does not exist" if exc.errno == errno.ENOENT else os.strerror(exc.errno or errno.EIO)
        raise NamespaceUnavailable(name, exc.errno or errno.EIO, reason) from None
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise NamespaceUnavailable(name, code, f"setns: {os.strerror(code)}")
    finally:
        os.close(fd)


class NamespaceExecutor:
    """One thread inside namespace `name` that runs the callables handed to
    `call()`, one at a time, in order.

    With `name` None the thread stays in the namespace of the thread that
    creates the executor. Entering the namespace happens before the
    constructor returns, so a missing namespace raises NamespaceUnavailable
    there. Use it as a context manager, or call `close()`.
    """

    def __init__(self, name: str | None, *, timeout: float = CALL_TIMEOUT, role: str = "netns") -> None:
        self.name = name
        self.timeout = timeout
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._stuck = False
        ready: Future[None] = Future()
        self._thread = threading.Thread(target=self._run, args=(ready,), name=f"{role}-{name or 'current'}",
                                        daemon=True)
        self._thread.start()
        try:
            ready.result()
        except BaseException:
            self._thread.join()
            raise

    def _run(self, ready: Future[None]) -> None:
        try:
            if self.name is not None:
                enter_namespace(self.name)
        except BaseException as exc:
            ready.set_exception(exc)
            return
        ready.set_result(None)
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, future = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

    def call(self, fn: Callable[..., T], *args: object, timeout: float | None = None) -> T:
        """Runs fn(*args) on the namespace thread and returns its result or
        raises its exception; TimeoutError after `timeout` (default: the
        executor's) seconds, leaving the thread to finish on its own."""
        future: Future[T] = Future()
        with self._lock:
            if self._closed:
                raise ExecutorClosed(f"the executor of namespace {self.name or 'current'} is closed")
            self._jobs.put(((lambda: fn(*args)), future))
        limit = self.timeout if timeout is None else timeout
        try:
            return future.result(limit)
        except FutureTimeout:
            future.cancel()
            self._stuck = True
            raise TimeoutError(f"work in network namespace {self.name or 'current'} did not finish "
                               f"within {limit}s") from None

    @property
    def running(self) -> bool:
        """Whether the namespace thread is still alive."""
        return self._thread.is_alive()

    def close(self, last: Callable[[], object] | None = None) -> None:
        """Stops the thread once the work already handed over is done, after
        running `last` on it (to close what was opened there); idempotent.
        After a timed-out call the thread is not waited for."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if last is not None:
                self._jobs.put((last, Future()))
            self._jobs.put(None)
        if threading.current_thread() is not self._thread and not self._stuck:
            self._thread.join()

    def __enter__(self) -> NamespaceExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_in_namespace(name: str, fn: Callable[[], T], *, timeout: float = CALL_TIMEOUT) -> T:
    """Runs fn() once on a fresh thread inside namespace `name`."""
    with NamespaceExecutor(name, timeout=timeout) as executor:
        return executor.call(fn)
