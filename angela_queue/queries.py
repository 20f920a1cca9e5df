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


# What psycopg caches the parsing of: a longer query is split on its
# placeholders again at every execute (psycopg/_queries.py,
# MAX_CACHED_STATEMENT_LENGTH), about 85 µs for the 9 KB claim.
PSYCOPG_CACHED_LENGTH = 4096

# Tokens that must reach the server as written: string literals ('' inside;
# E'' with backslash escapes), quoted identifiers, dollar-quoted bodies; and what can go:
# -- comments, /* */ comments (nested, as Postgres reads them), runs of
# whitespace.
_TOKEN_RE = re.compile(r"""
      (?P<literal>[Ee]'(?:[^'\\]|\\.|'')*'|[BbXx]?'(?:[^']|'')*'|"(?:[^"]|"")*")
    | (?P<dollar>\$(?P<tag>[A-Za-z_][A-Za-z0-9_]*)?\$)
    | (?P<line_comment>--[^\n]*)
    | (?P<block_comment>/\*)
    | (?P<space>\s+)
""", re.VERBOSE)


def compact_sql(text: str) -> str:
    """The query as the server needs it: comments dropped, each run of
    whitespace and comments one space (a newline if it held one), literals,
    quoted identifiers and dollar-quoted bodies untouched.

    Why: the readable files are commented at length, and psycopg splits a
    query on its placeholders at every execute unless it is short enough to
    cache (PSYCOPG_CACHED_LENGTH); compacted, the claim costs the worker
    half of that.
    """
    out: list[str] = []
    separator = ""          # pending between two tokens: "", " " or "\n"
    i = 0

    def emit(piece: str) -> None:
        nonlocal separator
        if separator and out:
            out.append(separator)
        separator = ""
        out.append(piece)

    while i < len(text):
        match = _TOKEN_RE.search(text, i)
        if match is None:
            emit(text[i:])
            break
        if match.start() > i:
            emit(text[i:match.start()])
        kind = match.lastgroup if match.lastgroup != "tag" else "dollar"
        end = match.end()
        if kind == "literal":
            emit(match.group())
        elif kind == "dollar":
            close = text.find(match.group("dollar"), end)
            if close < 0:
                raise ValueError(f"compact_sql: unterminated dollar quote {match.group('dollar')}")
            end = close + len(match.group("dollar"))
            emit(text[match.start():end])
        else:
            if kind == "block_comment":
                depth = 1
                while depth:
                    nxt = _BLOCK_EDGE_RE.search(text, end)
                    if nxt is None:
                        raise ValueError("compact_sql: unterminated /* comment")
                    depth += 1 if nxt.group() == "/*" else -1
                    end = nxt.end()
            newline = "\n" in match.group() or kind == "line_comment"
            separator = "\n" if newline or separator == "\n" else " "
        i = end
    return "".join(out)


_BLOCK_EDGE_RE = re.compile(r"/\*|\*/")


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
            # Named in a leading comment: server logs and pg_stat_statements
            # show which query a statement is.
            queries[name] = f"/* {name} */ " + compact_sql(body)
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
