"""The thread that sends every Jool request for one network namespace.

Jool creates and looks up instances in the network namespace of the task
that sends the request (get_net_ns_by_pid(current)), not of the socket, so
the sending thread itself must be inside the translator namespace. The
worker is a `NamespaceExecutor` holding a Jool socket opened on that thread;
calls run one at a time in order, and close() closes both.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import TypeVar

from felix_nat64.drivers.jool.codec import JoolHeader, Reply
from felix_nat64.drivers.jool.errors import JoolError, JoolNamespaceError
from felix_nat64.drivers.jool.transport import JoolSocket
from felix_nat64.drivers.netns.executor import (
    CALL_TIMEOUT,
    ExecutorClosed,
    NamespaceExecutor,
    NamespaceUnavailable,
)
from felix_nat64.logs import EventLogger

T = TypeVar("T")

_log = EventLogger("jool")


class JoolWorker:
    """One thread in namespace `netns` (or, for None, in the namespace of the
    thread that creates the worker), holding a Jool socket. It is a Transport
    for JoolClient, and `call()` runs anything else that needs the socket."""

    def __init__(self, netns: str | None, timeout: float = CALL_TIMEOUT) -> None:
        self.netns = netns
        self.timeout = timeout
        self._closed = False
        try:
            self._executor = NamespaceExecutor(netns, timeout=timeout, role="jool")
        except NamespaceUnavailable as exc:
            raise JoolNamespaceError(exc.netns, OSError(exc.errno, exc.reason)) from None
        try:
            self._sock = self._executor.call(JoolSocket)
        except BaseException:
            self._executor.close()
            raise
        _log.debug("jool worker started", netns=netns or "-")

    def call(self, fn: Callable[[JoolSocket], T]) -> T:
        """Runs fn(socket) on the namespace thread and returns its result."""
        try:
            return self._executor.call(fn, self._sock)
        except ExecutorClosed:
            raise JoolError(errno.ESHUTDOWN, f"Jool worker for namespace {self.netns!r} is closed") from None
        except TimeoutError:
            raise JoolError(errno.ETIMEDOUT, f"no answer from the Jool worker of namespace "
                                             f"{self.netns!r} in {self.timeout}s") from None

    @property
    def running(self) -> bool:
        """Whether the namespace thread is still alive."""
        return self._executor.running

    def exchange(self, cmd: int, header: JoolHeader, attrs: bytes, op: str) -> Reply:
        return self.call(lambda sock: sock.exchange(cmd, header, attrs, op))

    def close(self) -> None:
        """Stops the thread after the calls already queued, closing the
        socket on it; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._executor.close(last=self._sock.close)
        _log.debug("jool worker stopped", netns=self.netns or "-")

    def __enter__(self) -> JoolWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
