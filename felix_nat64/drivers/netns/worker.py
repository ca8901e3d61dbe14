"""A thread that lives in a named network namespace.

Some kernel interfaces act in the namespace of the calling thread rather than
of a socket: /proc/sys/net, ethtool ioctls and Jool's Generic Netlink
handlers. Work for a translator namespace therefore runs on one dedicated
thread that has done setns(2) into it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TypeVar

from pyroute2 import netns as pr_netns

T = TypeVar("T")

NETNS_DIR = "/run/netns"
CALL_TIMEOUT = 30.0


class NamespaceGone(Exception):
    """The namespace does not exist (any more)."""


class NamespaceThread:
    """Runs callables on a single thread inside namespace `name`."""

    def __init__(self, name: str) -> None:
        if not os.path.exists(os.path.join(NETNS_DIR, name)):
            raise NamespaceGone(f"network namespace {name} does not exist")
        self.name = name
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"netns-{name}",
                                        initializer=self._enter)

    def _enter(self) -> None:
        # flags=0: never create the namespace as a side effect.
        pr_netns.setns(self.name, flags=0)

    def call(self, fn: Callable[..., T], *args: object, timeout: float = CALL_TIMEOUT) -> T:
        """Runs fn(*args) on the namespace thread and returns its result."""
        future = self._pool.submit(fn, *args)
        try:
            return future.result(timeout)
        except FutureTimeout:
            raise TimeoutError(f"operation in namespace {self.name} timed out after {timeout}s") from None

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> NamespaceThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def namespace_exists(name: str) -> bool:
    return os.path.exists(os.path.join(NETNS_DIR, name))


def list_namespaces(prefix: str) -> list[str]:
    """Named namespaces whose names start with `prefix`."""
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(prefix))


def write_sysctl(path: str, value: str) -> bool:
    """Sets /proc/sys/<path> in the calling thread's namespace (e.g.
    "net/ipv4/conf/all/forwarding"); returns True if the value changed."""
    full = "/proc/sys/" + path
    with open(full) as handle:
        current = handle.read().strip()
    if current == value:
        return False
    with open(full, "w") as handle:
        handle.write(value)
    return True


def read_sysctl(path: str) -> str:
    with open("/proc/sys/" + path) as handle:
        return handle.read().strip()
