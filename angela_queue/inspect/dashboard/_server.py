"""The HTTP side: a standard-library threading server and its routes.

``/`` is one static page (``static/index.html``, shipped as package data;
no CDN, no build step), ``/api/stats`` the collector's latest snapshot and
``/healthz`` a live round trip to the database. The overview never runs
the dashboard queries itself, so a thousand open tabs cost the database
what one does; the task list, a task page and the history are read on
request, one at a time, on one read-only session (_session), and the
actions (POST, token required: _auth) on a session of their own.

The routes are a table (``default_router``): another one is one line.
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
from urllib.parse import unquote, urlsplit

import psycopg

from ... import db
from ...errors import ConfigError, DatabaseUnavailable
from ...stopflag import StopFlag
from ._actions import Actions, task_id
from ._auth import Token
from ._browse import Browser
from ._collector import APPLICATION_NAME, CONNECT_TIMEOUT_S, STATEMENT_TIMEOUT_MS, Collector, describe_error
from ._history import DEFAULT_RANGE, RANGES, HistoryReader
from ._routes import MAX_BODY_BYTES, ApiError, Request, Response, Router, parse_query
from ._session import Session

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
        db.close_quietly(conn)


class DashboardServer(ThreadingHTTPServer):
    daemon_threads = True          # a slow client never holds up shutdown
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], collector: Collector, health: HealthCheck, page_html: bytes,
                 *, dsn: str | None = None, token: Token | None = None):
        if _is_ipv6(address[0]):
            self.address_family = socket.AF_INET6
        self.collector = collector
        self.health = health
        self.page = page_html
        self.token = token or Token()
        dsn = dsn if dsn is not None else collector.dsn
        self.reads = Session(dsn, application_name=f"{APPLICATION_NAME}-reads", setup="dashboard_session",
                             setup_params={"statement_timeout_ms": STATEMENT_TIMEOUT_MS}, read_only=True)
        self.browser = Browser(self.reads)
        self.history = HistoryReader(self.reads)
        self.actions = Actions(dsn)
        # /metrics: the same collector as `run --metrics-port` (inspect/metrics.py),
        # on a connection of its own; counters start at the first scrape.
        from ..metrics import registry_for
        self.metrics_registry, self.metrics = registry_for(dsn)
        self.router = default_router(self)
        super().__init__(address, DashboardHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        shown = f"[{host}]" if _is_ipv6(host) else host
        return f"http://{shown}:{port}/"

    def close_sessions(self) -> None:
        self.reads.close()
        self.actions.close()
        self.metrics.close()


def _is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False


def default_router(server: DashboardServer) -> Router:
    """Every route of the dashboard. Reads are open; each POST is an action
    and needs the token (checked by the handler before the route runs)."""
    router = Router()

    def index(request: Request) -> Response:
        return Response(200, "text/html; charset=utf-8", server.page)

    def stats(request: Request) -> Response:
        status, body = server.collector.stats()
        return Response(status, "application/json", body)

    def healthz(request: Request) -> Response:
        ok, message = server.health.check()
        return Response.text(message + "\n" if ok else f"unavailable: {message}\n", 200 if ok else 503)

    def metrics(request: Request) -> Response:
        # Prometheus' text format. A database that does not answer is
        # angela_queue_up 0 in a 200, as exporters do, not an error page.
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        return Response(200, CONTENT_TYPE_LATEST, generate_latest(server.metrics_registry))

    def history(request: Request) -> Response:
        name = request.arg("range") or DEFAULT_RANGE
        if name not in RANGES:
            raise ApiError(400, f"range must be one of {', '.join(RANGES)} (got {name!r})")
        return Response.json(_reading(lambda: server.history.read(name)))

    def tasks(request: Request) -> Response:
        return Response.json(_reading(lambda: server.browser.tasks(request)))

    def task(request: Request) -> Response:
        return Response.json(_reading(lambda: server.browser.task(request.params["id"])))

    def acting(action: Callable[[Request], tuple[int, dict]]) -> Callable[[Request], Response]:
        def handler(request: Request) -> Response:
            status, data = action(request)
            return Response.json(data, status)
        return handler

    router.add("GET", r"/|/index\.html", index)
    router.add("GET", r"/api/stats", stats)
    router.add("GET", r"/api/history", history)
    router.add("GET", r"/api/tasks", tasks)
    router.add("GET", r"/api/tasks/(?P<id>[0-9]{1,25})", task)
    router.add("GET", r"/healthz", healthz)
    router.add("GET", r"/metrics", metrics)
    router.add("POST", r"/api/tasks/(?P<id>[0-9]{1,25})/retry",
               acting(lambda r: server.actions.retry(task_id(r.params["id"]))))
    router.add("POST", r"/api/tasks/(?P<id>[0-9]{1,25})/cancel",
               acting(lambda r: server.actions.cancel(task_id(r.params["id"]))))
    router.add("POST", r"/api/queues/(?P<name>[^/]+)/pause",
               acting(lambda r: server.actions.pause(unquote(r.params["name"]))))
    router.add("POST", r"/api/queues/(?P<name>[^/]+)/resume",
               acting(lambda r: server.actions.resume(unquote(r.params["name"]))))
    router.add("POST", r"/api/retry", acting(lambda r: server.actions.retry_many(r.json())))
    return router


def _reading(read: Callable[[], dict]) -> dict:
    """A read on the read-only session: a database that does not answer is a 503."""
    try:
        return read()
    except ApiError:
        raise
    except (DatabaseUnavailable, psycopg.Error) as exc:
        raise ApiError(503, describe_error(exc)) from None


class DashboardHandler(BaseHTTPRequestHandler):
    server: DashboardServer
    server_version = "angela-queue-dashboard"
    protocol_version = "HTTP/1.1"
    timeout = 60  # seconds an idle keep-alive connection keeps its thread

    def do_GET(self) -> None:  # noqa: N802 - the http.server protocol
        self._dispatch("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch("HEAD")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        try:
            body = self._read_body()
            request = Request(method, parts.path, parse_query(parts.query), self.headers, body)
            handler, request.params = self.server.router.resolve(method, parts.path)
            if method == "POST" and not self.server.token.accepts(self.headers.get("Authorization")):
                # Before the action runs: nothing is read or changed without it.
                raise ApiError(401, "this action needs the dashboard's token: Authorization: Bearer <token> "
                                    "(open the URL the dashboard printed, or set ANGELA_QUEUE_DASHBOARD_TOKEN)")
            response = handler(request)
        except ApiError as exc:
            response = exc.response()
            if exc.status == 401:
                response.headers["WWW-Authenticate"] = 'Bearer realm="angela-queue dashboard"'
        except Exception:  # noqa: BLE001 - a bug answers 500 with one line; the traceback goes to the log
            log.exception("dashboard request %s %s failed", method, parts.path)
            response = ApiError(500, "internal error (see the dashboard's log)").response()
        self._send(response, send_body=method != "HEAD")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True   # a chunked body is not read: the stream cannot be reused
            raise ApiError(411, "send the body with a Content-Length")
        length_text = self.headers.get("Content-Length")
        if not length_text:
            return b""
        try:
            length = int(length_text)
        except ValueError:
            self.close_connection = True
            raise ApiError(400, "bad Content-Length") from None
        if length < 0 or length > MAX_BODY_BYTES:
            self.close_connection = True   # the rest of the body is never read
            raise ApiError(413, f"request body too large (at most {MAX_BODY_BYTES} bytes)")
        return self.rfile.read(length)

    def _send(self, response: Response, send_body: bool) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        if response.content_type.startswith("text/html"):
            self.send_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if send_body:
            try:
                self.wfile.write(response.body)
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
                dead_after_s: float = 30.0, token: str | None = None) -> DashboardServer:
    """Bind the listening socket (port 0: any free port); nothing runs until serve().

    ``token``: the actions' bearer token (ANGELA_QUEUE_DASHBOARD_TOKEN);
    None or empty generates one (``server.token``).
    """
    collector = Collector(dsn, dead_after_s=dead_after_s)
    page_html = page()
    try:
        return DashboardServer((host, port), collector, HealthCheck(dsn), page_html, dsn=dsn, token=Token(token))
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


def serve(dsn: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, dead_after_s: float = 30.0,
          announce: Callable[[str], None] | None = None, token: str | None = None) -> int:
    """Run the dashboard until SIGTERM or SIGINT; returns the exit status (0).

    The bound URL is announced (printed on stdout by default) once the
    socket listens, so ``--port 0`` can be discovered by whoever started us;
    a generated token rides in its fragment (``#token=...``), which the page
    reads. Must run on the main thread (it installs the signal handlers).

    A database that answers with a schema of another revision is refused at
    start (SchemaMismatch); one that does not answer yet is served as 503
    until it does.
    """
    check_schema_if_reachable(dsn)
    server = make_server(dsn, host, port, dead_after_s=dead_after_s, token=token)
    stop = StopFlag()  # not a threading.Event: set from a signal handler (stopflag.py)

    def on_signal(signum: int, frame) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              name="dashboard-http", daemon=True)
    try:
        server.collector.start()
        thread.start()
        if not _is_loopback(host):
            log.warning("listening on %s, beyond this machine: anyone who reaches it can read the queue "
                        "(the actions need the token)", host)
        (announce or _print)(f"angela-queue dashboard: {server.url}{server.token.fragment()} "
                             f"(database {server.collector.database})")
        while not stop.wait(0.5):
            pass
        log.info("stopping the dashboard")
    finally:
        if thread.is_alive():  # shutdown() waits for serve_forever, forever if it never started
            server.shutdown()
        server.server_close()
        server.collector.stop()
        server.health.close()
        server.close_sessions()
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
