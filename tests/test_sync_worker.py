"""The worker and end-to-end faults: uncommitted writes, kill -9, SIGTERM, fusebox, many workers."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import psycopg
import pytest

from pyglue import paths
from pyglue.sync import mappings, targets
from pyglue.sync.worker import Worker, WorkerOptions
from tests import factories as f
from tests.syncing import make_world, source_users, target_users


@pytest.fixture
def world(fresh_db, connect, make_database):
    w = make_world(fresh_db, connect, make_database)
    w.add_target()
    return w


def worker_process(dsn: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pyglue", "--dsn", dsn, "worker", *args], cwd=paths.ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    """Wait for a worker process; its exit code and what it logged (pipes closed)."""
    _, err = process.communicate(timeout=timeout)
    return process.returncode, err


def wait_for(predicate, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached within {timeout}s")


def target_cursor(world) -> int:
    try:
        return world.cursors().get("users", 0)
    except psycopg.errors.UndefinedTable:
        return 0


def run_worker_until_idle(dsn: str, **options) -> None:
    Worker(dsn, mappings.load_all(), WorkerOptions(**options)).run(until_idle=True)


def test_an_uncommitted_change_waits_while_committed_ones_sync(world, connect):
    kept = f.user(world.conn, world.tenancy, "kept")
    world.sync()
    writer = connect(world.dsn)
    writer.execute("update app.users set display_name = 'uncommitted' where id = %s", (kept,))
    other = f.user(world.conn, world.tenancy, "committed")
    world.sync()
    assert target_users(world) == {(kept, "kept"), (other, "committed")}
    writer.commit()
    world.sync()
    assert target_users(world) == {(kept, "uncommitted"), (other, "committed")}


def test_worker_syncs_queued_tenancies(world):
    f.users_bulk(world.conn, world.tenancy, 120)
    run_worker_until_idle(world.dsn, page_size=50)
    assert target_users(world) == source_users(world.conn, world.tenancy)
    queue = world.conn.execute("select count(*) as n from pyglue.outgoing_requests").fetchone()["n"]
    assert queue == 0


def test_worker_wakes_on_notify_and_follows_new_changes(world):
    worker = Worker(world.dsn, mappings.load_all(), WorkerOptions(sequencer_interval_s=0.05))
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        u = f.user(world.conn, world.tenancy, "live")
        wait_for(lambda: target_users(world) == {(u, "live")} if target_cursor(world) else False,
                 timeout=20, what="first change synced")
        world.conn.execute("update app.users set display_name = 'live 2' where id = %s", (u,))
        wait_for(lambda: target_users(world) == {(u, "live 2")}, timeout=20, what="update synced")
    finally:
        worker.stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()


def test_a_steady_writer_is_stamped_an_intervals_worth_per_pass(world):
    """After a pass that stamped less than a batch the next waits for the interval: 200 commits
    back to back are stamped by a few passes, not by a pass every few commits (a pass costs
    milliseconds however little it stamps; back to back they took most of a core at 10k
    changes/s)."""
    worker = Worker(world.dsn, mappings.load_all(), WorkerOptions(sequencer_interval_s=0.4))
    passes: list[int] = []
    record = worker.telemetry.sequencer_pass
    worker.telemetry.sequencer_pass = lambda rows, seconds: (passes.append(rows), record(rows, seconds))
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        users = {(f.user(world.conn, world.tenancy, f"steady {i}"), f"steady {i}") for i in range(200)}
        wait_for(lambda: target_users(world) == users, timeout=30, what="the 200 users in the target")
    finally:
        worker.stop.set()
        thread.join(timeout=30)
    assert sum(passes) >= 200 and len([n for n in passes if n]) <= 8, passes


def test_fusebox_sync_off_applies_nothing_then_catches_up(world):
    f.users_bulk(world.conn, world.tenancy, 30)
    world.conn.execute("select pyglue.set_fusebox(p_sync => false)")
    result = world.sync()
    assert result.sync_disabled
    run_worker_until_idle(world.dsn)
    assert target_cursor(world) == 0
    pending = world.conn.execute("select status from pyglue.outgoing_requests").fetchall()
    assert [r["status"] for r in pending] == ["pending"]
    world.conn.execute("select pyglue.set_fusebox(p_sync => true)")
    run_worker_until_idle(world.dsn)
    assert len(target_users(world)) == 30


def test_worker_retries_a_failing_target_through_the_queue(world):

    f.users_bulk(world.conn, world.tenancy, 10)
    targets.add(world.conn, world.tenancy, "down", "postgresql://x:y@127.0.0.1:1/down")
    run_worker_until_idle(world.dsn)
    assert len(target_users(world)) == 10
    down = world.conn.execute("select consecutive_failures, retry_after, last_error from pyglue.sync_targets"
                              " where name = 'down'").fetchone()
    assert down["consecutive_failures"] == 1 and "cannot connect" in down["last_error"]
    retry = world.conn.execute("select status, run_after from pyglue.outgoing_requests").fetchone()
    assert retry["status"] == "pending"
    assert abs((retry["run_after"] - down["retry_after"]).total_seconds()) < 1


@pytest.mark.slow
def test_two_worker_processes_share_many_tenancies(fresh_db, connect, make_database):
    world = make_world(fresh_db, connect, make_database)
    tenancies = [world.tenancy] + [f.tenancy(world.conn, f"p{i}") for i in range(5)]
    for i, t in enumerate(tenancies):
        f.users_bulk(world.conn, t, 200 + i)
        world.add_target(f"t{i}", tenancy=t)
    workers = [worker_process(fresh_db, "--until-idle", "--concurrency", "2", "--page-size", "100")
               for _ in range(2)]
    for w in workers:
        code, err = finish(w)
        assert code == 0, err
    for i, t in enumerate(tenancies):
        assert target_users(world, f"t{i}") == source_users(world.conn, t)


def synced_once(world) -> int:
    """A target past its first sync (which loads a snapshot in one transaction), so later rows
    go page by page; its users cursor."""
    f.user(world.conn, world.tenancy, "first")
    world.sync()
    return target_cursor(world)


@pytest.mark.slow
def test_kill_9_mid_sync_then_restart_ends_equal(world):
    start = synced_once(world)
    f.users_bulk(world.conn, world.tenancy, 20000)
    total_seq = f.sequence_all(world.conn)
    victim = worker_process(world.dsn, "--page-size", "200", "--lease", "1")
    final = world.conn.execute("select max(sequence_id) as m from app.users").fetchone()["m"]
    wait_for(lambda: start < target_cursor(world) < final, what="a partial sync")
    victim.send_signal(signal.SIGKILL)
    finish(victim, timeout=10)
    partial = target_cursor(world)
    assert start < partial < final and total_seq == 20000

    restarted = worker_process(world.dsn, "--until-idle", "--page-size", "5000", "--lease", "1")
    code, err = finish(restarted)
    assert code == 0, err
    if target_cursor(world) < final:  # the killed claim was still leased at restart: its lease has run out now
        time.sleep(1.1)
        again = worker_process(world.dsn, "--until-idle", "--lease", "1")
        assert finish(again)[0] == 0
    rows = world.rows("users")
    assert len(rows) == len({r["id"] for r in rows}) == 20001
    assert target_users(world) == source_users(world.conn, world.tenancy)
    assert target_cursor(world) == final


@pytest.mark.slow
def test_sigterm_finishes_the_page_and_releases_the_claim(world):
    start = synced_once(world)
    f.users_bulk(world.conn, world.tenancy, 20000)
    f.sequence_all(world.conn)
    final = world.conn.execute("select max(sequence_id) as m from app.users").fetchone()["m"]
    worker = worker_process(world.dsn, "--page-size", "200")
    wait_for(lambda: start < target_cursor(world) < final, what="a partial sync")
    worker.send_signal(signal.SIGTERM)
    code, err = finish(worker, timeout=30)
    assert code == 0 and "stopped" in err
    queue = world.conn.execute("select status, claimed_by, attempts from pyglue.outgoing_requests").fetchall()
    assert queue == [{"status": "pending", "claimed_by": None, "attempts": 0}]
    # what the target holds is exactly what its cursor covers
    cursor = target_cursor(world)
    covered = world.conn.execute("select count(*) as n from app.users where sequence_id <= %s", (cursor,)).fetchone()
    assert len(world.rows("users")) == covered["n"]
    run_worker_until_idle(world.dsn)
    assert target_users(world) == source_users(world.conn, world.tenancy)




def test_worker_honours_the_sequencer_and_poller_switches(world):
    f.users_bulk(world.conn, world.tenancy, 5)
    world.conn.execute("select pyglue.set_fusebox(p_sequencer => false)")
    run_worker_until_idle(world.dsn)
    flagged = world.conn.execute("select count(*) as n from app.users where should_update_sequence_id").fetchone()
    assert flagged["n"] == 5 and target_cursor(world) == 0

    world.conn.execute("select pyglue.set_fusebox(p_sequencer => true, p_poller => false)")
    run_worker_until_idle(world.dsn)
    assert world.conn.execute("select count(*) as n from app.users where should_update_sequence_id"
                              ).fetchone()["n"] == 0
    assert target_cursor(world) == 0  # sequenced and queued, but nothing claimed
    assert [r["status"] for r in world.conn.execute("select status from pyglue.outgoing_requests")] == ["pending"]

    world.conn.execute("select pyglue.set_fusebox(p_poller => true)")
    run_worker_until_idle(world.dsn)
    assert len(target_users(world)) == 5


def test_worker_waits_for_an_unreachable_database_and_stops_cleanly():
    lines = []
    worker = Worker("postgresql://u:secret-pw@127.0.0.1:1/db", [], WorkerOptions(), log=lines.append)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    wait_for(lambda: lines, timeout=10, what="a retry line")
    worker.stop.set()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert "database unavailable" in lines[0] and "retrying in 1s" in lines[0]
    assert "secret-pw" not in " ".join(lines)
