"""The peer of tenant sync: Postgres's built-in logical replication of one tenancy's rows.

A publication with a row filter per table (PG 15+), a slot made beforehand (a subscription
that makes its own slot in the same cluster hangs), and a subscription in another database
of the same server. The subscriber's tables have the source's columns (the bench migrates
the subscriber database too; the apply workers run as replica, so its triggers and foreign
keys stay quiet).
"""

from __future__ import annotations

import time
import uuid

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import tuple_row

from pyglue import db

TABLES = ("app.users", "app.contact_channels")


def publish(source_dsn: str, name: str, tenancy_id: uuid.UUID) -> None:
    """The publication (one tenancy's rows of TABLES) and its slot."""
    with db.connect(source_dsn, autocommit=True, row_factory=tuple_row) as conn:
        tables = sql.SQL(", ").join(
            sql.SQL("{} where (tenancy_id = {})").format(sql.Identifier(*t.split(".")), sql.Literal(str(tenancy_id)))
            for t in TABLES)
        conn.execute(sql.SQL("create publication {} for table {}").format(sql.Identifier(name), tables))
        conn.execute("select pg_create_logical_replication_slot(%s, 'pgoutput')", (name,))


def subscribe(source_dsn: str, subscriber_dsn: str, name: str, timeout_s: float = 600) -> float:
    """Create the subscription and wait until every table's initial copy is done; seconds."""
    params = conninfo_to_dict(source_dsn)
    params["user"] = "postgres"  # the subscription connects as the server's OS user (peer auth on Debian)
    params.pop("password", None)
    started = time.perf_counter()
    with db.connect(subscriber_dsn, autocommit=True, row_factory=tuple_row) as conn:
        conn.execute(sql.SQL("create subscription {} connection {} publication {}"
                             " with (create_slot = false, slot_name = {})").format(
            sql.Identifier(name), sql.Literal(make_conninfo("", **params)), sql.Identifier(name), sql.Literal(name)))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ready, total = conn.execute(
                "select count(*) filter (where srsubstate = 'r'), count(*) from pg_subscription_rel").fetchone()
            if total == len(TABLES) and ready == total:
                return time.perf_counter() - started
            time.sleep(0.05)
    raise TimeoutError(f"the subscription's initial copy was not done within {timeout_s:g} s")


def set_enabled(subscriber_dsn: str, name: str, enabled: bool) -> None:
    with db.connect(subscriber_dsn, autocommit=True, row_factory=tuple_row) as conn:
        conn.execute(sql.SQL("alter subscription {} {}").format(sql.Identifier(name),
                                                                 sql.SQL("enable" if enabled else "disable")))


def drop(source_dsn: str, subscriber_dsn: str, name: str) -> None:
    """Subscription, slot and publication, whichever exist."""
    try:
        with db.connect(subscriber_dsn, autocommit=True, row_factory=tuple_row) as conn:
            if conn.execute("select 1 from pg_subscription where subname = %s", (name,)).fetchone():
                conn.execute(sql.SQL("alter subscription {} disable").format(sql.Identifier(name)))
                conn.execute(sql.SQL("alter subscription {} set (slot_name = none)").format(sql.Identifier(name)))
                conn.execute(sql.SQL("drop subscription {}").format(sql.Identifier(name)))
    except psycopg.OperationalError:
        pass  # the subscriber database is gone already
    with db.connect(source_dsn, autocommit=True, row_factory=tuple_row) as conn:
        if conn.execute("select 1 from pg_replication_slots where slot_name = %s", (name,)).fetchone():
            conn.execute("select pg_drop_replication_slot(%s)", (name,))
        conn.execute(sql.SQL("drop publication if exists {}").format(sql.Identifier(name)))
