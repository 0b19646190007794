"""Target sessions a worker thread keeps between rounds (pyglue.sync.target.TargetSessions):
reused while healthy, never holding the target's lock between rounds, replaced when the
target ended them, closed after an error, when idle or beyond their number."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from pyglue.sync import engine, mappings
from pyglue.sync.target import TargetSessions

from tests import factories as f
from tests.syncing import make_world


@pytest.fixture
def world(fresh_db, connect, make_database):
    w = make_world(fresh_db, connect, make_database)
    w.add_target()
    return w


def sync_pids(dsn: str, expect: int) -> list[int]:
    """The pyglue sessions open in a target database, once there are `expect` of them (a
    closed session's backend leaves pg_stat_activity a moment after the close), or as they
    are after 5 s."""
    deadline = time.monotonic() + 5
    with psycopg.connect(dsn, autocommit=True) as c:
        while True:
            pids = [r[0] for r in c.execute("select pid from pg_stat_activity where datname = current_database()"
                                            " and application_name = 'pyglue sync' order by pid")]
            if len(pids) == expect or time.monotonic() > deadline:
                return pids
            time.sleep(0.02)


def lock_key(world) -> int:
    return world.conn.execute("select lock_key from pyglue.sync_targets where name = 'main'").fetchone()["lock_key"]


def round_(world, sessions: TargetSessions, source) -> engine.TenancyResult:
    f.sequence_all(world.conn)
    return engine.sync_tenancy(source, world.tenancy, mappings.load_all(),
                               engine.Options(sessions=sessions, ignore_backoff=True))


def test_a_kept_session_is_reused_and_leaves_the_targets_lock_free_between_rounds(world):
    sessions = TargetSessions(engine.target_connection)
    with engine.source_connection(world.dsn) as source:
        f.user(world.conn, world.tenancy, "first")
        assert round_(world, sessions, source).failed == []
        kept = sync_pids(world.targets["main"], 1)
        assert len(kept) == 1
        with psycopg.connect(world.targets["main"], autocommit=True) as other:  # e.g. targets verify --repair
            assert other.execute("select pg_try_advisory_lock(%s)", (lock_key(world),)).fetchone()[0]
        f.user(world.conn, world.tenancy, "second")
        result = round_(world, sessions, source)
        assert result.failed == [] and result.rows == 1
        assert sync_pids(world.targets["main"], 1) == kept  # the same backend: no new connection
    sessions.close()
    assert sync_pids(world.targets["main"], 0) == []
    assert {r["display_name"] for r in world.rows("users")} == {"first", "second"}


def test_a_session_the_target_ended_between_rounds_is_replaced_without_an_error(world):
    sessions = TargetSessions(engine.target_connection)
    with engine.source_connection(world.dsn) as source:
        f.user(world.conn, world.tenancy, "first")
        round_(world, sessions, source)
        [kept] = sync_pids(world.targets["main"], 1)
        with psycopg.connect(world.targets["main"], autocommit=True) as admin:  # a restart, idle_session_timeout
            admin.execute("select pg_terminate_backend(%s)", (kept,))
        f.user(world.conn, world.tenancy, "second")
        result = round_(world, sessions, source)
        assert result.failed == [] and result.rows == 1
        [fresh] = sync_pids(world.targets["main"], 1)
        assert fresh != kept
        status = world.conn.execute("select last_error, consecutive_failures from pyglue.sync_targets").fetchone()
        assert status == {"last_error": None, "consecutive_failures": 0}
    sessions.close()


def test_a_failed_round_closes_its_session_and_the_next_starts_clean(world):
    sessions = TargetSessions(engine.target_connection)
    with engine.source_connection(world.dsn) as source:
        f.user(world.conn, world.tenancy, "first")
        round_(world, sessions, source)
        with psycopg.connect(world.targets["main"], autocommit=True) as admin:  # the target breaks the table
            admin.execute("alter table users add constraint no_second check (display_name <> 'second')")
        f.user(world.conn, world.tenancy, "second")
        failed = round_(world, sessions, source)
        assert "applying a page" in failed.targets[0].error
        assert sync_pids(world.targets["main"], 0) == []  # not kept: nothing half-done lingers, no lock held
        with psycopg.connect(world.targets["main"], autocommit=True) as admin:
            assert admin.execute("select pg_try_advisory_lock(%s)", (lock_key(world),)).fetchone()[0]
            admin.execute("select pg_advisory_unlock_all()")
            admin.execute("alter table users drop constraint no_second")
        assert round_(world, sessions, source).failed == []
    sessions.close()
    assert {r["display_name"] for r in world.rows("users")} == {"first", "second"}


def test_sessions_beyond_keep_are_closed_least_recently_used_first(world):
    world.add_target("second")
    f.user(world.conn, world.tenancy)
    with engine.source_connection(world.dsn) as source:
        one = TargetSessions(engine.target_connection, keep=1)
        round_(world, one, source)  # main, then second: keeping second closed main
        assert sync_pids(world.targets["main"], 0) == [] and len(sync_pids(world.targets["second"], 1)) == 1
        one.close()
    assert sync_pids(world.targets["main"], 0) + sync_pids(world.targets["second"], 0) == []


def test_a_caught_up_round_does_not_touch_the_target(world):
    """A page that brings nothing never opens a target transaction: here the cursor row is
    locked by another session, which a page's apply would wait for."""
    sessions = TargetSessions(engine.target_connection)
    f.user(world.conn, world.tenancy)
    with engine.source_connection(world.dsn) as source:
        round_(world, sessions, source)
        with psycopg.connect(world.targets["main"]) as holder:
            holder.execute("select * from _pyglue_sync_metadata for update")
            done = threading.Event()
            results = []
            thread = threading.Thread(target=lambda: (results.append(round_(world, sessions, source)), done.set()))
            thread.start()
            finished = done.wait(10)
            holder.rollback()
            thread.join(60)
        assert finished, "a round with nothing to apply waited on the target"
        assert results[0].failed == [] and results[0].rows == 0
    sessions.close()


def test_a_kept_session_left_idle_is_ended_by_the_target_and_replaced(world):
    """A worker gone quiet holds no target connection for long (it would block a DROP
    DATABASE of a removed target): the target ends it after idle_s, and the next round
    connects again without an error."""
    sessions = TargetSessions(engine.target_connection, idle_s=0.5)
    with engine.source_connection(world.dsn) as source:
        f.user(world.conn, world.tenancy, "first")
        round_(world, sessions, source)
        [kept] = sync_pids(world.targets["main"], 1)
        assert sync_pids(world.targets["main"], 0) == []  # gone by the target's hand, no borrow came
        f.user(world.conn, world.tenancy, "second")
        result = round_(world, sessions, source)
        assert result.failed == [] and result.rows == 1
        assert sync_pids(world.targets["main"], 1) != [kept]
    sessions.close()
