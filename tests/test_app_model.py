"""The reference model: cascades, tenancy keys, checks."""

from __future__ import annotations

import psycopg
import pytest


def make_tenancy(conn, project="acme") -> str:
    conn.execute("insert into app.projects (id, display_name) values (%s, %s) on conflict do nothing",
                 (project, project))
    return conn.execute("insert into app.tenancies (project_id) values (%s) returning id", (project,)).fetchone()["id"]


@pytest.fixture
def family(conn):
    t = make_tenancy(conn)
    user = conn.execute("insert into app.users (tenancy_id, display_name) values (%s, 'Ada') returning id",
                        (t,)).fetchone()["id"]
    other = conn.execute("insert into app.users (tenancy_id, display_name) values (%s, 'Bob') returning id",
                         (t,)).fetchone()["id"]
    team = conn.execute("insert into app.teams (tenancy_id, display_name) values (%s, 'Core') returning id",
                        (t,)).fetchone()["id"]
    conn.execute("""insert into app.contact_channels (tenancy_id, user_id, type, value, is_primary)
                    values (%(t)s, %(u)s, 'email', 'ada@example.com', true), (%(t)s, %(u)s, 'phone', '+100', false)""",
                 {"t": t, "u": user})
    conn.execute("insert into app.team_members (tenancy_id, team_id, user_id) values (%s, %s, %s), (%s, %s, %s)",
                 (t, team, user, t, team, other))
    conn.execute("insert into app.auth_methods (tenancy_id, user_id, kind) values (%s, %s, 'password')", (t, user))
    conn.execute("insert into app.auth_methods (tenancy_id, user_id, kind, provider) values (%s, %s, 'oauth', 'github')",
                 (t, user))
    return {"tenancy": t, "user": user, "other": other, "team": team}


def count(conn, table, **where) -> int:
    clause = " and ".join(f"{k} = %({k})s" for k in where) or "true"
    return conn.execute(f"select count(*) as n from {table} where {clause}", where).fetchone()["n"]


def test_deleting_a_user_deletes_its_channels_memberships_and_auth_methods(conn, family):
    conn.execute("delete from app.users where id = %s", (family["user"],))
    assert count(conn, "app.contact_channels", user_id=family["user"]) == 0
    assert count(conn, "app.team_members", user_id=family["user"]) == 0
    assert count(conn, "app.auth_methods", user_id=family["user"]) == 0
    assert count(conn, "app.team_members", user_id=family["other"]) == 1


def test_deleting_a_team_deletes_its_memberships_only(conn, family):
    conn.execute("delete from app.teams where id = %s", (family["team"],))
    assert count(conn, "app.team_members", team_id=family["team"]) == 0
    assert count(conn, "app.users", tenancy_id=family["tenancy"]) == 2


def test_deleting_a_tenancy_deletes_everything_in_it(conn, family):
    conn.execute("delete from app.tenancies where id = %s", (family["tenancy"],))
    for table in ("app.users", "app.contact_channels", "app.teams", "app.team_members", "app.auth_methods"):
        assert count(conn, table, tenancy_id=family["tenancy"]) == 0


def test_internal_project_exists_and_branch_defaults_to_main(conn):
    t = make_tenancy(conn, "internal")
    assert conn.execute("select branch_id from app.tenancies where id = %s", (t,)).fetchone()["branch_id"] == "main"


def test_one_tenancy_per_project_branch(conn):
    make_tenancy(conn)
    with pytest.raises(psycopg.errors.UniqueViolation):
        make_tenancy(conn)


def test_a_member_must_belong_to_the_same_tenancy(conn, family):
    elsewhere = make_tenancy(conn, "other")
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        conn.execute("insert into app.team_members (tenancy_id, team_id, user_id) values (%s, %s, %s)",
                     (elsewhere, family["team"], family["user"]))


def test_one_primary_email_per_user(conn, family):
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("""insert into app.contact_channels (tenancy_id, user_id, type, value, is_primary)
                        values (%s, %s, 'email', 'second@example.com', true)""", (family["tenancy"], family["user"]))


def test_bad_channel_type_is_rejected(conn, family):
    with pytest.raises(psycopg.errors.CheckViolation, match="contact_channels_type_check"):
        conn.execute("insert into app.contact_channels (tenancy_id, user_id, type, value) values (%s, %s, 'fax', '1')",
                     (family["tenancy"], family["user"]))


def test_oauth_needs_a_provider(conn, family):
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("insert into app.auth_methods (tenancy_id, user_id, kind) values (%s, %s, 'oauth')",
                     (family["tenancy"], family["user"]))


def test_user_list_keyset_uses_the_signup_index(conn, family):
    conn.execute("set local enable_seqscan = off")
    plan = conn.execute(
        "explain select id from app.users where tenancy_id = %s and (signed_up_at, id) > (now() - interval '1 day', %s)"
        " order by signed_up_at, id limit 10", (family["tenancy"], family["user"])).fetchall()
    assert "users_tenancy_signed_up_idx" in " ".join(r["QUERY PLAN"] for r in plan)
