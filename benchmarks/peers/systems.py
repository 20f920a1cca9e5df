"""The systems under comparison, behind one small interface.

Each ``System`` owns a freshly created database (unique name, dropped at the
end) and knows, for its queue:

- how to install its schema there, and how to empty its job tables between
  workloads;
- the command that starts one real worker process with concurrency C, the
  way its documentation starts one, with its fastest documented settings
  (the settings are listed in ``settings`` and land in the JSON);
- a ``Producer``: its documented enqueue API, one job per call and in bulk;
- how to map the four tiers of the overload workload onto its priorities;
- three SQL counts read from its own tables: jobs not yet finished, jobs
  that succeeded, jobs that failed.

Hazards handled here:
- The peers are optional (``pip install -e '.[bench]'``). Their modules are
  imported only inside the methods that need them, so ``python -m
  benchmarks`` works without them; ``require_peers()`` names what is missing.
- "Finished" lags in two peers, because they write outcomes in batches:
  chancy flushes its job updates every second, pgqueuer when its status
  buffer fills or times out. A drain is timed from the handlers' own clocks
  (benchmarks.peers.recorder), never from when the tables say "done", so the
  lag only delays the suite's noticing.
- Worker environments are cleaned of each system's own settings variables
  (``PROCRASTINATE_*``, ``PGQUEUER_*``, ``ANGELA_QUEUE_*``): a variable in the
  caller's shell must not change what is measured.
"""

from __future__ import annotations

import importlib.metadata
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from ..harness import BenchDB, worker_command

TIERS = ("critical", "high", "medium", "low")
NOOP = "peer_noop"
SLEEP = "peer_sleep"
ENV_PREFIXES_DROPPED = ("PROCRASTINATE_", "PGQUEUER_", "PGQ_")

PEER_DISTRIBUTIONS = {"pgqueuer": ("pgqueuer", "asyncpg"), "procrastinate": ("procrastinate",),
                      "chancy": ("chancy",)}


def require_peers(names: Sequence[str]) -> None:
    """Fail with one clear line when a peer's package is not installed."""
    missing = []
    for name in names:
        for dist in PEER_DISTRIBUTIONS.get(name, ()):
            try:
                importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                missing.append(dist)
    if missing:
        raise SystemExit(f"the peer comparison needs {', '.join(missing)}: pip install -e '.[bench]'")


def url_dsn(dsn: str) -> str:
    """The same DSN as a postgresql:// URL: asyncpg (pgqueuer's driver) takes no key=value strings."""
    from urllib.parse import quote, urlencode

    from psycopg.conninfo import conninfo_to_dict
    params = {k: str(v) for k, v in conninfo_to_dict(dsn).items()}
    user = quote(params.pop("user", ""), safe="")
    password = params.pop("password", None)
    host = params.pop("host", "")
    port = params.pop("port", None)
    dbname = quote(params.pop("dbname", ""), safe="")
    auth = f"{user}{':' + quote(password, safe='') if password else ''}@" if user else ""
    netloc = f"{auth}{quote(host, safe='') if '/' in host else host}{':' + port if port else ''}"
    return f"postgresql://{netloc}/{dbname}" + (f"?{urlencode(params)}" if params else "")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


class PeerDB(BenchDB):
    """A uniquely named, empty database for one peer; its schema is the peer's business."""

    def __init__(self, admin_dsn: str, system: str, keep: bool = False):
        super().__init__(admin_dsn, keep=keep)
        self.name = f"aq_peers_{system}_{time.strftime('%Y%m%d_%H%M%S')}_{uuid.uuid4().hex[:6]}"
        self.dsn = make_conninfo(admin_dsn, dbname=self.name)

    def create(self) -> None:
        with psycopg.connect(self.admin_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name)))


@dataclass
class Outcome:
    pending: int
    succeeded: int
    failed: int


class Producer:
    """The system's own enqueue API, in the suite's event loop."""

    async def __aenter__(self) -> "Producer":
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def enqueue(self, kind: str, seq: int, priority: int | None = None) -> None:
        raise NotImplementedError

    async def enqueue_many(self, kind: str, seqs: Sequence[int], priority: int | None = None) -> None:
        """All of ``seqs`` in one call of the system's bulk API."""
        raise NotImplementedError


class System:
    key = ""                 # short name, also the column key
    label = ""               # what the tables print
    distribution = ""        # the package whose version is reported
    # The overload tiers onto the system's priorities.
    priorities: dict[str, int] = {}
    settings: dict[str, Any] = {}
    job_tables: tuple[str, ...] = ()
    # The tables a claim reads, for the overload's stand-in for autovacuum
    # (workloads.Analyzer); schema-qualified where the schema is not public.
    claim_tables: tuple[str, ...] = ()
    PENDING = SUCCEEDED = FAILED = ""

    def __init__(self, admin_dsn: str, keep: bool = False):
        self.db = self.make_db(admin_dsn, keep)

    def make_db(self, admin_dsn: str, keep: bool) -> BenchDB:
        return PeerDB(admin_dsn, self.key, keep=keep)

    @property
    def dsn(self) -> str:
        """The system's database as a URL, the form every driver here accepts."""
        return url_dsn(self.db.dsn)

    def version(self) -> str | None:
        return _version(self.distribution)

    def setup(self) -> None:
        """Create the database and install the system's schema; a failure
        drops the database again, so nothing is left behind."""
        try:
            self.db.create()  # angela-queue's also migrates it
            self.install()
        except BaseException:  # DROP ... IF EXISTS: safe whatever step failed
            self.db.drop()
            raise

    def install(self) -> None:
        raise NotImplementedError

    def teardown(self) -> None:
        self.db.drop()

    def clear(self) -> None:
        """Empty the job tables and leave no dirty pages for the next measurement."""
        self.db.conn.execute(sql.SQL("TRUNCATE {} RESTART IDENTITY CASCADE").format(
            sql.SQL(", ").join(sql.Identifier(t) for t in self.job_tables)))
        self.settle()

    def settle(self) -> None:
        for t in self.job_tables:
            self.db.conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(t)))
        try:
            self.db.conn.execute("CHECKPOINT")
        except psycopg.Error:  # not a superuser: a little noisier
            pass

    def analyze(self, conn: psycopg.Connection) -> None:
        for t in self.claim_tables:
            conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(*t.split("."))))

    def before_workers(self, concurrency: int) -> None:
        """Anything the system keeps in the database about its workers (chancy's queue)."""

    # Extra drain-only worker settings worth showing beside the like-for-like
    # figure, never counted as the best peer: {name: what it changes}.
    drain_variants: dict[str, str] = {}

    def worker_command(self, concurrency: int, variant: str | None = None) -> list[str]:
        raise NotImplementedError

    def producer(self) -> Producer:
        raise NotImplementedError

    def outcome(self) -> Outcome:
        return Outcome(*(int(self.db.scalar(q)) for q in (self.PENDING, self.SUCCEEDED, self.FAILED)))

    def describe(self) -> dict[str, Any]:
        return {"label": self.label, "version": self.version(), "database": self.db.name,
                "priorities": self.priorities, "settings": self.settings, "drain_variants": self.drain_variants}


# --- angela-queue -------------------------------------------------------------

class AngelaQueue(System):
    key = "aq"
    label = "angela-queue"
    distribution = "angela-queue"
    # The SPEC's tiers: critical 9-10, high 7-8, medium 5-6, low 1-4.
    priorities = {"critical": 10, "high": 8, "medium": 6, "low": 3}
    settings = {
        "worker": "python -m angela_queue --log-level WARNING worker --app benchmarks.peers.aq_app "
                  "--concurrency C (defaults otherwise: low-priority batches of 5, 2 s batch wait, and 3 critical "
                  "slots beside the C ordinary ones, which only priority >= 9 takes)",
        "enqueue": "AsyncClient(dsn, pool_size=4).enqueue / .enqueue_many",
    }
    job_tables = ()  # clear() is BenchDB.reset(): the tasks, workers, supervisors and leader rows
    claim_tables = ("angela_queue.tasks",)
    PENDING = "SELECT count(*) FROM angela_queue.tasks WHERE status IN ('scheduled', 'queued', 'running')"
    SUCCEEDED = "SELECT count(*) FROM angela_queue.tasks WHERE status = 'succeeded'"
    FAILED = "SELECT count(*) FROM angela_queue.tasks WHERE status IN ('failed', 'cancelled', 'dropped')"

    def make_db(self, admin_dsn: str, keep: bool) -> BenchDB:
        return BenchDB(admin_dsn, keep=keep)  # created and migrated to head

    def version(self) -> str | None:
        import angela_queue
        return angela_queue.__version__

    def install(self) -> None:
        pass  # BenchDB.create() migrated it

    def clear(self) -> None:
        self.db.reset()

    def settle(self) -> None:
        self.db.settle()

    def worker_command(self, concurrency: int, variant: str | None = None) -> list[str]:
        return worker_command(self.dsn, concurrency, app="benchmarks.peers.aq_app")

    def producer(self) -> Producer:
        return _AqProducer(self.dsn)


class _AqProducer(Producer):
    def __init__(self, dsn: str):
        from angela_queue import AsyncClient
        # Sequential calls use one connection; the overload's open-loop producer up to four.
        self.client = AsyncClient(dsn, pool_size=4)

    async def __aenter__(self) -> Producer:
        await self.client.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()

    async def enqueue(self, kind: str, seq: int, priority: int | None = None) -> None:
        if priority is None:
            await self.client.enqueue(kind, {"seq": seq})
        else:
            await self.client.enqueue(kind, {"seq": seq}, priority=priority)

    async def enqueue_many(self, kind: str, seqs: Sequence[int], priority: int | None = None) -> None:
        extra = {} if priority is None else {"priority": priority}
        await self.client.enqueue_many([{"kind": kind, "payload": {"seq": s}, **extra} for s in seqs])


# --- pgqueuer -----------------------------------------------------------------

class PgQueuer(System):
    key = "pgqueuer"
    label = "pgqueuer"
    distribution = "pgqueuer"
    # Higher runs first (ORDER BY priority DESC); default 0.
    priorities = {"critical": 3, "high": 2, "medium": 1, "low": 0}
    settings = {
        "worker": "python -m benchmarks.peers.pgqueuer_app --max-concurrent-tasks C --batch-size C//2, "
                  "that is await pgqueuer.run(factory, ...), the documented twin of 'pgq run', whose CLI "
                  "fails to start with today's typer. pgqueuer requires max_concurrent_tasks >= 2 x "
                  "batch_size, and without the cap a worker takes every queued job at once. One asyncpg "
                  "connection (AsyncpgDriver), as its performance guide advises.",
        "schema": "Queries.install() then Queries.optimize_autovacuum() ('pgq autovac', the guide's "
                  "checklist); durability 'durable' (the default: logged tables, as every other system "
                  "here; 'balanced'/'volatile' use UNLOGGED tables that a crash empties)",
        "enqueue": "Queries(AsyncpgPoolDriver(pool)).enqueue(entrypoint, payload, priority), lists for bulk "
                   "(an asyncpg pool of 1-4, as the guide advises for producers)",
    }
    job_tables = ("pgqueuer", "pgqueuer_log", "pgqueuer_statistics")
    claim_tables = ("pgqueuer",)
    PENDING = "SELECT count(*) FROM pgqueuer"
    # Finished jobs leave the queue table for the log ('successful', 'exception', ...).
    SUCCEEDED = "SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'"
    FAILED = "SELECT count(*) FROM pgqueuer_log WHERE status IN ('exception', 'failed', 'canceled', 'deleted')"

    def install(self) -> None:
        import asyncio

        async def go() -> None:
            import asyncpg
            from pgqueuer import Queries
            from pgqueuer.db import AsyncpgDriver
            conn = await asyncpg.connect(self.dsn)
            try:
                q = Queries(AsyncpgDriver(conn))
                await q.install()
                await q.optimize_autovacuum()
            finally:
                await conn.close()

        asyncio.run(go())

    drain_variants = {
        "uncapped": "pgqueuer's defaults: batch_size 10 and no max_concurrent_tasks, so one worker starts every "
                    "job it can claim at once (10 per dequeue, dequeuing again at once): its concurrency is not "
                    "10, so this is not like for like and is never the best peer",
    }

    def worker_command(self, concurrency: int, variant: str | None = None) -> list[str]:
        if variant == "uncapped":
            return [sys.executable, "-m", "benchmarks.peers.pgqueuer_app", "--batch-size", "10"]
        batch = max(1, concurrency // 2)
        return [sys.executable, "-m", "benchmarks.peers.pgqueuer_app", "--batch-size", str(batch),
                "--max-concurrent-tasks", str(concurrency)]

    def producer(self) -> Producer:
        return _PgqProducer(self.dsn)


class _PgqProducer(Producer):
    def __init__(self, dsn: str):
        self.dsn = dsn

    async def __aenter__(self) -> Producer:
        import asyncpg
        from pgqueuer import Queries
        from pgqueuer.db import AsyncpgPoolDriver
        # "Use AsyncpgPoolDriver for producers" (pgqueuer's performance guide).
        self.pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=4)
        self.queries = Queries(AsyncpgPoolDriver(self.pool))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.pool.close()

    async def enqueue(self, kind: str, seq: int, priority: int | None = None) -> None:
        await self.queries.enqueue(kind, str(seq).encode(), priority or 0)

    async def enqueue_many(self, kind: str, seqs: Sequence[int], priority: int | None = None) -> None:
        await self.queries.enqueue([kind] * len(seqs), [str(s).encode() for s in seqs],
                                   [priority or 0] * len(seqs))


# --- procrastinate ------------------------------------------------------------

class Procrastinate(System):
    key = "procrastinate"
    label = "procrastinate"
    distribution = "procrastinate"
    # Higher runs first; default 0.
    priorities = {"critical": 3, "high": 2, "medium": 1, "low": 0}
    settings = {
        "worker": "python -m procrastinate --log-level warning --app benchmarks.peers.procrastinate_app.app "
                  "worker --concurrency C (LISTEN/NOTIFY on, the default; finished jobs kept, the default)",
        "schema": "app.schema_manager.apply_schema_async() ('procrastinate schema --apply')",
        "enqueue": "task.configure(priority=P).defer_async(seq=N); .batch_defer_async(*kwargs) for bulk "
                   "(PsycopgConnector, its default pool)",
    }
    job_tables = ("procrastinate_jobs", "procrastinate_events", "procrastinate_workers")
    claim_tables = ("procrastinate_jobs",)
    PENDING = "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"
    SUCCEEDED = "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"
    FAILED = "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('failed', 'cancelled', 'aborted')"

    def install(self) -> None:
        import asyncio

        async def go() -> None:
            from procrastinate import PsycopgConnector

            from . import procrastinate_app
            app = procrastinate_app.app
            with app.replace_connector(PsycopgConnector(conninfo=self.dsn)):
                async with app.open_async():
                    await app.schema_manager.apply_schema_async()

        asyncio.run(go())

    def worker_command(self, concurrency: int, variant: str | None = None) -> list[str]:
        return [sys.executable, "-m", "procrastinate", "--log-level", "warning",
                "--app", "benchmarks.peers.procrastinate_app.app", "worker", "--concurrency", str(concurrency)]

    def producer(self) -> Producer:
        return _ProcrastinateProducer(self.dsn)


class _ProcrastinateProducer(Producer):
    def __init__(self, dsn: str):
        self.dsn = dsn

    async def __aenter__(self) -> Producer:
        from contextlib import AsyncExitStack, ExitStack

        from procrastinate import PsycopgConnector

        from . import procrastinate_app
        self.app = procrastinate_app.app
        self._sync = ExitStack()
        self._sync.enter_context(self.app.replace_connector(PsycopgConnector(conninfo=self.dsn)))
        self._async = AsyncExitStack()
        await self._async.enter_async_context(self.app.open_async())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._async.aclose()
        self._sync.close()

    def _task(self, kind: str, priority: int | None) -> Any:
        task = self.app.tasks[kind]
        return task.configure(priority=priority) if priority is not None else task

    async def enqueue(self, kind: str, seq: int, priority: int | None = None) -> None:
        await self._task(kind, priority).defer_async(seq=seq)

    async def enqueue_many(self, kind: str, seqs: Sequence[int], priority: int | None = None) -> None:
        await self._task(kind, priority).batch_defer_async(*({"seq": s} for s in seqs))


# --- chancy -------------------------------------------------------------------

class Chancy(System):
    key = "chancy"
    label = "chancy"
    distribution = "chancy"
    # Higher runs first (ORDER BY priority DESC); default 0.
    priorities = {"critical": 3, "high": 2, "medium": 1, "low": 0}
    settings = {
        "queue": "Queue('default', concurrency=C, executor=Chancy.Executor.Async, eager_polling=True) "
                 "(polling_interval 5 s, the default: NOTIFY wakes the worker on push)",
        "worker": "python -m benchmarks.peers.chancy_worker: async with Worker(chancy) as w: await "
                  "w.wait_for_shutdown(), what 'chancy worker start' runs; default plugins; log level "
                  "WARNING (chancy logs a line per job at INFO)",
        "enqueue": "chancy.push(job.with_kwargs(seq=N).with_priority(P)); push_many(jobs, batch_size=5000) "
                   "for bulk (one transaction per call)",
    }
    job_tables = ("chancy_jobs",)
    claim_tables = ("chancy_jobs",)
    PENDING = "SELECT count(*) FROM chancy_jobs WHERE state IN ('pending', 'running', 'retrying')"
    SUCCEEDED = "SELECT count(*) FROM chancy_jobs WHERE state = 'succeeded'"
    FAILED = "SELECT count(*) FROM chancy_jobs WHERE state = 'failed'"

    def _app(self) -> Any:
        import logging

        from chancy import Chancy as App
        log = logging.getLogger("chancy")
        log.setLevel(logging.WARNING)
        return App(self.dsn, log=log)

    def install(self) -> None:
        import asyncio

        async def go() -> None:
            async with self._app() as chancy:
                await chancy.migrate()

        asyncio.run(go())
        self.before_workers(10)  # the queue exists before the first push

    def before_workers(self, concurrency: int) -> None:
        import asyncio

        async def go() -> None:
            from chancy import Chancy as App
            from chancy import Queue

            from . import chancy_app
            async with self._app() as chancy:
                await chancy.declare(Queue(name=chancy_app.QUEUE, concurrency=concurrency,
                                           executor=App.Executor.Async, eager_polling=True), upsert=True)

        asyncio.run(go())

    def worker_command(self, concurrency: int, variant: str | None = None) -> list[str]:
        return [sys.executable, "-m", "benchmarks.peers.chancy_worker"]

    def producer(self) -> Producer:
        return _ChancyProducer(self)


class _ChancyProducer(Producer):
    def __init__(self, system: Chancy):
        self.system = system

    async def __aenter__(self) -> Producer:
        from . import chancy_app
        self.jobs = {"peer_noop": chancy_app.peer_noop.job, "peer_sleep": chancy_app.peer_sleep.job}
        self.chancy = self.system._app()
        await self.chancy.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.chancy.__aexit__(*exc)

    def _job(self, kind: str, seq: int, priority: int | None) -> Any:
        job = self.jobs[kind].with_kwargs(seq=seq)
        return job.with_priority(priority) if priority is not None else job

    async def enqueue(self, kind: str, seq: int, priority: int | None = None) -> None:
        await self.chancy.push(self._job(kind, seq, priority))

    async def enqueue_many(self, kind: str, seqs: Sequence[int], priority: int | None = None) -> None:
        jobs = [self._job(kind, s, priority) for s in seqs]
        async for _ in self.chancy.push_many(jobs, batch_size=len(jobs)):
            pass


ALL: dict[str, type[System]] = {cls.key: cls for cls in (AngelaQueue, PgQueuer, Procrastinate, Chancy)}
PEERS = tuple(k for k in ALL if k != "aq")
