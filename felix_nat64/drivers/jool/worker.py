"""A thread inside a named network namespace that sends every Jool request.

Jool creates and looks up instances in the network namespace of the task
that sends the request (get_net_ns_by_pid(current)), not of the socket, so
the sending thread itself must have done setns(2) into the translator
namespace. The worker owns that thread and the socket it created, runs calls
one at a time in order, and closes both on close().
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
from typing import TypeVar

from felix_nat64.drivers.jool.codec import JoolHeader, Reply
from felix_nat64.drivers.jool.errors import JoolError, JoolNamespaceError
from felix_nat64.drivers.jool.transport import JoolSocket
from felix_nat64.logs import EventLogger

T = TypeVar("T")

NETNS_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
CALL_TIMEOUT = 30.0

_log = EventLogger("jool")
_Job = tuple[Callable[[JoolSocket], object], "Future[object]"]


def enter_netns(name: str) -> None:
    """Moves the calling thread (only) into network namespace /run/netns/NAME.
    Python 3.11 has no os.setns, hence libc."""
    if not name or "/" in name or name in (".", ".."):
        raise JoolNamespaceError(name, OSError(errno.EINVAL, "not a namespace name"))
    path = os.path.join(NETNS_DIR, name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise JoolNamespaceError(name, exc) from None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise JoolNamespaceError(name, OSError(code, os.strerror(code)))
    finally:
        os.close(fd)


class JoolWorker:
    """One thread in namespace `netns` (or, for None, in the namespace of the
    thread that creates the worker), holding a Jool socket. It is a Transport
    for JoolClient, and `call()` runs anything else that needs the socket."""

    def __init__(self, netns: str | None, timeout: float = CALL_TIMEOUT) -> None:
        self.netns = netns
        self.timeout = timeout
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._ready: Future[None] = Future()
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"jool-{netns or 'current'}", daemon=True)
        self._thread.start()
        try:
            self._ready.result()  # setns and socket errors surface here
        except BaseException:
            self._thread.join()
            raise

    def _run(self) -> None:
        try:
            if self.netns is not None:
                enter_netns(self.netns)
            sock = JoolSocket()
        except BaseException as exc:
            self._ready.set_exception(exc)
            return
        _log.debug("jool worker started", netns=self.netns or "-", thread=threading.get_ident())
        self._ready.set_result(None)
        try:
            while True:
                job = self._jobs.get()
                if job is None:
                    break
                fn, future = job
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    future.set_result(fn(sock))
                except BaseException as exc:
                    future.set_exception(exc)
        finally:
            sock.close()
            _log.debug("jool worker stopped", netns=self.netns or "-")

    def call(self, fn: Callable[[JoolSocket], T]) -> T:
        """Runs fn(socket) on the namespace thread and returns its result."""
        future: Future[object] = Future()
        with self._lock:
            if self._closed:
                raise JoolError(errno.ESHUTDOWN, f"Jool worker for namespace {self.netns!r} is closed")
            self._jobs.put((fn, future))
        try:
            result: T = future.result(self.timeout)  # type: ignore[assignment]
        except FutureTimeout:
            future.cancel()
            raise JoolError(errno.ETIMEDOUT, f"no answer from the Jool worker of namespace "
                                             f"{self.netns!r} in {self.timeout}s") from None
        return result

    @property
    def running(self) -> bool:
        """Whether the namespace thread is still alive."""
        return self._thread.is_alive()

    def exchange(self, cmd: int, header: JoolHeader, attrs: bytes, op: str) -> Reply:
        return self.call(lambda sock: sock.exchange(cmd, header, attrs, op))

    def close(self) -> None:
        """Stops the thread after the calls already queued; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._jobs.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def __enter__(self) -> JoolWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
