"""Sync under concurrency, as fixed interleavings: the three ways rows were lost or went stale
(issue 7), each reproduced step by step with connections that park each other on locks."""

from __future__ import annotations

import time

import psycopg
import pytest

from pyglue.sync import engine, mappings
from pyglue.sync.target import TargetTables
from pyglue.sync.worker import Worker, WorkerOptions
from tests import factories as f
from tests.syncing import make_world
from tests.test_cli import run
from tests.test_sequence_changes import blocked_on_lock, in_thread, sequence, wait_until


@pytest.fixture
def world(fresh_db, connect, make_database):
    w = make_world(fresh_db, connect, make_database)
    w.add_target()
    return w


def target_count(world) -> int:
    try:
        return len(world.rows("users"))
    except psycopg.errors.UndefinedTable:  # before the first sync
        return 0


def target_user(world, user_id) -> dict | None:
    rows = [r for r in world.rows("users") if r["id"] == user_id]
    return rows[0] if rows else None


# -- bug 1: delete + re-create of a key while a sequencer pass is between statements ----------

@pytest.mark.parametrize("transactions", ["one", "two"])
def test_a_key_recreated_during_a_pass_ends_present(world, connect, transactions):
    conn, t = world.conn, world.tenancy
    u = f.user(conn, t, "original")
    world.sync()
    f.team(conn, t, "flagged team")  # gives the pass a teams statement to stop at

    holder = connect(world.dsn)
    holder.execute("lock table app.teams in share mode")  # the pass will wait on its teams UPDATE
    sequencer = connect(world.dsn)
    pass_ = in_thread(sequence, sequencer)
    wait_until(lambda: blocked_on_lock(conn, sequencer.info.backend_pid))

    writer = connect(world.dsn)  # while the pass waits: delete and re-create the same id
    writer.execute("delete from app.users where id = %s", (u,))
    if transactions == "two":
        writer.commit()
    writer.execute("insert into app.users (tenancy_id, id, display_name) values (%s, %s, 'recreated')", (t, u))
    writer.commit()

    holder.commit()
    pass_()
    sequencer.commit()
    world.sync()
    assert target_user(world, u)["display_name"] == "recreated"
    stone = conn.execute("select max(sequence_id) as s from pyglue.deleted_rows where primary_key->>'id' = %s",
                         (str(u),)).fetchone()["s"]
    live = conn.execute("select sequence_id from app.users where id = %s", (u,)).fetchone()["sequence_id"]
    assert stone < live


def test_a_key_changed_away_and_back_during_a_pass_ends_present(world, connect):
    """An update chain (key A -> B -> A) committed while the pass runs: the row version the
    pass saw first must not be stamped in its new form ahead of the two tombstones."""
    conn, t = world.conn, world.tenancy
    team = f.team(conn, t, "team")
    u = f.user(conn, t, "user")
    f.member(conn, t, team, u)
    world.sync()
    other = f.user(conn, t, "other", email="other@example.com")  # a flagged channel: a place to stop
    world.sync()
    conn.execute("update app.team_members set display_name = 'flagged' where team_id = %s", (team,))
    conn.execute("update app.contact_channels set is_verified = true where user_id = %s", (other,))

    holder = connect(world.dsn)  # tables are stamped in name order: contact_channels before team_members
    holder.execute("lock table app.contact_channels in share mode")
    sequencer = connect(world.dsn)
    pass_ = in_thread(sequence, sequencer)
    wait_until(lambda: blocked_on_lock(conn, sequencer.info.backend_pid))
    writer = connect(world.dsn)
    writer.execute("update app.team_members set user_id = %s where team_id = %s", (other, team))
    writer.execute("update app.team_members set user_id = %s where team_id = %s", (u, team))
    writer.commit()
    holder.commit()
    pass_()
    sequencer.commit()
    world.sync()
    members = {(r["team_id"], r["user_id"]) for r in world.rows("team_member_profiles")}
    assert members == {(team, u)}


# -- bug 2: a change to what a mapping reads beside its table, in a transaction left open ---

EMAIL_CHANGES = {
    "edit": "update app.contact_channels set value = 'new@example.com' where user_id = %(u)s",
    "verify": "update app.contact_channels set is_verified = true where user_id = %(u)s",
    "remove": "delete from app.contact_channels where user_id = %(u)s",
    "swap": "update app.contact_channels set is_primary = (value = 'second@example.com') where user_id = %(u)s",
}
EXPECTED = {"edit": ("new@example.com", False), "verify": ("old@example.com", True), "remove": (None, False),
            "swap": ("second@example.com", False)}


@pytest.mark.parametrize("change", sorted(EMAIL_CHANGES))
def test_an_email_change_committed_after_a_pass_and_a_sync_reaches_the_target(world, connect, change):
    conn, t = world.conn, world.tenancy
    u = f.user(conn, t, "user", email="old@example.com")
    f.contact_channel(conn, t, u, "second@example.com")
    world.sync()
    conn.execute("update app.users set display_name = 'renamed' where id = %s", (u,))  # flagged, not sequenced

    writer = connect(world.dsn)
    writer.execute(EMAIL_CHANGES[change], {"u": u})  # open: not committed yet
    world.sync()  # sequences and syncs while the email change is open
    assert target_user(world, u)["primary_email"] == "old@example.com"
    writer.commit()
    world.sync()
    row = target_user(world, u)
    assert (row["display_name"], row["primary_email"], row["primary_email_verified"]) == ("renamed",) + EXPECTED[change]


def test_an_email_change_waits_for_a_pass_holding_its_user_then_flags_it_again(world, connect):
    conn, t = world.conn, world.tenancy
    u = f.user(conn, t, "user", email="old@example.com")
    world.sync()
    conn.execute("update app.users set display_name = 'renamed' where id = %s", (u,))
    sequencer = connect(world.dsn)
    assert sequence(sequencer) == 1  # stamps the user and holds its row lock
    writer = connect(world.dsn)
    change = in_thread(lambda: writer.execute(
        "update app.contact_channels set value = 'new@example.com' where user_id = %s", (u,)))
    wait_until(lambda: blocked_on_lock(conn, writer.info.backend_pid))
    sequencer.commit()
    change()
    writer.commit()
    assert conn.execute("select should_update_sequence_id as f from app.users where id = %s", (u,)).fetchone()["f"]
    world.sync()
    assert target_user(world, u)["primary_email"] == "new@example.com"


# -- bug 3: a target another run holds ----------------------------------------------------

@pytest.fixture
def held_target(world):
    """A connection to the target that holds the engine's per-tenancy lock, as a sync whose
    worker lost its lease (slow target) would."""
    key = world.conn.execute("select lock_key from pyglue.sync_targets where name = 'main'").fetchone()["lock_key"]
    with engine.target_connection(world.targets["main"]) as holder:
        TargetTables(holder, world.tenancy, key).lock(5)
        yield holder


def test_a_busy_target_is_retried_soon_and_the_backlog_drains(world, held_target):
    conn, t = world.conn, world.tenancy
    f.users_bulk(conn, t, 300)
    worker = Worker(world.dsn, mappings.load_all(), WorkerOptions(lease_s=1.0, sequencer_interval_s=0.05),
                    log=print)
    run = in_thread(worker.run)
    try:
        wait_until(lambda: conn.execute("select count(*) as n from pyglue.outgoing_requests"
                                        " where status = 'pending' and run_after > now()").fetchone()["n"] == 1)
        held_target.close()  # the other run ends
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and target_count(world) < 300:
            time.sleep(0.1)
        assert target_count(world) == 300
    finally:
        worker.stop.set()
        run()


def test_sync_command_says_a_busy_target_was_not_synced_and_fails(world, held_target):
    f.user(world.conn, world.tenancy)
    done = run("--dsn", world.dsn, "sync", "--tenant", str(world.tenancy), "--lock-wait", "0.2")
    assert done.returncode == 1
    assert "main: 0 row(s) applied, NOT SYNCED: busy" in done.stdout
    assert done.stderr == (f"error: target 'main' of tenancy {world.tenancy} was busy for 0.2s"
                           " (another sync holds it); not synced, try again\n")


def test_engine_reports_a_busy_target_as_busy_not_failed(world, held_target):
    result = engine.sync_until_caught_up(world.dsn, world.tenancy, mappings.load_all(),
                                         engine.Options(lock_timeout_s=0.2))
    [target] = result.targets
    assert target.busy and target.error is None and "is running" in target.skipped
