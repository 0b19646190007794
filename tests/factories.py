"""Small builders of app rows for tests; each returns the new id."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager


def tenancy(conn, project: str = "acme", branch: str | None = None) -> uuid.UUID:
    conn.execute("insert into app.projects (id, display_name) values (%s, %s) on conflict do nothing",
                 (project, project))
    return conn.execute("insert into app.tenancies (project_id, branch_id) values (%s, %s) returning id",
                        (project, branch or uuid.uuid4().hex[:12])).fetchone()["id"]


def user(conn, tenancy_id, display_name: str = "user", user_id=None, email: str | None = None) -> uuid.UUID:
    uid = conn.execute(
        "insert into app.users (tenancy_id, id, display_name) values (%s, coalesce(%s, gen_random_uuid()), %s)"
        " returning id", (tenancy_id, user_id, display_name)).fetchone()["id"]
    if email:
        contact_channel(conn, tenancy_id, uid, email, is_primary=True)
    return uid


def contact_channel(conn, tenancy_id, user_id, value: str, *, type: str = "email", is_primary: bool = False,
                    is_verified: bool = False) -> uuid.UUID:
    return conn.execute(
        "insert into app.contact_channels (tenancy_id, user_id, type, value, is_primary, is_verified)"
        " values (%s, %s, %s, %s, %s, %s) returning id",
        (tenancy_id, user_id, type, value, is_primary, is_verified)).fetchone()["id"]


def team(conn, tenancy_id, display_name: str = "team") -> uuid.UUID:
    return conn.execute("insert into app.teams (tenancy_id, display_name) values (%s, %s) returning id",
                        (tenancy_id, display_name)).fetchone()["id"]


def member(conn, tenancy_id, team_id, user_id) -> None:
    conn.execute("insert into app.team_members (tenancy_id, team_id, user_id) values (%s, %s, %s)",
                 (tenancy_id, team_id, user_id))


def users_bulk(conn, tenancy_id, n: int, prefix: str = "bulk") -> None:
    conn.execute("insert into app.users (tenancy_id, display_name) select %s, %s || g from generate_series(1, %s) g",
                 (tenancy_id, prefix, n))


def sequence_all(conn, batch_size: int = 10000) -> int:
    """Run sequencer passes until nothing is flagged; returns rows stamped."""
    total = 0
    while n := conn.execute("select pyglue.sequence_changes(%s) as n", (batch_size,)).fetchone()["n"]:
        total += n
    return total


@contextmanager
def acting_role(conn, *grants: str, member_of: str | None = None, attributes: str = "") -> Iterator[str]:
    """A throwaway role (cluster-wide, so uniquely named) with the given grants
    ("... to {role}"), that the autocommit connection acts as until the block ends."""
    role = f"pyglue_test_role_{uuid.uuid4().hex[:12]}"
    conn.execute(f"create role {role} {attributes}" + (f" in role {member_of}" if member_of else ""))
    try:
        for grant in grants:
            conn.execute(grant.format(role=role))
        conn.execute(f"set role {role}")
        yield role
    finally:
        conn.execute("reset role")
        conn.execute(f"drop owned by {role}")
        conn.execute(f"drop role {role}")
