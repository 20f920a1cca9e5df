"""Shared test configuration. The fixtures live in fix_*.py (psycopg's layout)."""

from __future__ import annotations

import pytest

# pytester: test_testing_helpers runs a user's suite against the installed plugin.
pytest_plugins = ["pytester"]

from fix_db import *  # noqa: F401,F403  (server, database, dsn, conn fixtures)
from fix_procs import *  # noqa: F401,F403  (worker processes, wait_until)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: long-running tests (wheel build, many processes)")
