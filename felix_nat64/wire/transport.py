"""Where Felix's stream comes from: fd 3/4 pipes, or a unix socket.

The reader runs on its own thread and only decodes, so Felix (whose pipe to
the driver is unbuffered) is never held up by kernel programming.
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import socket
import stat
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from felix_nat64.logs import EventLogger
from felix_nat64.wire.felixfds import HOW_TO_RUN, felix_fds_problem
from felix_nat64.wire.framing import MAX_FRAME_BYTES, FrameDecoder, FramingError
from felix_nat64.wire.messages import Undecodable, decode_frame, payload_name

READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class StreamSnapshot:
    """What had come down the stream at one moment."""

    frames: int = 0
    bytes: int = 0
    by_payload: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    undecodable_used: int = 0
    undecodable_other: int = 0
    last_undecodable: str = ""


@dataclass
class StreamCounters:
    """What has come down the stream; written by the reader thread only, read
    by others through `snapshot()`."""

    frames: int = 0
    bytes: int = 0
    by_payload: Counter[str] = field(default_factory=Counter)
    undecodable_used: int = 0
    undecodable_other: int = 0
    last_undecodable: str = ""

    def snapshot(self) -> StreamSnapshot:
        """A frozen copy. Each field is read once; a frame counted while the
        copy is taken may show in one field and not yet in another. Copying
        the Counter is one C-level dict merge under the GIL, so it never sees
        the reader add a key halfway."""
        return StreamSnapshot(self.frames, self.bytes, MappingProxyType(dict(self.by_payload)),
                              self.undecodable_used, self.undecodable_other, self.last_undecodable)


class TransportError(Exception):
    """The transport cannot be set up (e.g. not started by Felix)."""


def check_felix_fds() -> None:
    """Fails clearly when fd 3/4 are not the pipes Felix provides."""
    problem = felix_fds_problem()
    if problem:
        raise TransportError(f"{problem}: {HOW_TO_RUN}")


def fd_chunks(fd: int) -> Iterator[bytes]:
    """Reads a file descriptor until EOF."""
    while True:
        try:
            chunk = os.read(fd, READ_CHUNK)
        except InterruptedError:
            continue
        if not chunk:
            return
        yield chunk


def socket_chunks(conn: socket.socket) -> Iterator[bytes]:
    """Reads a connected socket until EOF."""
    while True:
        try:
            chunk = conn.recv(READ_CHUNK)
        except InterruptedError:
            continue
        except ConnectionResetError:
            return
        if not chunk:
            return
        yield chunk


def pump(chunks: Iterator[bytes], emit: Callable[[Any], None], counters: StreamCounters,
         max_frame_bytes: int = MAX_FRAME_BYTES) -> str:
    """Decodes a byte stream into events; returns '' on clean EOF or the framing error.

    Frames carrying payloads we do not use are counted and dropped here,
    without being parsed.
    """
    log = EventLogger("reader")
    decoder = FrameDecoder(max_frame_bytes)
    by_payload = counters.by_payload
    names: dict[int | None, str] = {}
    try:
        for chunk in chunks:
            counters.bytes += len(chunk)
            for body in decoder.feed(chunk):
                counters.frames += 1
                number, decoded = decode_frame(body)
                if decoded is None:
                    name = names.get(number)
                    if name is None:
                        name = names[number] = payload_name(number)
                    by_payload[name] += 1
                    continue
                if isinstance(decoded, Undecodable) and decoded.field_number is None:
                    counters.undecodable_other += 1  # not even a protobuf message: dropped
                    log.warning("undecodable Felix message skipped", error=decoded.error,
                                frame=counters.frames)
                    continue
                if isinstance(decoded, Undecodable) and decoded.used:
                    counters.undecodable_used += 1
                    counters.last_undecodable = decoded.error
                    log.error("undecodable Felix message", payload=payload_name(number),
                              error=decoded.error, frame=counters.frames)
                elif isinstance(decoded, Undecodable):
                    counters.undecodable_other += 1
                    log.warning("undecodable Felix message skipped", payload=payload_name(number),
                                error=decoded.error, frame=counters.frames)
                else:
                    name = names.get(number)
                    if name is None:
                        name = names[number] = payload_name(number)
                    by_payload[name] += 1
                emit(decoded)
            if decoder.error is not None:
                raise decoder.error
        decoder.finish()
    except FramingError as exc:
        return str(exc)
    return ""


class StreamReader(threading.Thread):
    """Reads one Felix stream into a queue, ending with a StreamEnd event."""

    def __init__(self, chunks: Iterator[bytes], events: queue.Queue[Any], counters: StreamCounters,
                 end_factory: Callable[[str], Any], name: str = "felix-reader") -> None:
        super().__init__(name=name, daemon=True)
        self._chunks = chunks
        self._events = events
        self._counters = counters
        self._end = end_factory

    def run(self) -> None:
        try:
            error = pump(self._chunks, self._events.put, self._counters)
        except OSError as exc:
            error = f"reading Felix's stream failed: {os.strerror(exc.errno or errno.EIO)}"
        self._events.put(self._end(error))


class SocketServer:
    """A unix stream socket that accepts one Felix connection at a time.

    For proxy-style deployments (as Calico/VPP does): the process Felix
    starts only relays fd 3/4 to this socket, and the long-lived driver
    survives Felix restarts.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._sock: socket.socket | None = None

    def listen(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(st.st_mode):
                raise TransportError(
                    f"{self.path} exists and is not a socket; remove it or pick another path")
            os.unlink(self.path)
        directory = os.path.dirname(self.path) or "."
        os.makedirs(directory, mode=0o700, exist_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # created 0600: only root may feed the driver
        try:
            sock.bind(self.path)
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        sock.listen(1)
        self._sock = sock

    def accept(self, timeout: float | None = None) -> socket.socket | None:
        """The next connection, or None if none came within `timeout`."""
        assert self._sock is not None, "listen() first"
        self._sock.settimeout(timeout)
        try:
            conn, _ = self._sock.accept()
        except TimeoutError:
            return None
        conn.settimeout(None)
        return conn

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
