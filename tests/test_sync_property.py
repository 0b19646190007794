"""Property: whatever happens to a tenancy, and wherever syncs fall in between, the target
ends equal to the source. Hypothesis draws the operations and the sync points/page sizes."""

from __future__ import annotations

import psycopg
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from psycopg.rows import dict_row

from pyglue.sync import engine, mappings, targets
from tests import factories as f

ALL_MAPPINGS = mappings.load_all()

SOURCE = {
    "users": """select u.id, u.display_name, pe.value as primary_email, coalesce(pe.is_verified, false) as verified
                from app.users u left join app.contact_channels pe on pe.tenancy_id = u.tenancy_id
                     and pe.user_id = u.id and pe.type = 'email' and pe.is_primary
                where u.tenancy_id = %s""",
    "contact_channels": "select id, user_id, value, is_primary, is_verified from app.contact_channels where tenancy_id = %s",
    "teams": "select id, display_name from app.teams where tenancy_id = %s",
    "team_member_profiles": "select team_id, user_id from app.team_members where tenancy_id = %s",
}
TARGET = {
    "users": "select id, display_name, primary_email, primary_email_verified as verified from users",
    "contact_channels": "select id, user_id, value, is_primary, is_verified from contact_channels",
    "teams": "select id, display_name from teams",
    "team_member_profiles": "select team_id, user_id from team_member_profiles",
}

names = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=8)  # as Postgres text
operation = st.one_of(
    st.tuples(st.just("add_user"), names, st.booleans()),
    st.tuples(st.just("rename"), st.integers(0, 50), names),
    st.tuples(st.just("delete_user"), st.integers(0, 50)),
    st.tuples(st.just("recreate_user"), st.integers(0, 50)),
    st.tuples(st.just("verify"), st.integers(0, 50)),
    st.tuples(st.just("add_team"), st.integers(0, 50)),
    st.tuples(st.just("delete_team"), st.integers(0, 50)),
    st.tuples(st.just("sequence")),
    st.tuples(st.just("sync"), st.integers(1, 7)),
)


def pick(conn, table: str, tenancy, index: int):
    rows = conn.execute(f"select id from {table} where tenancy_id = %s order by id", (tenancy,)).fetchall()
    return rows[index % len(rows)]["id"] if rows else None


def apply(conn, tenancy, op, sync) -> None:
    kind = op[0]
    if kind == "add_user":
        u = f.user(conn, tenancy, op[1])
        if op[2]:
            f.contact_channel(conn, tenancy, u, f"{u}@example.com", is_primary=True)
    elif kind == "rename" and (u := pick(conn, "app.users", tenancy, op[1])):
        conn.execute("update app.users set display_name = %s where id = %s", (op[2], u))
    elif kind == "delete_user" and (u := pick(conn, "app.users", tenancy, op[1])):
        conn.execute("delete from app.users where id = %s", (u,))
    elif kind == "recreate_user" and (u := pick(conn, "app.users", tenancy, op[1])):
        conn.execute("delete from app.users where id = %s", (u,))
        f.user(conn, tenancy, "again", user_id=u, email=f"{u}@example.com")
    elif kind == "verify" and (u := pick(conn, "app.users", tenancy, op[1])):
        conn.execute("update app.contact_channels set is_verified = not is_verified where user_id = %s", (u,))
    elif kind == "add_team":
        team = f.team(conn, tenancy)
        if u := pick(conn, "app.users", tenancy, op[1]):
            f.member(conn, tenancy, team, u)
    elif kind == "delete_team" and (team := pick(conn, "app.teams", tenancy, op[1])):
        conn.execute("delete from app.teams where id = %s", (team,))
    elif kind == "sequence":
        f.sequence_all(conn, batch_size=3)
    elif kind == "sync":
        sync(op[1])


def rows(conn, query, *params) -> set[tuple]:
    return {tuple(r.values()) for r in conn.execute(query, params).fetchall()}


@settings(max_examples=60, deadline=None, derandomize=True,  # the same examples on every CI run
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(operation, max_size=25))
@example(ops=[("add_user", "a", True), ("sync", 3), ("recreate_user", 0), ("rename", 0, "b"), ("sync", 7)])
@example(ops=[("add_user", "a", True), ("add_team", 0), ("sequence",), ("delete_user", 0), ("sync", 1)])
def test_target_equals_source_after_any_history(fresh_db, connect, make_database, ops):
    conn = connect(fresh_db, autocommit=True)
    tenancy = f.tenancy(conn)
    target_dsn = make_database()
    targets.add(conn, tenancy, "t", target_dsn)

    def sync(page_size: int) -> None:
        result = engine.sync_until_caught_up(fresh_db, tenancy, ALL_MAPPINGS,
                                             engine.Options(page_size=page_size, ignore_backoff=True))
        assert result.failed == []

    for op in ops:
        apply(conn, tenancy, op, sync)
    sync(4)
    with psycopg.connect(target_dsn, row_factory=dict_row) as target:
        for name in SOURCE:
            assert rows(target, TARGET[name]) == rows(conn, SOURCE[name], tenancy), name
