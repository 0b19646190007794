"""The sync engine against a real second database: lifecycle, cascades, paging, exactness."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from pyglue.errors import PyglueError
from pyglue.sync import engine, mappings
from pyglue.sync.target import TargetTables

from tests import factories as f
from tests.syncing import make_world, source_users, target_users, write_mapping


@pytest.fixture
def world(fresh_db, connect, make_database):
    w = make_world(fresh_db, connect, make_database)
    w.add_target()
    return w


def test_insert_update_delete_lifecycle_with_cursor_advancing(world):
    c, t = world.conn, world.tenancy
    u = f.user(c, t, "Ada", email="ada@example.com")
    world.sync()
    assert [(r["id"], r["display_name"], r["primary_email"]) for r in world.rows("users")] == \
        [(u, "Ada", "ada@example.com")]
    first = world.cursors()["users"]
    assert first > 0

    c.execute("update app.users set display_name = 'Ada L.' where id = %s", (u,))
    world.sync()
    assert [r["display_name"] for r in world.rows("users")] == ["Ada L."]
    second = world.cursors()["users"]
    assert second > first

    c.execute("delete from app.users where id = %s", (u,))
    world.sync()
    assert world.rows("users") == []
    assert world.rows("contact_channels") == []
    assert world.cursors()["users"] > second


def test_tables_are_created_on_first_sync_with_timestamptz(world):
    world.sync()
    with psycopg.connect(world.targets["main"]) as c:
        tables = {r[0] for r in c.execute("select tablename from pg_tables where schemaname = 'public'")}
        types = dict(c.execute("select column_name, data_type from information_schema.columns"
                               " where table_name = 'users'").fetchall())
    assert tables == {"_pyglue_sync_metadata", "users", "contact_channels", "teams", "team_member_profiles"}
    assert types["signed_up_at"] == "timestamp with time zone"
    assert types["client_metadata"] == "jsonb"


def test_target_ddl_runs_only_on_the_first_sync(world):
    f.user(world.conn, world.tenancy)
    world.sync()
    with psycopg.connect(world.targets["main"], autocommit=True) as c:
        c.execute("create table public.ddl_log (tag text)")
        c.execute("create function public.log_ddl() returns event_trigger language plpgsql as $$"
                  " begin insert into public.ddl_log select command_tag || ' ' || object_identity"
                  " from pg_event_trigger_ddl_commands() where schema_name = 'public'; end $$")
        c.execute("create event trigger log_ddl on ddl_command_end execute function public.log_ddl()")
    f.user(world.conn, world.tenancy)
    world.sync()
    with psycopg.connect(world.targets["main"], autocommit=True) as c:
        logged = [r[0] for r in c.execute("select tag from public.ddl_log")]
        c.execute("drop event trigger log_ddl")
    assert logged == []  # (the session's staging tables live in pg_temp)
    assert len(world.rows("users")) == 2


def test_updates_before_a_sync_collapse_to_the_last_state(world):
    u = f.user(world.conn, world.tenancy, "v0")
    for i in range(1, 6):
        world.conn.execute("update app.users set display_name = %s where id = %s", (f"v{i}", u))
        f.sequence_all(world.conn)
    world.sync()
    assert [r["display_name"] for r in world.rows("users")] == ["v5"]


def test_delete_before_the_first_sync_leaves_nothing(world):
    u = f.user(world.conn, world.tenancy, email="gone@example.com")
    f.sequence_all(world.conn)
    world.conn.execute("delete from app.users where id = %s", (u,))
    world.sync()
    assert world.rows("users") == [] and world.rows("contact_channels") == []


def test_delete_then_recreate_with_the_same_email_keeps_only_the_new_row(world):
    old = f.user(world.conn, world.tenancy, "old", email="same@example.com")
    world.sync()
    world.conn.execute("delete from app.users where id = %s", (old,))
    new = f.user(world.conn, world.tenancy, "new", email="same@example.com")
    world.sync()
    assert [(r["id"], r["primary_email"]) for r in world.rows("users")] == [(new, "same@example.com")]
    assert [r["user_id"] for r in world.rows("contact_channels")] == [new]


def test_delete_and_reinsert_of_the_same_key_before_a_sync_ends_present(world):
    u = f.user(world.conn, world.tenancy, "first")
    world.sync()
    world.conn.execute("delete from app.users where id = %s", (u,))
    f.user(world.conn, world.tenancy, "second", user_id=u)
    world.sync()
    assert [(r["id"], r["display_name"]) for r in world.rows("users")] == [(u, "second")]


def test_rename_then_delete_ends_with_nothing(world):
    u = f.user(world.conn, world.tenancy, "before")
    world.sync()
    world.conn.execute("update app.users set display_name = 'renamed' where id = %s", (u,))
    world.conn.execute("delete from app.users where id = %s", (u,))
    world.sync()
    assert world.rows("users") == []


def test_teams_memberships_and_cascades(world):
    c, t = world.conn, world.tenancy
    ada, bob = f.user(c, t, "ada"), f.user(c, t, "bob")
    core, ops = f.team(c, t, "core"), f.team(c, t, "ops")
    for team, user in [(core, ada), (core, bob), (ops, ada)]:
        f.member(c, t, team, user)
    world.sync()
    assert {(r["team_id"], r["user_id"]) for r in world.rows("team_member_profiles")} == \
        {(core, ada), (core, bob), (ops, ada)}
    c.execute("delete from app.users where id = %s", (ada,))  # cascades to memberships
    world.sync()
    assert {(r["team_id"], r["user_id"]) for r in world.rows("team_member_profiles")} == {(core, bob)}
    c.execute("delete from app.teams where id = %s", (core,))  # cascades to memberships
    world.sync()
    assert world.rows("team_member_profiles") == []
    assert [r["display_name"] for r in world.rows("teams")] == ["ops"]


def test_multi_email_user_exports_one_row_with_the_primary_email(world):
    c, t = world.conn, world.tenancy
    u = f.user(c, t, "multi")
    f.contact_channel(c, t, u, "second@example.com")
    f.contact_channel(c, t, u, "primary@example.com", is_primary=True, is_verified=True)
    f.contact_channel(c, t, u, "+15550100", type="phone", is_primary=True)
    world.sync()
    [row] = world.rows("users")
    assert (row["primary_email"], row["primary_email_verified"]) == ("primary@example.com", True)
    assert len(world.rows("contact_channels")) == 3


def test_changing_the_primary_email_channel_resyncs_the_user(world):
    c, t = world.conn, world.tenancy
    u = f.user(c, t, "u", email="old@example.com")
    world.sync()
    c.execute("update app.contact_channels set value = 'new@example.com', is_verified = true where user_id = %s", (u,))
    world.sync()
    [row] = world.rows("users")
    assert (row["primary_email"], row["primary_email_verified"]) == ("new@example.com", True)
    c.execute("delete from app.contact_channels where user_id = %s", (u,))
    world.sync()
    assert world.rows("users")[0]["primary_email"] is None


def test_special_characters_and_json_round_trip_exactly(world):
    c, t = world.conn, world.tenancy
    name = "Zoë \"O'Brien\" \\ tab\t newline\n 🚀 𝔘𝔫𝔦 \u200b end"
    meta = '{"big": 12345678901234567890.123456789, "nested": {"emoji": "🎉", "quote": "\\"x\\""}, "list": [1, 2.50]}'
    u = c.execute("insert into app.users (tenancy_id, display_name, client_metadata, signed_up_at) values"
                  " (%s, %s, %s::jsonb, '2024-02-29 23:59:59.123456+05:30') returning id", (t, name, meta)
                  ).fetchone()["id"]
    world.sync()
    with psycopg.connect(world.targets["main"]) as target, psycopg.connect(world.dsn) as source:
        got = target.execute("select display_name, client_metadata::text, signed_up_at from users").fetchone()
        want = source.execute("select display_name, client_metadata::text, signed_up_at from app.users"
                              " where id = %s", (u,)).fetchone()
    assert got == want
    assert got[0].encode() == name.encode()


def test_page_boundaries_1500_users_in_three_batches(world):
    for batch in range(3):
        f.users_bulk(world.conn, world.tenancy, 500, prefix=f"b{batch}-")
    world.sync(page_size=200)
    assert target_users(world) == source_users(world.conn, world.tenancy)
    assert len(world.rows("users")) == 1500


def test_delete_at_a_page_boundary_leaves_299(world):
    """The first page is applied, then the row at the page boundary is deleted mid-sync."""
    f.users_bulk(world.conn, world.tenancy, 300)
    f.sequence_all(world.conn)
    users = mappings.select(mappings.load_all(), ["users"])
    boundary = world.conn.execute("select id from app.users order by sequence_id offset 99 limit 1").fetchone()["id"]
    with engine.source_connection(world.dsn) as source, engine.target_connection(world.targets["main"]) as target:
        tables = TargetTables(target, world.tenancy)
        tables.ensure_metadata()
        cursor = tables.ensure_mapping(users[0])
        page = engine.fetch_page(source, world.tenancy, users[0], cursor, engine.Options(page_size=100))
        tables.apply(users[0], page, cursor)
    assert len(world.rows("users")) == 100 and boundary in {r["id"] for r in world.rows("users")}
    world.conn.execute("delete from app.users where id = %s", (boundary,))
    world.sync(page_size=100)
    assert len(world.rows("users")) == 299
    assert boundary not in {r["id"] for r in world.rows("users")}


def test_50_inserted_10_deleted_10_reinserted_with_the_same_keys(world):
    c, t = world.conn, world.tenancy
    f.users_bulk(c, t, 50)
    world.sync(page_size=7)
    gone = [r["id"] for r in c.execute("select id from app.users order by display_name limit 10")]
    c.execute("delete from app.users where id = any(%s)", (gone,))
    for i, key in enumerate(gone):
        f.user(c, t, f"back{i}", user_id=key)
    world.sync(page_size=7)
    assert target_users(world) == source_users(c, t)
    assert len(world.rows("users")) == 50
    assert {r["display_name"] for r in world.rows("users") if r["id"] in gone} == {f"back{i}" for i in range(10)}


def test_infinite_and_ancient_timestamps_sync_exactly(world):
    c, t = world.conn, world.tenancy
    c.execute("insert into app.users (tenancy_id, display_name, signed_up_at) values (%s, 'inf', 'infinity'),"
              " (%s, 'old', '0044-03-15 12:00:00+00 BC')", (t, t))
    world.sync()
    with psycopg.connect(world.targets["main"]) as target:
        got = sorted(r[0] for r in target.execute("select signed_up_at::text from users"))
    with psycopg.connect(world.dsn) as source:
        want = sorted(r[0] for r in source.execute("select signed_up_at::text from app.users"))
    assert got == want and "infinity" in got


def test_a_primary_key_change_moves_the_row_at_the_target(world):
    c, t = world.conn, world.tenancy
    u = f.user(c, t)
    first, second = f.team(c, t, "first"), f.team(c, t, "second")
    f.member(c, t, first, u)
    world.sync()
    c.execute("update app.team_members set team_id = %s where user_id = %s", (second, u))
    world.sync()
    assert [(r["team_id"], r["user_id"]) for r in world.rows("team_member_profiles")] == [(second, u)]


def test_a_fetch_out_of_sequence_order_is_refused(world, tmp_path):
    f.users_bulk(world.conn, world.tenancy, 3)
    unordered = ("select u.sequence_id, false as is_deleted, u.id, u.display_name from app.users u"
                 " where u.tenancy_id = %(tenancy_id)s and u.sequence_id > %(cursor)s"
                 " order by u.sequence_id desc limit %(limit)s")
    result = world.sync(names=["unordered"], extra_dirs=[write_mapping(tmp_path, "unordered", unordered)])
    assert "strictly increasing sequence_id" in result.failed[0].error
    assert world.cursors().get("unordered") == 0


def test_a_target_of_another_tenancy_is_refused(world):
    f.user(world.conn, world.tenancy)
    world.sync()
    other = f.tenancy(world.conn, "other")
    world.add_target("shared", tenancy=other, dsn=world.targets["main"])
    result = world.sync(tenancy=other)
    [failed] = result.failed
    assert f"target already holds data of tenancy {world.tenancy}" in failed.error


def test_target_tables_are_readable_but_not_writable_by_other_roles(world):
    f.user(world.conn, world.tenancy)
    world.sync()
    with psycopg.connect(world.targets["main"], autocommit=True) as c, \
            f.acting_role(c, "grant usage on schema public to {role}"):
        assert c.execute("select count(*) from users").fetchone()[0] == 1
        for statement in ("insert into users (id) values (gen_random_uuid())", "delete from users",
                          "update _pyglue_sync_metadata set last_synced_sequence_id = 0"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute(statement)


def test_runs_for_one_tenancy_and_target_are_serialized(world):

    f.user(world.conn, world.tenancy)
    with psycopg.connect(world.targets["main"], autocommit=True) as holder:
        key = world.conn.execute("select lock_key from pyglue.sync_targets").fetchone()["lock_key"]
        holder.execute("select pg_advisory_lock(%s)", (key,))  # the same login as the engine: another sync
        busy = engine.sync_until_caught_up(world.dsn, world.tenancy, mappings.load_all(),
                                           engine.Options(lock_timeout_s=0.3, ignore_backoff=True))
        assert busy.failed == []  # not the target's fault: skipped, no error, no backoff
        assert "another sync of tenancy" in busy.targets[0].skipped
        assert not _has_users_table(world)  # nothing happened under the other run's lock
    assert world.sync().failed == []
    assert len(world.rows("users")) == 1


def _has_users_table(world) -> bool:
    with psycopg.connect(world.targets["main"]) as c:
        return c.execute("select to_regclass('public.users') is not null").fetchone()[0]


def test_a_page_whose_cursor_moved_is_not_applied(world):
    f.users_bulk(world.conn, world.tenancy, 3)
    world.sync()
    users = mappings.select(mappings.load_all(), ["users"])[0]
    f.user(world.conn, world.tenancy, "late")
    f.sequence_all(world.conn)
    with engine.source_connection(world.dsn) as source, \
            psycopg.connect(world.targets["main"], autocommit=True) as target:
        tables = TargetTables(target, world.tenancy)
        cursor = tables.cursor(users)
        page = engine.fetch_page(source, world.tenancy, users, cursor, engine.Options())
        with pytest.raises(PyglueError, match="moved from .* page not applied"):
            tables.apply(users, page, cursor - 1)  # as if another run had advanced it meanwhile
        assert tables.cursor(users) == cursor
    assert len(world.rows("users")) == 3


def test_two_tenancies_first_syncs_into_one_empty_database_cannot_both_claim_it(world, connect):
    other = f.tenancy(world.conn, "other")
    with engine.target_connection(world.targets["main"]) as a, engine.target_connection(world.targets["main"]) as b:
        first, second = TargetTables(a, world.tenancy), TargetTables(b, other)
        a.execute("begin")
        a.execute("select pg_advisory_xact_lock(hashtextextended('pyglue.sync:claim', 0))")  # first is mid-claim
        claimer = threading.Thread(target=lambda: results.append(_claim(second)))
        results: list = []
        claimer.start()
        time.sleep(0.3)
        assert results == []  # the second tenancy waits for the first claim
        a.execute("rollback")
        results.append(_claim(first))
        claimer.join(timeout=10)
    assert sorted(r == "claimed" for r in results) == [False, True]
    assert "refusing to sync tenancy" in next(r for r in results if r != "claimed")
    # whichever came first owns the database; the other is refused
    with psycopg.connect(world.targets["main"]) as c:
        owners = {r[0] for r in c.execute("select tenancy_id from _pyglue_sync_metadata")}
    assert len(owners) == 1


def _claim(tables) -> str:
    try:
        tables.ensure_metadata()
        return "claimed"
    except PyglueError as exc:
        return str(exc)


SLOW = """select s.sequence_id, false as is_deleted, s.id, s.display_name || pg_sleep(0.8)::text as display_name
from (select u.sequence_id, u.id, u.display_name from app.users u
      where u.sequence_id > %(cursor)s and %(tenancy_id)s::uuid is not null
      order by u.sequence_id limit %(limit)s) s
order by s.sequence_id"""


def test_a_first_sync_runs_its_mappings_side_by_side(world, tmp_path, connect):
    """Two slow mappings of a fresh target: both fetches are seen running at the same time,
    and the target ends complete."""
    f.users_bulk(world.conn, world.tenancy, 1)
    for name in ("slow_a", "slow_b"):
        write_mapping(tmp_path, name, SLOW)
    chosen = mappings.load_all([tmp_path], validate=False)
    chosen = mappings.select(chosen, ["slow_a", "slow_b"])
    done, result = threading.Event(), []
    runner = threading.Thread(target=lambda: (result.append(engine.sync_until_caught_up(
        world.dsn, world.tenancy, chosen, engine.Options(ignore_backoff=True))), done.set()))
    runner.start()
    watcher, most = connect(world.dsn, autocommit=True), 0
    while not done.wait(0.02):
        most = max(most, watcher.execute("select count(*) as n from pg_stat_activity where datname = current_database()"
                                         " and application_name = 'pyglue fetch' and state = 'active'"
                                         " and query like 'copy (%%'").fetchone()["n"])
    runner.join()
    assert not result[0].failed and most == 2
    assert [r["display_name"] for r in world.rows("slow_a")] == [r["display_name"] for r in world.rows("slow_b")] != []


def test_one_failing_mapping_of_a_first_sync_cancels_the_others_and_is_reported(world, tmp_path):
    """Side by side, the broken mapping's error is the target's error; the users mapping stops
    after its current page; once the broken one is left out, the next sync completes."""
    f.users_bulk(world.conn, world.tenancy, 200)
    write_mapping(tmp_path, "broken", "select 1 as sequence_id, false as is_deleted, null::uuid as id,"
                                      " null::text as display_name from app.users where %(cursor)s >= 0"
                                      " and %(tenancy_id)s::uuid is not null limit %(limit)s")
    result = world.sync(page_size=5, names=["broken", "users"], extra_dirs=[tmp_path], paged=True)
    [failed] = result.failed
    assert failed.error.startswith("mapping broken: fetch must return rows in strictly increasing sequence_id order")
    assert len(world.rows("users")) < 200  # cancelled after a page or so, not run to the end (40 pages)
    assert not world.sync(page_size=5, names=["users"]).failed
    assert target_users(world) == source_users(world.conn, world.tenancy)
