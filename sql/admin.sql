-- angela-queue: named queries about the database itself (migrations, the
-- embedded server), outside the angela_queue tables.

-- name: admin_has_version_table
-- Whether Alembic has recorded a revision yet (its table exists).
SELECT to_regclass('angela_queue.alembic_version') IS NOT NULL AS present;

-- name: admin_current_revision
-- The Alembic revision the schema is at (ask admin_has_version_table first).
SELECT version_num AS revision FROM angela_queue.alembic_version;

-- name: admin_database_exists
-- Whether a database of that name exists on the server.
SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = %(name)s) AS present;
