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

-- name: admin_role_members
-- The group roles that exist, each with the roles that are members of it.
SELECT r.rolname AS role,
       coalesce(array_agg(m.rolname ORDER BY m.rolname) FILTER (WHERE m.rolname IS NOT NULL), '{}') AS members
FROM pg_roles r
LEFT JOIN pg_auth_members am ON am.roleid = r.oid
LEFT JOIN pg_roles m ON m.oid = am.member
WHERE r.rolname = ANY(%(roles)s::text[])
GROUP BY r.rolname;

-- name: admin_may_create_roles
-- Whether the current login may create roles (what migrate asks before it does).
SELECT rolsuper OR rolcreaterole AS may FROM pg_roles WHERE rolname = current_user;

-- name: admin_existing_roles
-- Which of the given roles exist (roles are cluster-wide).
SELECT rolname AS role FROM pg_roles WHERE rolname = ANY(%(roles)s::text[]);

-- name: admin_migration_lock
-- Take the migration lock until the end of the transaction.
SELECT pg_advisory_xact_lock(%(key)s) IS NULL AS locked;

-- name: admin_conf_load_time
-- When the server last loaded its configuration files (pg_hba.conf included).
SELECT pg_conf_load_time() AS loaded_at;

-- name: admin_reload_conf
-- Ask the postmaster to reload its configuration (it does so a moment later).
SELECT pg_reload_conf() AS signalled;

-- name: admin_conf_reloaded_since
-- Whether the configuration was loaded after %(since)s (a new session reports
-- the postmaster's load time).
SELECT pg_conf_load_time() > %(since)s::timestamptz AS reloaded;

-- name: admin_other_login_roles
-- Every login role but %(keep)s (the embedded server, leaving trust behind:
-- each may have been made by anyone while it trusted everyone).
SELECT r.rolname FROM pg_roles r WHERE r.rolcanlogin AND r.rolname <> %(keep)s ORDER BY r.rolname;
