"""The change log the sequencer reads (pyglue.changed_rows, 0025): tracked tables log the key
of each flagged row they write, the sequencer stamps through the log and removes what it
stamped, and nothing flagged is ever without an entry (a row that kept its flag but lost its
entry would never be synced)."""

from __future__ import annotations

import shutil

import psycopg
from psycopg.rows import dict_row

from pyglue import migrate, paths
from tests import factories as f


def entries(conn, table: str = "app.users") -> list[dict]:
    return conn.execute("select tenancy_id, primary_key from pyglue.changed_rows where table_name = %s::regclass"
                        " order by id", (table,)).fetchall()


def stamp(conn, batch: int = 1000) -> int:
    return conn.execute("select pyglue.sequence_changes(%s) as n", (batch,)).fetchone()["n"]


def row(conn, user_id) -> dict:
    return conn.execute("select sequence_id, should_update_sequence_id as flagged from app.users where id = %s",
                        (user_id,)).fetchone()


def pending(conn, table: str = "app.users") -> int:
    return conn.execute("select pending from pyglue.pending_changes() where table_name = %s", (table,)).fetchone()["pending"]


def orphans(conn) -> list[dict]:
    """Flagged rows of any tracked table that have no entry: the invariant the log keeps."""
    found = []
    for t in conn.execute("select table_name::text as t from pyglue.tracked_tables").fetchall():
        match = conn.execute("select pyglue._key_match(%s, 'r', 'l') as m", (t["t"],)).fetchone()["m"]
        found += conn.execute(
            f"select %s as t, r.ctid::text as ctid from {t['t']} r where r.should_update_sequence_id and not exists"
            f" (select 1 from pyglue.changed_rows l where l.table_name = %s::regclass and {match})",
            (t["t"], t["t"])).fetchall()
    return found


def test_migration_replaced_the_flag_indexes_by_log_triggers(conn):
    indexes = conn.execute("select indexname from pg_indexes where indexname like '%pyglue_flagged_idx'").fetchall()
    assert indexes == []
    logged = conn.execute(
        "select g.tgrelid::regclass::text as t, array_agg(g.tgname::text order by g.tgname) as names from pg_trigger g"
        " where g.tgname like '_100_pyglue_log_%' group by 1 order by 1").fetchall()
    assert logged == [{"t": t, "names": ["_100_pyglue_log_insert", "_100_pyglue_log_update"]}
                      for t in ("app.contact_channels", "app.team_members", "app.teams", "app.users")]


def test_an_update_is_logged_stamped_and_its_entry_removed(conn):
    t = f.tenancy(conn)
    u = f.user(conn, t, "ann")
    f.sequence_all(conn)
    assert entries(conn) == [] and not row(conn, u)["flagged"]

    conn.execute("update app.users set display_name = 'ann 2' where id = %s", (u,))
    assert entries(conn) == [{"tenancy_id": t, "primary_key": {"tenancy_id": str(t), "id": str(u)}}]
    assert pending(conn) == 1
    first = row(conn, u)["sequence_id"]
    assert stamp(conn) == 1
    assert row(conn, u)["flagged"] is False and row(conn, u)["sequence_id"] > first
    assert entries(conn) == [] and pending(conn) == 0
    assert stamp(conn) == 0  # the stamp itself logs nothing


def test_inserts_copy_and_a_row_changed_twice(conn):
    t = f.tenancy(conn)
    f.users_bulk(conn, t, 3)
    with conn.cursor().copy("copy app.users (tenancy_id, display_name) from stdin") as copy:
        copy.write_row((t, "copied"))
    assert len(entries(conn)) == 4
    u = f.user(conn, t, "twice")
    conn.execute("update app.users set display_name = 'again' where id = %s", (u,))
    assert len(entries(conn)) == 6  # the insert's entry and the update's: the pass stamps the row once
    assert pending(conn) == 5
    assert f.sequence_all(conn) == 5
    assert entries(conn) == [] and orphans(conn) == []


def test_merge_and_upsert_are_logged(conn):
    """INSERT ... ON CONFLICT and MERGE fire the statement triggers of both their actions with
    their transition tables: each row they flag gets an entry."""
    t = f.tenancy(conn)
    kept = f.user(conn, t, "kept")
    f.sequence_all(conn)
    conn.execute("insert into app.users (tenancy_id, id, display_name) values (%s, %s, 'upserted')"
                 " on conflict (tenancy_id, id) do update set display_name = excluded.display_name", (t, kept))
    assert [e["primary_key"]["id"] for e in entries(conn)] == [str(kept)]
    f.sequence_all(conn)
    conn.execute("merge into app.users u using (values (%s::uuid, %s::uuid, 'merged'), (%s::uuid, gen_random_uuid(), 'new'))"
                 " as s(tenancy_id, id, name) on u.tenancy_id = s.tenancy_id and u.id = s.id"
                 " when matched then update set display_name = s.name"
                 " when not matched then insert (tenancy_id, id, display_name) values (s.tenancy_id, s.id, s.name)",
                 (t, kept, t))
    assert len(entries(conn)) == 2 and orphans(conn) == []
    assert f.sequence_all(conn) == 2

def test_a_locked_row_keeps_its_entry_until_a_later_pass(conn, fresh_db, connect):
    """Stepped: the application holds the row locked (it only locked it: no new version, no
    new entry), the pass skips it. Its entry must survive that pass, or the row would stay
    flagged with nothing that leads the sequencer to it."""
    setup = connect(fresh_db, autocommit=True)
    t = f.tenancy(setup)
    u = f.user(setup, t, "locked")
    other = f.user(setup, t, "free")
    app = connect(fresh_db)
    app.execute("select 1 from app.users where id = %s for update", (u,))
    assert stamp(setup) == 1  # only the free row
    assert row(setup, u)["flagged"] is True and row(setup, other)["flagged"] is False
    assert [e["primary_key"]["id"] for e in entries(setup)] == [str(u)]
    app.rollback()
    assert stamp(setup) == 1
    assert entries(setup) == [] and orphans(setup) == []


def test_an_update_committed_during_a_pass_is_stamped_by_the_next(conn, fresh_db, connect):
    """Stepped: the application updates a listed row and commits while the pass waits for
    the row's lock; the pass must skip the new version (it is not the one it listed) and
    keep the entries, so the next pass stamps the new version."""
    setup = connect(fresh_db, autocommit=True)
    t = f.tenancy(setup)
    u = f.user(setup, t, "v1")
    f.sequence_all(setup)
    setup.execute("update app.users set display_name = 'v2' where id = %s", (u,))
    app = connect(fresh_db)
    app.execute("update app.users set display_name = 'v3' where id = %s", (u,))  # holds the row
    assert stamp(setup) == 0  # listed v2, found it locked: skipped
    app.commit()
    assert len(entries(setup)) == 2
    assert stamp(setup) == 1
    assert setup.execute("select display_name, should_update_sequence_id as flagged from app.users where id = %s",
                         (u,)).fetchone() == {"display_name": "v3", "flagged": False}
    assert entries(setup) == [] and orphans(setup) == []


def test_a_pass_walks_the_log_by_its_key_however_many_dead_entries_it_holds(conn):
    """The log is a queue table: the entries a pass stamped stay dead in its heap until a
    vacuum. A pass must read its candidates through the log's primary key, in order, and
    stop after the batch, not scan (and sort) every entry the heap still holds: with 100
    live entries among 6,000 dead ones the planner's own choice is that scan."""
    t = f.tenancy(conn)
    f.users_bulk(conn, t, 2000)
    for round_ in range(3):
        conn.execute("update app.users set display_name = %s where tenancy_id = %s", (f"round {round_}", t))
        f.sequence_all(conn)
    conn.execute("update app.users set display_name = 'live' where id in"
                 " (select id from app.users where tenancy_id = %s order by id limit 100)", (t,))
    conn.execute("analyze pyglue.changed_rows")

    def scans() -> dict:
        return conn.execute("select seq_scan, idx_scan from pg_stat_xact_user_tables"
                            " where relid = 'pyglue.changed_rows'::regclass").fetchone()

    before = scans()
    assert stamp(conn) == 100
    after = scans()
    assert after["seq_scan"] == before["seq_scan"], "a pass scanned the whole change log"
    assert after["idx_scan"] > before["idx_scan"]
    assert pending(conn) == 0 and orphans(conn) == []


def test_entries_of_deleted_rows_and_changed_keys_are_removed(conn):
    t = f.tenancy(conn)
    gone = f.user(conn, t, "gone")
    moved = f.user(conn, t, "moved")
    conn.execute("delete from app.users where id = %s", (gone,))
    conn.execute("update app.users set id = gen_random_uuid() where id = %s", (moved,))
    f.sequence_all(conn)
    assert entries(conn) == [] and orphans(conn) == []
    tombstones = conn.execute("select primary_key ->> 'id' as id from pyglue.deleted_rows where table_name = 'app.users'"
                              " order by id").fetchall()
    assert {r["id"] for r in tombstones} >= {str(gone), str(moved)}


def test_a_table_with_a_composite_key_of_other_types(conn):
    conn.execute("create table public.parts (tenancy_id uuid not null, code text, n int, at timestamptz, label text,"
                 " primary key (tenancy_id, code, n, at))")
    t = f.tenancy(conn)
    conn.execute("insert into public.parts values (%s, 'o''brien', 7, '2026-12-04 05:00:00.123456+00', 'a')", (t,))
    conn.execute("select pyglue.track_table('public.parts')")
    assert len(entries(conn, "public.parts")) == 1  # the row that was there before tracking
    assert f.sequence_all(conn) >= 1
    conn.execute("update public.parts set label = 'b'")
    assert f.sequence_all(conn) == 1
    assert entries(conn, "public.parts") == [] and orphans(conn) == []


def test_tracking_twice_logs_nothing_twice_and_untracking_drops_the_log(conn):
    conn.execute("create table public.gadgets (tenancy_id uuid not null, id int, primary key (tenancy_id, id))")
    t = f.tenancy(conn)
    conn.execute("insert into public.gadgets select %s, g from generate_series(1, 3) g", (t,))
    conn.execute("select pyglue.track_table('public.gadgets')")
    conn.execute("select pyglue.track_table('public.gadgets')")
    assert len(entries(conn, "public.gadgets")) == 3
    function = conn.execute("select tgfoid::regprocedure::text as fn from pg_trigger"
                            " where tgrelid = 'public.gadgets'::regclass and tgname = '_100_pyglue_log_update'")
    name = function.fetchone()["fn"]
    assert name.startswith("pyglue._tg_log_change_public_gadgets_")

    conn.execute("select pyglue.untrack_table('public.gadgets')")
    assert entries(conn, "public.gadgets") == []
    assert conn.execute("select to_regprocedure(%s) as fn", (name,)).fetchone()["fn"] is None
    conn.execute("select pyglue.track_table('public.gadgets')")  # still flagged: logged again
    assert len(entries(conn, "public.gadgets")) == 3


def test_a_renamed_table_tracked_again_keeps_one_log_function(conn):
    conn.execute("create table public.olds (tenancy_id uuid not null, id int, primary key (tenancy_id, id))")
    conn.execute("select pyglue.track_table('public.olds')")
    conn.execute("alter table public.olds rename to news")
    conn.execute("select pyglue.track_table('public.news')")
    names = [r["proname"] for r in conn.execute(
        "select proname from pg_proc where proname like '\\_tg\\_log\\_change\\_public\\_%'").fetchall()]
    assert len(names) == 1 and names[0].startswith("_tg_log_change_public_news_")  # the old name's is gone
    t = f.tenancy(conn)
    conn.execute("insert into public.news values (%s, 1)", (t,))
    assert len(entries(conn, "public.news")) == 1


def test_a_role_without_rights_on_pyglue_writes_a_tracked_table(conn):
    t = f.tenancy(conn)
    u = f.user(conn, t, "app role")
    f.sequence_all(conn)
    log = conn.execute("select 'pyglue.changed_rows'::regclass::oid as oid").fetchone()["oid"]
    with f.acting_role(conn, "grant usage on schema app to {role}", "grant select, insert, update on app.users to {role}"):
        conn.execute("update app.users set display_name = 'by the role' where id = %s", (u,))
        conn.execute("insert into app.users (tenancy_id, display_name) values (%s, 'new')", (t,))
        assert conn.execute("select has_table_privilege(%s, 'select') as may", (log,)).fetchone()["may"] is False
    assert len(entries(conn)) == 2
    assert f.sequence_all(conn) == 2


def test_sync_status_counts_flagged_rows_through_the_log(conn):
    t = f.tenancy(conn)
    for i in range(3):
        f.user(conn, t, f"u{i}")
    f.sequence_all(conn)
    conn.execute("select pyglue.register_mapping('users', 'app.users'::regclass)")
    conn.execute("select pyglue.add_sync_target(%s, 'status', 'postgresql://nobody@127.0.0.1:1/none')", (t,))
    before = conn.execute("select pending_rows from pyglue.sync_status(%s) where mapping_name = 'users'", (t,))
    assert before.fetchone()["pending_rows"] == 3  # stamped, not synced
    conn.execute("update app.users set display_name = display_name || '!' where tenancy_id = %s", (t,))
    after = conn.execute("select pending_rows from pyglue.sync_status(%s) where mapping_name = 'users'", (t,))
    assert after.fetchone()["pending_rows"] == 3  # flagged again: still three rows, not six


def test_migration_logs_the_rows_flagged_before_it_and_its_rollback_restores_the_index(make_database, tmp_path):
    """An install upgraded with changes waiting: 0025 logs every flagged row, so none is
    stranded; rolled back, the flag index is back and the sequencer of 0023 finds rows again."""
    target = make_database()
    older = tmp_path / "older"
    older.mkdir()
    for path in paths.MIGRATIONS.glob("*.sql"):
        if path.name < "0025":
            shutil.copy(path, older / path.name)
    migrate.migrate(target, older)
    with psycopg.connect(target, row_factory=dict_row, autocommit=True) as c:
        t = f.tenancy(c)
        stamped, waiting = f.user(c, t, "stamped"), f.user(c, t, "waiting")
        f.sequence_all(c)
        c.execute("update app.users set display_name = 'changed' where id = %s", (waiting,))
        f.user(c, t, "new")
    assert migrate.migrate(target)[0] == "0025_change_log"  # and the later ones
    with psycopg.connect(target, row_factory=dict_row, autocommit=True) as c:
        logged = {e["primary_key"]["id"] for e in entries(c)}
        assert str(waiting) in logged and str(stamped) not in logged and len(logged) == 2
        assert orphans(c) == []
        assert f.sequence_all(c) == 2
    migrate.rollback(target, "0024_finished_requests_wake_workers")
    with psycopg.connect(target, row_factory=dict_row, autocommit=True) as c:
        assert c.execute("select to_regclass('app.users_pyglue_flagged_idx') is not null as back").fetchone()["back"]
        assert c.execute("select to_regclass('pyglue.changed_rows') as t").fetchone()["t"] is None
        c.execute("update app.users set display_name = 'after rollback' where id = %s", (stamped,))
        assert f.sequence_all(c) == 1
