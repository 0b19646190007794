"""The deploy-time billing jobs, driven in batches with a commit per batch.

billing.backfill_free_plans and billing.regen_subscriptions_to_latest do the work in SQL;
here their step functions are called with a commit after each: a step reads `batch_size`
rows from where the previous one stopped (a key passed back in), so a run reads every row
once, a killed run keeps what it committed, and a re-run does the rest: the jobs are
idempotent, and the sum of the steps equals one clean run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg

from pyglue import queries


@dataclass(frozen=True)
class JobResult:
    rows: int  # teams granted / subscriptions moved
    batches: int  # committed calls that changed something
    seconds: float

    def as_dict(self) -> dict:
        return {"rows": self.rows, "batches": self.batches, "seconds": round(self.seconds, 3)}


def backfill_pending(conn: psycopg.Connection, project_id: str, product_id: str) -> int:
    params = {"project_id": project_id, "product_id": product_id}
    return conn.execute(queries.load("billing_backfill_pending"), params).fetchone()["pending"]


def regen_pending(conn: psycopg.Connection, project_id: str) -> int:
    return conn.execute(queries.load("billing_regen_pending"), {"project_id": project_id}).fetchone()["pending"]


def backfill_free_plans(conn: psycopg.Connection, project_id: str = "internal", product_id: str = "free",
                        batch_size: int = 10000, on_batch: Callable[[int], None] = lambda _n: None) -> JobResult:
    """Grant the free plan to every team of the project without one, batch_size teams read per commit."""
    return _steps(conn, "select granted as done, walked, last_tenancy_id, last_team_id as last_id"
                        " from billing.backfill_free_plans_step(%s, %s, %s, %s, %s)",
                  (project_id, product_id), batch_size, on_batch)


def regen_subscriptions(conn: psycopg.Connection, project_id: str = "internal", batch_size: int = 10000,
                        on_batch: Callable[[int], None] = lambda _n: None) -> JobResult:
    """Move the project's stale live subscriptions to their products' current versions,
    batch_size subscriptions read per commit."""
    return _steps(conn, "select moved as done, walked, last_tenancy_id, last_subscription_id as last_id"
                        " from billing.regen_subscriptions_step(%s, %s, %s, %s)",
                  (project_id,), batch_size, on_batch)


def _steps(conn: psycopg.Connection, statement: str, args: tuple, batch_size: int,
           on_batch: Callable[[int], None]) -> JobResult:
    """Call the job's step function, one transaction per step, passing the key it stopped at
    back in, until a step reads nothing. on_batch gets the rows each step changed."""
    started = time.monotonic()
    total = batches = 0
    after: tuple = (None, None)
    while True:
        with conn.transaction():
            step = conn.execute(statement, (*args, *after, batch_size)).fetchone()
        if not step["walked"]:
            return JobResult(total, batches, time.monotonic() - started)
        if step["done"]:
            total, batches = total + step["done"], batches + 1
            on_batch(step["done"])
        after = (step["last_tenancy_id"], step["last_id"])
