"""Change capture from Python: run sequencer passes, read and flip the fusebox."""

from __future__ import annotations

from collections.abc import Callable

import psycopg

SWITCHES = ("sequencer", "poller", "sync")


def pending_changes(conn: psycopg.Connection) -> dict[str, int]:
    return {r["table_name"]: r["pending"] for r in conn.execute("select * from pyglue.pending_changes()")}


# pyglue.sequence_changes serializes passes on this row lock (see its header).
SEQUENCER_LOCK = "select exists (select 1 from pyglue.sequencer_lock for update skip locked) as got"


def sequence_pass(conn: psycopg.Connection, batch_size: int, wait: bool = True) -> int:
    """One pass in its own transaction; returns rows stamped. With wait=False a pass that
    finds another one running returns 0 at once instead of queueing behind it."""
    with conn.transaction():
        if not wait and not conn.execute(SEQUENCER_LOCK).fetchone()["got"]:
            return 0
        return conn.execute("select pyglue.sequence_changes(%s) as n", (batch_size,)).fetchone()["n"]


def sequence_until_idle(conn: psycopg.Connection, batch_size: int = 10000,
                        on_pass: Callable[[int], None] = lambda _n: None) -> int:
    """Passes until one stamps nothing (or the fusebox is off); returns rows stamped."""
    total = 0
    while stamped := sequence_pass(conn, batch_size):
        total += stamped
        on_pass(stamped)
    return total


def fusebox(conn: psycopg.Connection) -> dict:
    return conn.execute("select sequencer_enabled, poller_enabled, sync_enabled, updated_at from pyglue.fusebox").fetchone()


def set_fusebox(conn: psycopg.Connection, sequencer: bool | None = None, poller: bool | None = None,
                sync: bool | None = None) -> dict:
    with conn.transaction():
        return conn.execute(
            "select sequencer_enabled, poller_enabled, sync_enabled, updated_at"
            " from pyglue.set_fusebox(%s, %s, %s)", (sequencer, poller, sync)).fetchone()


def purge_deleted_rows(conn: psycopg.Connection, older_than: str) -> int:
    with conn.transaction():
        return conn.execute("select pyglue.purge_deleted_rows(%s::interval) as n", (older_than,)).fetchone()["n"]
