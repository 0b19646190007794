"""Tenant isolation of mapping queries: the fetch login, row-level security, read-only, statement
timeout (the attacks of issue 8 are in test_sync_hostile.py)."""

from __future__ import annotations

import psycopg
import pytest

from pyglue import queries
from pyglue.errors import PyglueError
from pyglue.sync import engine, fetch, mappings
from tests import factories as f
from tests.syncing import make_world, write_mapping

READER = "pyglue_mapping_reader"


def bind(conn, fetcher, tenancy) -> None:
    """What pyglue.sync.fetch does before a mapping's query: the main connection names the
    tenancy of the fetch login's open transaction."""
    fetcher.execute("set transaction read only")
    pid, started, xact = fetcher.execute(
        "select pg_backend_pid(), (select backend_start from pg_stat_get_activity(pg_backend_pid())),"
        " pg_current_xact_id()::text").fetchone()
    if tenancy:
        conn.execute(queries.load("open_fetch_session"),
                     {"pid": pid, "backend_start": started, "xact": xact, "tenancy_id": tenancy})
        conn.commit()


def count(fetcher, table: str) -> int:
    return fetcher.execute(f"select count(*) from {table}").fetchone()[0]


def test_the_fetch_login_sees_only_its_tenancy_and_nothing_without_one(fresh_db, connect):
    conn = connect(fresh_db)
    t1, t2 = f.tenancy(conn), f.tenancy(conn)
    for t in (t1, t1, t2):
        f.user(conn, t)
    conn.execute("delete from app.users where tenancy_id = %s and ctid = (select min(ctid) from app.users"
                 " where tenancy_id = %s)", (t1, t1))
    conn.commit()
    with psycopg.connect(fetch.fetch_dsn(fresh_db)) as fetcher:
        bind(conn, fetcher, t1)
        assert (count(fetcher, "app.users"), count(fetcher, "pyglue.deleted_rows")) == (1, 1)
        fetcher.rollback()
        bind(conn, fetcher, t1)  # a row for an earlier transaction of this session does not count
        fetcher.rollback()
        fetcher.execute("set transaction read only")
        assert count(fetcher, "app.users") == 0
        fetcher.rollback()
        bind(conn, fetcher, None)
        assert count(fetcher, "app.users") == 0
        fetcher.rollback()
        for forbidden in ("pyglue.sync_targets", "pyglue.fetch_sessions", "app.tenancies"):
            bind(conn, fetcher, t1)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                fetcher.execute(f"select * from {forbidden}")
            fetcher.rollback()
        bind(conn, fetcher, t1)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            fetcher.execute("insert into app.users (tenancy_id) values (%s)", (t1,))


def test_a_powerful_fetch_login_is_refused(fresh_db, connect, make_database, monkeypatch):
    world = make_world(fresh_db, connect, make_database)
    world.add_target()
    main_user = world.conn.execute("select current_user as u").fetchone()["u"]
    monkeypatch.setenv(fetch.FETCH_DSN_ENV, f"user={main_user}")
    [failed] = world.sync().failed
    assert failed.error.startswith(f"refusing fetch login '{main_user}': it must have no privileges beyond "
                                   "pyglue_mapping_reader (powerful")


def test_an_unknown_fetch_login_is_one_clear_line(fresh_db, connect, make_database, monkeypatch):
    world = make_world(fresh_db, connect, make_database)
    world.add_target()
    monkeypatch.setenv(fetch.FETCH_DSN_ENV, "user=pyglue_no_such_login host=127.0.0.1 port=1")
    [failed] = world.sync().failed
    assert failed.error.startswith("cannot connect as the fetch login 'pyglue_no_such_login': cannot connect to")
    assert "set PYGLUE_FETCH_DSN" in failed.error


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
    assert failed.error.startswith("mapping writer: fetch failed: FeatureNotSupported (SQLSTATE 0A000")
    assert world.conn.execute("select count(*) as n from app.users where display_name = 'injected'"
                              ).fetchone()["n"] == 0
    status = world.conn.execute("select last_error from pyglue.sync_targets").fetchone()
    assert status["last_error"] == failed.error


def test_a_slow_mapping_hits_the_statement_timeout(fresh_db, connect, make_database, tmp_path):

    world = make_world(fresh_db, connect, make_database)
    f.user(world.conn, world.tenancy)
    world.add_target()
    slow = ALL_USERS.replace("u.display_name from", "u.display_name || pg_sleep(2)::text as display_name from")
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


def test_noinherit_members_of_the_reader_role_see_all_rows_when_not_acting_as_it(fresh_db, connect):
    c = connect(fresh_db, autocommit=True)
    for t in (f.tenancy(c), f.tenancy(c)):
        f.user(c, t)
    with f.acting_role(c, "grant usage on schema app to {role}", "grant select on app.users to {role}",
                       member_of=READER, attributes="noinherit"):
        assert c.execute("select count(*) as n from app.users").fetchone()["n"] == 2
