"""The deploy-time billing jobs, driven in batches with a commit per batch.

billing.backfill_free_plans and billing.regen_subscriptions_to_latest do the work in SQL;
here each call is capped at `batch_size` rows (their p_limit) and committed before the
next, so a killed run keeps what it committed and a re-run does the rest: the jobs are
idempotent, and the sum of the calls equals one clean run.
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
    """Grant the free plan to every team of the project without one, batch_size per commit."""
    return _batches(conn, "select billing.backfill_free_plans(%s, %s, %s, %s) as n",
                    lambda limit: (project_id, product_id, limit, limit), batch_size, on_batch)


def regen_subscriptions(conn: psycopg.Connection, project_id: str = "internal", batch_size: int = 10000,
                        on_batch: Callable[[int], None] = lambda _n: None) -> JobResult:
    """Move the project's stale live subscriptions to their products' current versions."""
    return _batches(conn, "select billing.regen_subscriptions_to_latest(%s, %s) as n",
                    lambda limit: (project_id, limit), batch_size, on_batch)


def _batches(conn: psycopg.Connection, statement: str, params: Callable[[int], tuple], batch_size: int,
             on_batch: Callable[[int], None]) -> JobResult:
    """Call the job with p_limit = batch_size, one transaction per call, until a call does
    less than a full batch (nothing is left, or what is left another run is doing)."""
    started = time.monotonic()
    total = batches = 0
    while True:
        with conn.transaction():
            done = conn.execute(statement, params(batch_size)).fetchone()["n"]
        if done:
            total, batches = total + done, batches + 1
            on_batch(done)
        if done < batch_size:
            return JobResult(total, batches, time.monotonic() - started)
