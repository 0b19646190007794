"""Bulk loads into app tables without statistics of their rows (migration 0028), beside the
same loads without 0028's ANALYZE of stale tables, in one run on one server.

    .venv/bin/python -m perf.bench_bulk_load [--users 10000] [--server embedded|debian|both]

One transaction inserts --users users of a new tenancy in one statement and then a primary
email for each in a second one; the search-row and metrics triggers refresh every user of
each statement. Timed per statement, in a database of its own cloned from a migrated
template, for each state the app tables can be in before it:

- fresh: never loaded;
- dead rows, never analyzed: the rows of a rolled-back load of the same size fill pages;
- dead rows, analyzed: then ANALYZE (what autovacuum does after a rollback): 0 rows counted;
- vacuumed, analyzed empty: VACUUM ANALYZE after the rolled-back load.

Each state is measured with app._analyze_if_stale as shipped and with it made a no-op
inside the transaction (the baseline: 0028's key joins alone). Writes the bench_bulk_load
block of perf/RESULTS.md.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass

import click
import psycopg
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from perf import debian_cluster
from perf.bench_sequencer import machine_facts, run, write_block
from perf.bench_sync_peer import embedded_server
from pyglue import migrate

TEMPLATE, DATABASE = "pyglue_bulk_template", "pyglue_bulk"
# the tables the load and its triggers write or read; autovacuum off on them, so no analyze of
# its own changes a state between its preparation and the load; the states analyze them
TABLES = ("users", "contact_channels", "user_search", "metrics_user_state", "metrics_counters", "auth_methods",
          "events", "metrics_active_days")
STATES = {
    "fresh": [],
    "dead rows, never analyzed": ["rolled-back load"],
    "dead rows, analyzed": ["rolled-back load", "analyze"],
    "vacuumed, analyzed empty": ["rolled-back load", "vacuum_analyze"],
}
BEGIN, END = "<!-- bench_bulk_load:begin -->", "<!-- bench_bulk_load:end -->"
HEADING = "## Bulk loads into tables without statistics"


@dataclass
class Load:
    users_s: float
    emails_s: float

    @property
    def total_s(self) -> float:
        return self.users_s + self.emails_s


def load(conn: psycopg.Connection, users: int, baseline: bool) -> Load:
    """The two statements of a bulk load in one transaction, rolled back: seconds of each."""
    with conn.transaction(force_rollback=True):
        if baseline:
            run(conn, "bulk_load_without_helper")
        tenancy_id = run(conn, "bulk_load_tenancy").fetchone()["id"]
        params = {"tenancy_id": tenancy_id, "users": users}
        started = time.perf_counter()
        run(conn, "bulk_load_users", params)
        users_done = time.perf_counter()
        run(conn, "bulk_load_emails", params)
        return Load(users_done - started, time.perf_counter() - users_done)


def measure(server_dsn: str, users: int, state: list[str], baseline: bool) -> Load:
    """A clone of the template brought into the state, then the load."""
    dsn = make_conninfo(server_dsn, dbname=DATABASE)
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        run(conn, "drop_database", database=DATABASE)
        run(conn, "create_database_from", database=DATABASE, template=TEMPLATE)
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        for step in state:
            if step == "rolled-back load":
                load(conn, users, baseline=True)  # without the helper, so it analyzes nothing itself
            else:
                for table in TABLES:
                    run(conn, step, table=("app", table))
        return load(conn, users, baseline)


def server_lines(label: str, facts: dict, users: int, results: dict[str, dict[bool, Load]]) -> list[str]:
    lines = [f"#### {label}: {facts['postgres'].split(' on ')[0]}", "",
             f"- **settings**: `{facts['settings'].split(' (')[0]}`", "",
             f"| state of the app tables before the load | {users:,} users, then their emails: with 0028 |"
             " without the ANALYZE of stale tables (helper a no-op), same run | ratio |",
             "|---|--:|--:|--:|"]
    for state, by in results.items():
        ours, base = by[False], by[True]
        lines.append(f"| {state} | {ours.users_s:.2f} s + {ours.emails_s:.2f} s = {ours.total_s:.2f} s |"
                     f" {base.users_s:.2f} s + {base.emails_s:.2f} s = {base.total_s:.2f} s |"
                     f" {base.total_s / ours.total_s:.1f}x |")
    return lines + [""]


def run_server(server_dsn: str, users: int) -> tuple[dict, dict[str, dict[bool, Load]]]:
    template = make_conninfo(server_dsn, dbname=TEMPLATE)
    with psycopg.connect(server_dsn, autocommit=True, row_factory=dict_row) as conn:
        facts = machine_facts(conn)
        run(conn, "drop_database", database=DATABASE)
        run(conn, "drop_database", database=TEMPLATE)
        run(conn, "create_database", database=TEMPLATE)
    migrate.migrate(template)
    with psycopg.connect(template, autocommit=True) as conn:
        for table in TABLES:
            run(conn, "autovacuum_off", table=("app", table))
    results: dict[str, dict[bool, Load]] = {}
    for state, steps in STATES.items():
        for baseline in (False, True):
            click.echo(f"{state}, {'helper a no-op' if baseline else 'with 0028'} …", err=True)
            results.setdefault(state, {})[baseline] = measure(server_dsn, users, steps, baseline)
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        run(conn, "drop_database", database=DATABASE)
        run(conn, "drop_database", database=TEMPLATE)
    return facts, results


@click.command()
@click.option("--users", default=10_000, show_default=True, type=click.IntRange(min=1_000),
              help="Users of the load (and of the rolled-back load before it).")
@click.option("--server", type=click.Choice(["embedded", "debian", "both"]), default="both", show_default=True)
def main(users: int, server: str) -> None:
    """Bulk loads into tables without statistics, with and without 0028's ANALYZE of stale tables."""
    servers = {"embedded": embedded_server, "Debian": debian_cluster.ensure}
    chosen = [label for label in servers if server in (label.lower(), "both")]
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    block, facts = [], {}
    for label in chosen:
        click.echo(f"[{label}]", err=True)
        facts, results = run_server(servers[label](), users)
        block += server_lines(label, facts, users, results)
    head = [BEGIN, "<!-- generated by perf/bench_bulk_load.py: edits between these markers are overwritten -->",
            f"### Latest run: {now}", "",
            f"`.venv/bin/python -m perf.bench_bulk_load --users {users} --server {server}`", "",
            *(f"- **{k}**: `{v}`" for k, v in facts.items() if k not in ("postgres", "settings")), ""]
    tail = ["Ratio: seconds without the helper over seconds with it. Each load is one transaction of two statements"
            " (the users of a new tenancy, then a primary email each), rolled back; each cell is one run in a"
            " fresh clone of a migrated database.", END]
    text = "\n".join(head + block + tail)
    write_block(BEGIN, END, text, HEADING)
    print(text, flush=True)


if __name__ == "__main__":
    main()
