"""Chaos: churn of every kind, workers killed with SIGKILL, a target outage, two workers at
once; at the end every target equals the source, column by column (perf/chaos.py)."""

from __future__ import annotations

import signal
import time

import pytest
from psycopg.conninfo import conninfo_to_dict

from perf import chaos
from pyglue.sync import targets
from tests import factories as f
from tests.test_sync_worker import finish, wait_for, worker_process


def dbname(dsn: str) -> str:
    return conninfo_to_dict(dsn)["dbname"]


@pytest.mark.slow
def test_churn_kills_and_an_outage_end_with_every_target_equal_to_the_source(fresh_db, connect, make_database,
                                                                              server):
    conn = connect(fresh_db, autocommit=True)
    a, b = f.tenancy(conn), f.tenancy(conn)
    names = {a: {"a1": make_database(), "a2": make_database()}, b: {"b1": make_database()}}
    for tenancy, named in names.items():
        for name, dsn in named.items():
            targets.add(conn, tenancy, name, dsn)
    report = chaos.run(fresh_db, server.dsn, {t: {n: dbname(d) for n, d in named.items()} for t, named in names.items()},
                       kills=16, workers=2, outage_target=("a2", dbname(names[a]["a2"])), max_churn_s=45)
    print(report)
    assert report.kills >= 15 and report.outages == 1
    kinds = {"insert", "rename", "email_edit", "email_swap", "recreate_one", "recreate_two", "member_move",
             "long_email", "delete"}
    assert kinds <= set(report.operations), report.operations
    assert report.rows_compared > 100
    assert report.clean, report.differences
    assert report.drain_s < 60


@pytest.mark.slow
def test_a_killed_workers_tenancy_is_taken_over_within_two_seconds(fresh_db, connect, make_database):
    conn = connect(fresh_db, autocommit=True)
    tenancy = f.tenancy(conn)
    target = make_database()
    targets.add(conn, tenancy, "main", target)
    f.users_bulk(conn, tenancy, 10)
    first = worker_process(fresh_db, "--lease", "60")
    try:
        wait_for(lambda: _target_rows(connect, target) == 10, 30, "first sync")
        blocker = connect(target)  # park the next sync of `first` on the target, holding its claim
        blocker.execute("lock table users in access exclusive mode")
        f.users_bulk(conn, tenancy, 10, prefix="second")
        wait_for(lambda: _claimed_by(conn, tenancy, first.pid), 30, "claim by the first worker")
        wait_for(lambda: _waiting_on_lock(connect, target), 30, "first worker parked on the target")
        second = worker_process(fresh_db, "--lease", "60")
        try:
            wait_for(lambda: _workers_connected(conn) == 2, 30, "second worker up")
            first.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            wait_for(lambda: _claimed_by(conn, tenancy, second.pid), 10, "takeover")
            takeover_s = time.monotonic() - killed
            blocker.rollback()
            wait_for(lambda: _target_rows(connect, target) == 20, 30, "backlog synced by the second worker")
        finally:
            second.send_signal(signal.SIGTERM)
            assert finish(second)[0] == 0
        print(f"takeover after SIGKILL: {takeover_s:.2f}s")
        assert takeover_s < 2.5, takeover_s
    finally:
        if first.poll() is None:
            first.kill()
        finish(first)


def _target_rows(connect, target: str) -> int:
    c = connect(target, autocommit=True)
    try:
        return c.execute("select count(*) as n from users").fetchone()["n"]
    except Exception:  # noqa: BLE001  (table not created yet)
        return 0
    finally:
        c.close()


def _claimed_by(conn, tenancy, pid: int) -> bool:
    return conn.execute("select count(*) as n from pyglue.outgoing_requests where tenancy_id = %s"
                        " and status = 'claimed' and split_part(claimed_by, ':', 2) = %s",
                        (tenancy, str(pid))).fetchone()["n"] == 1


def _waiting_on_lock(connect, target: str) -> bool:
    c = connect(target, autocommit=True)
    try:
        return c.execute("select count(*) as n from pg_locks l join pg_stat_activity a using (pid)"
                         " where not l.granted and a.application_name = 'pyglue sync'").fetchone()["n"] > 0
    finally:
        c.close()


def _workers_connected(conn) -> int:
    return conn.execute("select count(*) as n from pg_stat_activity where application_name = 'pyglue worker'"
                        " and datname = current_database()").fetchone()["n"]
