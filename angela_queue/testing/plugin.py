"""The pytest plugin (entry point ``pytest11``): fixtures for a migrated
throwaway database. Loaded by every pytest run where angela-queue is
installed, so it imports nothing heavy until a fixture is used."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="session")
def angela_queue_server() -> Iterator[Any]:
    """The server this run's test databases live on (see angela_queue.testing.servers)."""
    from .servers import throwaway_server
    with throwaway_server() as server:
        yield server


@pytest.fixture(scope="session")
def angela_queue_template(angela_queue_server: Any) -> Iterator[str]:
    """A database migrated once per run; each test's database is a copy."""
    with angela_queue_server.migrated_template() as name:
        yield name


@pytest.fixture
def angela_queue_dsn(angela_queue_server: Any, angela_queue_template: str) -> Iterator[str]:
    """A migrated database of this test's own, dropped afterwards. drain() and
    assert_enqueued() use it by default."""
    from . import using_database
    with angela_queue_server.temporary_database("t", template=angela_queue_template) as dsn, using_database(dsn):
        yield dsn


@pytest.fixture
def angela_queue_client(angela_queue_dsn: str) -> Iterator[Any]:
    """A Client on this test's database."""
    from ..client import Client
    with Client(angela_queue_dsn) as client:
        yield client
