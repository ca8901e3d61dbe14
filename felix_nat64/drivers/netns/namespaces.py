"""Named network namespaces (/run/netns/NAME) and sysctls.

Namespaces are created as `ip netns add` creates them, but without forking;
sysctls are read and written in the namespace of the calling thread (run the
call on a `NamespaceExecutor` to reach another namespace).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import threading

from felix_nat64.drivers.netns.executor import CLONE_NEWNET, NETNS_DIR, netns_path

MS_BIND = 4096
MS_REC = 16384
MS_SHARED = 1 << 20
MNT_DETACH = 2

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str, path: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}", path)


def create_namespace(name: str) -> None:
    """Creates named namespace /run/netns/NAME, as `ip netns add` does.

    Done on a short-lived thread (unshare and bind-mount its namespace)
    rather than in a forked child: forking a process that runs threads can
    leave the child blocked on a lock some other thread held. Callers that
    create namespaces from several threads at once serialise the calls: the
    first one may have to turn /run/netns into a shared mount.
    """
    path = netns_path(name)
    os.makedirs(NETNS_DIR, mode=0o755, exist_ok=True)
    # Namespace mounts must propagate to other mount namespaces (the host's,
    # when we run in a container with /run/netns mounted bidirectionally).
    if _libc.mount(b"", NETNS_DIR.encode(), b"none", MS_SHARED | MS_REC, None) != 0:
        _check(_libc.mount(NETNS_DIR.encode(), NETNS_DIR.encode(), b"none", MS_BIND | MS_REC, None),
               "mount --bind", NETNS_DIR)
        _check(_libc.mount(b"", NETNS_DIR.encode(), b"none", MS_SHARED | MS_REC, None),
               "mount --make-shared", NETNS_DIR)
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
    path = netns_path(name)
    if _libc.umount2(path.encode(), MNT_DETACH) != 0 and ctypes.get_errno() not in (errno.EINVAL,
                                                                                     errno.ENOENT):
        _check(-1, "umount", path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def namespace_exists(name: str) -> bool:
    """True when /run/netns/NAME is a mounted namespace: a creator killed
    between creating the file and bind-mounting leaves a plain file."""
    try:
        return os.stat(netns_path(name)).st_dev != os.stat(NETNS_DIR).st_dev
    except FileNotFoundError:
        return False


def namespace_entry_exists(name: str) -> bool:
    """True when /run/netns/NAME exists at all, namespace or leftover file."""
    return os.path.lexists(netns_path(name))


def list_namespaces() -> list[str]:
    """The names of every entry in /run/netns, sorted."""
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def _sysctl_path(key: str) -> str:
    # Keys are slash-separated below /proc/sys, e.g. "net/ipv6/conf/eth0/forwarding":
    # slashes keep interface names with dots unambiguous.
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"bad sysctl key {key!r}")
    return os.path.join("/proc/sys", *parts)


def read_sysctl(key: str) -> str:
    """/proc/sys/<key> in the calling thread's namespace, stripped."""
    with open(_sysctl_path(key)) as handle:
        return handle.read().strip()


def write_sysctl(key: str, value: str) -> bool:
    """Sets /proc/sys/<key> in the calling thread's namespace (e.g.
    "net/ipv4/conf/all/forwarding"); returns True if the value changed."""
    if read_sysctl(key) == value:
        return False
    with open(_sysctl_path(key), "w") as handle:
        handle.write(value)
    return True
