"""`pyglue db init`: what runs after every deploy, in order, each step idempotent.

1. migrate (concurrent runners are safe, see pyglue.migrate);
2. the item ledger: store again the histories a bulk write left to be folded on read
   (billing.refold_item_histories), then verify the derived state against a fold of the
   inputs and, if anything differs, rebuild it (billing.verify_ledger / rebuild_ledger);
3. the free-plan backfill of the project (pyglue.billing.jobs);
4. regen of the project's subscriptions to their products' current versions.

A failed init is fixed by running it again: every step does only what is still missing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pyglue import db, migrate, paths, queries
from pyglue.billing import jobs


@dataclass(frozen=True)
class Step:
    name: str
    count: int
    line: str


def run(dsn: str, project_id: str = "internal", free_product_id: str = "free", batch_size: int = 10000,
        lock_timeout: float = 300.0, report: Callable[[Step], None] = lambda _step: None) -> list[Step]:
    """Run the steps, calling report(step) after each; returns them."""
    steps: list[Step] = []

    def done(name: str, count: int, line: str) -> None:
        steps.append(Step(name, count, line))
        report(steps[-1])

    applied = migrate.migrate(dsn, paths.MIGRATIONS, lock_timeout=lock_timeout)
    done("migrate", len(applied), f"{len(applied)} migration(s) applied")
    with db.connect(dsn, autocommit=True, application_name="pyglue db init") as conn:
        with conn.transaction():
            refolded = conn.execute(queries.load("ledger_refold")).fetchone()["refolded"]
        with conn.transaction():
            differences = conn.execute(queries.load("ledger_differences")).fetchone()["differences"]
            if differences:
                conn.execute("select billing.rebuild_ledger()")
        done("ledger", differences, f"{refolded} item history(ies) refolded, {differences} difference(s) repaired")
        granted = jobs.backfill_free_plans(conn, project_id, free_product_id, batch_size).rows
        done("backfill", granted, f"{granted} team(s) of project {project_id} granted {free_product_id}")
        moved = jobs.regen_subscriptions(conn, project_id, batch_size).rows
        done("regen", moved, f"{moved} subscription(s) of project {project_id} moved to the latest version")
    return steps
