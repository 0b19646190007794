"""`pyglue demo`: the whole job, step by step, on the embedded server (or --dsn)."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import click

from pyglue import charts, db, embedded, migrate, paths
from pyglue import demo as job
from pyglue import dsn as dsns
from pyglue.cli.metrics import dashboard, summary
from pyglue.errors import PyglueError
from pyglue.progress import Progress
from pyglue.sync import targets


def step(n: int, text: str) -> None:
    click.echo(click.style(f"\n[{n}/8] {text}", bold=True))


@click.command()
@click.option("--users", type=click.IntRange(min=10, max=5_000_000), default=10000, show_default=True,
              help="Users of each customer tenancy (seeded once; a re-run adds only what is missing).")
@click.option("--events", type=click.IntRange(min=0, max=100_000_000), default=100000, show_default=True,
              help="Activity events of each customer tenancy (seeded with its first users).")
@click.option("--reset", is_flag=True, help="Drop the demo's projects and target databases first.")
@click.option("--chart", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where the metrics chart goes (default: .pyglue/demo-metrics.png).")
@click.pass_obj
def demo(obj, users: int, events: int, reset: bool, chart: Path | None) -> None:
    """Seed two customer tenancies, sync each into its own database with the worker, change
    rows and watch them arrive, run the billing jobs, show balances, history and metrics."""
    started = time.monotonic()
    step(1, "server and migrations")
    if obj.explicit_dsn is None:
        server = embedded.start()
        click.echo(f"embedded Postgres running (pid {server.pid}) in {server.data_dir}")
    if reset:
        for gone in job.reset(obj.dsn):
            click.echo(f"reset: dropped {gone}")
    applied = migrate.migrate(obj.dsn, report=click.echo)
    states = migrate.status(obj.dsn)
    click.echo(f"migrations: {len(applied)} applied now; {sum(s.applied for s in states)} of {len(states)} applied")

    with db.connect(obj.dsn, autocommit=True) as conn:
        step(2, f"projects and seeds ({users:,} users and {events:,} events per customer tenancy)")
        job.ensure_tenancies(conn)
        for t in job.CUSTOMERS:
            with Progress(max(users - job.users_present(conn, t), 0) + events, f"seeding {t.project}") as progress:
                added_users, added_events = job.seed(conn, obj.dsn, t, users, events, progress.advance)
            click.echo(f"{t.project} (tenancy {t.id}): {job.users_present(conn, t):,} users"
                       f" ({added_users:,} added now), {added_events:,} events added now")
        job.seed(conn, obj.dsn, job.INTERNAL, 200, 0, lambda _n: None)

        step(3, "a sync target per tenancy, and the worker until every one is caught up")
        target_dsns = {t.project: job.ensure_target(conn, obj.dsn, t) for t in job.CUSTOMERS}
        for t in job.CUSTOMERS:
            click.echo(f"{t.project}: target {job.TARGET_NAME!r} = {dsns.describe(target_dsns[t.project])}")
        catch_up(obj.dsn, conn, "initial sync")

        step(4, "changes and deletes arrive")
        acme = job.CUSTOMERS[0]
        changes = job.make_changes(conn, acme)
        click.echo(f"{acme.project}: renamed {len(changes['renamed'])} users ({', '.join(changes['renamed'])}),"
                   f" verified {changes['verified']} emails, deleted {len(changes['deleted'])} user"
                   f" (its channels and memberships by cascade), added 1")
        catch_up(obj.dsn, conn, "sync of the changes")
        seen = job.arrived(target_dsns[acme.project], changes)
        click.echo(f"in the target: {seen['renamed']} of {len(changes['renamed'])} new names, deleted user present:"
                   f" {'yes' if seen['deleted_still_there'] else 'no'}, new user present: {'yes' if seen['added'] else 'no'}")
        if seen["renamed"] != len(changes["renamed"]) or seen["deleted_still_there"] or not seen["added"]:
            raise PyglueError("the changes did not all arrive in the target")

        step(5, "billing of the internal project: free plan backfill, a new version, regen")
        plans = job.billing(conn)
        click.echo(f"backfill: {plans['backfilled']} team(s) granted the free plan;"
                   f" regen: {plans['moved']} subscription(s) moved to the new version (5 seats instead of 3)")
        click.echo(f"team {plans['team']}: " + "; ".join(
            f"{b['item']} {b['now']} now, {b['in_40_days']} in 40 days" for b in plans["balances"]))
        click.echo("its latest transactions:")
        for t in plans["history"]:
            what = t["item_id"] or t["product_id"] or ""
            click.echo(f"  {t['at']:%Y-%m-%d %H:%M}  {t['kind']:<13} {what:<8} {t['quantity'] if t['quantity'] is not None else ''}")

        step(6, f"metrics of {acme.project}")
        m = dashboard(conn, acme.id)
        click.echo(summary(m))
        chart = chart or paths.home() / "demo-metrics.png"
        chart.parent.mkdir(parents=True, exist_ok=True)
        charts.write_png(m, chart, f"{acme.display_name}: tenancy {acme.id}")
        click.echo(f"chart written to {chart}")

        step(7, "targets equal their sources; status")
        mismatched = []
        for t in job.CUSTOMERS:
            for table, n_src, n_dst in job.compare(conn, t, target_dsns[t.project]):
                click.echo(f"{t.project:<8}{table:<22}{n_src:>10,}{n_dst:>10,}" + ("" if n_src == n_dst else "  MISMATCH"))
                if n_src != n_dst:
                    mismatched.append(f"{t.project}.{table}")
        projects = {t.id: t.project for t in job.CUSTOMERS}
        for r in sorted((r for r in targets.status(conn) if r["tenancy_id"] in projects),
                        key=lambda r: (projects[r["tenancy_id"]], r["mapping_name"])):
            click.echo(f"status {projects[r['tenancy_id']]:<8}{r['target_name']:<6} {r['mapping_name']:<22}"
                       f" pending {r['pending_rows']:>6}  cursor {r['last_synced_sequence_id']:>10}"
                       + ("  FAILING" if r["failing"] else ""))
    if mismatched:
        raise PyglueError(f"target differs from source in {', '.join(mismatched)}")

    step(8, "look around")
    me = command_name()
    dsn_hint = f"psql \"$({me} db url)\"" if obj.explicit_dsn is None else "psql <your DSN>"
    click.echo(f"{dsn_hint:<44} # e.g. select * from pyglue.sync_status();")
    click.echo(f"{me + ' dashboard':<44} # sync status, fusebox, metrics in the browser")
    click.echo(f"demo done in {time.monotonic() - started:.0f}s: every target equals its source")


def command_name() -> str:
    """How to run pyglue again from here: `pyglue` when that is on PATH, else the path this ran as."""
    ran_as = sys.argv[0] if sys.argv and sys.argv[0].endswith("pyglue") else None
    if ran_as is None:
        return "pyglue"
    found = shutil.which("pyglue")
    return "pyglue" if found and Path(found).resolve() == Path(ran_as).resolve() else ran_as


def catch_up(dsn: str, conn, label: str) -> None:
    with Progress(job.backlog(conn), label) as progress:
        seconds = job.run_worker(dsn, conn, progress.advance)
    failing = [r for r in targets.status(conn) if r["failing"]]
    if failing:
        raise PyglueError(f"sync target {failing[0]['target_name']} failed: {failing[0]['last_error']}")
    click.echo(f"{label}: caught up in {seconds:.1f}s")
