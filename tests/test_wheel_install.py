"""The built wheel works on its own: sql/ and alembic/ live at the top of the
repo and are mapped into the package at build time, so only an installed
wheel, far from the checkout, proves they ship."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import psycopg
import pytest

CHECKOUT = Path(__file__).resolve().parent.parent
# Build outputs and caches that must not leak into the copy we build from.
NOT_SOURCES = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", ".venv",
                                     ".pytest_cache", ".benchmarks", ".ci")


def run(args: list, cwd: Path, timeout: float = 300) -> str:
    result = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the working tree: building in place would
    write build/ and egg-info into a checkout others are using."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    shutil.copytree(CHECKOUT, source, ignore=NOT_SOURCES)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", work / "dist", source],
        cwd=work)
    (built,) = (work / "dist").glob("angela_queue-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory) -> Path:
    """A plain venv (no system site-packages, so no editable checkout) with the wheel installed."""
    path = tmp_path_factory.mktemp("venv") / "venv"
    run([sys.executable, "-m", "venv", path], cwd=path.parent)
    run([path / "bin" / "python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check", wheel],
        cwd=path.parent)
    return path


@pytest.mark.slow
def test_wheel_contains_the_sql_and_the_migrations(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    sql_files = {p.name for p in (CHECKOUT / "sql").glob("*.sql")}
    assert sql_files and {f"angela_queue/sql/{name}" for name in sql_files} <= names
    revisions = {p.name for p in (CHECKOUT / "alembic" / "versions").iterdir() if p.suffix in (".py", ".sql")}
    assert revisions and {f"angela_queue/alembic/versions/{name}" for name in revisions} <= names
    assert "angela_queue/alembic/env.py" in names
    assert "angela_queue/alembic/script.py.mako" in names
    assert "angela_queue/inspect/dashboard/static/index.html" in names  # the dashboard page, served via importlib.resources
    # alembic/ has no __init__.py on purpose: in a checkout it would shadow the alembic library.
    assert "angela_queue/alembic/__init__.py" not in names
    assert not any(name.startswith(("tests/", "sql/", "alembic/")) for name in names)


@pytest.mark.slow
def test_installed_wheel_migrates_and_enqueues(venv, empty_dsn, tmp_path):
    # Run from an unrelated directory, so nothing can come from the checkout.
    where = run([venv / "bin" / "python", "-c",
                 "import angela_queue, angela_queue.migrations as m; "
                 "print(angela_queue.__file__); print(m.script_location())"], cwd=tmp_path).split()
    assert all(Path(p).is_relative_to(venv) for p in where), where

    cli = venv / "bin" / "angela-queue"
    assert "schema angela_queue is at revision" in run([cli, "--dsn", empty_dsn, "migrate"], cwd=tmp_path)
    out = run([cli, "--dsn", empty_dsn, "enqueue", "from_wheel", "--payload", '{"text": "urgent"}',
               "--priority", "7"], cwd=tmp_path)
    assert "kind=from_wheel" in out

    with psycopg.connect(empty_dsn) as conn:
        head = conn.execute("SELECT version_num FROM angela_queue.alembic_version").fetchone()[0]
        row = conn.execute("SELECT kind, priority, boost, tier, status FROM angela_queue.tasks").fetchone()
        views = {r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.views WHERE table_schema = 'angela_queue'")}
    assert head
    assert row == ("from_wheel", 7, 3, "high", "queued")
    assert "queue_depth" in views
