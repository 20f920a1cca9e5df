"""``angela-queue roles``: the producer, worker and reader roles."""

from __future__ import annotations

import click

from ..terminal import safe
from . import command, echo, resolve_dsn


def register(main: click.Group) -> None:
    @command(main)
    @click.option("--sql", "as_sql", is_flag=True,
                  help="Print the SQL that creates the roles and grants to them, for a DBA to run.")
    @click.pass_context
    def roles(ctx: click.Context, as_sql: bool) -> None:
        """The group roles: whether they exist, and which logins are in them.

        `migrate` creates them when its login may (CREATEROLE) and grants to
        them. Where it may not (a managed Postgres), `roles --sql` prints the
        SQL: its first part for a role with CREATEROLE, the second for the
        schema's owner.
        """
        from ..roles import ROLES, roles_sql
        if as_sql:
            echo(roles_sql().rstrip())
            return
        from .. import db
        with db.connect(resolve_dsn(ctx), application_name="angela-queue-roles") as conn:
            rows = db.fetch_all(conn, "admin_role_members", {"roles": list(ROLES)})
        found = {r["role"]: r for r in rows}
        for role in ROLES:
            row = found.get(role)
            if row is None:
                echo(f"{role}: missing (run `angela-queue roles --sql` as a DBA)")
            else:
                members = ", ".join(safe(m) for m in row["members"]) or "no logins yet"
                echo(f"{role}: {members}")
