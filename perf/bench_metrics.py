"""Metrics benchmark (issue 12): app.metrics uncached and cached, list_users pages and
search, and event ingest with the rollup triggers, each beside a naive baseline measured in
the same run.

    .venv/bin/python -m perf.bench_metrics [--small-users 10000] [--small-events 300000]
        [--large-users 1000000] [--large-events 10000000] [--user-batch 100000]
        [--event-batch 1000000] [--dsn DSN]

Runs on a server of its own (default: the Debian PostgreSQL 15 cluster `15 bench` on port
5433 that perf/debian_cluster.py creates and starts, which has pg_trgm; the embedded server
has not), in a database it drops and recreates
(bench_metrics, migrated from sql/migrations). Seeds with perf/mock-users.sql and
perf/mock-metric-events.sql through psql (re-runnable, so the large tenancy is seeded in
batches, each one a psql run). Steps:

1. small tenancy: --small-users users and --small-events events (with the rollup triggers);
   the same events into a plain copy of app.events (no triggers): the ingest ratio. The
   rollups are compared with a rebuild from the source tables, and app.metrics with the naive
   query (same numbers).
2. app.metrics at the small size: median of 20 calls; the naive query: median of 5.
3. large tenancy: --large-users users and --large-events events, in batches; rate per batch;
   one batch of the same size into the plain copy.
4. app.metrics at the large size (median of 10) beside the naive query (1 call);
   app.metrics_cached hits (median of 200).
5. list_users pages of 50 at the start, middle and end of the large tenancy (median of 20)
   beside OFFSET pages; searches (median of 10) beside the plain ILIKE query, with the
   trigram indexes and without them (dropped in a rolled-back transaction).
6. auto_explain plans of app.metrics and list_users at the large size.

Goals (issue 12): metrics <= 50 ms at 10k users + 300k events, <= 200 ms at 1M + 10M;
cached <= 2 ms; a page <= 10 ms; search <= 100 ms. Writes the bench_metrics block of
perf/RESULTS.md.
"""

from __future__ import annotations

import datetime as dt
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import click
import psycopg
from psycopg.rows import dict_row

from psycopg.conninfo import make_conninfo

from perf import debian_cluster
from perf.bench_sequencer import fresh_database, machine_facts, run, write_block

DATABASE = "bench_metrics"
BEGIN, END = "<!-- bench_metrics:begin -->", "<!-- bench_metrics:end -->"
HEADING = "## Metrics"
PERF = Path(__file__).parent
SMALL = "00000000-0000-4000-8000-000000000010"
LARGE = "00000000-0000-4000-8000-000000001000"


@dataclass
class Row:
    measure: str
    value: str
    baseline: str = ""
    ratio: str = ""
    goal: str = ""
    verdict: str = ""


def psql(dsn: str, script: str, **variables) -> float:
    started = time.perf_counter()
    args = [shutil.which("psql") or "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn]
    for k, v in variables.items():
        args += ["-v", f"{k}={v}"]
    subprocess.run(args + ["-f", str(PERF / script)], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def median_ms(conn, name: str, params: dict, calls: int) -> float:
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        run(conn, name, params).fetchall()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def ms(value: float) -> str:
    return f"{value:,.2f} ms" if value < 10 else f"{value:,.0f} ms"


def compared(measure: str, fast: float, naive: float, goal: float | None) -> Row:
    return Row(measure, ms(fast), ms(naive), f"{naive / fast:,.0f}× faster" if fast else "",
               f"<= {goal:g} ms" if goal else "", ("met" if fast <= goal else "NOT met") if goal else "")


def core(m: dict) -> dict:
    """The fields app.metrics and the naive query both compute."""
    return {"total_users": m["total_users"], "daily_users": m["daily_users"],
            "daily_active_users": m["daily_active_users"], "users_by_country": m["users_by_country"],
            "login_methods": m["login_methods"],
            "verified_users": m.get("verified_users", m.get("auth_overview", {}).get("verified_users")),
            "mau": m.get("mau", m.get("auth_overview", {}).get("mau"))}


def seed(dsn: str, tenancy: str, users: int, events: int, user_batch: int, event_batch: int,
         end_at: str) -> tuple[float, list[float]]:
    user_s = sum(psql(dsn, "mock-users.sql", tenancy=tenancy, users=min(user_batch, users - done), end_at=end_at)
                 for done in range(0, users, user_batch))
    event_s = []
    for done in range(0, events, event_batch):
        last = done + event_batch >= events
        event_s.append(psql(dsn, "mock-metric-events.sql", tenancy=tenancy, events=min(event_batch, events - done),
                            end_at=end_at, touch_users=1 if last else 0))
    return user_s, event_s


@click.command()
@click.option("--small-users", default=10_000, show_default=True, help="Users of the small tenancy.")
@click.option("--small-events", default=300_000, show_default=True, help="Activity events of the small tenancy.")
@click.option("--large-users", default=1_000_000, show_default=True, help="Users of the large tenancy (0: skip).")
@click.option("--large-events", default=10_000_000, show_default=True, help="Activity events of the large tenancy.")
@click.option("--user-batch", default=100_000, show_default=True, help="Users per psql run of mock-users.sql.")
@click.option("--event-batch", default=1_000_000, show_default=True, help="Events per psql run of the events seed.")
@click.option("--dsn", default=None, help="Server to create the bench database on (default: perf/debian_cluster.py's).")
@click.option("--measure-only", is_flag=True,
              help="Reuse the bench database as a previous run left it: no seeding, no ingest rows; sizes as found.")
def main(small_users, small_events, large_users, large_events, user_batch, event_batch, dsn, measure_only) -> None:
    """Benchmark app.metrics, app.metrics_cached and app.list_users against naive queries."""
    command = (f"`.venv/bin/python -m perf.bench_metrics --small-users {small_users} --small-events {small_events}"
               f" --large-users {large_users} --large-events {large_events} --user-batch {user_batch}"
               f" --event-batch {event_batch}{' --measure-only' if measure_only else ''}`")
    dsn = dsn or debian_cluster.ensure()
    target = make_conninfo(dsn, dbname=DATABASE) if measure_only else fresh_database(dsn, DATABASE)
    end_at = dt.datetime.now(dt.timezone.utc).replace(second=0, microsecond=0)
    now = end_at
    rows: list[Row] = []
    checks: list[str] = []
    plans: list[str] = []
    with psycopg.connect(target, row_factory=dict_row, autocommit=True) as conn:
        facts = machine_facts(conn)
        facts["settings"] = facts["settings"].replace(" (pgserver defaults); autovacuum off on measured tables",
                                                      " (perf/debian_cluster.py settings)" if dsn == debian_cluster.DSN else " (server defaults)")
        if measure_only:
            sizes = {t: run(conn, "metrics_tenancy_sizes", {"tenancy_id": t}).fetchone() for t in (SMALL, LARGE)}
            small_users, small_events = sizes[SMALL]["users"], sizes[SMALL]["events"]
            large_users, large_events = sizes[LARGE]["users"], sizes[LARGE]["events"]
            now = run(conn, "metrics_latest_activity", {"tenancy_id": LARGE}).fetchone()["at"]
            conn.execute("analyze")
        else:
            run(conn, "metrics_plain_events")

            # 1. small tenancy, ingest ratio
            user_s, (event_s,) = seed(target, SMALL, small_users, small_events, small_users, small_events,
                                      end_at.isoformat())
            plain_s = psql(target, "mock-metric-events.sql", tenancy=SMALL, events=small_events,
                           end_at=end_at.isoformat(), target="public.bench_plain_events", touch_users=0)
            rows.append(Row(f"seed {small_users:,} users (mock-users.sql, rollups maintained)", f"{user_s:.1f} s"))
            rows.append(Row(f"ingest {small_events:,} events with rollup triggers (one statement)",
                            f"{small_events / event_s:,.0f} rows/s", f"{small_events / plain_s:,.0f} rows/s plain",
                            f"{plain_s / event_s:.2f} of plain"))
            conn.execute("vacuum analyze")
        params = {"tenancy_id": SMALL, "anon": False, "now": now}
        fast = run(conn, "metrics_fast", params).fetchone()["m"]
        naive = run(conn, "metrics_naive", params).fetchone()["m"]
        checks.append(f"app.metrics = naive query at {small_users:,} users: {core(fast) == core(naive)}")
        with conn.transaction(force_rollback=True):
            before = run(conn, "metrics_counters_snapshot", params).fetchall()
            run(conn, "metrics_rebuild", params)
            checks.append("rollup counters = a rebuild from the source tables: "
                          f"{before == run(conn, 'metrics_counters_snapshot', params).fetchall()} ({len(before)} counters)")
        rows.append(compared(f"app.metrics, {small_users:,} users + {small_events:,} events",
                             median_ms(conn, "metrics_fast", params, 20), median_ms(conn, "metrics_naive", params, 5), 50))
        run(conn, "metrics_cached_call", params)
        rows.append(compared("app.metrics_cached hit (small)", median_ms(conn, "metrics_cached_call", params, 200),
                             median_ms(conn, "metrics_fast", params, 20), 2))

        if large_users and not measure_only:
            # 3. large tenancy
            user_s, event_s = seed(target, LARGE, large_users, large_events, user_batch, event_batch,
                                   end_at.isoformat())
            rows.append(Row(f"seed {large_users:,} users in runs of {user_batch:,}", f"{user_s:.0f} s"))
            rates = [min(event_batch, large_events - i * event_batch) / s for i, s in enumerate(event_s)]
            plain_s = psql(target, "mock-metric-events.sql", tenancy=LARGE, events=min(event_batch, large_events),
                           end_at=end_at.isoformat(), target="public.bench_plain_events", touch_users=0)
            plain_rate = min(event_batch, large_events) / plain_s
            rows.append(Row(f"ingest {large_events:,} events with rollup triggers, runs of {event_batch:,}"
                            f" (last run also sets last_active_at)",
                            f"{statistics.median(rates):,.0f} rows/s median (first {rates[0]:,.0f}, last {rates[-1]:,.0f})",
                            f"{plain_rate:,.0f} rows/s plain", f"{statistics.median(rates) / plain_rate:.2f} of plain"))
            conn.execute("vacuum analyze")
        if large_users:
            params = {"tenancy_id": LARGE, "anon": False, "now": now}
            fast_ms = median_ms(conn, "metrics_fast", params, 10)
            started = time.perf_counter()
            naive = run(conn, "metrics_naive", params).fetchone()["m"]
            naive_ms = (time.perf_counter() - started) * 1000
            fast = run(conn, "metrics_fast", params).fetchone()["m"]
            checks.append(f"app.metrics = naive query at {large_users:,} users: {core(fast) == core(naive)}")
            rows.append(compared(f"app.metrics, {large_users:,} users + {large_events:,} events", fast_ms, naive_ms, 200))
            run(conn, "metrics_cached_call", params)
            rows.append(compared("app.metrics_cached hit (large)", median_ms(conn, "metrics_cached_call", params, 200),
                                 fast_ms, 2))

            # 5. pages and search
            counted = large_users - large_users // 20
            for label, offset in (("start", 0), ("middle", counted // 2), ("end", counted - 51)):
                cursor = None if offset == 0 else run(conn, "metrics_cursor_at", {"tenancy_id": LARGE, "offset": offset - 1}
                                                       ).fetchone()["cursor"]
                page = {"tenancy_id": LARGE, "limit": 50, "cursor": cursor, "query": None}
                rows.append(compared(f"list_users page of 50 at the {label} (offset {offset:,})",
                                     median_ms(conn, "metrics_list_users", page, 20),
                                     median_ms(conn, "metrics_users_offset_page",
                                               {"tenancy_id": LARGE, "offset": offset, "limit": 50}, 5), 10))
            searches = [("rare name", "Mock User 777777"), ("11 names", "user 12345"), ("rare email", "user.424242@"),
                        ("2% (email domain)", "example7.test"), ("every user", "mock"), ("no match", "zzzz")]
            for label, q in searches:
                page = {"tenancy_id": LARGE, "limit": 50, "cursor": None, "query": q}
                naive_q = {"tenancy_id": LARGE, "limit": 51, "pattern": f"%{q}%"}
                rows.append(compared(f"search '{q}' ({label}), trigram indexes",
                                     median_ms(conn, "metrics_list_users", page, 10),
                                     median_ms(conn, "metrics_search_naive", naive_q, 2), 100))
            with conn.transaction(force_rollback=True):
                run(conn, "metrics_drop_trgm")
                for label, q in searches:
                    page = {"tenancy_id": LARGE, "limit": 50, "cursor": None, "query": q}
                    naive_q = {"tenancy_id": LARGE, "limit": 51, "pattern": f"%{q}%"}
                    rows.append(compared(f"search '{q}' ({label}), no pg_trgm (fallback)",
                                         median_ms(conn, "metrics_list_users", page, 3),
                                         median_ms(conn, "metrics_search_naive", naive_q, 1), 100))

            # 6. plans
            notices: list[str] = []
            conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
            run(conn, "metrics_explain_on")
            run(conn, "metrics_fast", params).fetchall()
            cursor = run(conn, "metrics_cursor_at", {"tenancy_id": LARGE, "offset": counted // 2}).fetchone()["cursor"]
            run(conn, "metrics_list_users", {"tenancy_id": LARGE, "limit": 50, "cursor": cursor, "query": None}).fetchall()
            run(conn, "metrics_list_users", {"tenancy_id": LARGE, "limit": 50, "cursor": None,
                                             "query": "Mock User 777777"}).fetchall()
            run(conn, "metrics_explain_off")
            # the statements that cost something (the per-user json lookups are logged too)
            plans = [n for n in notices if n.startswith("duration") and float(n.split()[1]) >= 0.3][:12]

    block = results_block(facts, command, rows, checks, plans)
    write_block(BEGIN, END, block, HEADING)
    print(block)


def results_block(facts: dict, command: str, rows: list[Row], checks: list[str], plans: list[str]) -> str:
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    table = ["| measure | value | baseline (same run) | ratio | goal | verdict |", "|---|--:|--:|--:|---|---|"]
    table += [f"| {r.measure} | {r.value} | {r.baseline} | {r.ratio} | {r.goal} | {r.verdict} |" for r in rows]
    return "\n".join([
        BEGIN,
        "<!-- generated by perf/bench_metrics.py: edits between these markers are overwritten -->",
        f"### Latest run: {now}", "", command, "",
        *(f"- **{k}**: `{v}`" for k, v in facts.items()), "",
        *table, "",
        "Baselines: app.metrics beside perf/sql/metrics_naive.sql (the same numbers from the source tables at"
        " read time); a page beside OFFSET pagination of the same order; a search beside the plain ILIKE query"
        " (perf/sql/metrics_search_naive.sql); ingest beside the same INSERT … SELECT into a plain copy of"
        " app.events (same indexes, no triggers). Times are medians, round trip from Python included.", "",
        *(f"- {c}" for c in checks), "",
        "<details><summary>auto_explain plans at the large size (app.metrics, a middle page, a rare search)</summary>",
        "", "```", *("\n".join(p.splitlines()[:40]) for p in plans), "```", "</details>",
        END,
    ])


if __name__ == "__main__":
    main()
