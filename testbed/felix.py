"""Drives felix-nat64-driver exactly as Felix does.

Felix execs the driver with no arguments, its ToDataplane stream on fd 3
and its FromDataplane pipe on fd 4, copies the driver's output into its own
log, and ends the stream (EOF) or sends SIGTERM when it goes away.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence

DRIVER = "felix-nat64-driver"


def driver_command() -> list[str]:
    """The driver executable next to this interpreter (a venv), else on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), DRIVER)
    if os.access(beside, os.X_OK):
        return [beside]
    found = shutil.which(DRIVER)
    if found:
        return [found]
    return [sys.executable, "-c", "from felix_nat64.cli.entry import driver_main; driver_main()"]


class FelixSimulator:
    """One driver process fed like Felix feeds it."""

    def __init__(self, env: Mapping[str, str] | None = None, command: Sequence[str] | None = None,
                 log_path: str | None = None) -> None:
        self._env = {**os.environ, **(env or {})}
        self._command = list(command or driver_command())
        self._log_path = log_path
        self.pid: int | None = None
        self._to_driver: int | None = None
        self._from_driver: int | None = None
        self._output: list[bytes] = []
        self._reader: threading.Thread | None = None
        self.returncode: int | None = None

    def start(self) -> FelixSimulator:
        to_r, to_w = os.pipe()
        from_r, from_w = os.pipe()
        out_r, out_w = os.pipe()
        actions = [
            (os.POSIX_SPAWN_DUP2, to_r, 3),
            (os.POSIX_SPAWN_DUP2, from_w, 4),
            (os.POSIX_SPAWN_DUP2, out_w, 1),
            (os.POSIX_SPAWN_DUP2, out_w, 2),
            (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
        ]
        self.pid = os.posix_spawn(self._command[0], self._command, self._env, file_actions=actions)
        for fd in (to_r, from_w, out_w):
            os.close(fd)
        self._to_driver = to_w
        self._from_driver = from_r
        self._reader = threading.Thread(target=self._collect, args=(out_r,), daemon=True)
        self._reader.start()
        return self

    def _collect(self, fd: int) -> None:
        sink = open(self._log_path, "ab") if self._log_path else None  # noqa: SIM115
        try:
            while chunk := os.read(fd, 65536):
                self._output.append(chunk)
                if sink is not None:
                    sink.write(chunk)
                    sink.flush()
        finally:
            os.close(fd)
            if sink is not None:
                sink.close()

    def send(self, data: bytes) -> None:
        """Writes stream bytes; blocks like Felix's unbuffered pipe does."""
        assert self._to_driver is not None, "start() first"
        view = memoryview(data)
        while view:
            written = os.write(self._to_driver, view)
            view = view[written:]

    def end_stream(self) -> None:
        """EOF on fd 3, as when Felix dies."""
        if self._to_driver is not None:
            os.close(self._to_driver)
            self._to_driver = None

    def terminate(self, timeout: float = 4.0) -> int:
        """SIGTERM, then SIGKILL after `timeout` (Felix waits 4 s)."""
        assert self.pid is not None
        if not self.running():
            assert self.returncode is not None
            return self.returncode
        os.kill(self.pid, signal.SIGTERM)
        code = self.wait(timeout)
        if code is None:
            os.kill(self.pid, signal.SIGKILL)
            code = self.wait(5.0)
        assert code is not None
        return code

    def kill(self) -> int:
        assert self.pid is not None
        os.kill(self.pid, signal.SIGKILL)
        code = self.wait(5.0)
        assert code is not None
        return code

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None if still running after `timeout`."""
        assert self.pid is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.returncode is not None:
                return self.returncode
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self._close_pipes()
                self.returncode = os.waitstatus_to_exitcode(status)
                return self.returncode
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def running(self) -> bool:
        return self.pid is not None and self.wait(0) is None

    def _close_pipes(self) -> None:
        for attr in ("_to_driver", "_from_driver"):
            fd = getattr(self, attr)
            if fd is not None:
                os.close(fd)
                setattr(self, attr, None)
        if self._reader is not None:
            self._reader.join(2)

    @property
    def output(self) -> str:
        return b"".join(self._output).decode(errors="replace")

    def __enter__(self) -> FelixSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.pid is not None and self.running():
            self.terminate()
