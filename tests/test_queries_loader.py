"""The named-SQL loader: sql/*.sql split into {name: query}, loudly."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from angela_queue import db, queries

ROOT = Path(__file__).resolve().parents[1]


def test_unknown_query_name_raises_naming_it():
    with pytest.raises(queries.UnknownQuery, match="no_such_query"):
        queries.query("no_such_query")
    assert issubclass(queries.UnknownQuery, KeyError)


def test_unknown_query_name_raises_before_touching_the_database(conn):
    with pytest.raises(queries.UnknownQuery):
        db.fetch_all(conn, "tasks_enqueue_typo", {})
    assert conn.execute("SELECT 1 AS ok").fetchone() == {"ok": 1}


def test_duplicate_name_in_one_file_raises():
    text = "-- name: a\n-- does a\nSELECT 1;\n\n-- name: b\nSELECT 2;\n\n-- name: a\nSELECT 3;\n"
    with pytest.raises(ValueError, match=r"x\.sql: query 'a' is defined twice"):
        queries.parse_named_queries(text, "x.sql")


def test_duplicate_name_across_files_raises(tmp_path, monkeypatch):
    (tmp_path / "one.sql").write_text("-- name: same\nSELECT 1;\n")
    (tmp_path / "two.sql").write_text("-- name: other\nSELECT 2;\n\n-- name: same\nSELECT 3;\n")
    monkeypatch.setattr(queries.resources, "files", lambda package: tmp_path)
    queries.all_queries.cache_clear()
    try:
        with pytest.raises(ValueError, match="'same' is already defined"):
            queries.all_queries()
    finally:
        monkeypatch.undo()
        queries.all_queries.cache_clear()
    assert "tasks_enqueue" in queries.all_queries()


def test_empty_query_raises():
    with pytest.raises(ValueError, match="'b' is empty"):
        queries.parse_named_queries("-- name: a\nSELECT 1;\n-- name: b\n\n", "x.sql")


@pytest.mark.parametrize("header", ["-- name: tasks-claim", "-- name: Tasks_claim", "-- Name: tasks_claim",
                                    "-- name:", "--name : x"])
def test_malformed_header_raises_instead_of_merging_into_the_previous_query(header):
    text = f"-- name: first\nSELECT 1;\n\n{header}\nSELECT 2;\n"
    with pytest.raises(ValueError, match=r"x\.sql:4: malformed query header"):
        queries.parse_named_queries(text, "x.sql")


def test_parsing_splits_bodies_and_ignores_the_preamble():
    text = ("-- file preamble\nSET nothing;\n\n"
            "-- name: first\n-- What it does.\nSELECT 1;\n\n"
            "--name:second\nSELECT %(x)s;\n")
    assert queries.parse_named_queries(text) == {"first": "-- What it does.\nSELECT 1;", "second": "SELECT %(x)s;"}


def test_schema_files_hold_no_named_queries_and_query_files_are_loaded():
    loaded = queries.all_queries()
    assert {"tasks_enqueue", "tasks_enqueue_many", "tasks_cancel", "tasks_claim"} <= set(loaded)
    for name in queries.SCHEMA_FILES:
        assert not re.search(r"^--\s*name:", queries.sql_text(name), re.MULTILINE), name
    # Every file under sql/ besides the schema files is a query file, and all of its queries are loaded.
    for path in sorted((ROOT / "sql").glob("*.sql")):
        if path.name in queries.SCHEMA_FILES:
            continue
        for name, body in queries.parse_named_queries(path.read_text(), path.name).items():
            assert loaded[name] == f"/* {name} */ " + queries.compact_sql(body)


def _file_bodies() -> dict[str, str]:
    bodies: dict[str, str] = {}
    for path in sorted((ROOT / "sql").glob("*.sql")):
        if path.name not in queries.SCHEMA_FILES:
            bodies.update(queries.parse_named_queries(path.read_text(), path.name))
    return bodies


def test_each_query_says_what_it_does():
    # House style: a comment line under each header (in the file: the server
    # gets the query compacted).
    missing = [name for name, body in _file_bodies().items() if not body.startswith("--")]
    assert missing == []


def test_compacting_keeps_literals_identifiers_and_bodies_as_written():
    text = ("-- what it does\nSELECT 'a -- not a comment',  \"col  -- x\",\n"
            "       $$ body -- kept\n  $$, $f$ x $f$, E'it\\'s -- kept', 'it''s',  -- gone\n"
            "       %(param)s::text /* gone /* nested */ too */ FROM  t")
    assert queries.compact_sql(text) == (
        "SELECT 'a -- not a comment', \"col  -- x\",\n$$ body -- kept\n  $$, $f$ x $f$, "
        "E'it\\'s -- kept', 'it''s',\n%(param)s::text FROM t")
    with pytest.raises(ValueError, match="unterminated"):
        queries.compact_sql("SELECT $$ never closed")
    with pytest.raises(ValueError, match="unterminated"):
        queries.compact_sql("SELECT 1 /* never /* closed */")


def test_compacting_changes_no_token_of_any_shipped_query():
    """What the server gets differs from the file only in comments and
    whitespace: the same tokens, in the same order."""
    def tokens(sql: str) -> list[str]:
        sql = re.sub(r"--[^\n]*", " ", sql)
        sql = re.sub(r"/\*.*?\*/", " ", sql, flags=re.S)
        return sql.split()
    loaded = queries.all_queries()
    for name, body in _file_bodies().items():
        assert tokens(loaded[name]) == tokens(body), name


def test_the_hot_statements_are_sent_compacted():
    """psycopg caches the parsing of queries up to PSYCOPG_CACHED_LENGTH: every
    hot statement but the claim fits, and the claim is half its file's size."""
    from angela_queue import statements
    sizes = {name: len(queries.query(name)) for name in statements.HOT_STATEMENTS}
    assert all(size <= queries.PSYCOPG_CACHED_LENGTH for name, size in sizes.items() if name != "tasks_claim"), sizes
    assert sizes["tasks_claim"] < len(_file_bodies()["tasks_claim"]) * 0.6


def test_every_query_name_the_package_uses_exists():
    used: dict[str, str] = {}
    pattern = re.compile(r"\b(?:a?fetch_all|a?fetch_one|Query)\(\s*(?:[\w.]+,\s*)?\"([a-z_][a-z0-9_]*)\"")
    for path in sorted((ROOT / "angela_queue").glob("*.py")):
        for name in pattern.findall(path.read_text()):
            used.setdefault(name, path.name)
    assert "tasks_enqueue" in used  # the scan finds calls
    unknown = {name: where for name, where in used.items() if name not in queries.all_queries()}
    assert unknown == {}
