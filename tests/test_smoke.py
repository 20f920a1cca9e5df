def test_insert_with_only_kind_gets_every_default(conn):
    row = conn.execute("INSERT INTO angela_queue.tasks (kind) VALUES ('x') RETURNING *").fetchone()
    assert row["queue"] == "default"
    assert row["payload"] == {}
    assert row["priority"] == 5
    assert row["tier"] == "medium"
    assert row["status"] == "queued"
    assert row["attempts"] == 0
