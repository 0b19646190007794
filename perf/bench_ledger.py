"""Item ledger benchmark: ingest of manual changes with derived state maintained, an insert
into the middle of a long history, and balance reads.

    .venv/bin/python -m perf.bench_ledger [--changes 1000000] [--customers 10000] [--batch-rows 100000]
                                          [--history 10000] [--calls 2000] [--reads 1000]

Runs on the embedded server under .pyglue/bench, in a database it drops and recreates
(pyglue_bench_ledger, migrated from sql/migrations). One run, one machine:

1. ingest: --changes manual changes across --customers customers of one tenancy, in time
   order, as INSERT … SELECT statements of --batch-rows rows each (every statement holds
   --batch-rows / --customers changes per customer: the statement trigger refolds each
   touched history once per statement). The mix per customer: grants of 5, every 7th
   expiring 500 minutes later, and removals of 2 every 3rd change. Baseline, same run: the
   same statements into a plain copy of billing.item_quantity_changes (same columns and
   indexes, no triggers). Then --calls single changes through billing.change_item_quantity
   (a round trip and a refold each, the API path), appended at the end of random histories.
2. middle: one customer with a --history-event history; billing.change_item_quantity at
   the median instant, 20 times (each rewrites the points after it); median and max ms.
3. reads: --reads billing.item_quantity calls at random instants of that history, timed
   per call from Python (round trip included) and, for the same calls, the server's
   execution time from EXPLAIN ANALYZE of one; p50 and p99.

Goals (issue 10): ingest >= 20,000 changes/s with derived state maintained (ratio to the
plain INSERT stated); a middle insert <= 20 ms; a read <= 1 ms p50. After the run
billing.verify_ledger() over every history must be empty (its time is shown too).
Prints a table and rewrites the bench_ledger block of perf/RESULTS.md.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass

import click
import psycopg

from perf.bench_sequencer import BENCH_HOME, fresh_database, machine_facts, run, write_block
from pyglue import db, embedded

DATABASE = "pyglue_bench_ledger"
BEGIN, END = "<!-- bench_ledger:begin -->", "<!-- bench_ledger:end -->"
HEADING = "## Item ledger"
INGEST_GOAL = 20_000  # changes/s
MIDDLE_GOAL_MS = 20.0
READ_GOAL_MS = 1.0


@dataclass(frozen=True)
class Result:
    measure: str
    value: str
    goal: str = ""
    met: bool | None = None

    @property
    def verdict(self) -> str:
        return "" if self.met is None else ("met" if self.met else "NOT met")


def ingest(conn: psycopg.Connection, tenancy, table: tuple[str, str], changes: int, customers: int,
           batch_rows: int) -> float:
    """Seconds to insert `changes` rows into `table` (billing.item_quantity_changes or the
    plain copy) in statements of batch_rows rows, in time order."""
    started = time.perf_counter()
    for first in range(0, changes, batch_rows):
        run(conn, "ledger_ingest_batch", {"tenancy_id": tenancy, "first": first, "prefix": "c",
                                          "last": min(first + batch_rows, changes) - 1, "customers": customers},
            table=table)
    return time.perf_counter() - started


def single_calls(conn: psycopg.Connection, tenancy, customers: int, calls: int, start_minute: int) -> float:
    rng = random.Random(7)
    started = time.perf_counter()
    for i in range(calls):
        run(conn, "ledger_change", {"tenancy_id": tenancy, "customer_id": f"c{rng.randrange(customers)}",
                                    "delta": 1 if i % 2 else -1, "minute": start_minute + i})
    return time.perf_counter() - started


def middle_inserts(conn: psycopg.Connection, tenancy, history: int, times: int = 20) -> list[float]:
    run(conn, "ledger_ingest_batch", {"tenancy_id": tenancy, "first": 0, "last": history - 1, "customers": 1,
                                      "prefix": "long"}, table=("billing", "item_quantity_changes"))
    took = []
    for i in range(times):
        started = time.perf_counter()
        run(conn, "ledger_change", {"tenancy_id": tenancy, "customer_id": "long0", "delta": 3,
                                    "minute": history // 2 + i / (times + 1)})
        took.append((time.perf_counter() - started) * 1000)
    return took


def reads(conn: psycopg.Connection, tenancy, history: int, count: int) -> tuple[list[float], float]:
    rng = random.Random(11)
    took = []
    for _ in range(count):
        minute = rng.uniform(0, history + 600)
        started = time.perf_counter()
        run(conn, "ledger_read", {"tenancy_id": tenancy, "customer_id": "long0", "minute": minute}).fetchone()
        took.append((time.perf_counter() - started) * 1000)
    plan = run(conn, "ledger_read_explain", {"tenancy_id": tenancy, "customer_id": "long0",
                                             "minute": history / 3}).fetchall()
    server_ms = float(next(r["QUERY PLAN"] for r in plan if r["QUERY PLAN"].startswith("Execution Time"))
                      .split(":")[1].split()[0])
    return took, server_ms


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def report(results: list[Result], facts: dict[str, str], command: str) -> str:
    now = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [BEGIN, "<!-- generated by perf/bench_ledger.py: edits between these markers are overwritten -->",
             f"### Latest run: {now}", "", f"`{command}`", "",
             *(f"- **{k}**: `{v}`" for k, v in facts.items()), "",
             "| measure | value | goal | verdict |", "|---|--:|---|---|",
             *(f"| {r.measure} | {r.value} | {r.goal} | {r.verdict} |" for r in results), "", END]
    return "\n".join(lines)


@click.command()
@click.option("--changes", default=1_000_000, show_default=True, help="Manual changes to ingest.")
@click.option("--customers", default=10_000, show_default=True, help="Customers they are spread over.")
@click.option("--batch-rows", default=100_000, show_default=True, help="Rows per INSERT statement.")
@click.option("--history", default=10_000, show_default=True, help="Events of the long history.")
@click.option("--calls", default=2000, show_default=True, help="Single change_item_quantity calls.")
@click.option("--reads", "read_count", default=1000, show_default=True, help="item_quantity calls timed.")
def main(changes: int, customers: int, batch_rows: int, history: int, calls: int, read_count: int) -> None:
    """Benchmark the item ledger: ingest, a middle insert, reads."""
    server = embedded.start(BENCH_HOME)
    dsn = fresh_database(server.dsn, DATABASE)
    with db.connect(dsn, autocommit=True, application_name="pyglue bench ledger") as conn:
        tenancy = run(conn, "ledger_tenancy").fetchone()["id"]
        run(conn, "ledger_plain_copy")
        click.echo(f"1/3 ingest {changes:,} changes into {customers:,} histories …", err=True)
        plain_s = ingest(conn, tenancy, ("public", "plain_item_quantity_changes"), changes, customers, batch_rows)
        ledger_s = ingest(conn, tenancy, ("billing", "item_quantity_changes"), changes, customers, batch_rows)
        calls_s = single_calls(conn, tenancy, customers, calls, start_minute=changes // customers + 1000)
        click.echo("2/3 middle inserts …", err=True)
        middle = middle_inserts(conn, tenancy, history)
        click.echo("3/3 reads …", err=True)
        read_ms, server_ms = reads(conn, tenancy, history, read_count)
        started = time.perf_counter()
        differences = run(conn, "ledger_verify").fetchone()["differences"]
        verify_s = time.perf_counter() - started
        facts = machine_facts(conn)
    facts["settings"] = facts["settings"].replace("; autovacuum off on measured tables", "")  # not here
    ingest_rate = changes / ledger_s
    results = [
        Result(f"plain INSERT of {changes:,} changes ({batch_rows:,} per statement)", f"{changes / plain_s:,.0f} rows/s"),
        Result(f"ledger INSERT, derived state maintained ({batch_rows // customers} per history per statement)",
               f"{ingest_rate:,.0f} rows/s (ratio {plain_s / ledger_s:.2f})", f">= {INGEST_GOAL:,} rows/s",
               ingest_rate >= INGEST_GOAL),
        Result(f"billing.change_item_quantity, {calls:,} single calls", f"{calls / calls_s:,.0f} calls/s"),
        Result(f"insert into the middle of a {history:,}-event history (20 times)",
               f"median {statistics.median(middle):.1f} ms, max {max(middle):.1f} ms", f"<= {MIDDLE_GOAL_MS:g} ms",
               statistics.median(middle) <= MIDDLE_GOAL_MS),
        Result(f"billing.item_quantity on that history ({read_count:,} reads, round trip)",
               f"p50 {percentile(read_ms, 0.5):.2f} ms, p99 {percentile(read_ms, 0.99):.2f} ms"
               f" (server {server_ms:.3f} ms)", f"<= {READ_GOAL_MS:g} ms p50", percentile(read_ms, 0.5) <= READ_GOAL_MS),
        Result(f"billing.verify_ledger() over all {customers + 1:,} histories", f"{differences} differences,"
               f" {verify_s:.1f} s", "0 differences", differences == 0),
    ]
    command = (f".venv/bin/python -m perf.bench_ledger --changes {changes} --customers {customers}"
               f" --batch-rows {batch_rows} --history {history} --calls {calls} --reads {read_count}")
    for r in results:
        click.echo(f"{r.measure:<90} {r.value:<40} {r.goal:<18} {r.verdict}")
    write_block(BEGIN, END, report(results, facts, command), HEADING)


if __name__ == "__main__":
    main()
