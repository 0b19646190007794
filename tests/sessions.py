"""Helpers for tests that step sessions through a fixed interleaving, wait on processes, or
expect a statement to be refused."""

from __future__ import annotations

import re
import time

import psycopg
import pytest


def wait_for(predicate, timeout: float = 30.0, every: float = 0.05) -> None:
    """Poll predicate() until it is true; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(every)
    raise AssertionError("condition not reached in time")


def wait_until_blocked(watcher: psycopg.Connection, session: psycopg.Connection) -> None:
    """Wait until `session` waits on a lock, as `watcher` sees it in pg_stat_activity."""
    pid = session.info.backend_pid
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        row = watcher.execute("select wait_event_type from pg_stat_activity where pid = %s", (pid,)).fetchone()
        if row and row["wait_event_type"] == "Lock":
            return
        time.sleep(0.02)
    raise AssertionError("the second session never waited for the first")


def refused(conn: psycopg.Connection, sqlstate: str, message: str, query: str, params=()) -> psycopg.Error:
    """Run query in a savepoint; it must fail with this SQLSTATE and a message containing
    `message`. Returns the error."""
    with pytest.raises(psycopg.Error, match=re.escape(message)) as e:
        with conn.transaction():
            conn.execute(query, params)
    assert e.value.sqlstate == sqlstate, e.value
    return e.value
