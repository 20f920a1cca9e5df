"""Process fixtures: real worker processes, and waiting on conditions.

Tests never sleep to synchronise: they wait until a condition holds, with a
deadline that only matters when something is broken.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
from psycopg.rows import dict_row

DEFAULT_WAIT_S = 30.0


def wait_until(predicate: Callable[[], Any], timeout: float = DEFAULT_WAIT_S, interval: float = 0.02,
               message: str = "condition", details: Callable[[], str] | None = None) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``.

    ``details`` adds context to the failure (e.g. the processes' logs).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"\n{details()}" if details else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {message}{extra}")
        time.sleep(interval)


def query(dsn: str, sql: str, params: Any = None) -> list[dict[str, Any]]:
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def scalar(dsn: str, sql: str, params: Any = None) -> Any:
    rows = query(dsn, sql, params)
    return next(iter(rows[0].values())) if rows else None


class WorkerProcess:
    """`python -m angela_queue worker` as a real child process."""

    def __init__(self, dsn: str, app_dir: Path, app: str, args: list[str], env: dict[str, str] | None = None,
                 log_name: str = "worker"):
        self.log_path = app_dir / f"{log_name}-{time.monotonic_ns()}.log"
        full_env = {**os.environ, "PYTHONPATH": str(app_dir), "AQ_TEST_DSN": dsn, **(env or {})}
        full_env.pop("ANGELA_QUEUE_DSN", None)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "angela_queue", "--dsn", dsn, "worker", "--app", app, *args],
            cwd=app_dir, env=full_env, stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = DEFAULT_WAIT_S) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker {self.pid} did not exit within {timeout}s\n{self.log()}") from None

    def stop(self, timeout: float = DEFAULT_WAIT_S) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        self.kill()
        self._log.close()


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class SupervisorProcess:
    """One `angela-queue run` process under test."""

    def __init__(self, dsn: str, cwd: Path, app: str, args: list[str], env: dict[str, str] | None = None,
                 name: str = "supervisor"):
        self.log_path = cwd / f"{name}-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")
        full_env = {**os.environ, "PYTHONPATH": str(cwd), "AQ_TEST_DSN": dsn, **(env or {})}
        full_env.pop("ANGELA_QUEUE_DSN", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "angela_queue", "--dsn", dsn, "run", "--app", app, *args],
            cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT, env=full_env)
        self.seen_workers: set[int] = set()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def workers(self) -> list[int]:
        """Pids of its live worker processes (and remember them for clean-up)."""
        try:
            pids = [p.pid for p in psutil.Process(self.pid).children() if alive(p.pid)]
        except psutil.NoSuchProcess:
            pids = []
        self.seen_workers.update(pids)
        return pids

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 20) -> int:
        self.workers()
        self.signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def cleanup(self) -> None:
        self.workers()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        deadline = time.monotonic() + 10
        for pid in self.seen_workers:
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        self._log.close()



@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def write_app(app_dir: Path) -> Callable[[str, str], str]:
    """Write a handler module into the test's directory; returns its module name."""
    def write(source: str, name: str = "test_app") -> str:
        (app_dir / f"{name}.py").write_text(textwrap.dedent(source))
        return name
    return write


@pytest.fixture
def start_worker(dsn: str, app_dir: Path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(app: str, *args: str, env: dict[str, str] | None = None) -> WorkerProcess:
        worker = WorkerProcess(dsn, app_dir, app, list(args), env=env)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.close()


@pytest.fixture
def start_supervisor(dsn: str, app_dir: Path) -> Iterator[Callable[..., SupervisorProcess]]:
    """Start `angela-queue run --app APP ARGS...` on this test's database; all are killed afterwards."""
    started: list[SupervisorProcess] = []

    def start(app: str, *args: str, env: dict[str, str] | None = None) -> SupervisorProcess:
        sup = SupervisorProcess(dsn, app_dir, app, list(args), env, name=f"supervisor-{len(started)}")
        started.append(sup)
        return sup

    yield start
    for sup in started:
        sup.cleanup()


# A side table the test handlers write to, to count real executions.
RUNS_TABLE_SQL = """
CREATE TABLE IF NOT EXISTS public.runs (
    n integer NOT NULL,
    pid integer NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""

# Handler-side helper, pasted into test app modules.
APP_PRELUDE = """
import os, psycopg
DSN = os.environ["AQ_TEST_DSN"]
_conn = None
def record(n):
    global _conn
    if _conn is None or _conn.closed:
        _conn = psycopg.connect(DSN, autocommit=True)
    _conn.execute("INSERT INTO public.runs (n, pid) VALUES (%s, %s)", (n, os.getpid()))
"""


__all__ = ["wait_until", "query", "scalar", "WorkerProcess", "SupervisorProcess", "alive", "app_dir", "write_app",
           "start_worker", "start_supervisor",
           "RUNS_TABLE_SQL", "APP_PRELUDE"]
