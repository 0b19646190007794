"""Billing jobs benchmark: free-plan backfill and regen to latest at 100,000 teams, their
re-runs, and the per-row Python loop they replace.

    .venv/bin/python -m perf.bench_billing [--teams 100000] [--baseline-rows 1000] [--batch-size 10000]

Runs on the embedded server under .pyglue/bench, in a database it drops and recreates
(pyglue_bench_billing, migrated from sql/migrations: whatever billing functions are
migrated there are what is measured). One run, one machine, one autocommit session:

1. seed: projects `internal` and `acme` with one tenancy each and --teams teams each
   (INSERT … SELECT generate_series, ids md5 of project and number), a project `baseline`
   with --baseline-rows teams, and the free product (a team subscription, monthly
   interval, product line `plans`) in all three tenancies.
2. backfill: one call of billing.backfill_free_plans('internal') (its defaults otherwise:
   keyset batches of 10,000 teams, no limit), then the CLI's batched driver
   pyglue.billing.jobs.backfill_free_plans(conn, 'acme', batch_size=--batch-size), one
   commit per call. The driver runs on acme so both start from the same state (teams, the
   free product, no plan); acme's run finds internal's 100,000 subscriptions in the table
   and index, internal's found none. Then the second run of each (same call, same driver).
3. regen: billing.upsert_product writes changed content of the free product in internal
   and acme, so every subscription there is stale. One call of
   billing.regen_subscriptions_to_latest('internal'), then the driver
   jobs.regen_subscriptions(conn, 'acme', batch_size=…), then the second run of each.
   Checked: the other project's subscriptions keep their row versions (a checksum of
   (id, xmin) before and after each run), billing.product_versions does not grow, and no
   subscription is left stale (pyglue/queries/billing_regen_pending.sql).
4. baseline, the approach replaced: a per-row Python loop over the `baseline` tenancy.
   Backfill: list the teams, read the free version once, then per team one SELECT (has a
   live plan?) and one INSERT, a commit per team. Then changed content of its free product
   and regen: list the stale subscriptions, then per subscription one SELECT of the current
   version, one UPDATE of the row, one INSERT into billing.subscription_moves, a commit per
   row. Each statement is its own round trip (perf/sql/billing_loop_*.sql). The ratio is
   the set-based rows/s over the loop's rows/s of the same job.

Every timed step starts after VACUUM ANALYZE of the billing tables, app.teams and
app.tenancies and a CHECKPOINT; autovacuum is off on those tables. Rows written are the
differences of n_tup_ins + n_tup_upd + n_tup_del over schema billing in
pg_stat_user_tables around a step: the session forces its counters out
(pg_stat_force_next_flush(), so they are flushed before the server answers) and reads after
pg_stat_clear_snapshot(); that the counters see writes at all is checked on each first run
(rows written >= rows granted or moved). Transaction ids assigned during a step (the next
xid before and after) are shown next to it: a run that locked rows without writing them
would take one. The counter is the server's, so autovacuum elsewhere may add a few during a
long step; 0 is conclusive, a small excess is not ours. Goals (issue 9): each run <= 5 s,
a re-run writes 0 rows. Prints tables and rewrites the bench_billing block of
perf/RESULTS.md (text outside it is kept).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click
import psycopg
from psycopg.types.json import Jsonb

from perf.bench_sequencer import (BENCH_HOME, RESULTS, Table, Timing, fresh_database, machine_facts, run, timed,
                                  write_block)
from perf.bench_sync import small_table
from pyglue import db, embedded, paths
from pyglue.billing import jobs

DATABASE = "pyglue_bench_billing"
INTERNAL, OTHER, BASELINE = "internal", "acme", "baseline"
TENANCIES = {p: uuid.UUID(hashlib.md5(f"perf-billing-{p}".encode()).hexdigest()) for p in (INTERNAL, OTHER, BASELINE)}
PRODUCT = "free"
FREE = {"display_name": "Free", "customer_type": "team", "product_line": "plans",
        "prices": {"free": {"amounts": {"USD": "0"}, "interval": [1, "month"]}},
        "included_items": {"seats": {"quantity": 3, "expires": "when-purchase-expires"}}}
FREE_CHANGED = FREE | {"display_name": "Free (3 seats)"}  # what makes every subscription stale
GOAL_SECONDS = 5.0
BEGIN, END = "<!-- bench_billing:begin -->", "<!-- bench_billing:end -->"
HEADING = "## Billing jobs"


# --- set-up ---------------------------------------------------------------------------


def upsert_free_product(conn: psycopg.Connection, project: str, content: dict) -> str:
    params = {"tenancy_id": TENANCIES[project], "product_id": PRODUCT, "content": Jsonb(content)}
    return run(conn, "billing_upsert_product", params).fetchone()["version_id"]


def seed(conn: psycopg.Connection, teams: dict[str, int]) -> None:
    """A tenancy per project with its teams and the free product; no subscription yet."""
    for project, count in teams.items():
        params = {"project_id": project, "tenancy_id": TENANCIES[project], "teams": count}
        run(conn, "billing_seed_project", params)
        run(conn, "billing_seed_tenancy", params)
        run(conn, "billing_seed_teams", params)
        upsert_free_product(conn, project, FREE)


def measured_tables(conn: psycopg.Connection) -> list[Table]:
    return [(r["schema"], r["name"]) for r in run(conn, "billing_tables")]


def settle(conn: psycopg.Connection, tables: list[Table]) -> None:
    """VACUUM ANALYZE, CHECKPOINT: the start of every timed step."""
    for table in tables:
        run(conn, "vacuum_analyze", table=table)
    run(conn, "checkpoint")


# --- what a step wrote ------------------------------------------------------------------


@dataclass(frozen=True)
class Writes:
    inserted: int
    updated: int
    deleted: int
    xids: int  # transaction ids assigned

    @property
    def rows(self) -> int:
        return self.inserted + self.updated + self.deleted

    def __sub__(self, other: Writes) -> Writes:
        return Writes(self.inserted - other.inserted, self.updated - other.updated, self.deleted - other.deleted,
                      self.xids - other.xids)


def write_counters(conn: psycopg.Connection) -> Writes:
    """Rows written into schema billing so far and the next xid, this session's counters flushed."""
    run(conn, "billing_stats_force_flush")
    with conn.transaction():
        run(conn, "billing_stats_clear_snapshot")
        counts = run(conn, "billing_rows_written").fetchone()
    next_xid = run(conn, "billing_next_xid").fetchone()["next_xid"]
    return Writes(counts["inserted"], counts["updated"], counts["deleted"], next_xid)


@dataclass(frozen=True)
class Step:
    timing: Timing
    writes: Writes


def measured_step(conn: psycopg.Connection, tables: list[Table], action: Callable[[], tuple[int, int]]) -> Step:
    """Settle, then time action() (which returns (rows, calls)) and count what it wrote."""
    settle(conn, tables)
    before = write_counters(conn)
    timing = timed(action)
    return Step(timing, write_counters(conn) - before)


def one_call(conn: psycopg.Connection, query_name: str, project: str) -> Callable[[], tuple[int, int]]:
    return lambda: (run(conn, query_name, {"project_id": project}).fetchone()["n"], 1)


def driver(conn: psycopg.Connection, job: Callable[..., jobs.JobResult], project: str,
           batch_size: int) -> Callable[[], tuple[int, int]]:
    def drive() -> tuple[int, int]:
        result = job(conn, project_id=project, batch_size=batch_size)
        return result.rows, result.batches

    return drive


# --- checks ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    what: str
    found: str
    ok: bool


def row_versions(conn: psycopg.Connection, project: str) -> tuple[int, str]:
    row = run(conn, "billing_row_versions", {"tenancy_id": TENANCIES[project]}).fetchone()
    return row["n"], row["checksum"]


def untouched(conn: psycopg.Connection, project: str, before: tuple[int, str], during: str) -> Check:
    after = row_versions(conn, project)
    found = f"{after[0]:,} rows, (id, xmin) checksum {'unchanged' if after == before else 'CHANGED'}"
    return Check(f"{project}'s subscriptions untouched by {during}", found, after == before)


def counters_saw(step: Step, what: str) -> Check:
    ok = step.writes.rows >= step.timing.rows > 0
    return Check(f"pg_stat_user_tables counted {what}'s writes", f"{step.writes.rows:,} rows written for "
                 f"{step.timing.rows:,} rows done", ok)


def nothing_pending(conn: psycopg.Connection, project: str, job: str) -> Check:
    pending = (jobs.regen_pending(conn, project) if job == "regen"
               else jobs.backfill_pending(conn, project, PRODUCT))
    return Check(f"{project}: nothing left for {job}", f"{pending:,} pending", pending == 0)


def product_versions(conn: psycopg.Connection) -> int:
    return run(conn, "billing_product_versions").fetchone()["n"]


# --- measurements ---------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    """One line of the report: a step, its goal, and its rate over the per-row loop's."""

    measure: str
    step: Step
    loop: Timing | None = None
    rerun: bool = False
    goal: bool = True

    @property
    def ratio(self) -> float | None:
        return self.step.timing.rate / self.loop.rate if self.loop and self.step.timing.rows else None

    @property
    def met(self) -> bool:
        fast = self.step.timing.seconds <= GOAL_SECONDS
        return fast and (not self.rerun or self.step.writes.rows == 0)

    @property
    def goal_text(self) -> str:
        if not self.goal:
            return ""
        goal = f"<= {GOAL_SECONDS:g} s" + (", writes 0" if self.rerun else "")
        return f"{goal}: {'met' if self.met else 'NOT met'}"


def measure_backfill(conn: psycopg.Connection, tables: list[Table], batch_size: int) -> tuple[list[Step], list[Check]]:
    """First and second runs: one call on internal, the batched driver on acme."""
    acme_before = row_versions(conn, OTHER)
    single = measured_step(conn, tables, one_call(conn, "billing_backfill_free_plans", INTERNAL))
    checks = [counters_saw(single, "backfill (one call)"),
              untouched(conn, OTHER, acme_before, "internal's backfill"), nothing_pending(conn, INTERNAL, "backfill")]
    internal_before = row_versions(conn, INTERNAL)
    batched = measured_step(conn, tables, driver(conn, jobs.backfill_free_plans, OTHER, batch_size))
    checks += [counters_saw(batched, "backfill (batched driver)"),
               untouched(conn, INTERNAL, internal_before, "acme's batched backfill"),
               nothing_pending(conn, OTHER, "backfill")]
    acme_granted = row_versions(conn, OTHER)
    single_again = measured_step(conn, tables, one_call(conn, "billing_backfill_free_plans", INTERNAL))
    batched_again = measured_step(conn, tables, driver(conn, jobs.backfill_free_plans, OTHER, batch_size))
    checks += [untouched(conn, INTERNAL, internal_before, "both second backfills"),
               untouched(conn, OTHER, acme_granted, "both second backfills")]
    return [single, batched, single_again, batched_again], checks


def measure_regen(conn: psycopg.Connection, tables: list[Table], batch_size: int) -> tuple[list[Step], list[Check]]:
    """Make internal's and acme's subscriptions stale; first and second runs: one call on
    internal, the batched driver on acme."""
    for project in (INTERNAL, OTHER):
        upsert_free_product(conn, project, FREE_CHANGED)
    stale = {p: jobs.regen_pending(conn, p) for p in (INTERNAL, OTHER)}
    versions_before = product_versions(conn)
    acme_before = row_versions(conn, OTHER)
    single = measured_step(conn, tables, one_call(conn, "billing_regen_subscriptions_to_latest", INTERNAL))
    checks = [Check("stale subscriptions before regen", f"internal {stale[INTERNAL]:,}, acme {stale[OTHER]:,}",
                    stale[INTERNAL] == single.timing.rows and stale[OTHER] > 0),
              counters_saw(single, "regen (one call)"),
              untouched(conn, OTHER, acme_before, "internal's regen"), nothing_pending(conn, INTERNAL, "regen")]
    internal_moved = row_versions(conn, INTERNAL)
    batched = measured_step(conn, tables, driver(conn, jobs.regen_subscriptions, OTHER, batch_size))
    checks += [counters_saw(batched, "regen (batched driver)"),
               untouched(conn, INTERNAL, internal_moved, "acme's batched regen"), nothing_pending(conn, OTHER, "regen")]
    acme_moved = row_versions(conn, OTHER)
    single_again = measured_step(conn, tables, one_call(conn, "billing_regen_subscriptions_to_latest", INTERNAL))
    checks.append(untouched(conn, OTHER, acme_moved, "internal's second regen"))
    batched_again = measured_step(conn, tables, driver(conn, jobs.regen_subscriptions, OTHER, batch_size))
    checks += [untouched(conn, INTERNAL, internal_moved, "both second regens"),
               untouched(conn, OTHER, acme_moved, "acme's second regen")]
    versions_after = product_versions(conn)
    checks.append(Check("billing.product_versions did not grow during regen",
                        f"{versions_before} rows before, {versions_after} after", versions_after == versions_before))
    return [single, batched, single_again, batched_again], checks


def loop_backfill(conn: psycopg.Connection, project: str) -> tuple[int, int]:
    """The old backfill: per team one SELECT and (when it has no plan) one INSERT, a commit each."""
    tenancy = TENANCIES[project]
    free = run(conn, "billing_loop_free_version", {"tenancy_id": tenancy, "product_id": PRODUCT}).fetchone()
    granted = 0
    for team in run(conn, "billing_loop_teams", {"tenancy_id": tenancy}).fetchall():
        with conn.transaction():
            params = {"tenancy_id": tenancy, "team_id": str(team["id"]), "line_key": free["line_key"]}
            if run(conn, "billing_loop_has_plan", params).fetchone()["has_plan"]:
                continue
            run(conn, "billing_loop_grant", params | {"product_id": PRODUCT, "version_id": free["id"],
                                                     "product_line": free["product_line"], "period": free["period"]})
            granted += 1
    return granted, granted


def loop_regen(conn: psycopg.Connection, project: str) -> tuple[int, int]:
    """The old regen: per stale subscription one SELECT, one UPDATE, one INSERT, a commit each."""
    tenancy = TENANCIES[project]
    moved = 0
    for sub in run(conn, "billing_loop_stale", {"tenancy_id": tenancy}).fetchall():
        with conn.transaction():
            current = run(conn, "billing_loop_current_version",
                          {"tenancy_id": tenancy, "product_id": sub["product_id"]}).fetchone()
            run(conn, "billing_loop_move", {"tenancy_id": tenancy, "subscription_id": sub["id"],
                                            "version_id": current["id"], "product_line": current["product_line"],
                                            "is_add_on": current["is_add_on"], "stackable": current["stackable"]})
            run(conn, "billing_loop_log_move", {"tenancy_id": tenancy, "subscription_id": sub["id"],
                                                "from_version_id": sub["product_version_id"],
                                                "to_version_id": current["id"]})
            moved += 1
    return moved, moved


def measure_loops(conn: psycopg.Connection, tables: list[Table], rows: int) -> tuple[list[Step], list[Check]]:
    backfill = measured_step(conn, tables, lambda: loop_backfill(conn, BASELINE))
    upsert_free_product(conn, BASELINE, FREE_CHANGED)
    regen = measured_step(conn, tables, lambda: loop_regen(conn, BASELINE))
    moves = run(conn, "billing_moves", {"tenancy_id": TENANCIES[BASELINE]}).fetchone()["n"]
    checks = [Check("per-row loops did the same work", f"{backfill.timing.rows:,} granted, {regen.timing.rows:,} moved,"
                    f" {moves:,} moves logged", backfill.timing.rows == regen.timing.rows == moves == rows),
              nothing_pending(conn, BASELINE, "backfill"), nothing_pending(conn, BASELINE, "regen")]
    return [backfill, regen], checks


# --- report ---------------------------------------------------------------------------


def report_lines(backfill: list[Step], regen: list[Step], loops: list[Step], batch_size: int) -> list[Line]:
    loop_backfill_t, loop_regen_t = loops[0].timing, loops[1].timing
    lines = []
    for job, steps, loop in (("backfill", backfill, loop_backfill_t), ("regen", regen, loop_regen_t)):
        single, batched, single_again, batched_again = steps
        call = "backfill_free_plans" if job == "backfill" else "regen_subscriptions_to_latest"
        lines += [
            Line(f"{job}: billing.{call}('internal'), one call", single, loop),
            Line(f"{job}: CLI driver on acme, batches of {batch_size:,} ({batched.timing.calls} that wrote)",
                 batched, loop),
            Line(f"{job} second run: one call, internal", single_again, rerun=True),
            Line(f"{job} second run: CLI driver, acme", batched_again, rerun=True),
        ]
    lines += [Line("baseline: per-row loop backfill (SELECT + INSERT, commit per team)", loops[0], goal=False),
              Line("baseline: per-row loop regen (SELECT + UPDATE + INSERT, commit per row)", loops[1], goal=False)]
    return lines


def format_lines(lines: list[Line], markdown: bool) -> str:
    header = ("measure", "rows", "seconds", "rows/s", "rows written (ins/upd/del)", "xids", "× loop", "goal")
    rows = []
    for line in lines:
        t, w = line.step.timing, line.step.writes
        rows.append((line.measure, f"{t.rows:,}", f"{t.seconds:.2f}", f"{t.rate:,.0f}" if t.rows else "",
                     f"{w.rows:,} ({w.inserted:,}/{w.updated:,}/{w.deleted:,})", f"{w.xids:,}",
                     f"{line.ratio:,.0f}" if line.ratio is not None else "", line.goal_text))
    return small_table(header, rows, markdown, aligns="lrrrrrrl")


def format_checks(checks: list[Check], markdown: bool) -> str:
    rows = [(c.what, c.found, "ok" if c.ok else "FAILED") for c in checks]
    return small_table(("check", "found", ""), rows, markdown, aligns="lll")


def data_line(teams: int, baseline_rows: int, batch_size: int) -> str:
    return (f"projects internal and acme, one tenancy each, {teams:,} teams each ({teams:,} subscriptions each after"
            f" the backfill, all made stale for regen); project baseline {baseline_rows:,} teams for the per-row loops;"
            f" driver batch size {batch_size:,}")


def report(lines: list[Line], checks: list[Check], facts: dict[str, str], data: str, command: str,
           markdown: bool) -> str:
    parts = []
    if markdown:
        now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        parts += [BEGIN, "<!-- generated by perf/bench_billing.py: edits between these markers are overwritten -->",
                  f"### Latest run: {now}", "", f"`{command}`", "",
                  *(f"- **{k}**: `{v}`" for k, v in facts.items()), f"- **data**: {data}", ""]
    parts += [format_lines(lines, markdown), "", format_checks(checks, markdown), ""]
    if markdown:
        parts += [
            f"Goals (issue 9): each backfill and regen run, first or second, <= {GOAL_SECONDS:g} s; a second run"
            " writes 0 rows. Rows written: n_tup_ins/upd/del of schema billing in pg_stat_user_tables around the"
            " step (counters flushed by the session, snapshot cleared). xids: transaction ids the server assigned"
            " during the step (server-wide: 0 is conclusive; each transaction and each subtransaction that writes"
            " takes one, an exception block being one, and autovacuum may add some). × loop: rows/s over the"
            " per-row loop's rows/s"
            " for the same job, measured in the same run (the loop: one round trip per statement, a commit per row,"
            " synchronous_commit on). The one-call lines are one statement each; the CLI driver"
            " (pyglue.billing.jobs, what `pyglue billing backfill-free-plans` / `regen` run) commits after each"
            " call of at most batch size rows, on acme, which starts from the same state.",
            END,
        ]
    return "\n".join(parts).rstrip("\n")


def load_average() -> str:
    """Other work on the machine slows every step: the run says how busy it was."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def migrations_applied(conn: psycopg.Connection) -> str:
    row = run(conn, "billing_migrations").fetchone()
    return f"{row['applied']} applied, the latest {row['latest']}"


# --- main -----------------------------------------------------------------------------


@click.command()
@click.option("--teams", default=100_000, show_default=True, type=click.IntRange(1),
              help="Teams (and so subscriptions) in each of the projects internal and acme.")
@click.option("--baseline-rows", default=1_000, show_default=True, type=click.IntRange(1),
              help="Teams and subscriptions the per-row Python loops handle.")
@click.option("--batch-size", default=10_000, show_default=True, type=click.IntRange(1),
              help="Rows per committed call of the CLI's batched drivers.")
def main(teams: int, baseline_rows: int, batch_size: int) -> None:
    """Benchmark the free-plan backfill and regen at scale, their re-runs, and the per-row loop."""
    load = load_average()
    server = embedded.start(BENCH_HOME)
    dsn = fresh_database(server.dsn, DATABASE)
    with db.connect(dsn, autocommit=True, application_name="pyglue bench billing") as conn:
        click.echo(f"seeding {teams:,} teams × 2 and {baseline_rows:,} into {DATABASE} …", err=True)
        seed(conn, {INTERNAL: teams, OTHER: teams, BASELINE: baseline_rows})
        tables = measured_tables(conn)
        for table in tables:
            run(conn, "autovacuum_off", table=table)

        click.echo("1/3 backfill: one call, driver, second runs …", err=True)
        backfill, checks = measure_backfill(conn, tables, batch_size)
        click.echo("2/3 regen: one call, driver, second runs …", err=True)
        regen, regen_checks = measure_regen(conn, tables, batch_size)
        click.echo(f"3/3 per-row loops, {baseline_rows:,} rows …", err=True)
        loops, loop_checks = measure_loops(conn, tables, baseline_rows)
        facts = machine_facts(conn) | {"migrations": migrations_applied(conn)}
    facts["load average (1, 5, 15 min)"] = f"{load} at the start, {load_average()} at the end"

    lines = report_lines(backfill, regen, loops, batch_size)
    checks += regen_checks + loop_checks
    data = data_line(teams, baseline_rows, batch_size)
    command = (f".venv/bin/python -m perf.bench_billing --teams {teams} --baseline-rows {baseline_rows}"
               f" --batch-size {batch_size}")
    click.echo(f"\n{data}; {facts['nproc']} CPUs, {facts['postgres'].split(' on ')[0]}\n")
    click.echo(report(lines, checks, facts, data, command, markdown=False))
    write_block(BEGIN, END, report(lines, checks, facts, data, command, markdown=True), HEADING)
    click.echo(f"\nwrote {RESULTS.relative_to(paths.ROOT)}", err=True)


if __name__ == "__main__":
    main()
