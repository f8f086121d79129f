"""/metrics, /healthz and /readyz over HTTP, served from a daemon thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from sidecar.settings import ConfigError, parse_host_port

Probe = Callable[[], tuple[bool, str]]


def check_heartbeat(heartbeat: float, limit: float, loop: str, detail: str = "ok"
                    ) -> tuple[bool, str]:
    """A /healthz answer: failing once ``heartbeat`` (a time.monotonic() stamp the loop
    sets on every pass) is more than ``limit`` seconds old."""
    age = time.monotonic() - heartbeat
    if age > limit:
        return False, f"{loop} stalled for {age:.0f}s"
    return True, detail


class HealthServer:
    """Serves Prometheus metrics and the two probes; each probe returns (ok, detail)."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry,
                 healthy: Probe, ready: Probe) -> None:
        probes = {"/healthz": healthy, "/readyz": ready}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                if path == "/metrics":
                    self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif path in probes:
                    ok, detail = probes[path]()
                    self._send(200 if ok else 503, (detail + "\n").encode(), "text/plain")
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        # A short poll interval: stop() waits for the serving loop to notice (process stop).
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.25,),
                                        daemon=True, name="health-server")

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def serve_health(listen: str, registry: CollectorRegistry, healthy: Probe, ready: Probe
                 ) -> HealthServer | None:
    """Start the server on ``listen`` (None if empty). An address that cannot be listened on
    (in use, not local, not resolvable) is a ConfigError naming the setting."""
    if not listen:
        return None
    host, port = parse_host_port("listen", listen)
    try:
        server = HealthServer(host, port, registry, healthy=healthy, ready=ready)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(f"invalid value for listen: cannot listen on {listen!r} "
                          f"({reason})") from None
    return server.start()
