"""The HTTP endpoints: /liveness, /readiness and /metrics.

Status codes follow Felix's conventions: 200 when good, 503 when not, with a
JSON body that says why.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from felix_nat64.logs import EventLogger
from felix_nat64.observe.status import StatusBoard


class HealthServer:
    """Serves health and metrics on its own threads."""

    def __init__(self, host: str, port: int, status: StatusBoard, registry: CollectorRegistry,
                 alive: Callable[[], tuple[bool, str]]) -> None:
        self._status = status
        self._registry = registry
        self._alive = alive
        handler = self._handler_class()
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="health-http", daemon=True)
        self.address = self._server.server_address

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "felix-nat64"

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/liveness":
                    ok, reason = outer._alive()
                    self._json(200 if ok else 503, {"live": ok, "reason": reason})
                elif path == "/readiness":
                    ready, reasons = outer._status.readiness()
                    self._json(200 if ready else 503, {"ready": ready, "reasons": reasons})
                elif path == "/metrics":
                    body = generate_latest(outer._registry)
                    self._send(200, CONTENT_TYPE_LATEST, body)
                else:
                    self._json(404, {"error": "not found", "paths": ["/liveness", "/readiness", "/metrics"]})

            def _json(self, code: int, payload: dict[str, Any]) -> None:
                self._send(code, "application/json", json.dumps(payload).encode() + b"\n")

            def _send(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return  # one line per scrape would drown Felix's log

        return Handler


class Heartbeat:
    """Liveness: the driver loop has been through an iteration recently."""

    def __init__(self, max_age: float = 90.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._max_age = max_age
        self._last = clock()
        self._log = EventLogger("health")

    def beat(self) -> None:
        self._last = self._clock()

    def check(self) -> tuple[bool, str]:
        age = self._clock() - self._last
        if age > self._max_age:
            return False, f"driver loop stuck for {age:.0f}s"
        return True, "ok"
