"""A real PgBouncer (Debian's ``pgbouncer``) in front of a test's database.

Three pools on one bouncer, all for the same database:

* ``aq_tx``: transaction pooling, the producers' (each transaction may get
  another server connection);
* ``aq_session``: session pooling, the workers' (LISTEN needs a session);
* ``aq_tx_one``: transaction pooling over a single server connection, so two
  clients' prepared statements meet on it for certain.

PgBouncer refuses to run as root, so as root it drops to ``nobody`` (-u),
and its files live in a directory that user can read. No pgbouncer on the
machine: the tests that need it skip.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

START_TIMEOUT_S = 20.0


@dataclass
class Bouncer:
    port: int
    direct: str

    def dsn(self, pool: str) -> str:
        user = conninfo_to_dict(self.direct).get("user") or "postgres"
        return make_conninfo(host="127.0.0.1", port=self.port, dbname=pool, user=user)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(direct: str, port: int, folder: Path) -> str:
    parts = conninfo_to_dict(direct)
    host = parts.get("host") or "127.0.0.1"
    target = f"host={host} port={parts.get('port') or 5432} dbname={parts['dbname']}"
    users = folder / "users.txt"
    users.write_text(f'"{parts.get("user") or "postgres"}" ""\n')
    return "\n".join([
        "[databases]",
        f"aq_tx = {target} pool_mode=transaction pool_size=4",
        f"aq_session = {target} pool_mode=session pool_size=8",
        f"aq_tx_one = {target} pool_mode=transaction pool_size=1",
        "[pgbouncer]",
        "listen_addr = 127.0.0.1",
        f"listen_port = {port}",
        "unix_socket_dir =",
        "auth_type = trust",
        f"auth_file = {users}",
        "max_client_conn = 200",
        "ignore_startup_parameters = extra_float_digits",
        f"logfile = {folder / 'pgbouncer.log'}",
        "",
    ])


@pytest.fixture
def bouncer(dsn: str) -> Iterator[Bouncer]:
    binary = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None)
    if binary is None:
        pytest.skip("pgbouncer is not installed (Debian: apt-get install pgbouncer)")
    if (conninfo_to_dict(dsn).get("host") or "").startswith("/") and os.geteuid() == 0:
        # The embedded server's socket lives in a directory only root reads.
        pytest.skip("pgbouncer runs as nobody and cannot reach this server's Unix socket")
    folder = Path(tempfile.mkdtemp(prefix="aq-pgbouncer-"))
    folder.chmod(0o777)  # the bouncer writes its log here as nobody
    port = _free_port()
    ini = folder / "pgbouncer.ini"
    ini.write_text(_config(dsn, port, folder))
    for path in folder.iterdir():
        path.chmod(path.stat().st_mode | stat.S_IROTH)
    cmd = [binary, *(["-u", "nobody"] if os.geteuid() == 0 else []), str(ini)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    found = Bouncer(port, dsn)
    try:
        _wait_ready(found, proc, folder)
        yield found
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


def _wait_ready(found: Bouncer, proc: subprocess.Popen, folder: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = (folder / "pgbouncer.log").read_text() if (folder / "pgbouncer.log").exists() else ""
            pytest.fail(f"pgbouncer exited with {proc.returncode}: {proc.stdout.read().decode()}{log}")
        try:
            with psycopg.connect(found.dsn("aq_session"), connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError as exc:
            last = exc
            time.sleep(0.1)
    pytest.fail(f"pgbouncer did not answer within {START_TIMEOUT_S:g} s: {last}")
