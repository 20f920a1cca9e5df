"""Boost rules are data: applied in SQL at insert, so a plain INSERT from any
language gets them; editing the table changes the next insert."""

from __future__ import annotations

import json

import psycopg
import pytest


# Every test here only runs SQL on one connection: they share one database,
# each in a transaction rolled back afterwards (tests/fix_db.py).
@pytest.fixture
def conn(rollback_conn):
    return rollback_conn


def boosted(conn, payload: dict | str, priority: int = 5) -> dict:
    text = payload if isinstance(payload, str) else json.dumps(payload)
    return conn.execute(
        "INSERT INTO angela_queue.tasks (kind, payload, priority) VALUES ('chat', %s::jsonb, %s) "
        "RETURNING boost, boost_rules, priority_key, priority", (text, priority)).fetchone()


def test_the_default_rule_set_is_the_plans_three_rules(conn):
    rules = {r["name"]: r for r in conn.execute("SELECT * FROM angela_queue.boost_rules").fetchall()}
    assert {name: r["boost"] for name, r in rules.items()} == {"emotional": 2, "urgent": 3, "question": 1}
    assert all(r["enabled"] for r in rules.values())


@pytest.mark.parametrize("payload, boost, fired", [
    ({}, 0, []),
    ({"text": "hello"}, 0, []),
    ({"emotional": True}, 2, ["emotional"]),
    ({"emotional": False}, 0, []),
    ({"emotional": "true"}, 0, []),  # the string is not the boolean
    ({"text": "this is urgent"}, 3, ["urgent"]),
    ({"text": "URGENT: call back"}, 3, ["urgent"]),
    ({"text": "Very UrGeNt"}, 3, ["urgent"]),
    ({"text": "how are you?"}, 1, ["question"]),
    ({"text": "is this a question? no"}, 0, []),  # "?" must end the text
    ({"text": 42}, 0, []),  # a rule over text ignores a non-string text
    ({"emotional": True, "text": "urgent, can you help?"}, 6, ["emotional", "question", "urgent"]),
    ({"emotional": True, "text": "urgent!"}, 5, ["emotional", "urgent"]),
])
def test_default_rules_fire_and_add_up(conn, payload, boost, fired):
    row = boosted(conn, payload)
    assert row["boost"] == boost
    assert sorted(row["boost_rules"]) == fired


def test_boost_counts_in_effective_priority_and_claim_order(conn):
    boosted(conn, {"text": "plain"}, priority=8)
    boosted(conn, {"emotional": True, "text": "urgent?"}, priority=5)  # 5 + 6 = 11 > 8
    rows = conn.execute("SELECT payload, effective_priority FROM angela_queue.queued_tasks").fetchall()
    assert rows[0]["payload"]["text"] == "urgent?"
    assert rows[0]["effective_priority"] == pytest.approx(11, abs=0.01)
    assert rows[1]["effective_priority"] == pytest.approx(8, abs=0.01)


def test_editing_a_rule_takes_effect_on_the_next_insert(conn):
    assert boosted(conn, {"text": "urgent"})["boost"] == 3
    conn.execute("UPDATE angela_queue.boost_rules SET boost = 7 WHERE name = 'urgent'")
    assert boosted(conn, {"text": "urgent"})["boost"] == 7
    conn.execute("UPDATE angela_queue.boost_rules SET condition = '$.text ? (@ like_regex \"asap\" flag \"i\")' "
                 "WHERE name = 'urgent'")
    assert boosted(conn, {"text": "urgent"})["boost"] == 0
    assert boosted(conn, {"text": "ASAP please"})["boost"] == 7


def test_existing_tasks_keep_the_boost_they_were_given(conn):
    first = conn.execute("INSERT INTO angela_queue.tasks (kind, payload) VALUES ('k', '{\"text\": \"urgent\"}') "
                         "RETURNING id").fetchone()["id"]
    conn.execute("DELETE FROM angela_queue.boost_rules WHERE name = 'urgent'")
    row = conn.execute("SELECT boost, boost_rules FROM angela_queue.tasks WHERE id = %s", (first,)).fetchone()
    assert row["boost"] == 3 and row["boost_rules"] == ["urgent"]


def test_deleting_or_disabling_a_rule_takes_effect_on_the_next_insert(conn):
    conn.execute("DELETE FROM angela_queue.boost_rules WHERE name = 'emotional'")
    assert boosted(conn, {"emotional": True, "text": "?"})["boost_rules"] == ["question"]
    conn.execute("UPDATE angela_queue.boost_rules SET enabled = false WHERE name = 'question'")
    row = boosted(conn, {"emotional": True, "text": "?"})
    assert row["boost"] == 0 and row["boost_rules"] == []


def test_adding_a_rule_takes_effect_on_the_next_insert(conn):
    conn.execute("INSERT INTO angela_queue.boost_rules (name, condition, boost) "
                 "VALUES ('vip', '$.customer.tier ? (@ == \"gold\")', 4)")
    row = boosted(conn, {"customer": {"tier": "gold"}, "text": "urgent"})
    assert row["boost"] == 7
    assert sorted(row["boost_rules"]) == ["urgent", "vip"]
    # A negative boost is allowed: a rule may also demote.
    conn.execute("INSERT INTO angela_queue.boost_rules (name, condition, boost) "
                 "VALUES ('bulk', '$.bulk ? (@ == true)', -2)")
    assert boosted(conn, {"bulk": True})["boost"] == -2


def test_boost_moves_the_stored_claim_key(conn):
    plain = boosted(conn, {"text": "x"})
    urgent = boosted(conn, {"text": "urgent"})
    # Same priority, a moment apart: the key differs by the boost (and a hair of aging).
    assert urgent["priority_key"] - plain["priority_key"] == pytest.approx(3, abs=0.01)


@pytest.mark.parametrize("condition", [
    "$.text ? (",                       # unbalanced
    "$.text ? (@ like_regex \"(\")",    # broken regular expression
    "not a path at all",
])
def test_an_invalid_jsonpath_rule_is_rejected(conn, condition):
    before = conn.execute("SELECT * FROM angela_queue.boost_rules ORDER BY name").fetchall()
    with pytest.raises(psycopg.Error) as caught:
        with conn.transaction():
            conn.execute("INSERT INTO angela_queue.boost_rules (name, condition, boost) VALUES ('bad', %s, 1)",
                         (condition,))
    assert "jsonpath" in str(caught.value).lower() or "regular expression" in str(caught.value).lower()
    assert conn.execute("SELECT * FROM angela_queue.boost_rules ORDER BY name").fetchall() == before
    # Inserts still work with the rule set untouched.
    assert boosted(conn, {"text": "urgent"})["boost"] == 3


def test_a_strict_mode_rule_does_not_break_inserts_without_its_key(conn):
    # strict paths raise on a missing key; one such rule must not make every
    # task without that key fail to insert.
    conn.execute("INSERT INTO angela_queue.boost_rules (name, condition, boost) "
                 "VALUES ('strict_vip', 'strict $.vip ? (@ == true)', 5)")
    assert boosted(conn, {"text": "hello"})["boost"] == 0
    assert boosted(conn, {"vip": True})["boost"] == 5
    # Arithmetic errors inside a rule are a non-match too.
    conn.execute("INSERT INTO angela_queue.boost_rules (name, condition, boost) "
                 "VALUES ('ratio', '$ ? ($.a / $.b > 1)', 1)")
    assert boosted(conn, {"a": 1, "b": 0})["boost"] == 0
    assert boosted(conn, {"a": 3, "b": 1})["boost"] == 1


def test_a_rule_naming_a_variable_is_rejected_when_stored(conn):
    # No variables are passed at insert, so such a rule would fail every insert.
    with pytest.raises(psycopg.errors.CheckViolation) as caught:
        with conn.transaction():
            conn.execute("INSERT INTO angela_queue.boost_rules (name, condition, boost) "
                         "VALUES ('vars', '$.amount ? (@ > $limit)', 1)")
    assert "boost_rule_condition_has_no_variables" in str(caught.value)
    assert boosted(conn, {"text": "urgent?"})["boost"] == 4
