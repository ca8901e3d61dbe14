"""Runs a container image's root filesystem the way a kubelet would, without a container engine.

For the test VM, where the real Jool module is: the image's root filesystem
(an ext4 file made by testbed.image, attached to the VM as a disk) is mounted
read-only once; each container gets its own tmpfs overlay on it, the mounts
its pod spec gives it, a root made read-only afterwards (readOnlyRootFilesystem),
and its own mount and PID namespaces, tini being PID 1. It shares the node's
network namespace (hostNetwork). A mount marked `shared` propagates both ways
(Bidirectional), as /run/netns does in the Helm chart, so the namespaces the
driver creates are visible on the node.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from felix_nat64.drivers.netns.executor import NETNS_DIR

WORK_DIR = "/run/fn64-containers"


class ContainerError(RuntimeError):
    """A container could not be set up or did not behave."""


def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ContainerError(f"mount {' '.join(args)}: {done.stderr.strip()}")


def is_mount_point(path: Path | str) -> bool:
    """True when something is mounted on `path`, bind mounts within one filesystem included
    (which os.path.ismount cannot see)."""
    return subprocess.run(["mountpoint", "-q", str(path)], check=False).returncode == 0


def _umount_tree(path: Path) -> None:
    if is_mount_point(path):
        subprocess.run(["umount", "-R", str(path)], capture_output=True, check=False)
        if is_mount_point(path):
            subprocess.run(["umount", "-R", "-l", str(path)], capture_output=True, check=False)


def prepare_node() -> None:
    """Makes the node ready for containers, before anything mounts below these directories.

    /run/netns becomes a shared mount, as `ip netns` makes it: mounts a
    container makes below its bind of it (the driver's namespaces) show on
    the node. The containers' own directory becomes a private mount, so that
    nothing a container mounts there shows on the node.
    """
    os.makedirs(NETNS_DIR, exist_ok=True)
    if not is_mount_point(NETNS_DIR):
        if os.listdir(NETNS_DIR):  # a bind over them would hide the namespaces already there
            raise ContainerError(f"{NETNS_DIR} already holds namespaces but is not a mount point: "
                                 "prepare the node first")
        _mount("--bind", NETNS_DIR, NETNS_DIR)
    _mount("--make-shared", NETNS_DIR)
    os.makedirs(WORK_DIR, exist_ok=True)
    if not is_mount_point(WORK_DIR):
        _mount("--bind", WORK_DIR, WORK_DIR)
    _mount("--make-private", WORK_DIR)


@contextlib.contextmanager
def image_disk(label: str) -> Iterator[Path]:
    """The filesystem labelled `label` (the image's rootfs disk), mounted read-only."""
    prepare_node()
    lower = Path(tempfile.mkdtemp(prefix="image-", dir=WORK_DIR))
    try:
        _mount("-o", "ro", f"LABEL={label}", str(lower))
        yield lower
    finally:
        _umount_tree(lower)
        lower.rmdir()


@dataclass(frozen=True)
class Mount:
    """One volume of the pod spec: a node path (None: a fresh tmpfs) at `target` in the container.

    Every mount is made in the container's own mount namespace and goes away
    with it; what the container mounts below a `shared` one (mountPropagation:
    Bidirectional, the node's side prepared by prepare_node) shows on the node.
    """

    target: str
    source: str | None = None
    readonly: bool = False
    shared: bool = False


def inside(root: Path, path: str) -> Path:
    """Where `path` of the container is on the node: symbolic links are followed within `root`
    (Debian's /var/run -> /run must not lead to the node's /run)."""
    parts = [p for p in path.split("/") if p]
    resolved = root
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            resolved = resolved.parent if resolved != root else root
            continue
        candidate = resolved / part
        if candidate.is_symlink():
            hops += 1
            if hops > 40:
                raise ContainerError(f"too many symbolic links in {path}")
            link = os.readlink(candidate)
            parts = [p for p in link.split("/") if p] + parts
            if link.startswith("/"):
                resolved = root
            continue
        resolved = candidate
    return resolved


class Container:
    """One container of a pod: start, exec into, signal, stop; removed on exit."""

    def __init__(self, image: Path, argv: Sequence[str], env: Mapping[str, str],
                 mounts: Sequence[Mount] = (), log: Path | None = None) -> None:
        self.image = image
        self.argv = list(argv)
        self.env = dict(env)
        self.mounts = list(mounts)
        self.log = log
        self.dir = Path(tempfile.mkdtemp(prefix="ctr-", dir=WORK_DIR))
        self.root = self.dir / "root"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_handle: IO[bytes] | None = None

    # -- filesystem ---------------------------------------------------------------------------------

    def setup_script(self) -> str:
        """The shell commands, run in the container's new namespaces, that build its filesystem."""
        q = shlex.quote
        rw, root = self.dir / "rw", self.root
        layers = f"lowerdir={self.image},upperdir={rw}/upper,workdir={rw}/work"
        lines = [
            "set -eu",
            f"mkdir -p {q(str(rw))} {q(str(root))}",
            f"mount -t tmpfs -o size=64m tmpfs {q(str(rw))}",
            f"mkdir {q(str(rw / 'upper'))} {q(str(rw / 'work'))}",
            f"mount -t overlay overlay -o {q(layers)} {q(str(root))}",
        ]
        for m in (Mount("/sys", "/sys"), Mount("/dev", "/dev"), *self.mounts):
            if m.shared and m.source != NETNS_DIR:
                raise ContainerError(f"only {NETNS_DIR} is prepared for Bidirectional propagation")
            target = q(str(root / inside(self.image, m.target).relative_to(self.image)))
            if m.source is not None and os.path.isfile(m.source):
                lines.append(f"mkdir -p \"$(dirname {target})\"; touch {target}")
            else:
                lines.append(f"mkdir -p {target}")
            if m.source is None:
                lines.append(f"mount -t tmpfs -o size=16m tmpfs {target}")
                continue
            lines.append(f"mount --rbind {q(m.source)} {target}")
            if m.readonly:
                lines.append(f"mount -o remount,bind,ro {target}")
        lines += [
            f"mount -t proc proc {q(str(root / 'proc'))}",  # this PID namespace's
            f"mount -o remount,ro {q(str(root))}",  # readOnlyRootFilesystem
            f'exec chroot {q(str(root))} "$@"',
        ]
        return "\n".join(lines) + "\n"

    # -- processes ----------------------------------------------------------------------------------

    def start(self) -> Container:
        out: IO[bytes] | int = subprocess.DEVNULL
        if self.log is not None:
            self._log_handle = open(self.log, "ab")  # noqa: SIM115 - closed in remove()
            out = self._log_handle
        # New PID and mount namespaces: tini is PID 1, and every mount made for
        # the container dies with it. The propagation left as the node set it
        # keeps /run/netns shared and the containers' directory private.
        self.proc = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--kill-child", "--mount", "--propagation", "unchanged",
             "sh", "-c", self.setup_script(), "container", *self.argv],
            env=self.env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not self.children(self.proc.pid) and self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise ContainerError(f"the container's first process did not start: {self.output()}")
            time.sleep(0.05)
        return self

    def pid1(self, timeout: float = 10.0) -> int:
        """The node's PID of the container's PID 1."""
        assert self.proc is not None, "start() first"
        deadline = time.monotonic() + timeout
        while True:
            children = self.children(self.proc.pid)
            if children:
                return children[0]
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise ContainerError(f"the container's first process did not start: {self.output()}")
            time.sleep(0.05)

    @staticmethod
    def children(pid: int) -> list[int]:
        try:
            text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        except OSError:
            return []
        return [int(p) for p in text.split()]

    def process_tree(self) -> list[tuple[int, str]]:
        """(node PID, command line) of every process in the container, parents first."""
        found: list[tuple[int, str]] = []
        todo = [self.pid1()]
        while todo:
            pid = todo.pop(0)
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            except OSError:
                continue
            found.append((pid, cmdline))
            todo.extend(self.children(pid))
        return found

    def exec(self, argv: Sequence[str], timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Runs a command in the container, like `kubectl exec`."""
        return subprocess.run(["nsenter", f"--target={self.pid1()}", "--mount", "--pid", "--root", "--wd",
                               "--", *argv], env=self.env, capture_output=True, text=True, check=False,
                              timeout=timeout)

    def kill(self, sig: signal.Signals) -> None:
        """Sends `sig` to PID 1, as the kubelet does with SIGTERM."""
        os.kill(self.pid1(), sig)

    def wait(self, timeout: float) -> int | None:
        """The container's exit status (PID 1's), or None if it still runs after `timeout`."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return self.log.read_text(errors="replace")

    def remove(self) -> None:
        """Stops what still runs (SIGKILL); its mounts went with its mount namespace."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # --kill-child takes PID 1, and with it the namespaces, along
            self.proc.wait(10)
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Container:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.remove()
