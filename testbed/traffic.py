"""Traffic for the simulated node: servers in one namespace, clients in another.

Servers are child processes (``python -m testbed.traffic serve``) so
that they can be killed and restarted on their own and never compete with the
test for the interpreter. One process serves TCP and/or UDP on several
addresses. Each server tells the client which source address it saw, so a test
can assert "the IPv4 server sees the node's IPv4":

TCP, HTTP/1.0-ish (curl works too)
    ``GET /bytes/N`` (or ``GET /`` for the server's default size) answers N bytes;
    ``POST /upload`` with Content-Length reads and counts the body. The answer
    carries ``X-Client-Address``, ``X-Client-Port`` and ``X-Received-Bytes``.
TCP, echo mode
    a first line ``ECHO`` is answered with ``ECHO <address> <port>``; then every
    line is sent back until the client closes (the long-lived connection).
UDP
    every datagram comes back prefixed with ``SRC <address> <port>\\n``.

A server exits when its parent process goes away (it watches its stdin pipe),
so a crashed test leaves no servers behind.

Clients run inside a namespace (``None`` = the calling thread's) and return
frozen results; none raises for a network failure, each bounds every wait.
ICMP echo uses raw sockets, so no ping binary is needed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import ipaddress
import os
import resource
import secrets
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import IO, Literal, cast

from testbed.netns_exec import popen_in_netns, run_in_netns, socket_in_netns

IPAddress = IPv4Address | IPv6Address

DEFAULT_TCP_PORT = 8080
DEFAULT_UDP_PORT = 8081
DEFAULT_RESPONSE_BYTES = 1024
MAX_RESPONSE_BYTES = 1 << 30
# A server closes a connection that sends nothing for this long.
SERVER_IDLE_TIMEOUT = 600.0
READY_LINE = b"READY\n"

_CHUNK = 64 * 1024
_FILLER = b"n64" * (_CHUNK // 3 + 1)


def _addr(value: IPAddress | str) -> IPAddress:
    return ipaddress.ip_address(value)


def _family(addr: IPAddress) -> int:
    return socket.AF_INET if addr.version == 4 else socket.AF_INET6


def _seen(value: str) -> IPAddress:
    # An IPv6 peer address may carry a zone ("fe80::1%eth0").
    return ipaddress.ip_address(value.split("%", 1)[0])


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{errno.errorcode.get(exc.errno, exc.errno)}: {exc.strerror}"
    return f"{type(exc).__name__}: {exc}"


def raise_nofile_limit(wanted: int) -> int:
    """Raise this process's open-file soft limit towards ``wanted`` (capped by the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


# ==================================================================================
# Servers
# ==================================================================================


@dataclass(eq=False)
class ServerProcess:
    """A running server process; ``stop()`` (or leaving the ``with`` block) ends it."""

    netns: str | None
    addresses: tuple[IPAddress, ...]
    tcp_port: int | None
    udp_port: int | None
    process: subprocess.Popen[bytes]
    _log: IO[bytes] = field(repr=False)
    _ready: bool = field(default=False, repr=False)

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.process.pid

    def alive(self) -> bool:
        """True while the process runs."""
        return self.process.poll() is None

    def log(self) -> str:
        """What the server wrote to stderr so far."""
        self._log.flush()
        with open(self._log.name, "rb") as f:
            return f.read().decode(errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Return once the server has bound every socket; on failure stop it and raise
        RuntimeError with what it printed."""
        if self._ready:
            return
        stdout = self.process.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while time.monotonic() < deadline:
            readable, _, _ = select.select([stdout], [], [], 0.1)
            if readable:
                line = stdout.readline()
                break
            if self.process.poll() is not None:
                break
        if line != READY_LINE:
            output = self.log().strip() or line.decode(errors="replace") or f"not ready after {timeout}s"
            self.stop()
            raise RuntimeError(
                f"server in {self.netns or 'the current namespace'} on "
                f"{', '.join(map(str, self.addresses))} did not start "
                f"(exit status {self.process.returncode}): {output}"
            )
        self._ready = True

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the server (SIGKILL after ``timeout`` seconds); safe to call twice."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()
        if not self._log.closed:
            self._log.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._log.name)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(
    netns: str | None,
    addresses: Iterable[IPAddress | str],
    *,
    tcp_port: int | None = DEFAULT_TCP_PORT,
    udp_port: int | None = DEFAULT_UDP_PORT,
    response_bytes: int = DEFAULT_RESPONSE_BYTES,
    ready_timeout: float = 60.0,
    wait: bool = True,
) -> ServerProcess:
    """Start one server process in ``netns`` listening on every address given.

    TCP on ``tcp_port`` and UDP echo on ``udp_port`` (None: not served). With
    ``wait`` (the default) it returns once every socket is bound, and raises
    RuntimeError with the server's output if the server fails or is not ready
    within ``ready_timeout`` seconds. With ``wait=False`` call ``wait_ready()``
    later: starting several servers first and then waiting overlaps their
    start-up, which matters in the emulated VM where a Python start takes seconds.
    """
    addrs = tuple(_addr(a) for a in addresses)
    if not addrs or (tcp_port is None and udp_port is None):
        raise ValueError("a server needs at least one address and one protocol")
    argv = [
        sys.executable,
        "-m",
        "testbed.traffic",
        "serve",
        "--response-bytes",
        str(response_bytes),
    ]
    if tcp_port is not None:
        argv += ["--tcp-port", str(tcp_port)]
    if udp_port is not None:
        argv += ["--udp-port", str(udp_port)]
    argv += [str(a) for a in addrs]
    log = tempfile.NamedTemporaryFile(prefix="fn64-server-", suffix=".log", delete=False)  # noqa: SIM115
    process = popen_in_netns(
        netns, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, start_new_session=True
    )
    server = ServerProcess(netns, addrs, tcp_port, udp_port, process, log)
    if wait:
        server.wait_ready(ready_timeout)
    return server


def start_tcp_server(
    netns: str | None,
    addresses: Iterable[IPAddress | str],
    port: int = DEFAULT_TCP_PORT,
    *,
    response_bytes: int = DEFAULT_RESPONSE_BYTES,
) -> ServerProcess:
    """A TCP (HTTP-ish and echo) server only; see ``start_server``."""
    return start_server(netns, addresses, tcp_port=port, udp_port=None, response_bytes=response_bytes)


# --- the server process itself --------------------------------------------------


async def _read_http_head(reader: asyncio.StreamReader, first: bytes) -> tuple[str, str, dict[str, str]]:
    parts = first.decode("latin-1").split()
    if len(parts) < 2:
        raise ValueError("bad request line")
    headers: dict[str, str] = {}
    while True:
        line = await asyncio.wait_for(reader.readline(), SERVER_IDLE_TIMEOUT)
        if not line:
            raise ValueError("connection closed in the headers")
        if line in (b"\r\n", b"\n"):
            return parts[0].upper(), parts[1], headers
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()


async def _serve_http(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    first: bytes,
    peer: tuple[str, int],
    default_bytes: int,
) -> None:
    method, target, headers = await _read_http_head(reader, first)
    received = 0
    length = int(headers.get("content-length", "0") or 0)
    while received < length:
        chunk = await asyncio.wait_for(reader.read(min(_CHUNK, length - received)), SERVER_IDLE_TIMEOUT)
        if not chunk:
            break
        received += len(chunk)
    size = default_bytes
    status = "200 OK"
    if method == "POST":
        size = 0
    elif target.startswith("/bytes/"):
        try:
            size = int(target.removeprefix("/bytes/"))
        except ValueError:
            size, status = 0, "400 Bad Request"
    if not 0 <= size <= MAX_RESPONSE_BYTES:
        size, status = 0, "400 Bad Request"
    head = (
        f"HTTP/1.0 {status}\r\nContent-Type: application/octet-stream\r\nContent-Length: {size}\r\n"
        f"X-Client-Address: {peer[0]}\r\nX-Client-Port: {peer[1]}\r\nX-Received-Bytes: {received}\r\n"
        "Connection: close\r\n\r\n"
    )
    writer.write(head.encode("latin-1"))
    left = size
    while left > 0:
        n = min(left, _CHUNK)
        writer.write(_FILLER[:n])
        left -= n
        await writer.drain()
    await writer.drain()


async def _handle_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, default_bytes: int) -> None:
    peername = writer.get_extra_info("peername")
    peer = (str(_seen(peername[0])), int(peername[1]))
    try:
        first = await asyncio.wait_for(reader.readline(), SERVER_IDLE_TIMEOUT)
        if first.rstrip() == b"ECHO":
            writer.write(f"ECHO {peer[0]} {peer[1]}\n".encode())
            await writer.drain()
            while line := await asyncio.wait_for(reader.readline(), SERVER_IDLE_TIMEOUT):
                writer.write(line)
                await writer.drain()
        elif first:
            await _serve_http(reader, writer, first, peer, default_bytes)
    except (TimeoutError, ConnectionError, ValueError, asyncio.LimitOverrunError, OSError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


class _UdpEcho(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's datagram transport does not subclass DatagramTransport.
        self.transport = cast("asyncio.DatagramTransport", transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, int]) -> None:
        if self.transport is not None:
            header = f"SRC {_seen(str(addr[0]))} {addr[1]}\n".encode()
            self.transport.sendto(header + data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for earlier replies (the client went away): nothing to do.
        pass


def _bound_socket(addr: IPAddress, port: int, kind: int) -> socket.socket:
    sock = socket.socket(_family(addr), kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if addr.version == 6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((str(addr), port))
    return sock


async def _serve_main(
    addresses: Sequence[IPAddress], tcp_port: int | None, udp_port: int | None, default_bytes: int
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    servers: list[asyncio.base_events.Server] = []
    transports: list[asyncio.DatagramTransport] = []
    for addr in addresses:
        if tcp_port is not None:
            sock = _bound_socket(addr, tcp_port, socket.SOCK_STREAM)
            servers.append(
                await asyncio.start_server(
                    lambda r, w: _handle_tcp(r, w, default_bytes), sock=sock, backlog=4096
                )
            )
        if udp_port is not None:
            sock = _bound_socket(addr, udp_port, socket.SOCK_DGRAM)
            transport, _ = await loop.create_datagram_endpoint(_UdpEcho, sock=sock)
            transports.append(transport)

    def parent_gone() -> None:
        # The parent holds the other end of stdin: EOF means it exited.
        if not os.read(0, 4096):
            stop.set()

    loop.add_reader(0, parent_gone)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    sys.stdout.buffer.write(READY_LINE)
    sys.stdout.buffer.flush()
    await stop.wait()
    for server in servers:
        server.close()
    for endpoint in transports:
        endpoint.close()


def _serve_command(args: argparse.Namespace) -> int:
    raise_nofile_limit(1 << 20)
    addresses = [_addr(a) for a in args.addresses]
    asyncio.run(_serve_main(addresses, args.tcp_port, args.udp_port, args.response_bytes))
    return 0


# ==================================================================================
# Clients
# ==================================================================================


@dataclass(frozen=True)
class TcpResult:
    """One TCP request: whether it completed and what the server reported."""

    ok: bool
    error: str | None = None
    bytes_sent: int = 0
    bytes_received: int = 0
    seen_source: IPAddress | None = None
    seen_port: int | None = None
    local_address: IPAddress | None = None
    local_port: int | None = None
    elapsed: float = 0.0


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


def tcp_request(
    netns: str | None,
    dst: IPAddress | str,
    port: int = DEFAULT_TCP_PORT,
    *,
    response_bytes: int | None = None,
    upload_bytes: int = 0,
    timeout: float = 10.0,
) -> TcpResult:
    """One request from ``netns`` to the TCP server at ``dst``: download ``response_bytes``
    (the server's default when None) or, with ``upload_bytes``, upload that many.

    ``ok`` means connected, everything sent, the full answer received within ``timeout``.
    """
    target = _addr(dst)
    start = time.monotonic()
    deadline = start + timeout
    sent = received = 0
    local: tuple[str, int] | None = None
    headers: dict[str, str] = {}

    def result(ok: bool, error: str | None) -> TcpResult:
        seen = headers.get("x-client-address")
        seen_port = headers.get("x-client-port")
        return TcpResult(
            ok=ok,
            error=error,
            bytes_sent=sent,
            bytes_received=received,
            seen_source=_seen(seen) if seen else None,
            seen_port=int(seen_port) if seen_port else None,
            local_address=_seen(local[0]) if local else None,
            local_port=local[1] if local else None,
            elapsed=time.monotonic() - start,
        )

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        return left

    try:
        sock = socket_in_netns(netns, _family(target), socket.SOCK_STREAM)
    except Exception as exc:
        return result(False, _error_text(exc))
    with sock:
        try:
            sock.settimeout(remaining())
            sock.connect((str(target), port))
            local = sock.getsockname()[:2]
            if upload_bytes:
                request = f"POST /upload HTTP/1.0\r\nContent-Length: {upload_bytes}\r\n\r\n"
            elif response_bytes is None:
                request = "GET / HTTP/1.0\r\n\r\n"
            else:
                request = f"GET /bytes/{response_bytes} HTTP/1.0\r\n\r\n"
            sock.settimeout(remaining())
            sock.sendall(request.encode())
            left = upload_bytes
            while left:
                n = min(left, _CHUNK)
                sock.settimeout(remaining())
                sock.sendall(_FILLER[:n])
                left -= n
                sent += n
            buffer = b""
            while b"\r\n\r\n" not in buffer:
                sock.settimeout(remaining())
                chunk = sock.recv(_CHUNK)
                if not chunk:
                    return result(False, "connection closed before the answer's header")
                buffer += chunk
            head, _, body = buffer.partition(b"\r\n\r\n")
            status, headers = _parse_head(head)
            received = len(body)
            while True:
                sock.settimeout(remaining())
                chunk = sock.recv(_CHUNK)
                if not chunk:
                    break
                received += len(chunk)
        except Exception as exc:
            return result(False, _error_text(exc))
    expected = int(headers.get("content-length", "-1"))
    if status != 200:
        return result(False, f"HTTP status {status}")
    if received != expected:
        return result(False, f"received {received} of {expected} bytes")
    if upload_bytes and int(headers.get("x-received-bytes", "-1")) != upload_bytes:
        return result(False, f"server received {headers.get('x-received-bytes')} of {upload_bytes} bytes")
    return result(True, None)


@dataclass(frozen=True)
class UdpResult:
    """A UDP exchange of ``sent`` datagrams with the echo server."""

    ok: bool
    sent: int
    received: int
    error: str | None = None
    seen_source: IPAddress | None = None
    seen_port: int | None = None
    rtts: tuple[float, ...] = ()


def udp_exchange(
    netns: str | None,
    dst: IPAddress | str,
    port: int = DEFAULT_UDP_PORT,
    *,
    payload_size: int = 64,
    count: int = 1,
    reply_timeout: float = 2.0,
) -> UdpResult:
    """Send ``count`` datagrams of ``payload_size`` bytes one after another, each waiting up to
    ``reply_timeout`` for its echo. ``ok`` when every echo came back intact."""
    target = _addr(dst)
    token = secrets.token_hex(8).encode()
    sent = received = 0
    rtts: list[float] = []
    seen: tuple[str, int] | None = None
    error: str | None = None
    try:
        sock = socket_in_netns(netns, _family(target), socket.SOCK_DGRAM)
    except Exception as exc:
        return UdpResult(False, 0, 0, _error_text(exc))
    with sock:
        try:
            sock.connect((str(target), port))
        except OSError as exc:
            return UdpResult(False, 0, 0, _error_text(exc))
        for seq in range(count):
            tag = token + b":%d:" % seq
            payload = (tag + _FILLER)[: max(payload_size, len(tag))]
            start = time.monotonic()
            try:
                sock.send(payload)
                sent += 1
                while True:
                    left = start + reply_timeout - time.monotonic()
                    if left <= 0:
                        raise TimeoutError
                    sock.settimeout(left)
                    reply = sock.recv(65535)
                    header, _, echoed = reply.partition(b"\n")
                    if echoed != payload:
                        continue  # a late echo of an earlier datagram
                    parts = header.decode().split()
                    seen = (parts[1], int(parts[2]))
                    received += 1
                    rtts.append(time.monotonic() - start)
                    break
            except Exception as exc:
                error = error or f"datagram {seq}: {_error_text(exc)}"
    return UdpResult(
        ok=received == count,
        sent=sent,
        received=received,
        error=error,
        seen_source=_seen(seen[0]) if seen else None,
        seen_port=seen[1] if seen else None,
        rtts=tuple(rtts),
    )


# --- ICMP echo over raw sockets -------------------------------------------------

_ICMP_ECHO_REQUEST, _ICMP_ECHO_REPLY = 8, 0
_ICMP6_ECHO_REQUEST, _ICMP6_ECHO_REPLY = 128, 129
_ICMP_ERRORS = {3: "destination unreachable", 11: "time exceeded", 12: "parameter problem"}
_ICMP6_ERRORS = {
    1: "destination unreachable",
    2: "packet too big",
    3: "time exceeded",
    4: "parameter problem",
}
_IP_MTU_DISCOVER, _IP_PMTUDISC_DO = 10, 2
_IPV6_DONTFRAG = 62


def udp_flows(netns: str | None, dst: IPAddress | str, port: int = DEFAULT_UDP_PORT, *,
              count: int, payload: bytes = b"flow") -> int:
    """Opens ``count`` UDP flows from ``netns`` to ``dst``: one datagram from each of
    ``count`` sockets, each on its own ephemeral port, without waiting for
    answers (a NAT64 keeps a session for each from its first packet). Returns
    how many datagrams the kernel accepted."""
    target = _addr(dst)
    sent = 0
    # Every socket stays open until the last datagram has left, so no two share a port.
    with contextlib.ExitStack() as sockets:
        for _ in range(count):
            sock = sockets.enter_context(socket_in_netns(netns, _family(target), socket.SOCK_DGRAM))
            with contextlib.suppress(OSError):
                sock.sendto(payload, (str(target), port))
                sent += 1
    return sent


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


@dataclass(frozen=True)
class PingResult:
    """ICMP/ICMPv6 echo: ``ok`` when every request got its reply."""

    ok: bool
    sent: int
    received: int
    rtts: tuple[float, ...] = ()
    errors: tuple[str, ...] = ()
    # Next-hop MTU reported by a "fragmentation needed" or "packet too big" error.
    reported_mtu: int | None = None


def _match_icmp(
    packet: bytes, v6: bool, ident: int, source: str, target: str
) -> tuple[Literal["reply", "error"] | None, int, str, int | None]:
    """Classify one received ICMP packet: (kind, seq, description, reported mtu)."""
    icmp = packet if v6 else packet[(packet[0] & 0x0F) * 4 :]
    if len(icmp) < 8:
        return None, -1, "", None
    kind, code = icmp[0], icmp[1]
    reply_type = _ICMP6_ECHO_REPLY if v6 else _ICMP_ECHO_REPLY
    if kind == reply_type:
        got_id, seq = struct.unpack("!HH", icmp[4:8])
        if got_id == ident and source == target:
            return "reply", seq, "", None
        return None, -1, "", None
    names = _ICMP6_ERRORS if v6 else _ICMP_ERRORS
    if kind not in names:
        return None, -1, "", None
    inner = icmp[8:]
    if v6:
        if len(inner) < 48 or inner[6] != 58:
            return None, -1, "", None
        quoted = inner[40:]
        request_type = _ICMP6_ECHO_REQUEST
    else:
        if len(inner) < 20:
            return None, -1, "", None
        quoted = inner[(inner[0] & 0x0F) * 4 :]
        request_type = _ICMP_ECHO_REQUEST
    if len(quoted) < 8 or quoted[0] != request_type:
        return None, -1, "", None
    got_id, seq = struct.unpack("!HH", quoted[4:8])
    if got_id != ident:
        return None, -1, "", None
    mtu: int | None = None
    if v6 and kind == 2:
        mtu = struct.unpack("!I", icmp[4:8])[0]
    elif not v6 and kind == 3 and code == 4:
        mtu = struct.unpack("!H", icmp[6:8])[0]
    text = f"{names[kind]} (code {code}) from {source}" + (f", mtu {mtu}" if mtu else "")
    return "error", seq, text, mtu


def ping(
    netns: str | None,
    dst: IPAddress | str,
    *,
    count: int = 3,
    payload_size: int = 56,
    interval: float = 0.05,
    reply_timeout: float = 2.0,
    dont_fragment: bool = False,
    until: threading.Event | None = None,
) -> PingResult:
    """ICMP (IPv4) or ICMPv6 echo from ``netns`` to ``dst``; each request waits up to
    ``reply_timeout`` for its reply. ICMP errors about our requests (unreachable,
    fragmentation needed / packet too big, ...) are collected in ``errors``.
    ``dont_fragment`` sets DF (IPv4) or forbids local fragmentation (IPv6).
    ``until``, once set, ends the run early (at most ``count`` requests)."""
    target = _addr(dst)
    v6 = target.version == 6
    ident = secrets.randbelow(0xFFFF) + 1
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    sent = received = 0
    rtts: list[float] = []
    errors: list[str] = []
    mtu: int | None = None
    try:
        sock = socket_in_netns(netns, _family(target), socket.SOCK_RAW, proto)
    except Exception as exc:
        return PingResult(False, 0, 0, errors=(_error_text(exc),))
    with sock:
        if dont_fragment:
            if v6:
                sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_DONTFRAG, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, _IP_MTU_DISCOVER, _IP_PMTUDISC_DO)
        asked = count  # fewer when `until` ends the run early
        for seq in range(1, count + 1):
            if until is not None and until.is_set():
                asked = seq - 1
                break
            if seq > 1:
                time.sleep(interval)
            payload = (_FILLER * (payload_size // len(_FILLER) + 1))[:payload_size]
            message = _echo_request(v6, ident, seq, payload)
            start = time.monotonic()
            try:
                sock.sendto(message, (str(target), 0))
                sent += 1
            except OSError as exc:
                errors.append(f"request {seq}: {_error_text(exc)}")
                continue
            while True:
                left = start + reply_timeout - time.monotonic()
                if left <= 0:
                    errors.append(f"request {seq}: timeout")
                    break
                sock.settimeout(left)
                try:
                    packet, src = sock.recvfrom(65535)
                except TimeoutError:
                    continue
                source = _seen(src[0]).compressed
                kind, got_seq, text, reported = _match_icmp(packet, v6, ident, source, target.compressed)
                if got_seq != seq:
                    continue
                if kind == "reply":
                    received += 1
                    rtts.append(time.monotonic() - start)
                    break
                if kind == "error":
                    errors.append(f"request {seq}: {text}")
                    mtu = reported or mtu
                    break
    return PingResult(received == asked, sent, received, tuple(rtts), tuple(errors), mtu)


@dataclass(frozen=True)
class Hop:
    """One probe of a traceroute: who answered (None: nobody) and how."""

    hop_limit: int
    source: IPAddress | None
    answer: str  # "time exceeded", "reply", another ICMP error's name, or "" (silence)


def _echo_request(v6: bool, ident: int, seq: int, payload: bytes) -> bytes:
    header = struct.pack("!BBHHH", _ICMP6_ECHO_REQUEST if v6 else _ICMP_ECHO_REQUEST, 0, 0, ident, seq)
    if v6:  # the kernel fills in the ICMPv6 checksum, not the ICMP one
        return header + payload
    return header[:2] + struct.pack("!H", _checksum(header + payload)) + header[4:] + payload


def traceroute(
    netns: str | None, dst: IPAddress | str, *, max_hops: int = 8, reply_timeout: float = 2.0
) -> tuple[Hop, ...]:
    """ICMP echo requests with hop limits (TTLs) 1, 2, ... up to ``max_hops``, one at
    a time, until ``dst`` replies: who answered each (like ``traceroute -I``)."""
    target = _addr(dst)
    v6 = target.version == 6
    ident = secrets.randbelow(0xFFFF) + 1
    hops: list[Hop] = []
    with socket_in_netns(netns, _family(target), socket.SOCK_RAW,
                         socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP) as sock:
        for limit in range(1, max_hops + 1):
            if v6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, limit)
            else:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, limit)
            sock.sendto(_echo_request(v6, ident, limit, _FILLER[:32]), (str(target), 0))
            hop = Hop(limit, None, "")
            deadline = time.monotonic() + reply_timeout
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                try:
                    packet, src = sock.recvfrom(65535)
                except TimeoutError:
                    break
                source = _seen(src[0])
                kind, seq, text, _ = _match_icmp(packet, v6, ident, source.compressed, target.compressed)
                if seq != limit or kind is None:
                    continue
                hop = Hop(limit, source, "reply" if kind == "reply" else text.split(" (code")[0])
                break
            hops.append(hop)
            if hop.answer == "reply":
                break
    return tuple(hops)


# --- a long-lived connection -------------------------------------------------------


@dataclass(frozen=True)
class HoldFailure:
    """One failed exchange on a held connection."""

    after: float  # seconds since the connection was established
    seq: int
    error: str


@dataclass(frozen=True)
class HoldReport:
    """What a held connection saw: ``ok`` when it connected and no exchange failed."""

    connected: bool
    exchanges: int
    failures: tuple[HoldFailure, ...]
    seen_source: IPAddress | None
    seen_port: int | None
    duration: float
    max_rtt: float

    @property
    def ok(self) -> bool:
        return self.connected and not self.failures


class HeldConnection:
    """A TCP connection to the echo mode that exchanges a line every ``interval`` seconds.

    ``start()`` connects (a connect failure is reported, not raised); a background
    thread then sends a numbered line and waits up to ``reply_timeout`` for it to
    come back. The first failure is recorded and ends the exchanges (the stream
    can no longer be trusted). ``stop()`` closes the connection and returns the
    report; ``report()`` gives one without stopping.
    """

    def __init__(
        self,
        netns: str | None,
        dst: IPAddress | str,
        port: int = DEFAULT_TCP_PORT,
        *,
        interval: float = 0.1,
        reply_timeout: float = 5.0,
        connect_timeout: float = 5.0,
    ) -> None:
        self.netns = netns
        self.dst = _addr(dst)
        self.port = port
        self.interval = interval
        self.reply_timeout = reply_timeout
        self.connect_timeout = connect_timeout
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._connected = False
        self._exchanges = 0
        self._failures: list[HoldFailure] = []
        self._seen: tuple[str, int] | None = None
        self._started_at = 0.0
        self._ended_at: float | None = None
        self._max_rtt = 0.0
        self._buffer = b""

    def _fail(self, seq: int, error: str) -> None:
        with self._lock:
            self._failures.append(HoldFailure(time.monotonic() - self._started_at, seq, error))

    def start(self) -> HeldConnection:
        """Connect and start exchanging; returns self."""
        self._started_at = time.monotonic()
        try:
            sock = socket_in_netns(self.netns, _family(self.dst), socket.SOCK_STREAM)
            self._sock = sock
            sock.settimeout(self.connect_timeout)
            sock.connect((str(self.dst), self.port))
            sock.sendall(b"ECHO\n")
            banner = self._read_line(sock, self.connect_timeout)
            parts = banner.split()
            if len(parts) != 3 or parts[0] != "ECHO":
                raise ValueError(f"unexpected banner {banner!r}")
            self._seen = (parts[1], int(parts[2]))
        except Exception as exc:
            self._fail(0, f"connect: {_error_text(exc)}")
            self._ended_at = time.monotonic()
            return self
        self._connected = True
        self._started_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"held:{self.dst}", daemon=True)
        self._thread.start()
        return self

    def _read_line(self, sock: socket.socket, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            sock.settimeout(left)
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError("connection closed by the peer")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def _run(self) -> None:
        sock = self._sock
        assert sock is not None
        seq = 0
        while not self._stop.wait(self.interval):
            seq += 1
            message = f"{seq} {secrets.token_hex(4)}"
            start = time.monotonic()
            try:
                sock.settimeout(self.reply_timeout)
                sock.sendall(message.encode() + b"\n")
                answer = self._read_line(sock, self.reply_timeout)
            except Exception as exc:
                self._fail(seq, _error_text(exc))
                break
            if answer != message:
                self._fail(seq, f"echo mismatch: sent {message!r}, got {answer!r}")
                break
            rtt = time.monotonic() - start
            with self._lock:
                self._exchanges += 1
                self._max_rtt = max(self._max_rtt, rtt)
        self._ended_at = time.monotonic()

    def report(self) -> HoldReport:
        """The exchanges and failures so far."""
        with self._lock:
            end = self._ended_at if self._ended_at is not None else time.monotonic()
            return HoldReport(
                connected=self._connected,
                exchanges=self._exchanges,
                failures=tuple(self._failures),
                seen_source=_seen(self._seen[0]) if self._seen else None,
                seen_port=self._seen[1] if self._seen else None,
                duration=end - self._started_at,
                max_rtt=self._max_rtt,
            )

    def stop(self) -> HoldReport:
        """Stop exchanging, close the connection and return the final report."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.reply_timeout + self.interval + 5.0)
        if self._sock is not None:
            self._sock.close()
        return self.report()

    def __enter__(self) -> HeldConnection:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- many connections -----------------------------------------------------------------


@dataclass(frozen=True)
class BurstResult:
    """Outcome of ``connection_burst``: every flow is exactly one of succeeded/failed/not_started."""

    flows: int
    succeeded: int
    failed: int
    not_started: int
    errors: dict[str, int]
    seen_sources: frozenset[IPAddress]
    elapsed: float
    max_concurrent: int

    @property
    def rate(self) -> float:
        """Completed flows per second."""
        return self.succeeded / self.elapsed if self.elapsed > 0 else 0.0


async def _one_flow(dst: IPAddress, port: int, response_bytes: int, hold: float) -> IPAddress | None:
    reader, writer = await asyncio.open_connection(str(dst), port)
    try:
        if hold > 0:
            writer.write(b"ECHO\n")
            await writer.drain()
            banner = (await reader.readline()).decode().split()
            await asyncio.sleep(hold)
            writer.write(b"still-here\n")
            await writer.drain()
            if await reader.readline() != b"still-here\n":
                raise ConnectionError("echo lost after holding")
            return _seen(banner[1]) if len(banner) == 3 else None
        writer.write(f"GET /bytes/{response_bytes} HTTP/1.0\r\n\r\n".encode())
        await writer.drain()
        data = await reader.read()
        head, sep, body = data.partition(b"\r\n\r\n")
        if not sep:
            raise ConnectionError("no answer header")
        status, headers = _parse_head(head)
        if status != 200 or len(body) != response_bytes:
            raise ConnectionError(f"short answer ({len(body)} of {response_bytes} bytes)")
        seen = headers.get("x-client-address")
        return _seen(seen) if seen else None
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


async def _burst(
    dst: IPAddress,
    *,
    port: int,
    flows: int,
    concurrency: int,
    time_limit: float,
    flow_timeout: float,
    response_bytes: int,
    hold: float,
) -> BurstResult:
    loop = asyncio.get_running_loop()
    start = loop.time()
    stop_starting = start + time_limit
    counts = {"ok": 0, "failed": 0, "not_started": 0}
    errors: dict[str, int] = {}
    seen: set[IPAddress] = set()
    active = 0
    peak = 0
    next_flow = 0

    async def worker() -> None:
        nonlocal active, peak, next_flow
        while next_flow < flows:
            if loop.time() >= stop_starting:
                counts["not_started"] += flows - next_flow
                next_flow = flows
                break
            next_flow += 1
            active += 1
            peak = max(peak, active)
            try:
                source = await asyncio.wait_for(_one_flow(dst, port, response_bytes, hold), flow_timeout)
            except Exception as exc:
                counts["failed"] += 1
                key = _error_text(exc)
                errors[key] = errors.get(key, 0) + 1
            else:
                counts["ok"] += 1
                if source is not None:
                    seen.add(source)
            finally:
                active -= 1

    await asyncio.gather(*(worker() for _ in range(min(concurrency, flows))))
    return BurstResult(
        flows=flows,
        succeeded=counts["ok"],
        failed=counts["failed"],
        not_started=counts["not_started"],
        errors=errors,
        seen_sources=frozenset(seen),
        elapsed=loop.time() - start,
        max_concurrent=peak,
    )


def connection_burst(
    netns: str | None,
    dst: IPAddress | str,
    port: int = DEFAULT_TCP_PORT,
    *,
    flows: int = 1000,
    concurrency: int = 100,
    time_limit: float = 30.0,
    flow_timeout: float = 5.0,
    response_bytes: int = 0,
    hold: float = 0.0,
) -> BurstResult:
    """Open ``flows`` TCP connections from ``netns`` to ``dst``, at most ``concurrency`` at once.

    Each flow fetches ``response_bytes`` (or, with ``hold`` > 0, stays open that many
    seconds in echo mode and checks the connection still works). No new flow
    starts after ``time_limit`` seconds; each flow is abandoned after
    ``flow_timeout``, so the whole call ends within about
    ``time_limit + flow_timeout`` seconds.
    """
    target = _addr(dst)
    if flows < 0 or concurrency < 1:
        raise ValueError("flows must be >= 0 and concurrency >= 1")
    raise_nofile_limit(concurrency * 2 + 256)

    def run() -> BurstResult:
        return asyncio.run(
            _burst(
                target,
                port=port,
                flows=flows,
                concurrency=concurrency,
                time_limit=time_limit,
                flow_timeout=flow_timeout,
                response_bytes=response_bytes,
                hold=hold,
            )
        )

    return run_in_netns(netns, run, timeout=time_limit + flow_timeout + hold + 30.0)


# ==================================================================================
# Command line (the server side runs through it)
# ==================================================================================


def main(argv: Sequence[str] | None = None) -> int:
    """``serve`` runs a server in the current namespace (used by ``start_server``)."""
    parser = argparse.ArgumentParser(prog="python -m testbed.traffic")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="TCP and/or UDP echo server on the given addresses")
    serve.add_argument("addresses", nargs="+")
    serve.add_argument("--tcp-port", type=int)
    serve.add_argument("--udp-port", type=int)
    serve.add_argument("--response-bytes", type=int, default=DEFAULT_RESPONSE_BYTES)
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve_command(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
