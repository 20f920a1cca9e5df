"""The embedded Postgres used when no DSN is given: real servers in temporary
data dirs, real processes, and the real CLI. Every server a test starts is
stopped and its files removed, pass or fail."""

from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import psycopg
import pytest

from angela_queue import embedded
from angela_queue.db import describe_dsn
from angela_queue.embedded import EmbeddedError, EmbeddedServer

# Variables that would make the CLI skip the embedded server, or point it elsewhere.
DSN_VARIABLES = ("ANGELA_QUEUE_DSN", "DATABASE_URL", "ANGELA_QUEUE_EMBEDDED_DIR")


def wait_until(predicate: Callable[[], object], message: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(0.01)


def new_data_dir() -> Path:
    # Under /tmp, which the service user can reach when the tests run as root
    # (pytest's tmp_path may sit under a directory only root may enter).
    return Path(tempfile.mkdtemp(prefix="aq-test-embedded-"))


@pytest.fixture
def data_dir() -> Iterator[Path]:
    path = new_data_dir()
    try:
        yield path
    finally:
        EmbeddedServer(path).delete()


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedServer]:
    """One throwaway server shared by the tests that only start, stop and attach."""
    srv = EmbeddedServer(new_data_dir())
    try:
        yield srv
    finally:
        srv.delete()


def select_one(dsn: str) -> int:
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        return conn.execute("SELECT 1").fetchone()[0]


@pytest.fixture(autouse=True)
def no_ambient_password(monkeypatch):
    """libpq would take a password from PGPASSWORD when a DSN has none."""
    monkeypatch.delenv("PGPASSWORD", raising=False)


def without_password(port: int, password: str | None = None) -> str:
    """A DSN for the superuser with no password (or a wrong one), and none to
    be found in a ~/.pgpass or PGPASSFILE either."""
    secret = f":{password}" if password is not None else ""
    return f"postgresql://postgres{secret}@127.0.0.1:{port}/postgres?passfile=/nonexistent/pgpass"


def assert_refused_without_the_password(port: int) -> None:
    with pytest.raises(psycopg.OperationalError, match="no password supplied"):
        select_one(without_password(port))
    with pytest.raises(psycopg.OperationalError, match='password authentication failed for user "postgres"'):
        select_one(without_password(port, "guessed"))


def hba_lines(srv: EmbeddedServer) -> list[list[str]]:
    """pg_hba.conf's rules, each split into its fields."""
    text = (srv.pgdata / "pg_hba.conf").read_text()
    return [line.split() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def assert_private(srv: EmbeddedServer) -> None:
    """Only the server's user (and root) can reach the password or the cluster."""
    owner = pwd.getpwnam(embedded.SERVICE_USER).pw_uid if os.geteuid() == 0 else os.geteuid()
    for path, mode in ((srv.data_dir, 0o700), (srv.pgdata, 0o700), (srv.password_file, 0o600)):
        st = path.stat()
        assert (oct(st.st_mode & 0o777), st.st_uid) == (oct(mode), owner), path
    rules = hba_lines(srv)
    assert rules and all(rule[-1] == "scram-sha-256" for rule in rules), rules


def run_as_nobody(*args: str) -> subprocess.CompletedProcess:
    nobody = pwd.getpwnam("nobody")
    return subprocess.run(list(args), user=nobody.pw_uid, group=nobody.pw_gid, extra_groups=[], cwd="/",
                          capture_output=True, text=True, timeout=30)


def postmasters(pgdata: Path) -> list[psutil.Process]:
    """Server processes started on ``pgdata``; backends rename themselves and drop the path."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        if proc.info["name"] == "postgres" and str(pgdata) in (proc.info["cmdline"] or []):
            found.append(proc)
    return found


def cli_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DSN_VARIABLES}
    env["ANGELA_QUEUE_EMBEDDED_DIR"] = str(data_dir)
    return env


@pytest.fixture
def cli(data_dir: Path) -> Callable[..., subprocess.CompletedProcess]:
    """Run ``angela-queue ARGS`` with no DSN anywhere, on this test's data dir."""
    def run(*args: str) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, "-m", "angela_queue", *args], env=cli_env(data_dir),
                                cwd=tempfile.gettempdir(), capture_output=True, text=True, timeout=90)
        assert result.returncode == 0, f"angela-queue {' '.join(args)} failed:\n{result.stderr}"
        return result
    return run


# --- one server: start, connect, stop, restart, attach ----------------------

def test_start_returns_a_dsn_that_connects_over_tcp(server):
    dsn = server.start()
    password = server.password_file.read_text().strip()
    assert dsn.startswith(f"postgresql://postgres:{password}@127.0.0.1:")
    assert select_one(dsn) == 1
    status = server.status()
    assert status["running"] is True
    assert status["dsn"] == dsn
    assert psutil.Process(status["pid"]).name() == "postgres"
    assert status["data_dir"] == str(server.data_dir)


def test_dsn_names_the_database(server):
    server.start()
    assert server.dsn("other").endswith("/other")
    assert server.dsn().endswith("/postgres")


# --- private: a password nobody else can read --------------------------------

def test_a_connection_without_the_password_is_refused(server):
    server.start()
    assert_refused_without_the_password(server.status()["port"])
    assert select_one(server.dsn()) == 1


def test_the_password_file_and_the_data_dir_are_private(server):
    server.start()
    assert_private(server)
    assert len(server.password_file.read_text().strip()) >= 40  # token_urlsafe(32)
    # No Unix socket anywhere, and TCP on loopback only.
    conf = (server.pgdata / embedded.CONF_FILE).read_text()
    assert "unix_socket_directories = ''" in conf and "listen_addresses = '127.0.0.1'" in conf
    # Nothing of the setup is left behind: initdb's password file became the password file.
    assert sorted(p.name for p in server.data_dir.iterdir()) == ["lock", "password", "pgdata", "postgres.log"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another local user")
def test_another_local_user_cannot_read_the_password(server):
    server.start()
    assert os.access(server.password_file, os.R_OK)  # root can
    for path in (server.password_file, server.pgdata / "pg_hba.conf"):
        result = run_as_nobody("/bin/cat", str(path))
        assert result.returncode != 0 and "Permission denied" in result.stderr, result


def test_stop_then_start_keeps_the_port(server):
    dsn = server.start()
    port = server.status()["port"]
    assert server.stop() is True
    status = server.status()
    assert status["running"] is False
    assert status["pid"] is None and status["dsn"] is None
    with pytest.raises(psycopg.OperationalError):
        select_one(dsn)
    assert server.stop() is False  # already stopped: nothing to do

    assert server.start() == dsn
    assert server.status()["port"] == port
    assert select_one(dsn) == 1


def test_start_attaches_to_the_running_server(server):
    server.start()
    pid = server.status()["pid"]
    # A second handle, as another process would have, finds the same server.
    other = EmbeddedServer(server.data_dir)
    assert other.start() == server.dsn()
    assert other.status()["pid"] == pid
    assert [p.pid for p in postmasters(server.pgdata)] == [pid]


def test_start_from_another_process_attaches(server):
    server.start()
    pid = server.status()["pid"]
    code = ("import sys; from angela_queue.embedded import EmbeddedServer; "
            "print(EmbeddedServer(sys.argv[1]).start())")
    out = subprocess.run([sys.executable, "-c", code, str(server.data_dir)], capture_output=True,
                         text=True, timeout=60, check=True).stdout.strip()
    assert out == server.dsn()
    assert server.status()["pid"] == pid


def test_a_taken_port_is_replaced_at_start(server):
    server.start()
    old_port = server.status()["port"]
    server.stop()
    # Someone else listens on the remembered port while the server is down.
    with socket.socket() as squatter:
        # The server's own closed connections may still hold the port in TIME_WAIT.
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", old_port))
        squatter.listen()
        dsn = server.start()
        new_port = server.status()["port"]
        assert new_port != old_port
        assert select_one(dsn) == 1
    # The new port is the one remembered from now on.
    server.stop()
    assert server.start() == dsn


def test_a_killed_server_is_restarted_with_its_data(data_dir):
    srv = EmbeddedServer(data_dir)
    dsn = srv.start()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
    os.kill(srv.status()["pid"], signal.SIGKILL)
    wait_until(lambda: not srv.status()["running"], "the killed postmaster to be seen as gone")

    # postmaster.pid is left behind, and the dead postmaster may still be an
    # unreaped zombie: start() must wait that out, not attach to it.
    assert srv.start() == dsn
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT x FROM kept").fetchone()[0] == 42


def test_delete_removes_the_data_dir():
    path = new_data_dir()
    srv = EmbeddedServer(path)
    try:
        dsn = srv.start()
        pid = srv.status()["pid"]
    finally:
        srv.delete()
    assert not path.exists()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    with pytest.raises(psycopg.OperationalError):
        select_one(dsn)


def test_delete_leaves_files_that_are_not_ours():
    path = new_data_dir()
    (path / "notes.txt").write_text("mine")
    try:
        EmbeddedServer(path).delete()
        assert (path / "notes.txt").read_text() == "mine"
    finally:
        (path / "notes.txt").unlink()
        path.rmdir()


def test_a_file_as_data_dir_is_a_clear_error(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(EmbeddedError, match="is not a directory"):
        EmbeddedServer(not_a_dir).start()


def test_dsn_before_the_first_start_is_a_clear_error(tmp_path):
    with pytest.raises(EmbeddedError, match="start it first"):
        EmbeddedServer(tmp_path / "never-started").dsn()


@pytest.mark.skipif(os.geteuid() != 0, reason="the service user exists only when running as root")
def test_as_root_the_server_runs_as_the_service_user_and_root_stays_closed(server):
    root_mode = os.stat("/root").st_mode & 0o777 if os.path.isdir("/root") else None
    server.start()
    assert psutil.Process(server.status()["pid"]).username() == embedded.SERVICE_USER
    assert not str(embedded.default_data_dir()).startswith("/root")
    if root_mode is not None:
        assert os.stat("/root").st_mode & 0o777 == root_mode


@pytest.mark.skipif(os.geteuid() != 0, reason="as non-root the server runs as the caller")
def test_as_root_an_unreachable_data_dir_is_a_clear_error():
    if not os.path.isdir("/root") or os.stat("/root").st_mode & 0o001:
        pytest.skip("/root is searchable by others here")
    path = Path(tempfile.mkdtemp(prefix="aq-test-embedded-", dir="/root"))
    try:
        with pytest.raises(EmbeddedError, match="cannot enter /root"):
            EmbeddedServer(path / "pg").start()
        assert os.stat(path).st_uid == 0  # nothing was handed over before the check
    finally:
        EmbeddedServer(path / "pg").delete()
        path.rmdir()


# --- clusters from before passwords, and a setup cut short ----------------------

def make_pre_password_cluster(data_dir: Path) -> EmbeddedServer:
    """A data dir as the code before passwords left it: initdb --auth=trust
    (every connection trusted), no password file, the same network settings,
    and a data dir a non-root user got with the umask's mode."""
    srv = EmbeddedServer(data_dir)
    runtime = embedded._runtime()
    with srv.locked():
        srv._prepare_dir(runtime)
    result = runtime.run(["initdb", "-D", str(srv.pgdata), "-U", "postgres", "--auth=trust",
                          "--encoding=UTF8", "--no-locale", "--no-instructions"], timeout=120)
    assert result.returncode == 0, result.stderr
    with open(srv.pgdata / "postgresql.conf", "a") as f:
        f.write(f"include_if_exists = '{embedded.CONF_FILE}'\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        srv._write_conf(s.getsockname()[1], runtime)
    data_dir.chmod(0o755)
    assert any(rule[-1] == "trust" for rule in hba_lines(srv))
    assert not srv.password_file.exists()
    return srv


def start_old_style(srv: EmbeddedServer) -> int:
    """Start the server as the old code did, and leave a row in it; returns the postmaster's pid."""
    result = embedded._runtime().run(["pg_ctl", "start", "-D", str(srv.pgdata), "-l", str(srv.log_file),
                                      "-w", "-s"], timeout=60)
    assert result.returncode == 0, result.stderr
    port = srv.status()["port"]
    with psycopg.connect(without_password(port), autocommit=True) as conn:  # trusted, as it was
        conn.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
        # Anybody could do this while it trusted everyone: a superuser of their own.
        conn.execute("CREATE ROLE mallory LOGIN SUPERUSER PASSWORD 'known'")
    return srv.status()["pid"]


def assert_upgraded(srv: EmbeddedServer, dsn: str) -> None:
    assert_private(srv)
    assert not (srv.data_dir / embedded.PENDING_PASSWORD_FILE).exists()
    assert_refused_without_the_password(srv.status()["port"])
    # The role planted while it trusted everyone can no longer log in, password or not.
    with pytest.raises(psycopg.OperationalError, match="not permitted to log in"):
        psycopg.connect(f"postgresql://mallory:known@127.0.0.1:{srv.status()['port']}/postgres").close()
    with psycopg.connect(srv.dsn()) as conn:
        assert conn.execute("SELECT x FROM kept").fetchone()[0] == 42
    assert select_one(dsn) == 1


def test_a_stopped_cluster_from_before_passwords_gets_one_at_start(data_dir):
    srv = make_pre_password_cluster(data_dir)
    start_old_style(srv)
    srv.stop()
    dsn = srv.start()
    assert f":{srv.password_file.read_text().strip()}@" in dsn
    assert_upgraded(srv, dsn)
    # A restart reads the rewritten pg_hba.conf and keeps refusing.
    srv.stop()
    assert srv.start() == dsn
    assert_refused_without_the_password(srv.status()["port"])


def test_a_running_cluster_from_before_passwords_is_upgraded_in_place(cli, data_dir):
    srv = make_pre_password_cluster(data_dir)
    pid = start_old_style(srv)
    # A package upgrade while the old server runs: the next command secures it
    # without a restart, so sessions already open carry on.
    with psycopg.connect(without_password(srv.status()["port"])) as open_session:
        url = cli("db", "url").stdout.strip()
        assert open_session.execute("SELECT x FROM kept").fetchone()[0] == 42
    assert srv.status()["pid"] == pid
    assert url == srv.dsn(embedded.DATABASE)
    assert_upgraded(srv, url)


def test_a_setup_cut_short_reuses_its_pending_password(data_dir):
    srv = EmbeddedServer(data_dir)
    dsn = srv.start()
    # As if the process died after initdb set the password but before it was
    # kept: only the pending file holds it, and the cluster already asks for it.
    srv.password_file.rename(data_dir / embedded.PENDING_PASSWORD_FILE)
    assert srv.start() == dsn
    assert_private(srv)
    assert not (data_dir / embedded.PENDING_PASSWORD_FILE).exists()

    # A password file deleted outright cannot be recovered: say so, in one line.
    srv.password_file.unlink()
    with pytest.raises(EmbeddedError) as caught:
        srv.start()
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"cannot set a password on the embedded server in {data_dir}: ")
    assert "password authentication failed" in message and "restore it or delete the data dir" in message


# --- ensure_running from many processes at once ------------------------------

RACER = """
import sys
from angela_queue import embedded
print("ready", flush=True)
sys.stdin.readline()  # the starting gun: every racer is imported and waiting
print(embedded.ensure_running(), flush=True)
"""


def test_concurrent_first_starts_share_one_server(data_dir):
    racers = [subprocess.Popen([sys.executable, "-c", RACER], env=cli_env(data_dir),
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
              for _ in range(4)]
    try:
        for racer in racers:
            assert racer.stdout.readline().strip() == "ready", racer.stderr.read()
        for racer in racers:
            racer.stdin.write("\n")
            racer.stdin.flush()
        results = [racer.communicate(timeout=90) for racer in racers]
    finally:
        for racer in racers:
            if racer.poll() is None:
                racer.kill()
    for racer, (out, err) in zip(racers, results):
        assert racer.returncode == 0, err
    dsns = {out.strip() for out, _ in results}
    assert len(dsns) == 1
    dsn = dsns.pop()
    assert dsn.endswith(f"/{embedded.DATABASE}")

    srv = EmbeddedServer(data_dir)
    assert f":{srv.password_file.read_text().strip()}@" in dsn  # one password too
    # The server outlived the processes that started it, and there is one.
    assert [p.pid for p in postmasters(srv.pgdata)] == [srv.status()["pid"]]
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM angela_queue.alembic_version").fetchone()[0] == 1
        conn.execute("INSERT INTO angela_queue.tasks (kind) VALUES ('x')")


# --- the CLI with no DSN -------------------------------------------------------

def test_cli_without_a_dsn_uses_the_embedded_server(cli, data_dir):
    assert "not created yet" in cli("db", "status").stdout

    assert "schema angela_queue is at revision" in cli("migrate").stdout
    # migrate has exited; the server it started keeps running for the next command.
    srv = EmbeddedServer(data_dir)
    first_pid = srv.status()["pid"]
    assert first_pid is not None

    enqueued = cli("enqueue", "x", "--payload", '{"text": "urgent?"}').stdout
    assert enqueued.startswith("task ") and "kind=x" in enqueued

    url = cli("db", "url").stdout.strip()
    assert url == srv.dsn(embedded.DATABASE)
    # The printed DSN is all the owner needs: it carries the password.
    with psycopg.connect(url) as conn:
        kind, boost = conn.execute("SELECT kind, boost FROM angela_queue.tasks").fetchone()
    assert (kind, boost) == ("x", 4)
    assert_refused_without_the_password(srv.status()["port"])

    status = cli("db", "status").stdout
    assert f"running (pid {first_pid})" in status
    assert f"dsn: {describe_dsn(url)} " in status
    assert srv.password_file.read_text().strip() not in status
    assert f"password file: {srv.password_file}" in status
    assert str(data_dir) in status

    assert "stopped" in cli("db", "stop").stdout
    assert srv.status()["running"] is False
    assert "embedded server: stopped" in cli("db", "status").stdout
    assert "was not running" in cli("db", "stop").stdout

    # The next command starts it again, on the same port, with the data kept.
    assert cli("db", "url").stdout.strip() == url
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM angela_queue.tasks").fetchone()[0] == 1


def test_cli_with_a_dsn_does_not_start_the_embedded_server(data_dir):
    env = cli_env(data_dir)
    env["ANGELA_QUEUE_DSN"] = "postgresql://postgres@127.0.0.1:1/nowhere"
    result = subprocess.run([sys.executable, "-m", "angela_queue", "db", "url"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert result.stdout.strip() == env["ANGELA_QUEUE_DSN"]
    assert not (data_dir / "pgdata").exists()


def test_cli_reports_a_bad_data_dir_in_one_line(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    env = cli_env(not_a_dir)
    result = subprocess.run([sys.executable, "-m", "angela_queue", "migrate"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == f"Error: {not_a_dir} is not a directory; the embedded server needs one"
