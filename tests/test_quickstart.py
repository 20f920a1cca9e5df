"""The README's quick start runs end to end (on the test database)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fix_procs import query

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quickstart_drains_every_task(dsn):
    env = {**os.environ, "ANGELA_QUEUE_DSN": dsn}
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py")], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = query(dsn, "SELECT kind, status, boost FROM angela_queue.tasks ORDER BY id")
    assert len(rows) == 11
    assert {r["status"] for r in rows if r["kind"] != "flaky"} == {"succeeded"}
    assert [r["status"] for r in rows if r["kind"] == "flaky"] == ["failed"]
    assert max(r["boost"] for r in rows) == 6  # the urgent, emotional question
    assert "learning_analysis" in result.stdout
    assert scalar_running(dsn) == 0


def scalar_running(dsn):
    return query(dsn, "SELECT count(*) AS n FROM angela_queue.tasks WHERE status = 'running'")[0]["n"]
