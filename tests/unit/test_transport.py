"""Felix's transports: the unix socket server, fd 3/4, and the driver's sessions."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from felix_nat64.cli import driver as driver_cli
from felix_nat64.testing.streams import StreamBuilder
from felix_nat64.wire.transport import SocketServer, TransportError
from testbed.felix import driver_command
from tests.fakes import RecordingDataplane


def stream(prefixes: str) -> bytes:
    return StreamBuilder().env_config(NAT64Prefixes=prefixes, NAT64MetricsPort="0") \
        .pool("fd00::/64").in_sync().data()


def wait_for(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_socket_is_created_0600_and_refuses_other_files(tmp_path: Path) -> None:
    path = str(tmp_path / "run" / "felix-nat64.sock")
    server = SocketServer(path)
    server.listen()
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert server.accept(timeout=0.05) is None
    finally:
        server.close()
    assert not os.path.exists(path)
    regular = tmp_path / "file"
    regular.write_text("x")
    with pytest.raises(TransportError, match="not a socket"):
        SocketServer(str(regular)).listen()


def test_socket_driver_keeps_state_across_felix_sessions(tmp_path: Path) -> None:
    path = str(tmp_path / "felix-nat64.sock")
    dp = RecordingDataplane()
    drv = driver_cli.Driver(dp, str(tmp_path / "status.json"))  # type: ignore[arg-type]
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(driver_cli._run_socket(drv, path)), daemon=True)
    t.start()
    wait_for(lambda: os.path.exists(path))
    for prefixes in ("64:ff9b::/96", "2001:db8:64::/96"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(path)
            conn.sendall(stream(prefixes))
            wait_for(lambda p=prefixes: dp.applied and str(dp.applied[-1].translators[0].parent) == p)
        # Felix went away: nothing is torn down while waiting for the next one.
        wait_for(lambda: not drv.status.status.in_sync)
        assert dp.applied[-1].active
    drv.stop("test over")
    t.join(5)
    assert result == [0]
    assert [str(d.translators[0].parent) for d in dp.applied] == ["64:ff9b::/96", "2001:db8:64::/96"]


def test_driver_exits_cleanly_on_eof_without_teardown(tmp_path: Path) -> None:
    dp = RecordingDataplane()
    drv = driver_cli.Driver(dp, None)  # type: ignore[arg-type]
    r, w = os.pipe()
    os.write(w, stream("64:ff9b::/96"))
    os.close(w)
    from felix_nat64.wire.transport import fd_chunks  # noqa: PLC0415

    end = drv.run_stream(fd_chunks(r), "test-reader")
    os.close(r)
    assert end.error == ""
    # the InSync that arrived with the EOF is not applied on the way out
    assert all(d.active for d in dp.applied)


def test_framing_error_ends_the_stream_with_the_error(tmp_path: Path) -> None:
    dp = RecordingDataplane()
    drv = driver_cli.Driver(dp, None)  # type: ignore[arg-type]
    data = StreamBuilder().env_config(NAT64Prefixes="64:ff9b::/96").raw_bytes(b"\xff" * 8).data()
    end = drv.run_stream(iter([data]), "test-reader")
    assert "exceeds" in end.error
    assert dp.applied == []


def test_felix_entry_point_without_fds_says_how_to_run_it() -> None:
    done = subprocess.run(driver_command(), capture_output=True, text=True, check=False,
                          stdin=subprocess.DEVNULL, close_fds=True, timeout=60)
    assert done.returncode == 1
    assert "fd 3 is not open" in done.stderr and "felix-nat64 driver --socket" in done.stderr


def test_felix_entry_point_refuses_a_regular_file_on_fd_3(tmp_path: Path) -> None:
    """Felix passes pipes (a relay may pass sockets): a file on fd 3 means it was not Felix."""
    recorded = tmp_path / "recorded.stream"
    recorded.write_bytes(stream("64:ff9b::/96"))
    out = tmp_path / "out"
    back_r, back_w = os.pipe()
    command = driver_command()
    with open(recorded, "rb") as data, open(out, "wb") as log:
        pid = os.posix_spawn(command[0], command, dict(os.environ), file_actions=[
            (os.POSIX_SPAWN_DUP2, data.fileno(), 3), (os.POSIX_SPAWN_DUP2, back_w, 4),
            (os.POSIX_SPAWN_DUP2, log.fileno(), 2)])
    os.close(back_w)
    _, status = os.waitpid(pid, 0)
    os.close(back_r)
    assert os.waitstatus_to_exitcode(status) == 1
    text = out.read_text()
    assert "fd 3 is not a pipe or socket" in text and "felix-nat64 driver --input FILE" in text


def test_felix_entry_point_takes_no_arguments() -> None:
    done = subprocess.run([*driver_command(), "--socket", "/tmp/x"], capture_output=True, text=True,
                          check=False, timeout=60)
    assert done.returncode == 2 and "takes no arguments" in done.stderr


def test_cli_help_lists_every_command() -> None:
    done = subprocess.run([sys.executable, "-m", "felix_nat64.cli.main", "--help"], capture_output=True,
                          text=True, check=True, timeout=60)
    for command in ("status", "sessions", "render", "stream", "cleanup", "demo", "driver"):
        assert command in done.stdout
    assert "exit codes" in done.stdout
