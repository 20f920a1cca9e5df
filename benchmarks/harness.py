"""Shared machinery: the throwaway database, worker processes, CPU accounting,
statistics and the machine description.

Hazards handled here:
- Timings come from database timestamps (``started_at`` is the claim
  transaction's ``now()``; ``finished_at`` is the worker's wall clock), so the
  suite assumes the workers, the suite and Postgres share one clock: run it
  on the database host.
- The database is created with a unique name and dropped WITH (FORCE) in a
  ``finally``, so an interrupted run leaves nothing behind (``--keep-db``
  keeps it on purpose).
- Worker processes get a cleaned environment: an ``ANGELA_QUEUE_*`` variable
  in the caller's shell (say ``ANGELA_QUEUE_CONCURRENCY``) must not change
  what is measured.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
BENCH_APP = "benchmarks.app"

# Seconds without any task finishing before a drain is declared stuck.
STALL_TIMEOUT_S = 60.0
# How often the suite looks at the table while workers drain it. The figures
# come from row timestamps, so this only bounds how late "done" is noticed;
# each look costs Postgres a little CPU, so not too often.
POLL_EVERY_S = 0.1


# --- the throwaway database ---------------------------------------------------

class BenchDB:
    """A uniquely named database on the admin DSN's server, migrated to head."""

    def __init__(self, admin_dsn: str, keep: bool = False):
        self.admin_dsn = admin_dsn
        self.name = f"aq_bench_{time.strftime('%Y%m%d_%H%M%S')}_{uuid.uuid4().hex[:6]}"
        self.dsn = make_conninfo(admin_dsn, dbname=self.name)
        self.keep = keep
        self._conn: psycopg.Connection | None = None

    def create(self) -> None:
        from angela_queue import migrations
        with psycopg.connect(self.admin_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name)))
        migrations.upgrade(self.dsn)

    def drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self.keep:
            return
        with psycopg.connect(self.admin_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.name)))

    def __enter__(self) -> "BenchDB":
        self.create()
        return self

    def __exit__(self, *exc: object) -> None:
        self.drop()

    @property
    def conn(self) -> psycopg.Connection:
        """The suite's own autocommit connection (inspection, setup)."""
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.dsn, autocommit=True, row_factory=dict_row,
                                         application_name="aq-bench-suite")
        return self._conn

    def reset(self) -> None:
        """An empty queue before each measurement, with no dirty pages pending."""
        c = self.conn
        c.execute("TRUNCATE angela_queue.tasks, angela_queue.workers, angela_queue.supervisors, "
                  "angela_queue.leader RESTART IDENTITY")
        self.settle()

    def settle(self) -> None:
        """Fresh statistics and visibility map, and a checkpoint now rather
        than in the middle of the next measurement."""
        c = self.conn
        c.execute("VACUUM (ANALYZE) angela_queue.tasks")
        try:
            c.execute("CHECKPOINT")
        except psycopg.Error:  # not a superuser: the run is a little noisier
            pass

    def insert_noops(self, n: int, kind: str, priority: int = 5) -> None:
        """N queued tasks in one statement (the insert trigger runs per row)."""
        self.conn.execute(
            "INSERT INTO angela_queue.tasks (kind, priority) SELECT %s, %s FROM generate_series(1, %s)",
            (kind, priority, n))

    def scalar(self, query: str, params: Sequence[Any] | None = None) -> Any:
        row = self.conn.execute(query, params).fetchone()
        return next(iter(row.values())) if row else None


# --- processes ----------------------------------------------------------------

def child_env(extra: dict[str, str] | None = None, drop_prefixes: Sequence[str] = ()) -> dict[str, str]:
    """The caller's environment without the settings variables of the systems
    under test (``ANGELA_QUEUE_*``, ``DATABASE_URL``, and ``drop_prefixes``)."""
    dropped = ("ANGELA_QUEUE_", *drop_prefixes)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(dropped) and k != "DATABASE_URL"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env.update(extra or {})
    return env


@dataclass
class Procs:
    """Child processes started together, with their output in files."""

    popens: list[subprocess.Popen]
    log_dir: Path
    spawned_at: float                       # time.time() just before the first spawn
    pyspy: list[subprocess.Popen] = field(default_factory=list)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.popens]

    def dead(self) -> list[subprocess.Popen]:
        return [p for p in self.popens if p.poll() is not None]

    def stop(self, timeout_s: float = 20.0) -> list[int | None]:
        """SIGTERM (a graceful stop), then SIGKILL whoever is still there."""
        for p in self.popens:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for p in self.popens:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for s in self.pyspy:
            try:
                s.wait(30)
            except subprocess.TimeoutExpired:
                s.kill()
        return [p.returncode for p in self.popens]

    def output_tail(self, lines: int = 15) -> str:
        parts = []
        for i, _ in enumerate(self.popens):
            path = self.log_dir / f"proc{i}.log"
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(parts)

    def stdout_json(self) -> list[Any]:
        """The last line of each process's output, parsed as JSON (reference loops)."""
        found = []
        for i, _ in enumerate(self.popens):
            lines = (self.log_dir / f"proc{i}.log").read_text(errors="replace").splitlines()
            for line in reversed(lines):
                if line.startswith("{"):
                    found.append(json.loads(line))
                    break
        return found

    def handler_counts(self) -> dict[str, int]:
        """Sum of the per-process call counts written by benchmarks.app at exit."""
        total: dict[str, int] = {}
        for path in self.log_dir.glob("counts/*.json"):
            for kind, n in json.loads(path.read_text()).items():
                total[kind] = total.get(kind, 0) + n
        return total


def spawn(commands: list[list[str]], env_extra: dict[str, str] | None = None,
          pyspy_out: Path | None = None, drop_env_prefixes: Sequence[str] = ()) -> Procs:
    log_dir = Path(tempfile.mkdtemp(prefix="aq-bench-"))
    (log_dir / "counts").mkdir()
    env = child_env({"AQ_BENCH_COUNT_DIR": str(log_dir / "counts"), **(env_extra or {})}, drop_env_prefixes)
    popens = []
    spawned_at = time.time()
    for i, cmd in enumerate(commands):
        out = open(log_dir / f"proc{i}.log", "wb")
        popens.append(subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL))
        out.close()
    procs = Procs(popens, log_dir, spawned_at)
    if pyspy_out is not None:
        for i, p in enumerate(popens):
            target = pyspy_out.with_name(f"{pyspy_out.name}-proc{i}.txt")
            procs.pyspy.append(subprocess.Popen(
                ["py-spy", "record", "--pid", str(p.pid), "--rate", "250", "--gil", "--nonblocking",
                 "--format", "raw", "-o", str(target)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return procs


def worker_command(dsn: str, concurrency: int, extra: Iterable[str] = (), log_level: str = "WARNING",
                   app: str = BENCH_APP) -> list[str]:
    """A real worker process, started the way users start one. WARNING by
    default: at INFO each task writes a line, which is part of what a drain
    would then measure."""
    return [sys.executable, "-m", "angela_queue", "--dsn", dsn, "--log-level", log_level, "worker",
            "--app", app, "--concurrency", str(concurrency), *extra]


def wait_for_workers(db: BenchDB, procs: Procs, n: int, timeout_s: float = 30.0) -> float:
    """Until n worker rows are registered and their LISTEN connections are up;
    returns the seconds it took from spawn."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if procs.dead():
            raise RuntimeError("a worker exited during startup:\n" + procs.output_tail())
        registered = db.scalar("SELECT count(*) FROM angela_queue.workers WHERE status IN ('idle', 'active')")
        listening = db.scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                              "AND application_name = 'angela-queue-listen'")
        if registered >= n and listening >= n:
            return time.time() - procs.spawned_at
        time.sleep(0.02)
    raise RuntimeError(f"workers did not register within {timeout_s}s:\n" + procs.output_tail())


# --- CPU accounting -----------------------------------------------------------

@dataclass
class CpuSample:
    at: float                       # time.time()
    cpu: dict[int, float]           # pid -> user+system seconds, cumulative, every process
    system_busy: float              # whole machine, all cores, seconds


# Where a process's CPU is counted.
OURS_PY = "ours_py"            # the processes under test
OURS_PG = "ours_pg"            # their Postgres backends
PG_AUX = "pg_aux"              # postmaster, WAL writer, checkpointer, autovacuum, ...
KERNEL = "kernel"              # kernel threads (partly ours: WAL fsyncs, journal)
SUITE = "suite"                # this suite, its py-spy, its own backends
OTHERS = "others"              # everything else: other people's work on the machine


class CpuSampler:
    """Samples the CPU time of every process on the machine and files each
    under a category, so a run can say where the cycles went and how much of
    the machine something else (other people's tests) was using meanwhile.

    Postgres backends are told apart by their process title
    ("postgres: ...: user db host(port) state"); ours are found by
    application_name. Only meaningful when Postgres runs on this host."""

    def __init__(self, db: BenchDB, pids: list[int], app_names: Sequence[str]):
        self.db = db
        self.pids = set(pids)
        self.app_names = list(app_names)
        self.samples: list[CpuSample] = []
        self.category: dict[int, str] = {}
        self._handles: dict[int, psutil.Process] = {}
        self._me = os.getpid()

    def _classify(self, proc: psutil.Process) -> str:
        pid = proc.pid
        if pid in self.pids:
            return OURS_PY
        try:
            if proc.ppid() in self.pids:       # a supervisor's worker processes
                return OURS_PY
            if pid == self._me or proc.ppid() == self._me:
                return SUITE
            if pid == 2 or proc.ppid() == 2:
                return KERNEL
            if proc.username() == "postgres" or proc.name().startswith("postgres"):
                title = " ".join(proc.cmdline())
                words = title.rsplit(": ", 1)[-1].split()
                is_backend = len(words) >= 3 and (words[2].startswith("[local]") or "(" in words[2])
                if is_backend:
                    return SUITE if words[1] == self.db.name else OTHERS
                return PG_AUX
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
        return OTHERS

    def sample(self) -> CpuSample:
        for row in self.db.conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name LIKE ANY(%s)", (self.app_names,)):
            self.category[row["pid"]] = OURS_PG
        cpu: dict[int, float] = {}
        for pid in psutil.pids():
            try:
                handle = self._handles.get(pid)
                if handle is None:
                    handle = self._handles[pid] = psutil.Process(pid)
                if pid not in self.category:
                    self.category[pid] = self._classify(handle)
                t = handle.cpu_times()
                cpu[pid] = t.user + t.system
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        if self.samples:
            # A process that exited (a reference loop, its backend) keeps its
            # last reading, so its work still counts in later windows.
            for pid, v in self.samples[-1].cpu.items():
                cpu.setdefault(pid, v)
        t = psutil.cpu_times()
        busy = sum(t) - t.idle - getattr(t, "iowait", 0.0)
        s = CpuSample(time.time(), cpu, busy)
        self.samples.append(s)
        return s

    def window(self, start: float, end: float) -> dict[str, float] | None:
        """CPU seconds per category between the last sample at or before
        ``start`` and the first at or after ``end`` (so it over-counts by at
        most one poll interval at each edge)."""
        if len(self.samples) < 2:
            return None
        times = [s.at for s in self.samples]
        a = self.samples[max(0, bisect_right(times, start) - 1)]
        b = self.samples[min(len(self.samples) - 1, bisect_left(times, end))]
        elapsed = b.at - a.at
        if elapsed <= 0:
            return None
        by: dict[str, float] = {c: 0.0 for c in (OURS_PY, OURS_PG, PG_AUX, KERNEL, SUITE, OTHERS)}
        for pid, v in b.cpu.items():
            # A process born inside the window counts from zero.
            by[self.category.get(pid, OTHERS)] += max(0.0, v - a.cpu.get(pid, 0.0))
        out = {"elapsed_s": elapsed, "system_s": b.system_busy - a.system_busy}
        out.update({f"{c}_s": v for c, v in by.items()})
        # Processes that ran and exited between the two samples show only in the total.
        out["unaccounted_s"] = max(0.0, out["system_s"] - sum(by.values()))
        return out


def machine_busy_pct(seconds: float = 1.0) -> float:
    """How busy the whole machine is right now, in percent of all cores."""
    return psutil.cpu_percent(interval=seconds)


def wait_for_quiet(max_wait_s: float, threshold_pct: float) -> tuple[float, float]:
    """On a shared machine: wait (up to max_wait_s) until it is less than
    threshold_pct busy. Returns (busy % just before going on, seconds waited)."""
    began = time.monotonic()
    busy = machine_busy_pct()
    while busy >= threshold_pct and time.monotonic() - began < max_wait_s:
        busy = machine_busy_pct()
    return busy, time.monotonic() - began


# --- statistics ---------------------------------------------------------------

def percentile(values: Sequence[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return float("nan")
    xs = sorted(values)
    k = (len(xs) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def spread_pct(values: Sequence[float]) -> float:
    """(max - min) / median, in percent: how noisy repeated runs were."""
    if len(values) < 2:
        return 0.0
    m = median(values)
    return 100.0 * (max(values) - min(values)) / m if m else float("nan")


# --- the machine --------------------------------------------------------------

def machine_info(db: BenchDB) -> dict[str, Any]:
    c = db.conn
    settings = {r["name"]: r["setting"] + (r["unit"] or "") for r in c.execute(
        "SELECT name, setting, unit FROM pg_settings WHERE name IN ('shared_buffers', 'synchronous_commit', "
        "'fsync', 'wal_level', 'max_connections', 'work_mem', 'checkpoint_timeout', 'max_wal_size', "
        "'commit_delay', 'jit', 'autovacuum')")}
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import angela_queue
    host = conninfo_to_dict(db.admin_dsn).get("host", "local socket")
    return {
        "cpu_logical": psutil.cpu_count(logical=True),
        "cpu_physical": psutil.cpu_count(logical=False),
        "cpu_model": cpu_model,
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "psycopg": psycopg.__version__,
        "libpq": psycopg.pq.version(),
        "angela_queue": angela_queue.__version__,
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--", "angela_queue", "sql", "alembic")),
        # Uncommitted changes to the code under test, fingerprinted (the tree is shared).
        "git_diff_sha1": _diff_fingerprint(),
        "postgres": c.execute("SHOW server_version").fetchone()["server_version"],
        "postgres_host": host,
        "postgres_settings": settings,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _diff_fingerprint() -> str:
    import hashlib
    diff = _git("diff", "HEAD", "--", "angela_queue", "sql", "alembic")
    untracked = _git("ls-files", "--others", "--exclude-standard", "--", "angela_queue", "sql", "alembic")
    if not diff and not untracked:
        return ""
    h = hashlib.sha1(diff.encode())
    for name in untracked.splitlines():
        try:
            h.update(name.encode() + (REPO_ROOT / name).read_bytes())
        except OSError:
            pass
    return h.hexdigest()[:12]


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def write_results(result: dict[str, Any], out: str | None, name: str) -> Path:
    """Write a run's JSON to ``out``, or to results/<time>-<name>.json; say where."""
    path = Path(out) if out else RESULTS_DIR / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str))
    print(f"results: {path}")
    return path

