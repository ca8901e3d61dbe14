"""A thread that lives in a named network namespace.

Some kernel interfaces act in the namespace of the calling thread rather than
of a socket: /proc/sys/net, ethtool ioctls and Jool's Generic Netlink
handlers. Work for a translator namespace therefore runs on one dedicated
thread that has done setns(2) into it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TypeVar

T = TypeVar("T")

NETNS_DIR = "/run/netns"
CALL_TIMEOUT = 30.0
CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MS_REC = 16384
MS_SHARED = 1 << 20
MNT_DETACH = 2

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str, path: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}", path)


def enter_namespace(name: str) -> None:
    """Moves the calling thread (only) into /run/netns/NAME."""
    path = os.path.join(NETNS_DIR, name)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc.setns(fd, CLONE_NEWNET), "setns", path)
    finally:
        os.close(fd)


def create_namespace(name: str) -> None:
    """Creates named namespace /run/netns/NAME, as `ip netns add` does.

    Done on a short-lived thread (unshare and bind-mount its namespace)
    rather than in a forked child: forking a process that runs threads can
    leave the child blocked on a lock some other thread held.
    """
    os.makedirs(NETNS_DIR, mode=0o755, exist_ok=True)
    # Namespace mounts must propagate to other mount namespaces (the host's,
    # when we run in a container with /run/netns mounted bidirectionally).
    if _libc.mount(b"", NETNS_DIR.encode(), b"none", MS_SHARED | MS_REC, None) != 0:
        _check(_libc.mount(NETNS_DIR.encode(), NETNS_DIR.encode(), b"none", MS_BIND | MS_REC, None),
               "mount --bind", NETNS_DIR)
        _check(_libc.mount(b"", NETNS_DIR.encode(), b"none", MS_SHARED | MS_REC, None),
               "mount --make-shared", NETNS_DIR)
    path = os.path.join(NETNS_DIR, name)
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o444))
    failure: list[BaseException] = []

    def bind_new_namespace() -> None:
        try:
            _check(_libc.unshare(CLONE_NEWNET), "unshare", path)
            own = f"/proc/self/task/{threading.get_native_id()}/ns/net"
            _check(_libc.mount(own.encode(), path.encode(), b"none", MS_BIND, None), "mount --bind", path)
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=bind_new_namespace, name=f"netns-create-{name}")
    thread.start()
    thread.join()
    if failure:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise failure[0]


def remove_namespace(name: str) -> None:
    """Unmounts and removes /run/netns/NAME (what's inside goes when unused)."""
    path = os.path.join(NETNS_DIR, name)
    if _libc.umount2(path.encode(), MNT_DETACH) != 0 and ctypes.get_errno() not in (errno.EINVAL,
                                                                                     errno.ENOENT):
        _check(-1, "umount", path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


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
        enter_namespace(self.name)

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
    """True when /run/netns/NAME is a mounted namespace: a creator killed
    between creating the file and bind-mounting leaves a plain file."""
    try:
        return os.stat(os.path.join(NETNS_DIR, name)).st_dev != os.stat(NETNS_DIR).st_dev
    except FileNotFoundError:
        return False


def namespace_entry_exists(name: str) -> bool:
    """True when /run/netns/NAME exists at all, namespace or leftover file."""
    return os.path.lexists(os.path.join(NETNS_DIR, name))


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
