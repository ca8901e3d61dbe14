"""Runs a command inside a VM whose kernel has the real Jool module.

This machine's own kernel may be unable to load modules, so tests that need
Jool boot Debian's kernel (with jool.ko built by jool-dkms) under qemu with
virtme-ng, which shares the host's filesystem with the guest. The command
runs as root in the guest, in the current directory, with the module loaded.

    python -m testbed.vm pytest -q tests/vm
    python -m testbed.vm --disk out/image/rootfs-ID.ext4 pytest -q tests/image/vm
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
from collections.abc import Sequence
from typing import IO, TextIO

DEFAULT_MEMORY = "2G"
LOCK_PATH = "/run/lock/felix-nat64-vm.lock"  # shared by every checkout on the machine
IMAGE_LABEL = "fn64py"
GUEST_IMAGE_MOUNT = "/run/fn64py"
# Packages the guest never imports; leaving them out keeps the image small.
_SKIP_PACKAGES = re.compile(
    r"^(helm_python.*|kubernetes_validate.*|mypy.*|.*__mypyc.*|grpc.*|pip|pip-.*|setuptools.*|ruff.*"
    r"|virtme.*|types_.*|.*-stubs)$"
)


class VmError(RuntimeError):
    """The VM cannot be started on this machine."""


def jool_kernel() -> tuple[str, str]:
    """(version, vmlinuz path) of the newest installed kernel that has jool.ko."""
    found = []
    for ko in glob.glob("/lib/modules/*/updates/dkms/jool.ko*"):
        version = ko.split("/")[3]
        image = f"/boot/vmlinuz-{version}"
        if os.path.exists(image):
            found.append((version, image))
    if not found:
        raise VmError(
            "no installed kernel has the Jool module: install linux-image-amd64, "
            "linux-headers-amd64 and jool-dkms (make deps does this)"
        )

    def key(item: tuple[str, str]) -> list[int]:
        return [int(x) for x in re.findall(r"\d+", item[0])]

    return max(found, key=key)


def _vng() -> str | None:
    # Prefer the virtualenv this interpreter runs from, whatever PATH says.
    beside = os.path.join(os.path.dirname(sys.executable), "vng")
    return beside if os.access(beside, os.X_OK) else shutil.which("vng")


def python_trees() -> dict[str, str]:
    """Guest mount point -> host directory of every Python tree the tests import from."""
    stdlib = sysconfig.get_paths(vars={"base": sys.base_prefix, "installed_base": sys.base_prefix})["stdlib"]
    trees = {stdlib: stdlib, "/usr/lib/python3/dist-packages": "/usr/lib/python3/dist-packages"}
    site = sysconfig.get_paths()["purelib"]
    trees[site] = site
    for tree in _own_trees():
        trees[tree] = tree
    return {guest: host for guest, host in trees.items() if os.path.isdir(host)}


def _own_trees() -> list[str]:
    """The product package and this test bed, wherever they are imported from."""
    import felix_nat64  # noqa: PLC0415

    return [os.path.dirname(os.path.abspath(felix_nat64.__file__)),
            os.path.dirname(os.path.abspath(__file__))]


def python_image(cache_dir: str) -> str:
    """An ext4 image holding the Python trees, built once per set of installed packages.

    Under emulation every file access over the VM's shared filesystem costs
    milliseconds, and a Python start makes hundreds: reading the same files
    from a block device in the guest's page cache makes starts ~10x faster.
    """
    trees = python_trees()
    digest = hashlib.sha256(sys.version.encode())
    own = set(_own_trees())
    for guest, host in sorted(trees.items()):
        digest.update(guest.encode())
        if host in own:  # our own code changes file by file: look at every file
            for root, dirs, files in os.walk(host):
                dirs.sort()
                for name in sorted(files):
                    st = os.lstat(os.path.join(root, name))
                    digest.update(f"{root}/{name}:{st.st_mtime_ns}:{st.st_size}".encode())
            continue
        for entry in sorted(os.scandir(host), key=lambda e: e.name):
            st = entry.stat(follow_symlinks=False)
            digest.update(f"{entry.name}:{st.st_mtime_ns}:{st.st_size}".encode())
    os.makedirs(cache_dir, exist_ok=True)
    image = os.path.join(cache_dir, f"python-{digest.hexdigest()[:16]}.ext4")
    if os.path.exists(image):
        return image
    for old in glob.glob(os.path.join(cache_dir, "python-*.ext4")):
        os.unlink(old)
    staging = tempfile.mkdtemp(prefix="staging-", dir=cache_dir)
    try:
        for index, host in enumerate(trees.values()):
            shutil.copytree(host, os.path.join(staging, str(index)), symlinks=True,
                            copy_function=_link_or_copy,
                            ignore=lambda d, names: [n for n in names if _SKIP_PACKAGES.match(n)])
        size_mb = _tree_mb(staging) * 13 // 10 + 64
        tmp = image + ".tmp"
        subprocess.run(["mke2fs", "-q", "-t", "ext4", "-L", IMAGE_LABEL, "-d", staging, tmp, f"{size_mb}M"],
                       check=True)
        os.replace(tmp, image)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return image


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _tree_mb(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            total += os.lstat(os.path.join(root, name)).st_size
    return total // (1 << 20) + 1


def _mount_image_script(trees: dict[str, str]) -> str:
    binds = "; ".join(f"mount --bind {GUEST_IMAGE_MOUNT}/{i} {shlex.quote(guest)}"
                      for i, guest in enumerate(trees))
    return (f"modprobe -q virtio_blk || true; mkdir -p {GUEST_IMAGE_MOUNT}; "
            f"mount -o ro LABEL={IMAGE_LABEL} {GUEST_IMAGE_MOUNT}; {binds}; ")


def vng_command(argv: Sequence[str], memory: str = DEFAULT_MEMORY, cpus: int | None = None,
                rwdirs: Sequence[str] = (), disks: Sequence[str] = ()) -> list[str]:
    """The virtme-ng command line that runs `argv` in the guest."""
    vng = _vng()
    if vng is None:
        raise VmError("virtme-ng's vng is not on PATH: pip install virtme-ng (make venv does this)")
    _, kernel = jool_kernel()
    cwd = os.getcwd()
    env = {
        "PATH": os.pathsep.join([os.path.dirname(sys.executable),
                                 os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")]),
        "PYTHONDONTWRITEBYTECODE": "1",
        "FELIX_NAT64_IN_VM": "1",
    }
    for name, value in os.environ.items():
        if name.startswith("FELIX_NAT64_") and name != "FELIX_NAT64_IN_VM":
            env[name] = value
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    disk = python_image(os.path.join(cwd, "out", "vm"))
    script = (
        f"set -e; {_mount_image_script(python_trees())}"
        f"cd {shlex.quote(cwd)}; export {exports}; "
        "modprobe jool; "
        f"exec {shlex.join(argv)}"
    )
    cmd = [vng, "--run", kernel, "--disable-kvm", "--memory", memory,
           "--cpus", str(cpus or min(os.cpu_count() or 1, 2))]
    for d in (cwd, *rwdirs):
        cmd += ["--rwdir", d]
    # Attached read-only as plain virtio disks (vng's --disk names them by their paths);
    # the guest finds extra disks by their filesystem labels.
    drives = " ".join(f"-drive file={d},format=raw,if=virtio,readonly=on" for d in (disk, *disks))
    cmd += [f"--qemu-opts={drives}"]
    return [*cmd, "--", "bash", "-c", script]


def in_vm() -> bool:
    """True when running inside the test VM."""
    return os.environ.get("FELIX_NAT64_IN_VM") == "1"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    disks: list[str] = []
    while len(args) >= 2 and args[0] == "--disk":  # an extra read-only disk, e.g. an image's rootfs
        disks.append(os.path.abspath(args[1]))
        args = args[2:]
    if not args:
        print("usage: python -m testbed.vm [--disk FILE]... COMMAND [ARG...]", file=sys.stderr)
        return 2
    # vng execs virtme-run by name, so its own bin directory must be on PATH.
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(_vng() or "") + os.pathsep + env.get("PATH", "")
    # One VM at a time: two emulated guests on a small machine starve each
    # other, and timing-sensitive tests and benchmarks go wrong.
    with open(LOCK_PATH, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("felix-nat64 vm: waiting for another test VM to finish...", file=sys.stderr, flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        # The Python image is chosen under the lock: a run that waited must
        # not boot with an image another run has since replaced.
        try:
            cmd = vng_command(args, memory=os.environ.get("FELIX_NAT64_VM_MEMORY", DEFAULT_MEMORY),
                              disks=disks)
        except VmError as exc:
            print(f"felix-nat64 vm: {exc}", file=sys.stderr)
            return 1
        if sys.stdout.isatty() and sys.stderr.isatty():
            return subprocess.run(cmd, env=env, check=False).returncode
        return _run_relayed(cmd, env)


def _run_relayed(cmd: list[str], env: dict[str, str]) -> int:
    """Runs vng with its output passed on through pipes.

    virtme-ng hands qemu /proc/self/fd/1 and 2 as `file` chardevs without
    `append=on` (virtme-ng 1.42, virtme/commands/run.py lines 2266-2287),
    and qemu opens such a file with O_TRUNC (chardev/char-file.c). When ours
    is a log file, the guest's output replaced what the file already held,
    such as a host test stage's. A pipe cannot be truncated.
    """
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    relays = [threading.Thread(target=_relay, args=(src, dst), daemon=True)
              for src, dst in ((proc.stdout, sys.stdout), (proc.stderr, sys.stderr))]
    for relay in relays:
        relay.start()
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        code = proc.wait()
    for relay in relays:
        relay.join()
    return code


def _relay(src: IO[bytes], dst: TextIO) -> None:
    dst.flush()
    while chunk := os.read(src.fileno(), 65536):
        dst.buffer.write(chunk)
        dst.buffer.flush()


if __name__ == "__main__":
    sys.exit(main())
