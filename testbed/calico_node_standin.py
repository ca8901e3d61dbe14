"""A TEST STAND-IN for calico/node's `calico-node -felix`: it is not Calico.

There is no Felix binary and no registry on the machines that test the image,
so the image is built against a stand-in calico/node image whose
`/usr/bin/calico-node` is this module (a zipapp run by the image's python3).
It starts the external dataplane driver the way Felix does and behaves like
Felix's shutdown code around it (felix/daemon/daemon.go,
monitorAndManageShutdown: lines 688-811 in v3.26.4, 829-952 in v3.32.1,
806-929 on master at 87c15906, the same logic in each):

- the driver named by FELIX_DATAPLANEDRIVER is started with the stream on fd 3
  and a pipe on fd 4, in Felix's own environment; its output joins Felix's;
- SIGTERM or SIGINT: the driver gets SIGTERM, SIGKILL after 4 s, and Felix
  exits with status 1 (logrus Fatal, "Exiting immediately");
- SIGHUP, Felix's "reload config": the driver is stopped the same way, Felix
  sleeps 2 s and exits with 129 (configChangedRC), for its supervisor to
  start it again;
- the driver exiting on its own: Felix sleeps 2 s and exits with status 1.

What it streams is not computed from a datastore: it sends the recorded
stream in FELIX_NAT64_STANDIN_STREAM, then keeps fd 3 open as Felix does.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType

from testbed.felix import FelixSimulator

NAME = "calico-node stand-in (felix-nat64 test, not Calico)"
STREAM_ENV = "FELIX_NAT64_STANDIN_STREAM"
CONFIG_CHANGED_RC = 129  # configChangedRC, daemon.go:86 (v3.26.4), :83 (v3.32.1)
FATAL_RC = 1  # logrus Fatal
RESTART_PAUSE = 2.0  # daemon.go: "Sleeping to avoid tight restart loop"


def say(text: str) -> None:
    print(f"{NAME}: {text}", file=sys.stderr, flush=True)


def _driver_command(env: dict[str, str]) -> list[str] | str:
    if env.get("FELIX_USEINTERNALDATAPLANEDRIVER", "").lower() != "false":
        return "FELIX_USEINTERNALDATAPLANEDRIVER must be false: this stand-in only runs an external driver"
    name = env.get("FELIX_DATAPLANEDRIVER", "")
    if not name:
        return "FELIX_DATAPLANEDRIVER is not set"
    found = shutil.which(name, path=env.get("PATH"))
    if found is None:
        return f"dataplane driver {name!r} not found on PATH"
    return [found]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args != ["-felix"]:
        say(f"only 'calico-node -felix' is stood in for, not {args}")
        return FATAL_RC
    env = dict(os.environ)
    command = _driver_command(env)
    if isinstance(command, str):
        say(command)
        return FATAL_RC
    stream_path = env.get(STREAM_ENV, "")
    try:
        with open(stream_path, "rb") as handle:
            stream = handle.read()
    except OSError as exc:
        say(f"cannot read the recorded stream {STREAM_ENV}={stream_path!r}: {exc.strerror}")
        return FATAL_RC

    reason: list[str] = []
    wake = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        reason.append("config changed" if signum == signal.SIGHUP else f"signal {name}")
        wake.set()

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)

    felix = FelixSimulator(command=command, log_path="/proc/self/fd/2").start()
    say(f"started {command[0]} (pid {felix.pid}) with {len(stream)} bytes of recorded stream on fd 3")
    with contextlib.suppress(BrokenPipeError):  # a driver that died at once is handled below
        felix.send(stream)
    while not reason and felix.running():
        wake.wait(0.2)
    if not reason:
        say(f"driver process stopped (status {felix.returncode}); Felix is shutting down")
        time.sleep(RESTART_PAUSE)
        return FATAL_RC
    say(f"shutting down ({reason[0]}): sending the driver SIGTERM")
    code = felix.terminate(timeout=4.0)
    say(f"driver exited with status {code}")
    if reason[0] == "config changed":
        time.sleep(RESTART_PAUSE)
        say(f"exiting with {CONFIG_CHANGED_RC} for the config change")
        return CONFIG_CHANGED_RC
    return FATAL_RC


def run() -> None:
    """The zipapp's entry point (zipapp ignores what its entry function returns)."""
    sys.exit(main())


if __name__ == "__main__":
    run()
