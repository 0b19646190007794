"""The demo: pyglue's whole job on one server, step by step (`pyglue demo`, `make demo`).

Two customer projects (acme, globex), each one tenancy seeded with the perf seeds (users
with contact channels, auth methods, teams, memberships, and activity events), each synced
into a database of its own by the worker; changes and deletes that arrive; the internal
project's billing (a free plan backfilled to every team, a new version and the regen, item
balances and a transaction history); metrics and their chart; the status of every target.
Everything is idempotent: a re-run reuses what the last one made. reset() drops it all.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from psycopg import sql

from pyglue import db, queries
from pyglue import dsn as dsns
from pyglue import seed as seeds
from pyglue.billing import jobs
from pyglue.sync import mappings, targets
from pyglue.sync.worker import Worker, WorkerOptions


@dataclass(frozen=True)
class Tenancy:
    project: str
    display_name: str
    id: uuid.UUID

    def target_db(self, source_dsn: str) -> str:
        """The tenancy's target database on the source's server: pyglue_demo_<project> beside
        the server's postgres database, else <source database>_<project> (demos in two
        databases of one server keep apart)."""
        source = dsns.parse(source_dsn).get("dbname") or "postgres"
        return f"pyglue_demo_{self.project}" if source == "postgres" else f"{source}_{self.project}"


CUSTOMERS = [Tenancy("acme", "Acme Inc.", uuid.UUID("00000000-0000-4000-8000-00000000ac3e")),
             Tenancy("globex", "Globex Corp.", uuid.UUID("00000000-0000-4000-8000-0000000091b0"))]
INTERNAL = Tenancy("internal", "Internal (billing)", uuid.UUID("00000000-0000-4000-8000-00000000000a"))
TARGET_NAME = "demo"
FREE_PLAN = {"display_name": "Free", "customer_type": "team", "product_line": "plans",
             "prices": {"free": {"amounts": {"USD": "0"}, "interval": [1, "month"]}},
             "included_items": {"seats": {"quantity": 3, "expires": "when-purchase-expires"},
                                "credits": {"quantity": 100, "repeat": [1, "month"], "expires": "when-repeated"}}}
# the version a deploy brings: more seats; the regen moves every team onto it
FREE_PLAN_V2 = FREE_PLAN | {"included_items": FREE_PLAN["included_items"]
                            | {"seats": {"quantity": 5, "expires": "when-purchase-expires"}}}


def ensure_tenancies(conn: psycopg.Connection) -> None:
    """The three projects and their tenancies (ids fixed, so the seeds and a re-run find them)."""
    with conn.transaction():
        for t in [INTERNAL, *CUSTOMERS]:
            conn.execute(queries.load("demo_tenancy"), {"project": t.project, "display_name": t.display_name,
                                                        "tenancy_id": t.id})


def users_present(conn: psycopg.Connection, tenancy: Tenancy) -> int:
    return conn.execute(queries.load("demo_mock_users"), {"tenancy_id": tenancy.id}).fetchone()["n"]


def seed(conn: psycopg.Connection, dsn: str, tenancy: Tenancy, users: int, events: int,
         advance: Callable[[int], None]) -> tuple[int, int]:
    """Users (to `users` in all) and, with the first users, their activity events; (users, events) added."""
    present = users_present(conn, tenancy)
    added_users = seeds.seed(conn, dsn, "users", tenancy.id, users - present, advance=advance) if present < users else 0
    added_events = seeds.seed(conn, dsn, "events", tenancy.id, events, advance=advance) if present == 0 else 0
    return added_users, added_events


def ensure_target(conn: psycopg.Connection, source_dsn: str, tenancy: Tenancy) -> str:
    """A database on the same server for the tenancy, registered as its target `demo`."""
    name = tenancy.target_db(source_dsn)
    target_dsn = dsns.with_dbname(source_dsn, name)
    with db.connect(source_dsn, autocommit=True) as admin:
        if not admin.execute("select 1 from pg_database where datname = %s", (name,)).fetchone():
            admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    if not [t for t in targets.listing(conn, tenancy.id) if t["name"] == TARGET_NAME]:
        targets.add(conn, tenancy.id, TARGET_NAME, target_dsn)
    return target_dsn


def backlog(conn: psycopg.Connection) -> int:
    return sum(targets.backlog(conn, t.id) for t in CUSTOMERS)


def run_worker(dsn: str, conn: psycopg.Connection, advance: Callable[[int], None], timeout_s: float = 600) -> float:
    """A worker until every target is caught up (the queue empty, nothing flagged); progress
    is the drop of the customers' backlog. Every customer tenancy is queued first, so a
    target database made anew (empty) is filled even when no row changed. Seconds taken."""
    with conn.transaction():
        for t in CUSTOMERS:
            conn.execute(queries.load("demo_enqueue_sync"), {"tenancy_id": t.id})
    worker = Worker(dsn, mappings.load_all(), WorkerOptions(sequencer_interval_s=0.05, page_size=20000))
    errors: list[BaseException] = []

    def work() -> None:
        try:
            worker.run(until_idle=True)
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    started = time.monotonic()
    thread = threading.Thread(target=work, name="pyglue-demo-worker", daemon=True)
    thread.start()
    last = backlog(conn)
    while thread.is_alive() and time.monotonic() - started < timeout_s:
        thread.join(0.5)
        now = backlog(conn)
        if now < last:
            advance(last - now)
        last = now
    worker.stop.set()
    thread.join(60)
    if errors:
        raise errors[0]
    return time.monotonic() - started


def make_changes(conn: psycopg.Connection, tenancy: Tenancy) -> dict:
    """Everyday traffic: two renames, a verified email, a deleted user (its channels and
    memberships go by cascade), a new user."""
    params = {"tenancy_id": tenancy.id, "stamp": dt.datetime.now(dt.timezone.utc).strftime("%H:%M:%S")}
    with conn.transaction():
        renamed = [r["display_name"] for r in conn.execute(queries.load("demo_rename_users"), params)]
        verified = conn.execute(queries.load("demo_verify_emails"), params).rowcount
        deleted = [r["id"] for r in conn.execute(queries.load("demo_delete_users"), params)]
        added = conn.execute(queries.load("demo_add_user"), params).fetchone()["id"]
    return {"renamed": renamed, "verified": verified, "deleted": deleted, "added": added}


def arrived(target_dsn: str, changes: dict) -> dict:
    """What the target shows of the changes: the renamed names, the deleted and added users."""
    with db.connect(target_dsn, autocommit=True) as target:
        return target.execute(queries.load("demo_arrived"), {
            "names": changes["renamed"], "deleted": changes["deleted"], "added": changes["added"]}).fetchone()


def compare(source: psycopg.Connection, tenancy: Tenancy, target_dsn: str) -> list[tuple[str, int, int]]:
    """(table, rows in source, rows in target) for the four default mappings."""
    pairs = [("app.users", "users"), ("app.contact_channels", "contact_channels"), ("app.teams", "teams"),
             ("app.team_members", "team_member_profiles")]
    out = []
    with db.connect(target_dsn, row_factory=psycopg.rows.tuple_row) as target:
        for src, dst in pairs:
            with source.transaction():
                n_src = source.execute(sql.SQL("select count(*) as n from {} where tenancy_id = %s").format(
                    sql.SQL(src)), (tenancy.id,)).fetchone()["n"]
            n_dst = target.execute(sql.SQL("select count(*) from {}").format(sql.Identifier(dst))).fetchone()[0]
            out.append((dst, n_src, n_dst))
    return out


def billing(conn: psycopg.Connection) -> dict:
    """The internal project's plans: the free plan defined, backfilled to every team, a new
    version and the regen onto it, a manual grant of credits that expires; one team's
    balances and history."""
    tenancy = INTERNAL.id
    with conn.transaction():
        conn.execute(queries.load("demo_upsert_product"), {"tenancy_id": tenancy, "content": psycopg.types.json.Jsonb(
            FREE_PLAN)})
    backfilled = jobs.backfill_free_plans(conn, INTERNAL.project, "free").rows
    with conn.transaction():
        conn.execute(queries.load("demo_upsert_product"), {"tenancy_id": tenancy, "content": psycopg.types.json.Jsonb(
            FREE_PLAN_V2)})
    moved = jobs.regen_subscriptions(conn, INTERNAL.project).rows
    with conn.transaction():
        team = conn.execute(queries.load("demo_first_team"), {"tenancy_id": tenancy}).fetchone()["id"]
        conn.execute(queries.load("demo_grant_credits"), {"tenancy_id": tenancy, "team_id": team})
    with conn.transaction():  # a later now(): the grant is in the history
        balances = conn.execute(queries.load("demo_team_balances"), {"tenancy_id": tenancy, "team_id": team}).fetchall()
        history = conn.execute(queries.load("billing_transactions"), {
            "tenancy_id": tenancy, "customer_type": "team", "customer_id": str(team), "from": None, "to": None,
            "limit": 8, "before_at": None, "before_id": None}).fetchall()
    return {"backfilled": backfilled, "moved": moved, "team": team, "balances": balances, "history": history}


def reset(dsn: str) -> list[str]:
    """Drop the demo's tenancies (their rows go by cascade) and target databases; what went."""
    gone = []
    with db.connect(dsn, autocommit=True) as conn:
        with conn.transaction():
            gone += [f"project {r['id']}" for r in conn.execute(queries.load("demo_reset"), {
                "projects": [t.project for t in [INTERNAL, *CUSTOMERS]]})]
        for name in (t.target_db(dsn) for t in CUSTOMERS):
            if conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone():
                conn.execute(sql.SQL("drop database {} with (force)").format(sql.Identifier(name)))
                gone.append(f"database {name}")
    return gone
