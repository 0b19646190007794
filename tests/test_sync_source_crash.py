"""The source server crashes right after sync rounds.

A round's bookkeeping on the source (the cursor mirror after a page or snapshot, the sync
result, the fetch binding) commits without waiting for its WAL flush (engine.UNFLUSHED), so a
crash of the source server can lose it; only the first mirror of a cursor is flushed. Here
the source lives on a server of the test's own, which is stopped in immediate mode (no
checkpoint, WAL buffers not written: what a crash leaves) right after a round, with the WAL
writer slowed so that round's unflushed commits are still in its buffers. After the restart
the lost bookkeeping must cost nothing: the purge keeps every tombstone the target still
needs, the next round mends the mirror and the status, and the target ends equal to the
source. The test also checks that some crash did lose bookkeeping, or it would prove nothing.
A second test crashes the server under churn while a `pyglue worker` runs: the worker
reconnects and the target ends equal to the source.
"""

from __future__ import annotations

import random
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row

from pyglue import capture, embedded, migrate
from pyglue.sync import engine, mappings, targets
from tests import factories as f
from tests.syncing import source_users
from tests.test_sync_worker import finish, wait_for, worker_process

ATTEMPTS = 4  # a crash loses the round's tail unless the WAL writer wrote it first (it rarely does)


@dataclass
class CrashableSource:
    """A migrated source database on an embedded server of this test's own."""

    home: Path
    dsn: str

    def crash(self) -> None:
        """Immediate stop (as a crash leaves the data directory), then a start that recovers,
        with the options pgserver starts the server with (no TCP, the socket in its place)."""
        pgdata = embedded.data_dir(self.home)
        embedded.pg_ctl(pgdata, "-w", "-m", "immediate", "stop")
        socket_dir = conninfo_to_dict(self.dsn)["host"]
        embedded.pg_ctl(pgdata, "-w", "-o", '-h ""', "-o", f"-k {socket_dir}", "-l", str(pgdata / "log"), "start")

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.dsn, autocommit=True, row_factory=dict_row)


@pytest.fixture
def source(tmp_path_factory, monkeypatch) -> Iterator[CrashableSource]:
    # the fetch login of this server is reached through its own socket (it trusts local
    # connections), not through the PYGLUE_FETCH_DSN the harness may have set for another server
    monkeypatch.delenv("PYGLUE_FETCH_DSN", raising=False)
    home = tmp_path_factory.mktemp("crashable")
    home.chmod(0o755)  # the server runs as the pgserver user when we are root
    server = embedded.start(home)
    try:
        with psycopg.connect(server.dsn, autocommit=True) as c:
            # the WAL writer waits 10 s between writes and nothing else writes WAL early: the
            # unflushed commits of a round stay in the WAL buffers until the crash
            for name, value in {"wal_writer_delay": "10s", "wal_writer_flush_after": "1GB",
                                "bgwriter_lru_maxpages": "0", "autovacuum": "off"}.items():
                c.execute(f"alter system set {name} = '{value}'")
            c.execute("select pg_reload_conf()")
            c.execute("create database source")
        dsn = make_conninfo(server.dsn, dbname="source")
        migrate.migrate(dsn)
        yield CrashableSource(home, dsn)
    finally:
        embedded.stop(home)


USERS = mappings.select(mappings.load_all(), ["users"])


def sync(source: CrashableSource, tenancy: uuid.UUID) -> None:
    """`pyglue sync --tenant`: rounds until one moves nothing."""
    result = engine.sync_until_caught_up(source.dsn, tenancy, USERS, engine.Options(ignore_backoff=True))
    assert all(t.error is None for t in result.targets), result


def one_round(source: CrashableSource, tenancy: uuid.UUID) -> None:
    """Stamp, then one round, the last thing before the crash: its unflushed commits (the
    mirror of the cursor it moved, its result) are the WAL's tail."""
    with engine.source_connection(source.dsn) as conn:
        capture.sequence_until_idle(conn)
        result = engine.sync_tenancy(conn, tenancy, USERS, engine.Options(ignore_backoff=True))
    assert all(t.error is None for t in result.targets) and result.rows > 0, result


def target_cursor(target_dsn: str) -> int:
    with psycopg.connect(target_dsn) as c:
        return c.execute("select last_synced_sequence_id from _pyglue_sync_metadata"
                         " where mapping_name = 'users'").fetchone()[0]


def bookkeeping(source: CrashableSource, name: str) -> tuple[int | None, object]:
    """(the source's mirror of the target's users cursor, the target's last_success_at)."""
    with source.connect() as c:
        row = c.execute("select c.last_synced_sequence_id as mirror, t.last_success_at"
                        " from pyglue.sync_targets t"
                        " left join pyglue.sync_cursors c on c.target_id = t.id and c.mapping_name = 'users'"
                        " where t.name = %s", (name,)).fetchone()
    return row["mirror"], row["last_success_at"]


def assert_equal(source: CrashableSource, tenancy: uuid.UUID, target_dsn: str) -> None:
    expected, found = users_of_source(source, tenancy), users_of(target_dsn)
    assert found == expected, (f"{len(found - expected)} rows the source does not have,"
                               f" {len(expected - found)} missing")


def delete_some_and_purge(source: CrashableSource, tenancy: uuid.UUID, target_dsn: str, n: int) -> None:
    """Delete n users, stamp their tombstones, purge with no retention: the target has not
    synced these deletes, so every tombstone past its cursor must stay."""
    with source.connect() as c:
        gone = c.execute("delete from app.users where id in (select id from app.users where tenancy_id = %s"
                         " order by id limit %s)", (tenancy, n)).rowcount
        f.sequence_all(c)
        purged = c.execute("select pyglue.purge_deleted_rows('0') as n").fetchone()["n"]
        kept = c.execute("select count(*) as n from pyglue.deleted_rows where tenancy_id = %s"
                         " and sequence_id > %s", (tenancy, target_cursor(target_dsn))).fetchone()["n"]
    assert gone == n and kept >= n, f"purge removed tombstones the target still needs ({purged} purged)"


def test_a_source_crash_after_a_round_loses_only_bookkeeping_that_costs_nothing(source, make_database):
    with source.connect() as c:
        tenancy = f.tenancy(c)
        f.users_bulk(c, tenancy, 300)
    lost = []
    for attempt in range(ATTEMPTS):
        # a fresh target's first sync: the snapshot, then the crash
        name = f"t{attempt}"
        target = make_database()
        with source.connect() as c:
            targets.add(c, tenancy, name, target)
        one_round(source, tenancy)
        before = bookkeeping(source, name)
        source.crash()
        after = bookkeeping(source, name)
        assert after[0] is not None, "the first mirror of the cursor did not survive the crash"
        assert after[0] <= target_cursor(target), "the mirror is ahead of the target's own cursor"
        if after != before:
            lost.append(f"{name}: first sync, {before} -> {after}")
        delete_some_and_purge(source, tenancy, target, 5)
        sync(source, tenancy)
        assert_equal(source, tenancy, target)

        # an incremental round (renames, deletes), then the crash
        with source.connect() as c:
            c.execute("update app.users set display_name = display_name || '+' where tenancy_id = %s"
                      " and id in (select id from app.users where tenancy_id = %s order by id desc limit 20)",
                      (tenancy, tenancy))
        delete_some_and_purge(source, tenancy, target, 5)
        one_round(source, tenancy)
        before = bookkeeping(source, name)
        source.crash()
        after = bookkeeping(source, name)
        assert after[0] is not None and after[0] <= target_cursor(target)
        if after != before:
            lost.append(f"{name}: incremental round, {before} -> {after}")
        delete_some_and_purge(source, tenancy, target, 5)
        sync(source, tenancy)
        assert_equal(source, tenancy, target)
        assert bookkeeping(source, name)[0] == target_cursor(target), "the next round did not mend the mirror"
        with source.connect() as c:
            status = c.execute("select * from pyglue.sync_status(%s) where target_name = %s"
                               " and mapping_name = 'users'", (tenancy, name)).fetchone()
        assert not status["failing"] and status["pending_rows"] == 0, status
        assert status["last_synced_sequence_id"] == target_cursor(target), status
        if lost:
            break
    print("\n".join(lost))
    assert lost, f"no crash in {ATTEMPTS} attempts lost unflushed bookkeeping: the test proves nothing"


def test_a_worker_carries_on_after_the_source_server_crashes_under_churn(source, make_database):
    with source.connect() as c:
        tenancy = f.tenancy(c)
        f.users_bulk(c, tenancy, 200)
        target = make_database()
        targets.add(c, tenancy, "main", target)
    worker = worker_process(source.dsn, "--lease", "5", "--sequencer-interval", "0.05")
    stop, written = threading.Event(), []
    writer = threading.Thread(target=churn, args=(source, tenancy, stop, written), daemon=True)
    try:
        wait_for(lambda: users_of(target) == users_of_source(source, tenancy), 60, "first sync")
        writer.start()
        wait_for(lambda: len(written) >= 100, 30, "churn before the crash")
        source.crash()
        at_crash = len(written)
        wait_for(lambda: len(written) >= at_crash + 100, 60, "churn after the restart")
        stop.set()
        writer.join(30)
        wait_for(lambda: users_of(target) == users_of_source(source, tenancy), 90, "target equal to the source")
        assert worker.poll() is None, "the worker exited"
    finally:
        stop.set()
        worker.send_signal(signal.SIGTERM)
        code, log = finish(worker)
    assert code == 0, log
    assert "database unavailable" in log, log  # it saw the crash, and came back


def churn(source: CrashableSource, tenancy: uuid.UUID, stop: threading.Event, written: list) -> None:
    """Inserts, renames and deletes, one commit each, through the crash (a failed statement:
    reconnect and go on); written: the commits acknowledged."""
    rng = random.Random(20261204)
    while not stop.is_set():
        try:
            with source.connect() as c:
                while not stop.is_set():
                    kind = rng.choice(["insert", "rename", "rename", "delete"])
                    if kind == "insert":
                        f.user(c, tenancy, f"new-{len(written)}")
                    else:
                        victim = c.execute("select id from app.users where tenancy_id = %s order by random() limit 1",
                                           (tenancy,)).fetchone()
                        if victim is None:
                            continue
                        if kind == "rename":
                            c.execute("update app.users set display_name = %s where tenancy_id = %s and id = %s",
                                      (f"renamed-{len(written)}", tenancy, victim["id"]))
                        else:
                            c.execute("delete from app.users where tenancy_id = %s and id = %s",
                                      (tenancy, victim["id"]))
                    written.append(kind)
                    time.sleep(0.005)
        except psycopg.OperationalError:
            time.sleep(0.2)  # the server is down: try again


def users_of(target_dsn: str) -> set[tuple]:
    try:
        with psycopg.connect(target_dsn) as c:
            return set(c.execute("select id, display_name from users").fetchall())
    except psycopg.errors.UndefinedTable:
        return set()


def users_of_source(source: CrashableSource, tenancy: uuid.UUID) -> set[tuple]:
    with source.connect() as c:
        return source_users(c, tenancy)
