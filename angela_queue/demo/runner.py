"""``angela-queue demo``: a supervisor, the dashboard and the workload, in one command.

The demo process is the parent of two real ``angela-queue`` processes:

* ``angela-queue run --app angela_queue.demo.handlers --queue demo``, a small
  pool (1 to 4 workers, a scaling check every 5 s) so the learning bursts
  make it grow and shrink while you watch;
* ``angela-queue dashboard`` on 127.0.0.1, with a fresh action token in
  ``ANGELA_QUEUE_DASHBOARD_TOKEN``;

and runs the workload generator itself (workload.py), enqueueing with a
``Client``. The URL it prints carries the token in its fragment
(``#token=...``), which the browser never sends to a server.

Hazards this module is built around:

* Ctrl-C in a terminal signals the whole foreground process group. The
  children get sessions of their own, so only the demo hears it and each
  child gets exactly one SIGTERM from us: a supervisor that also heard the
  terminal's SIGINT would take ours as its *second* signal and hurry its
  workers. A second Ctrl-C is forwarded on purpose, for the same effect.
* A demo killed with SIGKILL cannot stop its children, so each asks Linux
  for a SIGTERM when its parent dies (PR_SET_PDEATHSIG, set between fork
  and exec). The children are started before the Client opens its pool, so
  no other thread exists while preexec_fn runs (it is not fork-safe with
  threads); PDEATHSIG follows the thread that forked, here the main one.
* The dashboard's stdout is its own business (being rewritten); readiness
  is an HTTP answer on the port we chose. A port given with ``--port`` is
  checked free first, or another program answering there would be taken
  for our dashboard; ``--port 0`` is a free port picked here (the window
  before the dashboard binds it is small, and a lost race is reported as
  the dashboard's exit, not hidden).
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import psutil
import psycopg

from ..errors import AngelaQueueError
from ..stopflag import StopFlag
from ..worker.loop import set_parent_death_signal
from .workload import BURST_EVERY_S, QUEUE, Workload

log = logging.getLogger("angela_queue.demo")

HOST = "127.0.0.1"
APP = "angela_queue.demo.handlers"
TOKEN_ENV = "ANGELA_QUEUE_DASHBOARD_TOKEN"
DSN_ENV = "ANGELA_QUEUE_DSN"
# The supervisor's pool: small, and quick to react, so scaling shows in minutes.
# One task at a time per worker, so a learning burst outgrows one worker.
MIN_WORKERS, BASE_WORKERS, MAX_WORKERS, SCALE_INTERVAL_S = 1, 1, 4, 3
SUPERVISOR_ARGS = ("--queue", QUEUE, "--min-workers", str(MIN_WORKERS), "--base-workers", str(BASE_WORKERS),
                   "--max-workers", str(MAX_WORKERS), "--scale-interval", str(SCALE_INTERVAL_S),
                   "--concurrency", "1", "--batch-wait", "0.5")
DEFAULT_RATE = 4.0
# The dashboard must answer HTTP within this long of its start.
DASHBOARD_START_TIMEOUT_S = 30.0
# How often the main loop looks at the children and the clock.
TICK_S = 0.2
# On stop: the children get this long after their SIGTERM (the supervisor's
# workers finish tasks of at most a second or two), then SIGKILL.
STOP_TIMEOUT_S = 45.0
TOKEN_BYTES = 32


class DemoError(AngelaQueueError):
    """The demo could not start, or one of its processes failed."""


@dataclass
class Child:
    name: str
    proc: subprocess.Popen

    def alive(self) -> bool:
        return self.proc.poll() is None


@dataclass
class Demo:
    """One demo run. Inside ``with demo.signals():``, prepare the database,
    then ``run(dsn, label)``; SIGINT/SIGTERM at any point stop it cleanly."""

    rate: float = DEFAULT_RATE
    duration_s: float | None = None
    port: int = 8080
    seed: int | None = None
    environ: Mapping[str, str] = field(default_factory=dict)
    out: Callable[[str], None] = print
    log_args: tuple[str, ...] = ("--log-level", "WARNING")

    def __post_init__(self) -> None:
        self._stop = StopFlag()  # not a threading.Event: set from a signal handler (stopflag.py)
        self._signals = 0
        self._children: list[Child] = []
        self.enqueued = 0
        self.token = secrets.token_urlsafe(TOKEN_BYTES)
        self.dsn = ""               # set by run(): the database is prepared under signals()
        self.database_label = ""

    # -- the run ---------------------------------------------------------------

    @contextlib.contextmanager
    def signals(self) -> Iterator[None]:
        """SIGINT and SIGTERM only ask the demo to stop, from here on (main thread only)."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self, dsn: str, database_label: str) -> int:
        """Run on ``dsn`` (migrated) until a signal or ``duration_s``; the exit status."""
        self.dsn = dsn
        self.database_label = database_label
        port = self._choose_port()
        started = time.monotonic()
        try:
            supervisor = self._spawn("supervisor", ["run", "--app", APP, *SUPERVISOR_ARGS])
            dashboard = self._spawn("dashboard", ["dashboard", "--host", HOST, "--port", str(port)],
                                    extra_env={TOKEN_ENV: self.token}, quiet_stdout=True)
            if self._wait_for_dashboard(port):
                self._announce(port, supervisor, dashboard)
                self._generate()
        finally:
            self._stop_children()
        self.out(f"angela-queue demo: stopped after {time.monotonic() - started:.0f} s; "
                 f"enqueued {self.enqueued} tasks")
        return 0

    def _on_signal(self, signum: int, frame) -> None:
        # Only flags here: logging or I/O in a signal handler can re-enter a held lock.
        self._signals += 1
        self._stop.set()

    # -- children ----------------------------------------------------------------

    def _spawn(self, name: str, args: list[str], *, extra_env: Mapping[str, str] | None = None,
               quiet_stdout: bool = False) -> Child:
        # The DSN goes in the environment, not argv: the embedded server's
        # carries its password, and argv is world-readable in ps.
        env = {**self.environ, DSN_ENV: self.dsn, **(extra_env or {})}
        if TOKEN_ENV not in (extra_env or {}):
            env.pop(TOKEN_ENV, None)
        cmd = [sys.executable, "-m", "angela_queue", *self.log_args, *args]
        parent = os.getpid()
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL if quiet_stdout else None,
                                start_new_session=True, preexec_fn=lambda: _die_with_parent(parent))
        child = Child(name, proc)
        self._children.append(child)
        return child

    def _check_children(self) -> None:
        for child in self._children:
            code = child.proc.poll()
            if code is not None:
                raise DemoError(f"the {child.name} (pid {child.proc.pid}) exited with status {code} "
                                f"while the demo ran; its messages are above")

    def _stop_children(self) -> None:
        """SIGTERM each child once, wait, and SIGKILL (with its descendants) what outlives STOP_TIMEOUT_S.
        A signal that arrives meanwhile is forwarded to the supervisor: it hurries its workers."""
        for child in self._children:
            if child.alive():
                child.proc.send_signal(signal.SIGTERM)
        forwarded = self._signals
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while any(c.alive() for c in self._children) and time.monotonic() < deadline:
            if self._signals > forwarded:
                forwarded = self._signals
                for child in self._children:
                    if child.name == "supervisor" and child.alive():
                        child.proc.send_signal(signal.SIGTERM)
            time.sleep(0.05)
        for child in self._children:
            if child.alive():
                log.warning("the %s (pid %d) did not stop within %.0f s of SIGTERM; killing it",
                            child.name, child.proc.pid, STOP_TIMEOUT_S)
                _kill_tree(child.proc.pid)
            child.proc.wait()

    # -- the dashboard -------------------------------------------------------------

    def _choose_port(self) -> int:
        if self.port == 0:
            return _free_port()
        if not _port_free(self.port):
            raise DemoError(f"port {self.port} on {HOST} is in use (another dashboard?); pick another with "
                            f"--port, or --port 0 for any free one")
        return self.port

    def _wait_for_dashboard(self, port: int) -> bool:
        """True once the dashboard answers HTTP; False if we were asked to stop first."""
        deadline = time.monotonic() + DASHBOARD_START_TIMEOUT_S
        dashboard = next(c for c in self._children if c.name == "dashboard")
        while not _answers_http(port):
            self._check_children()
            if self._stop.is_set():
                return False
            if time.monotonic() > deadline:
                raise DemoError(f"the dashboard (pid {dashboard.proc.pid}) did not answer on "
                                f"http://{HOST}:{port}/ within {DASHBOARD_START_TIMEOUT_S:.0f} s")
            self._stop.wait(0.1)
        return True

    def _announce(self, port: int, supervisor: Child, dashboard: Child) -> None:
        until = f"for {self.duration_s:g} s" if self.duration_s is not None else "until Ctrl-C"
        burst = Workload(self.rate).burst_size
        self.out(f"angela-queue demo: open http://{HOST}:{port}/#token={self.token}")
        self.out("\n".join((
            f"  database    {self.database_label}",
            f"  supervisor  angela-queue run --app {APP} --queue {QUEUE} (pid {supervisor.proc.pid}): "
            f"{MIN_WORKERS} to {MAX_WORKERS} worker processes, a scaling check every {SCALE_INTERVAL_S} s",
            f"  dashboard   angela-queue dashboard on port {port} (pid {dashboard.proc.pid}); "
            f"the link carries its action token",
            f"  workload    {self.rate:g} tasks/s: conversations of importance 1-10 (mean 8.6; some emotional, "
            f"urgent or questions), a burst of {burst} learning analyses every {BURST_EVERY_S:.0f} s, "
            f"memory updates that sometimes fail, slow reports",
            f"  running {until}; Ctrl-C stops everything",
        )))

    # -- the workload ------------------------------------------------------------

    def _generate(self) -> None:
        from .. import Client
        from . import handlers  # noqa: F401  the kinds' @task defaults apply to our enqueues
        start = time.monotonic()
        end = start + self.duration_s if self.duration_s is not None else None
        with Client(self.dsn) as client:
            for arrival in Workload(self.rate, self.seed).arrivals():
                due = start + arrival.at_s
                while True:
                    self._check_children()
                    now = time.monotonic()
                    if self._stop.is_set() or (end is not None and now >= end):
                        return
                    if now >= due:
                        break
                    limit = min(due, end) if end is not None else due
                    self._stop.wait(min(TICK_S, limit - now))
                try:
                    self.enqueued += len(client.enqueue_many(arrival.tasks))
                except (psycopg.Error, AngelaQueueError) as exc:
                    # The database may restart under a demo, too: skip this
                    # arrival, keep going (the supervisor rides it out as well).
                    log.warning("could not enqueue %d task(s): %s", len(arrival.tasks),
                                str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)


def _die_with_parent(parent: int) -> None:
    """In the child, between fork and exec: SIGTERM when the demo dies (Linux).
    A parent that died before the prctl is seen as a new parent pid."""
    set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != parent:
        os._exit(1)


def _kill_tree(pid: int) -> None:
    try:
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _port_free(port: int) -> bool:
    """Whether the dashboard could bind ``port`` (it sets SO_REUSEADDR, as we do here)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


# No proxy for loopback, whatever http_proxy says.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _answers_http(port: int) -> bool:
    try:
        with _OPENER.open(f"http://{HOST}:{port}/", timeout=2):
            return True
    except urllib.error.HTTPError:
        return True          # any HTTP answer: the server is up
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError):
        return False
