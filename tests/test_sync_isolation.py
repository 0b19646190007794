"""Tenant isolation of mapping queries: row-level security, read-only, statement timeout."""

from __future__ import annotations

import psycopg
import pytest

from pyglue import queries
from pyglue.errors import PyglueError
from pyglue.sync import engine, mappings
from tests import factories as f
from tests.syncing import make_world, write_mapping

READER = "pyglue_mapping_reader"


def as_reader(conn, tenancy):
    """What engine.fetch_page does before running a mapping's query."""
    if tenancy:
        conn.execute(queries.load("open_fetch_session"), {"tenancy_id": tenancy})
    conn.execute("set transaction read only")
    conn.execute(f"set local role {READER}")


def test_reader_sees_only_its_tenancy_and_nothing_without_one(conn):
    t1, t2 = f.tenancy(conn), f.tenancy(conn)
    for t in (t1, t1, t2):
        f.user(conn, t)
    conn.execute("delete from app.users where tenancy_id = %s and ctid = (select min(ctid) from app.users"
                 " where tenancy_id = %s)", (t1, t1))
    conn.commit()
    try:
        as_reader(conn, t1)
        assert conn.execute("select count(*) as n from app.users").fetchone()["n"] == 1
        assert conn.execute("select count(*) as n from pyglue.deleted_rows").fetchone()["n"] == 1
        conn.rollback()
        as_reader(conn, None)
        assert conn.execute("select count(*) as n from app.users").fetchone()["n"] == 0
        conn.rollback()
        as_reader(conn, t1)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("select * from pyglue.sync_targets")
        conn.rollback()
        as_reader(conn, t1)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("insert into app.users (tenancy_id) values (%s)", (t1,))
    finally:
        conn.rollback()
        conn.execute("delete from app.tenancies where id in (%s, %s)", (t1, t2))
        conn.execute("delete from pyglue.deleted_rows where tenancy_id in (%s, %s)", (t1, t2))
        conn.commit()


def test_other_roles_see_what_they_saw_before(fresh_db, connect):
    c = connect(fresh_db, autocommit=True)
    t1, t2 = f.tenancy(c), f.tenancy(c)
    f.user(c, t1)
    f.user(c, t2)
    with f.acting_role(c, "grant usage on schema app to {role}", "grant select, update on app.users to {role}"):
        assert c.execute("select count(*) as n from app.users").fetchone()["n"] == 2
        assert c.execute("update app.users set display_name = 'x'").rowcount == 2


def test_tracking_a_table_with_its_own_policies_does_not_widen_them(conn):
    conn.execute("create table public.secrets (tenancy_id uuid, id int, owner text, primary key (tenancy_id, id))")
    conn.execute("alter table public.secrets enable row level security")
    conn.execute("create policy mine on public.secrets using (owner = current_user)")
    conn.execute("select pyglue.track_table('public.secrets')")
    policies = conn.execute("select policyname, roles::text[] as roles from pg_policies where tablename = 'secrets'"
                            " order by 1").fetchall()
    assert [(p["policyname"], p["roles"]) for p in policies] == [
        ("mine", ["public"]), ("pyglue_tenancy_isolation", [READER]), ("pyglue_visible", [READER])]


ALL_USERS = """select * from (
  select u.sequence_id, false as is_deleted, u.id, u.display_name from app.users u
  where u.sequence_id > %(cursor)s and %(tenancy_id)s::uuid is not null
) s order by sequence_id limit %(limit)s"""

WRITER = """with w as (insert into app.users (tenancy_id, display_name) values (%(tenancy_id)s, 'injected') returning *)
select sequence_id, false as is_deleted, id, display_name from w where sequence_id > %(cursor)s limit %(limit)s"""


def test_a_mapping_without_a_tenancy_filter_gets_only_its_tenancy(fresh_db, connect, make_database, tmp_path):
    world = make_world(fresh_db, connect, make_database)
    other = f.tenancy(world.conn, "other")
    mine = {f.user(world.conn, world.tenancy, f"mine{i}") for i in range(3)}
    for i in range(4):
        f.user(world.conn, other, f"theirs{i}")
    world.add_target()
    result = world.sync(names=["all_users"], extra_dirs=[write_mapping(tmp_path, "all_users", ALL_USERS)])
    assert result.failed == []
    assert {r["id"] for r in world.rows("all_users")} == mine


def test_a_mapping_that_writes_fails_and_writes_nothing(fresh_db, connect, make_database, tmp_path, monkeypatch):
    monkeypatch.setenv(mappings.SKIP_VALIDATION_ENV, "1")  # the database refuses it, not only the validation
    world = make_world(fresh_db, connect, make_database)
    f.user(world.conn, world.tenancy)
    world.add_target()
    result = world.sync(names=["writer"], extra_dirs=[write_mapping(tmp_path, "writer", WRITER)])
    [failed] = result.failed
    assert "in a read-only transaction" in failed.error
    assert world.conn.execute("select count(*) as n from app.users where display_name = 'injected'"
                              ).fetchone()["n"] == 0
    status = world.conn.execute("select last_error from pyglue.sync_targets").fetchone()
    assert "read-only" in status["last_error"]


def test_a_slow_mapping_hits_the_statement_timeout(fresh_db, connect, make_database, tmp_path):

    world = make_world(fresh_db, connect, make_database)
    f.user(world.conn, world.tenancy)
    world.add_target()
    slow = ALL_USERS.replace("u.display_name from", "u.display_name || pg_sleep(2)::text from")
    chosen = mappings.load_all([write_mapping(tmp_path, "slow", slow)], validate=False)  # pg_sleep is refused
    chosen = mappings.select(chosen, ["slow"])
    result = engine.sync_until_caught_up(world.dsn, world.tenancy, chosen,
                                         engine.Options(statement_timeout_ms=200, ignore_backoff=True))
    assert "canceling statement due to statement timeout" in result.failed[0].error


@pytest.mark.parametrize("fetch, message", [
    ("select set_config('role', 'postgres', true)", "may not use 'set_config'"),
    ("select 1", "must use the bound parameter %(tenancy_id)s"),
])
def test_mappings_that_could_escape_or_leak_are_refused_on_load(tmp_path, fetch, message):
    with pytest.raises(PyglueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        mappings.load(write_mapping(tmp_path, "bad", fetch) / "bad")


SETS_ANOTHER_TENANCY = """with sneaky as materialized (
  select set_config('pyglue.tenancy_id', '{other}', true) as x)
select u.sequence_id, false as is_deleted, u.id, u.display_name
from sneaky, lateral (select * from app.users where sequence_id > %(cursor)s and %(tenancy_id)s::uuid is not null
                      and x is not null offset 0) u
order by u.sequence_id limit %(limit)s"""

SWITCHES_ROLE = """select u.sequence_id, false as is_deleted, u.id, u.display_name
from app.users u, (select set_config('role', 'none', true) as r) s
where u.sequence_id > %(cursor)s and %(tenancy_id)s::uuid is not null and s.r is not null
order by u.sequence_id limit %(limit)s"""


def unchecked_mapping(tmp_path, name, fetch):
    """Load a mapping past the load-time lint, as a user who spells set_config otherwise could."""
    folder = write_mapping(tmp_path, name, "select %(tenancy_id)s, %(cursor)s, %(limit)s")
    loaded = mappings.load(folder / name)
    return mappings.Mapping(loaded.name, loaded.source_table, loaded.target_table, loaded.key_columns,
                            fetch, loaded.ddl_sql)


def test_changing_the_tenancy_setting_inside_the_query_reads_nothing_more(fresh_db, connect, make_database,
                                                                           tmp_path):
    world = make_world(fresh_db, connect, make_database)
    other = f.tenancy(world.conn, "other")
    mine = f.user(world.conn, world.tenancy, "mine")
    f.user(world.conn, other, "SECRET-OTHER-TENANT")
    world.add_target()
    sneaky = unchecked_mapping(tmp_path, "sneaky", SETS_ANOTHER_TENANCY.replace("{other}", str(other)))
    result = engine.sync_until_caught_up(world.dsn, world.tenancy, [sneaky], engine.Options(ignore_backoff=True))
    assert result.failed == []
    assert [r["id"] for r in world.rows("sneaky")] == [mine]


def test_a_fetch_that_switches_role_is_discarded(fresh_db, connect, make_database, tmp_path):
    world = make_world(fresh_db, connect, make_database)
    f.user(world.conn, world.tenancy)
    world.add_target()
    switcher = unchecked_mapping(tmp_path, "switcher", SWITCHES_ROLE)
    result = engine.sync_until_caught_up(world.dsn, world.tenancy, [switcher], engine.Options(ignore_backoff=True))
    assert "the fetch changed its session" in result.failed[0].error
    assert world.rows("switcher") == []


def test_noinherit_members_of_the_reader_role_see_all_rows_when_not_acting_as_it(fresh_db, connect):
    c = connect(fresh_db, autocommit=True)
    for t in (f.tenancy(c), f.tenancy(c)):
        f.user(c, t)
    with f.acting_role(c, "grant usage on schema app to {role}", "grant select on app.users to {role}",
                       member_of=READER, attributes="noinherit"):
        assert c.execute("select count(*) as n from app.users").fetchone()["n"] == 2
