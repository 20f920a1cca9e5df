"""Named SQL queries, loaded once from the ``sql/`` files shipped in the package.

Each query lives in a ``.sql`` file under a header line ``-- name: tasks_claim``
followed by comment lines saying what it does. Python never builds SQL from
strings: callers look queries up by name, and an unknown or duplicate name
fails loudly at import, not at the first unlucky call.

A statement to run is a :class:`Query`: a name and its parameters, checked
when it is built. The hot path's are built in one place
(``statements.py``), so their names and parameters are spelled once.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

# Files that hold DDL rather than named queries.
SCHEMA_FILES = ("schema.sql", "views.sql", "roles.sql")

_NAME_RE = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)
# Anything that looks like a header. A header _NAME_RE rejects (a hyphen, a
# capital) would otherwise be read as a comment and its query glued onto the
# previous one: two statements under one name, failing only when called.
_HEADER_LIKE_RE = re.compile(r"^--\s*name\s*:.*$", re.MULTILINE | re.IGNORECASE)


class UnknownQuery(KeyError):
    """A query name that no file under sql/ defines."""


def sql_text(filename: str) -> str:
    """The text of one file under sql/ (schema.sql, views.sql, ...)."""
    return resources.files("angela_queue.sql").joinpath(filename).read_text(encoding="utf-8")


def parse_named_queries(text: str, source: str = "<string>") -> dict[str, str]:
    """Split a file into {name: query}; the text before the first header is ignored."""
    queries: dict[str, str] = {}
    for header in _HEADER_LIKE_RE.finditer(text):
        if not _NAME_RE.fullmatch(header.group(0)):
            line = text.count("\n", 0, header.start()) + 1
            raise ValueError(f"{source}:{line}: malformed query header {header.group(0)!r}; "
                             "expected '-- name: lowercase_name'")
    matches = list(_NAME_RE.finditer(text))
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        body = text[match.end():end].strip()
        name = match.group(1)
        if name in queries:
            raise ValueError(f"{source}: query {name!r} is defined twice")
        if not body:
            raise ValueError(f"{source}: query {name!r} is empty")
        queries[name] = body
    return queries


@functools.cache
def all_queries() -> dict[str, str]:
    queries: dict[str, str] = {}
    root = resources.files("angela_queue.sql")
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql") or entry.name in SCHEMA_FILES:
            continue
        for name, body in parse_named_queries(entry.read_text(encoding="utf-8"), entry.name).items():
            if name in queries:
                raise ValueError(f"{entry.name}: query {name!r} is already defined in another file")
            queries[name] = body
    return queries


def query(name: str) -> str:
    try:
        return all_queries()[name]
    except KeyError:
        raise UnknownQuery(f"no SQL query named {name!r} under sql/") from None


@dataclass(frozen=True, slots=True)
class Query:
    """One named query with its parameters, ready for ``db`` to run.

    The name is checked when the value is built: a typo fails where the
    statement is made, not in the middle of a pipeline.
    """

    name: str
    params: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.name not in all_queries():
            raise UnknownQuery(f"no SQL query named {self.name!r} under sql/")

    @property
    def text(self) -> str:
        return all_queries()[self.name]
