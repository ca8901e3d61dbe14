"""Runs a command inside a VM whose kernel has the real Jool module.

This machine's own kernel may be unable to load modules, so tests that need
Jool boot Debian's kernel (with jool.ko built by jool-dkms) under qemu with
virtme-ng, which shares the host's filesystem with the guest. The command
runs as root in the guest, in the current directory, with the module loaded.

    python -m felix_nat64.testing.vm pytest -q tests/vm
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence

DEFAULT_MEMORY = "2G"


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


def vng_command(argv: Sequence[str], memory: str = DEFAULT_MEMORY, cpus: int | None = None,
                rwdirs: Sequence[str] = ()) -> list[str]:
    """The virtme-ng command line that runs `argv` in the guest."""
    vng = _vng()
    if vng is None:
        raise VmError("virtme-ng's vng is not on PATH: pip install virtme-ng (make venv does this)")
    _, image = jool_kernel()
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
    script = (
        f"set -e; cd {shlex.quote(cwd)}; export {exports}; "
        "modprobe jool; "
        f"exec {shlex.join(argv)}"
    )
    cmd = [vng, "--run", image, "--disable-kvm", "--memory", memory,
           "--cpus", str(cpus or min(os.cpu_count() or 1, 2))]
    for d in (cwd, *rwdirs):
        cmd += ["--rwdir", d]
    return [*cmd, "--", "bash", "-c", script]


def in_vm() -> bool:
    """True when running inside the test VM."""
    return os.environ.get("FELIX_NAT64_IN_VM") == "1"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print("usage: python -m felix_nat64.testing.vm COMMAND [ARG...]", file=sys.stderr)
        return 2
    try:
        cmd = vng_command(args, memory=os.environ.get("FELIX_NAT64_VM_MEMORY", DEFAULT_MEMORY))
    except VmError as exc:
        print(f"felix-nat64 vm: {exc}", file=sys.stderr)
        return 1
    # vng execs virtme-run by name, so its own bin directory must be on PATH.
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(_vng() or "") + os.pathsep + env.get("PATH", "")
    return subprocess.run(cmd, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
