"""A target's first sync of a mapping loads a snapshot of the tenancy (snapshot.sql.j2) in one
statement, unstamped rows included, and sets the cursor to a watermark taken in the same
statement: nothing the snapshot lacks is skipped later, nothing is half-written, and the
snapshot runs under the same isolation as a fetch."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import psycopg
import pytest

from pyglue import paths
from pyglue.errors import PyglueError
from pyglue.sync import engine, fetch, mappings
from pyglue.sync.target import TargetTables
from tests import factories as f
from tests.syncing import make_world, source_users, target_users, write_mapping


@pytest.fixture
def world(fresh_db, connect, make_database):
    w = make_world(fresh_db, connect, make_database)
    w.add_target()
    return w


def one_round(world, names=None, extra_dirs=None, validate: bool = True) -> engine.TenancyResult:
    """One sync round with no sequencer pass before it (what a worker does beside its sequencer)."""
    chosen = mappings.select(mappings.load_all(extra_dirs, validate=validate), names)
    with engine.source_connection(world.dsn) as source:
        return engine.sync_tenancy(source, world.tenancy, chosen,
                                   engine.Options(ignore_backoff=True, source_dsn=world.dsn))


def flagged(world) -> int:
    return world.conn.execute("select count(*) as n from app.users where should_update_sequence_id").fetchone()["n"]


def target_xmins(world, table: str) -> dict:
    with psycopg.connect(world.targets["main"]) as c:
        return dict(c.execute(f"select id, xmin::text from {table}").fetchall())


def test_a_first_sync_loads_rows_the_sequencer_never_stamped_and_later_pages_rewrite_nothing(world):
    c, t = world.conn, world.tenancy
    ada = f.user(c, t, "Ada", email="ada@example.com")
    f.contact_channel(c, t, ada, "+100", type="phone")
    team = f.team(c, t, "core")
    f.member(c, t, team, ada)
    f.users_bulk(c, t, 300)
    other = f.tenancy(c, "other")
    f.user(c, other, "not mine", email="theirs@example.com")

    result = one_round(world)
    assert result.failed == [] and result.rows == 301 + 2 + 1 + 1
    assert flagged(world) == 302  # never stamped: the snapshot did not need it
    assert set(world.cursors().values()) == {0}  # the watermark: no stamp existed
    assert target_users(world) == source_users(c, t)
    assert [r["primary_email"] for r in world.rows("users") if r["id"] == ada] == ["ada@example.com"]
    assert {r["value"] for r in world.rows("contact_channels")} == {"ada@example.com", "+100"}
    assert [(r["team_id"], r["user_id"]) for r in world.rows("team_member_profiles")] == [(team, ada)]
    before = target_xmins(world, "users")

    assert not world.sync().failed  # stamps everything; the pages bring the same rows again
    assert flagged(world) == 0
    cursors = world.cursors()
    assert cursors["users"] == c.execute("select max(sequence_id) as m from app.users where tenancy_id = %s",
                                         (t,)).fetchone()["m"]
    assert target_xmins(world, "users") == before  # unchanged rows were not rewritten


def test_the_watermark_leaves_out_the_ids_of_a_pass_still_running(world, connect):
    c, t = world.conn, world.tenancy
    ada, bob = f.user(c, t, "Ada"), f.user(c, t, "Bob")
    f.sequence_all(c)
    c.execute("update app.users set display_name = 'Ada 2' where id = %s", (ada,))
    running = connect(world.dsn)  # a sequencer pass that stamped the rename and has not committed
    running.execute("select pyglue.sequence_changes(100)")
    stamp = running.execute("select sequence_id from app.users where id = %s", (ada,)).fetchone()["sequence_id"]

    assert one_round(world, ["users"]).failed == []
    cursor = world.cursors()["users"]
    assert cursor < stamp  # the pass was not visible to the snapshot, so neither are its ids
    assert target_users(world) == {(ada, "Ada 2"), (bob, "Bob")}  # the rename itself was committed

    c.execute("update app.users set display_name = 'Bob 2' where id = %s", (bob,))
    running.commit()
    assert not world.sync(names=["users"]).failed
    assert target_users(world) == source_users(c, t)
    assert world.cursors()["users"] > stamp


def test_the_rows_and_the_watermark_come_from_the_statement_that_copies_them(world):
    """A rename stamped and committed after the snapshot is declared but before its COPY runs:
    the rows hold it and the watermark covers its stamp (they are read in one statement)."""
    c, t = world.conn, world.tenancy
    ada = f.user(c, t, "Ada")
    f.sequence_all(c)
    [users] = mappings.select(mappings.load_all(), ["users"])
    with engine.source_connection(world.dsn) as source, engine.target_connection(world.targets["main"]) as conn:
        tables = TargetTables(conn, t)
        tables.ensure_metadata()
        assert tables.ensure_mapping(users) == 0
        with fetch.stream_snapshot(source, t, "users", users.snapshot_sql, users.source_table, 30000) as rows:
            c.execute("update app.users set display_name = 'Ada 2' where id = %s", (ada,))
            f.sequence_all(c)
            stamp = c.execute("select sequence_id from app.users where id = %s", (ada,)).fetchone()["sequence_id"]
            loaded = tables.apply_snapshot(users, rows.names[2:], rows.copy_to, lambda: stamp)
    assert loaded == (stamp, 1)
    assert target_users(world) == {(ada, "Ada 2")} and world.cursors()["users"] == stamp


def test_deletes_and_re_creations_the_sequencer_has_not_seen_end_right(world):
    c, t = world.conn, world.tenancy
    gone, back, kept = f.user(c, t, "gone"), f.user(c, t, "back"), f.user(c, t, "kept")
    f.sequence_all(c)
    c.execute("delete from app.users where id in (%s, %s)", (gone, back))  # tombstones not stamped yet
    f.user(c, t, "back again", user_id=back)
    assert one_round(world, ["users"]).failed == []
    assert target_users(world) == {(back, "back again"), (kept, "kept")}
    assert not world.sync(names=["users"]).failed  # the tombstones, then the re-created row
    assert target_users(world) == source_users(c, t) == {(back, "back again"), (kept, "kept")}


def test_a_snapshot_is_only_for_an_empty_table_at_cursor_0(world):
    c, t = world.conn, world.tenancy
    f.user(c, t, "first")
    assert not world.sync(names=["users"]).failed
    cursor = world.cursors()["users"]
    f.users_bulk(c, t, 20)
    c.execute("select pyglue.sequence_changes()")
    assert one_round(world, ["users"]).rows == 20  # pages after the cursor, not a second snapshot
    assert world.cursors()["users"] > cursor and target_users(world) == source_users(c, t)


def test_kill_9_during_the_snapshot_leaves_nothing_and_the_next_sync_completes(world):
    f.users_bulk(world.conn, world.tenancy, 60000)
    sync = subprocess.Popen([sys.executable, "-m", "pyglue", "--dsn", world.dsn, "sync", "--tenant",
                             str(world.tenancy), "--mapping", "users", "--json"], cwd=paths.ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with psycopg.connect(world.targets["main"], autocommit=True) as watcher:
        deadline = time.monotonic() + 120
        while not watcher.execute("select exists (select 1 from pg_stat_activity where application_name ="
                                  " 'pyglue sync' and query like 'copy %%pyglue_raw_users%%' and state = 'active')"
                                  ).fetchone()[0]:
            assert sync.poll() is None and time.monotonic() < deadline, "the snapshot's COPY was never seen"
            time.sleep(0.005)
        sync.send_signal(signal.SIGKILL)
        sync.wait(10)
        deadline = time.monotonic() + 10  # the server ends the dead client's session within about a second
        while watcher.execute("select count(*) from pg_stat_activity where application_name = 'pyglue sync'"
                              ).fetchone()[0]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert world.rows("users") == [] and world.cursors()["users"] == 0
    assert not world.sync(names=["users"]).failed
    assert target_users(world) == source_users(world.conn, world.tenancy) and len(target_users(world)) == 60000


ALL_USERS_SNAPSHOT = "select u.id, u.display_name from app.users u where %(tenancy_id)s::uuid is not null"
PAGE = ("select sequence_id, false as is_deleted, id, display_name from app.users u"
        " where %(tenancy_id)s::uuid is not null and sequence_id > %(cursor)s order by sequence_id limit %(limit)s")


def test_a_snapshot_without_a_tenancy_filter_gets_only_its_tenancy(world, tmp_path):
    c, t = world.conn, world.tenancy
    mine = {f.user(c, t, f"mine{i}") for i in range(3)}
    other = f.tenancy(c, "other")
    for i in range(4):
        f.user(c, other, f"theirs{i}")
    folder = write_mapping(tmp_path, "every_user", PAGE, snapshot=ALL_USERS_SNAPSHOT)
    assert one_round(world, ["every_user"], [folder]).failed == []
    assert {r["id"] for r in world.rows("every_user")} == mine


def test_a_snapshot_that_repeats_a_key_fails_and_writes_nothing(world, tmp_path):
    f.user(world.conn, world.tenancy, "twice")
    twice = ALL_USERS_SNAPSHOT + " union all " + ALL_USERS_SNAPSHOT
    folder = write_mapping(tmp_path, "twice", PAGE, snapshot=twice)
    [failed] = one_round(world, ["twice"], [folder]).failed
    assert failed.error.startswith("mapping twice: applying a page to target table twice failed: duplicate key value")
    assert world.rows("twice") == [] and world.cursors()["twice"] == 0


def test_a_snapshot_cannot_choose_its_own_watermark(world, tmp_path):
    """The watermark is the engine's first column; a snapshot column of that name is not a target column."""
    f.user(world.conn, world.tenancy, "u")
    faked = "select 999999999::bigint as sequence_id, u.id, u.display_name from app.users u where %(tenancy_id)s::uuid is not null"
    folder = write_mapping(tmp_path, "faked", PAGE, snapshot=faked)
    [failed] = one_round(world, ["faked"], [folder]).failed
    assert "has no column 'sequence_id'" in failed.error
    assert "faked" not in world.cursors()  # the empty table is dropped with its cursor, as for a faulty ddl


def test_a_snapshot_that_writes_is_refused_by_the_database(world, tmp_path, monkeypatch):
    monkeypatch.setenv(mappings.SKIP_VALIDATION_ENV, "1")  # the database refuses it, not only the validation
    f.user(world.conn, world.tenancy, "u")
    writer = ("with w as (insert into app.users (tenancy_id, display_name) values (%(tenancy_id)s, 'injected')"
              " returning *) select id, display_name from w")
    folder = write_mapping(tmp_path, "writer", PAGE, snapshot=writer)
    [failed] = one_round(world, ["writer"], [folder]).failed
    assert failed.error.startswith("mapping writer: fetch failed: FeatureNotSupported (SQLSTATE 0A000")
    assert world.conn.execute("select count(*) as n from app.users where display_name = 'injected'"
                              ).fetchone()["n"] == 0


@pytest.mark.parametrize("snapshot, message", [
    ("select pg_sleep(1), id from app.users where %(tenancy_id)s::uuid is not null",
     "mapping bad: snapshot.sql.j2"),
    ("select id from app.users; select 1", "mapping bad: snapshot.sql.j2 must be a single SELECT"),
    ("select id from app.users", "snapshot.sql.j2 must use the bound parameter %(tenancy_id)s and no other"),
    ("select id from app.users where %(tenancy_id)s::uuid is not null and %(cursor)s > 0",
     "and no other (found %(cursor)s)"),
])
def test_snapshots_are_validated_on_load(tmp_path, snapshot, message):
    with pytest.raises(PyglueError) as raised:
        mappings.load(write_mapping(tmp_path, "bad", PAGE, snapshot=snapshot) / "bad")
    assert message in str(raised.value)


def test_a_long_snapshot_reports_progress_and_renews_its_lease_while_it_streams(world, tmp_path):
    f.users_bulk(world.conn, world.tenancy, 3000)
    slow = ("select u.id, u.display_name || pg_sleep(0.001)::text as display_name from app.users u"
            " where u.tenancy_id = %(tenancy_id)s")  # over 3 s in all; pg_sleep passes only unvalidated
    [mapping] = mappings.select(mappings.load_all([write_mapping(tmp_path, "slow", PAGE, snapshot=slow)],
                                                  validate=False), ["slow"])
    progress, renewals = [], []
    with engine.source_connection(world.dsn) as source:
        result = engine.sync_tenancy(source, world.tenancy, [mapping], engine.Options(
            ignore_backoff=True, on_rows=progress.append, on_page=lambda: renewals.append(time.monotonic())))
    assert result.failed == [] and len(world.rows("slow")) == 3000
    assert sum(progress) == 3000 and len(progress) >= 3  # not one jump at the end
    assert len(renewals) >= 3 and max(b - a for a, b in zip(renewals, renewals[1:])) < 2.5


def test_the_watermark_is_read_from_the_tenancy_sequence_index(conn):
    """Under the reader's policies the watermark is one backward probe of (tenancy, sequence_id),
    not a scan of the table, whatever the snapshot is."""
    t = f.tenancy(conn)
    f.users_bulk(conn, t, 300)
    f.sequence_all(conn)
    conn.execute("analyze app.users")
    [users] = mappings.select(mappings.load_all(), ["users"])
    statement = fetch._SNAPSHOT.format(source="app.users", snapshot=users.snapshot_sql)
    query = statement.removeprefix("copy (").removesuffix(") to stdout")
    conn.execute("set local role pyglue_mapping_reader")
    plan = "\n".join(r["QUERY PLAN"] for r in conn.execute("explain (costs off) " + query, {"tenancy_id": t}))
    assert "Index Only Scan Backward using users_pyglue_sequence_idx on users w" in plan, plan  # w: the watermark's
