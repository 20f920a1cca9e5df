"""The HTTP side: a standard-library threading server with three routes.

``/`` is one static page (``static/index.html``, shipped as package data;
no CDN, no build step), ``/api/stats`` the collector's latest snapshot and
``/healthz`` a live round trip to the database. Requests never run the
dashboard queries themselves, so a thousand open tabs cost the database
what one does.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import socket
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import urlsplit

import psycopg

from ... import db
from ...errors import ConfigError, DatabaseUnavailable
from ._collector import APPLICATION_NAME, CONNECT_TIMEOUT_S, Collector, describe_error

log = logging.getLogger("angela_queue.dashboard")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080

# The page talks to this server only: inline script and style, nothing fetched elsewhere.
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                           "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
                           "frame-ancestors 'none'")


def page() -> bytes:
    return resources.files("angela_queue.inspect.dashboard").joinpath("static/index.html").read_bytes()


class HealthCheck:
    """``/healthz``: one short query on a connection of its own, kept between checks.

    A kept connection may have died since the last check (a database
    restart): the check then retries once on a fresh one, so a restart that
    is over does not read as an outage.
    """

    def __init__(self, dsn: str):
        self.dsn = dsn
        self._lock = threading.Lock()
        self._conn: psycopg.Connection | None = None

    def check(self) -> tuple[bool, str]:
        with self._lock:
            for attempt in (1, 2):
                reused = self._conn is not None
                try:
                    if self._conn is None:
                        self._conn = db.connect(self.dsn, application_name=f"{APPLICATION_NAME}-health",
                                                connect_timeout=CONNECT_TIMEOUT_S)
                    db.fetch_all(self._conn, "dashboard_ping")
                    return True, "ok"
                except (DatabaseUnavailable, psycopg.Error) as exc:
                    self.close()
                    if attempt == 1 and reused and isinstance(exc, psycopg.OperationalError):
                        continue
                    return False, describe_error(exc)
            return False, "unreachable"  # pragma: no cover - the loop always returns

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - a broken connection is gone either way
                pass


class DashboardServer(ThreadingHTTPServer):
    daemon_threads = True          # a slow client never holds up shutdown
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], collector: Collector, health: HealthCheck, page_html: bytes):
        if _is_ipv6(address[0]):
            self.address_family = socket.AF_INET6
        self.collector = collector
        self.health = health
        self.page = page_html
        super().__init__(address, DashboardHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        shown = f"[{host}]" if _is_ipv6(host) else host
        return f"http://{shown}:{port}/"


def _is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False


class DashboardHandler(BaseHTTPRequestHandler):
    server: DashboardServer
    server_version = "angela-queue-dashboard"
    protocol_version = "HTTP/1.1"
    timeout = 60  # seconds an idle keep-alive connection keeps its thread

    def do_GET(self) -> None:  # noqa: N802 - the http.server protocol
        self._route(send_body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._route(send_body=False)

    def _route(self, send_body: bool) -> None:
        path = urlsplit(self.path).path
        if path in ("/", "/index.html"):
            self._send(200, "text/html; charset=utf-8", self.server.page, send_body)
        elif path == "/api/stats":
            status, body = self.server.collector.stats()
            self._send(status, "application/json", body, send_body)
        elif path == "/healthz":
            ok, message = self.server.health.check()
            self._send(200 if ok else 503, "text/plain; charset=utf-8",
                       (message if ok else f"unavailable: {message}").encode() + b"\n", send_body)
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found\n", send_body)

    def _send(self, status: int, content_type: str, body: bytes, send_body: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        if content_type.startswith("text/html"):
            self.send_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        self.end_headers()
        if send_body:
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the browser went away mid-response

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the http.server signature
        log.debug("%s %s", self.address_string(), format % args)


def check_schema_if_reachable(dsn: str) -> None:
    from ... import schema
    try:
        conn = db.connect(dsn, application_name=APPLICATION_NAME, connect_timeout=CONNECT_TIMEOUT_S)
    except DatabaseUnavailable:
        return
    with conn:
        schema.check(conn)


def make_server(dsn: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *,
                dead_after_s: float = 30.0) -> DashboardServer:
    """Bind the listening socket (port 0: any free port); nothing runs until serve()."""
    collector = Collector(dsn, dead_after_s=dead_after_s)
    page_html = page()
    try:
        return DashboardServer((host, port), collector, HealthCheck(dsn), page_html)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


def serve(dsn: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, dead_after_s: float = 30.0,
          announce: Callable[[str], None] | None = None) -> int:
    """Run the dashboard until SIGTERM or SIGINT; returns the exit status (0).

    The bound URL is announced (printed on stdout by default) once the
    socket listens, so ``--port 0`` can be discovered by whoever started us.
    Must run on the main thread (it installs the signal handlers).

    A database that answers with a schema of another revision is refused at
    start (SchemaMismatch); one that does not answer yet is served as 503
    until it does.
    """
    check_schema_if_reachable(dsn)
    server = make_server(dsn, host, port, dead_after_s=dead_after_s)
    stop = threading.Event()

    def on_signal(signum: int, frame) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              name="dashboard-http", daemon=True)
    try:
        server.collector.start()
        thread.start()
        if not _is_loopback(host):
            log.warning("listening on %s, beyond this machine: the dashboard has no authentication", host)
        (announce or _print)(f"angela-queue dashboard: {server.url} (database {server.collector.database})")
        while not stop.wait(0.5):
            pass
        log.info("stopping the dashboard")
    finally:
        if thread.is_alive():  # shutdown() waits for serve_forever, forever if it never started
            server.shutdown()
        server.server_close()
        server.collector.stop()
        server.health.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _print(line: str) -> None:
    print(line, file=sys.stdout, flush=True)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
