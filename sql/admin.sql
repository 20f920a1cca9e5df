-- angela-queue: named queries about the database itself (migrations, the
-- embedded server), outside the angela_queue tables.

-- name: admin_current_revision
-- The Alembic revision the schema is at (ask admin_schema_presence first).
SELECT version_num AS revision FROM angela_queue.alembic_version;

-- name: admin_database_exists
-- Whether a database of that name exists on the server.
SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = %(name)s) AS present;

-- name: admin_schema_presence
-- Whether the angela_queue schema and Alembic's version table exist: what a
-- process checks at start, before it reads the revision.
SELECT to_regnamespace('angela_queue') IS NOT NULL AS has_schema,
       to_regclass('angela_queue.alembic_version') IS NOT NULL AS has_version_table;
