"""pyglue.sequence_changes: ordering guarantees under concurrency, as fixed interleavings."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from pyglue import capture

from tests import factories as f

READ_ALL = """
select 'app.users' as t, id::text as k, sequence_id from app.users where sequence_id > %(last)s
union all select 'app.contact_channels', id::text, sequence_id from app.contact_channels where sequence_id > %(last)s
union all select 'app.teams', id::text, sequence_id from app.teams where sequence_id > %(last)s
union all select 'app.team_members', team_id::text || user_id::text, sequence_id from app.team_members
    where sequence_id > %(last)s
union all select 'tombstone', id::text, sequence_id from pyglue.deleted_rows where sequence_id > %(last)s
order by sequence_id
"""


class Reader:
    """A sync-like reader: remembers the last id it saw and asks only for newer rows."""

    def __init__(self, conn):
        self.conn, self.last, self.seen = conn, 0, []

    def read(self) -> list[tuple]:
        rows = [(r["t"], r["k"], r["sequence_id"]) for r in self.conn.execute(READ_ALL, {"last": self.last})]
        if rows:
            self.last = rows[-1][2]
        self.seen += rows
        return rows


def sequence(conn, batch: int = 10000) -> int:
    return conn.execute("select pyglue.sequence_changes(%s) as n", (batch,)).fetchone()["n"]


def blocked_on_lock(watcher, pid: int) -> bool:
    row = watcher.execute("select wait_event_type from pg_stat_activity where pid = %s", (pid,)).fetchone()
    return row is not None and row["wait_event_type"] == "Lock"


def waiting_for_the_sequencer_lock(watcher, pid: int) -> bool:
    """Blocked on the row of pyglue.sequencer_lock another pass holds."""
    return blocked_on_lock(watcher, pid) and watcher.execute(
        "select count(*) as n from pg_locks l join pg_stat_activity a using (pid)"
        " where l.pid = %s and a.query like '%%sequence_changes%%'", (pid,)).fetchone()["n"] > 0


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.02)


def in_thread(fn, *args):
    result = {}

    def run():
        try:
            result["value"] = fn(*args)
        except BaseException as exc:  # surfaced by join_result
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def join_result():
        thread.join(timeout=30)
        assert not thread.is_alive(), "thread did not finish"
        if "error" in result:
            raise result["error"]
        return result.get("value")

    return join_result


@pytest.fixture
def db(fresh_db, connect):
    """An autocommit connection to a fresh migrated database, with one tenancy in it."""
    conn = connect(fresh_db, autocommit=True)
    return {"dsn": fresh_db, "conn": conn, "tenancy": f.tenancy(conn)}


def test_a_pass_stamps_flagged_rows_and_enqueues_their_tenancy(conn):
    t1, t2 = f.tenancy(conn), f.tenancy(conn)
    f.user(conn, t1, email="a@example.com")
    f.team(conn, t2)
    assert sequence(conn) == 3
    assert sequence(conn) == 0
    stamped = conn.execute("select count(distinct sequence_id) as n from (select sequence_id from app.users "
                           "union all select sequence_id from app.contact_channels union all "
                           "select sequence_id from app.teams) s").fetchone()["n"]
    assert stamped == 3
    queued = conn.execute("select tenancy_id from pyglue.outgoing_requests where status = 'pending' order by 1")
    assert sorted(r["tenancy_id"] for r in queued) == sorted([t1, t2])


def test_batch_size_limits_each_table_per_pass(conn):
    t = f.tenancy(conn)
    f.users_bulk(conn, t, 25)
    assert [sequence(conn, 10) for _ in range(4)] == [10, 10, 5, 0]


def test_bad_batch_size_is_refused(conn):
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="batch size must be at least 1, got 0"):
        sequence(conn, 0)


def test_repeatable_read_is_refused(fresh_db, connect):
    c = connect(fresh_db)
    c.execute("set transaction isolation level repeatable read")
    with pytest.raises(psycopg.Error, match="must run in a READ COMMITTED transaction, not REPEATABLE READ") as e:
        sequence(c)
    assert e.value.sqlstate == "25001"


def test_delete_then_reinsert_same_key_stamps_tombstone_first(conn):
    t = f.tenancy(conn)
    u = f.user(conn, t, "first")
    sequence(conn)
    conn.execute("delete from app.users where id = %s", (u,))
    f.user(conn, t, "second", user_id=u)
    sequence(conn)
    stone = conn.execute("select sequence_id from pyglue.deleted_rows where primary_key->>'id' = %s", (str(u),))
    live = conn.execute("select sequence_id, display_name from app.users where id = %s", (u,)).fetchone()
    assert stone.fetchone()["sequence_id"] < live["sequence_id"]
    assert live["display_name"] == "second"


def test_late_commit_is_read_after_everything_already_read(db, connect):
    """A writer's transaction stays open across a pass; its change arrives later, with a higher id."""
    conn, t = db["conn"], db["tenancy"]
    late = f.user(conn, t, "late")
    sequence(conn)
    reader = Reader(connect(db["dsn"], autocommit=True))
    reader.read()

    writer = connect(db["dsn"])  # step 1: writer updates a row and does not commit
    writer.execute("update app.users set display_name = 'late change' where id = %s", (late,))
    early = f.user(conn, t, "early")  # step 2: others commit, a pass runs, the reader reads
    assert sequence(conn) == 1
    assert [k for _, k, _ in reader.read()] == [str(early)]
    writer.commit()  # step 3: the late writer commits; the next pass stamps it
    assert sequence(conn) == 1
    [(table, key, seq)] = reader.read()
    assert (table, key) == ("app.users", str(late))
    assert seq > max(s for _, _, s in reader.seen[:-1])


def test_second_sequencer_waits_for_the_first_to_commit(db, connect):
    conn, t = db["conn"], db["tenancy"]
    first, second = connect(db["dsn"]), connect(db["dsn"])
    reader = Reader(connect(db["dsn"], autocommit=True))
    f.user(conn, t, "a")
    assert sequence(first) == 1  # pass 1 holds its ids, uncommitted
    f.user(conn, t, "b")
    second_pass = in_thread(sequence, second)
    wait_until(lambda: waiting_for_the_sequencer_lock(conn, second.info.backend_pid))
    assert reader.read() == []  # nothing visible yet, and pass 2 has taken no id
    first.commit()
    assert second_pass() == 1
    second.commit()
    rows = reader.read()
    assert [k for k in rows] == sorted(rows, key=lambda r: r[2]) and len(rows) == 2
    assert rows[0][2] < rows[1][2]


def test_row_updated_while_the_sequencer_holds_it_is_flagged_again(db, connect):
    conn, t = db["conn"], db["tenancy"]
    u = f.user(conn, t)
    sequencer, app = connect(db["dsn"]), connect(db["dsn"])
    assert sequence(sequencer) == 1  # the pass holds the row lock
    first_id = sequencer.execute("select sequence_id from app.users where id = %s", (u,)).fetchone()["sequence_id"]
    update = in_thread(lambda: app.execute("update app.users set display_name = 'during' where id = %s", (u,)))
    wait_until(lambda: blocked_on_lock(conn, app.info.backend_pid))
    sequencer.commit()
    update()
    app.commit()
    row = conn.execute("select sequence_id, should_update_sequence_id as flagged from app.users where id = %s", (u,))
    assert row.fetchone() == {"sequence_id": first_id, "flagged": True}
    assert sequence(conn) == 1
    second_id = conn.execute("select sequence_id from app.users where id = %s", (u,)).fetchone()["sequence_id"]
    assert second_id > first_id


def test_sequencer_skips_rows_locked_by_the_application(db, connect):
    conn, t = db["conn"], db["tenancy"]
    u = f.user(conn, t)
    f.user(conn, t)
    app = connect(db["dsn"])
    app.execute("select 1 from app.users where id = %s for update", (u,))
    started = time.monotonic()
    assert sequence(conn) == 1  # does not wait for the application's lock
    assert time.monotonic() - started < 2
    app.rollback()
    assert sequence(conn) == 1


@pytest.mark.slow
@pytest.mark.parametrize("workers", [2, 4])
def test_concurrent_sequencers_stamp_every_row_once_in_visible_order(db, connect, workers):
    conn, t = db["conn"], db["tenancy"]
    f.users_bulk(conn, t, 6000)
    conn.execute("""insert into app.contact_channels (tenancy_id, user_id, type, value)
                    select tenancy_id, id, 'email', id::text || '@example.com' from app.users""")
    team = f.team(conn, t)
    conn.execute("insert into app.team_members (tenancy_id, team_id, user_id) select tenancy_id, %s, id"
                 " from app.users limit 3000", (team,))
    conn.execute("delete from app.contact_channels where ctid in (select ctid from app.contact_channels limit 500)")
    expected = conn.execute("select (select count(*) from app.users) + (select count(*) from app.contact_channels)"
                            " + (select count(*) from app.teams) + (select count(*) from app.team_members)"
                            " + (select count(*) from pyglue.deleted_rows) as n").fetchone()["n"]

    done = threading.Event()
    reader = Reader(connect(db["dsn"], autocommit=True))

    def read_while_sequencing():
        while not done.is_set():
            reader.read()

    def run_passes(c):
        stamped = 0
        while n := sequence(c, 300):
            stamped += n
        return stamped

    read = in_thread(read_while_sequencing)
    passes = [in_thread(run_passes, connect(db["dsn"], autocommit=True)) for _ in range(workers)]
    stamped = sum(p() for p in passes)
    done.set()
    read()
    reader.read()

    assert stamped == expected
    ids = [seq for _, _, seq in reader.seen]
    assert len(ids) == expected and len(set(ids)) == expected  # every row read once: none skipped
    assert ids == sorted(ids)
    flagged = sum(r["pending"] for r in conn.execute("select pending from pyglue.pending_changes()"))
    assert flagged == 0


def test_fusebox_off_stamps_nothing_and_on_resumes(conn):
    t = f.tenancy(conn)
    f.user(conn, t)
    conn.execute("select pyglue.set_fusebox(p_sequencer => false)")
    assert sequence(conn) == 0
    assert conn.execute("select count(*) as n from pyglue.outgoing_requests").fetchone()["n"] == 0
    conn.execute("select pyglue.set_fusebox(p_sequencer => true)")
    assert sequence(conn) == 1


def test_pending_changes_counts_rows_per_table(conn):
    t = f.tenancy(conn)
    f.user(conn, t, email="x@example.com")
    f.users_bulk(conn, t, 4)
    conn.execute("delete from app.contact_channels")
    pending = {r["table_name"]: r["pending"] for r in conn.execute("select * from pyglue.pending_changes()")}
    assert pending == {"pyglue.deleted_rows": 1, "app.contact_channels": 0, "app.team_members": 0,
                       "app.teams": 0, "app.users": 5}


def test_tombstones_beyond_one_batch_are_still_stamped_before_live_rows(conn):
    """A mass delete leaves more tombstones than a batch: a re-created key must still end present."""
    t = f.tenancy(conn)
    first, second = f.user(conn, t, "first"), f.user(conn, t, "second")
    f.sequence_all(conn)
    conn.execute("delete from app.users where id in (%s, %s)", (first, second))
    f.user(conn, t, "again", user_id=second)
    while sequence(conn, 1):
        pass
    stones = {r["k"]: r["sequence_id"] for r in conn.execute(
        "select primary_key->>'id' as k, sequence_id from pyglue.deleted_rows")}
    live = conn.execute("select sequence_id from app.users where id = %s", (second,)).fetchone()["sequence_id"]
    assert max(stones.values()) < live


def test_a_non_waiting_pass_returns_at_once_while_another_runs(db, connect):
    f.user(db["conn"], db["tenancy"])
    holder = connect(db["dsn"])
    assert sequence(holder) == 1  # holds the sequencer lock until it commits
    f.user(db["conn"], db["tenancy"])
    started = time.monotonic()
    assert capture.sequence_pass(db["conn"], 100, wait=False) == 0
    assert time.monotonic() - started < 2
    holder.commit()
    assert capture.sequence_pass(db["conn"], 100, wait=False) == 1


@pytest.mark.parametrize("change", ["update", "delete"])
def test_a_burst_after_statistics_saw_nothing_flagged_is_stamped_in_linear_time(conn, change):
    """The statistics of a quiet system say almost no row is flagged. A pass that then finds
    a burst of thousands must not join its candidates to the flagged rows by a nested loop
    (5,000 x 5,000 comparisons took 4 s here, and a worker's sequencer fell behind a writer
    of 10k changes/s for good): its stamping step looks the candidates up by ctid only."""
    t = f.tenancy(conn)
    f.users_bulk(conn, t, 5000)
    f.sequence_all(conn)
    conn.execute("analyze app.users")
    conn.execute("analyze pyglue.deleted_rows")
    conn.execute("analyze pyglue.changed_rows")  # empty: its statistics say no entry either
    if change == "update":
        conn.execute("update app.users set display_name = display_name || '!' where tenancy_id = %s", (t,))
    else:
        conn.execute("delete from app.users where tenancy_id = %s", (t,))
    conn.execute("set local statement_timeout = '3s'")  # linear: well under 0.5 s; the nested loop: 4 s idle
    assert sequence(conn) == 5000
    conn.execute("reset statement_timeout")
    left = ("select count(*) as n from pyglue.deleted_rows where tenancy_id = %s and should_update_sequence_id"
            if change == "delete" else
            "select count(*) as n from app.users where tenancy_id = %s and should_update_sequence_id")
    assert conn.execute(left, (t,)).fetchone()["n"] == 0
