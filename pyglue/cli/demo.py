"""`pyglue demo`: the main job end to end on the embedded server."""

from __future__ import annotations

import time

import click

from pyglue import db, demo as demo_job, embedded, migrate
from pyglue import dsn as dsns
from pyglue.errors import PyglueError
from pyglue.progress import Progress
from pyglue.sync import targets


@click.command()
@click.option("--users", type=click.IntRange(min=1, max=5_000_000), default=20000, show_default=True,
              help="Users in the demo tenancy (seeded once; a re-run keeps them).")
@click.pass_obj
def demo(obj, users: int) -> None:
    """Start the embedded server, migrate, seed a tenancy, sync it into its own database, change, sync again."""
    if obj.explicit_dsn is None:
        server = embedded.start()
        click.echo(f"embedded Postgres running (pid {server.pid}) in {server.data_dir}")
    applied = migrate.migrate(obj.dsn, report=click.echo)
    states = migrate.status(obj.dsn)
    done = [s.id for s in states if s.applied]
    click.echo(f"migrations: {len(applied)} applied now; {len(done)} of {len(states)} applied"
               f" ({done[0]} … {done[-1]})")

    with db.connect(obj.dsn) as conn:
        tenancy = demo_job.demo_tenancy(conn)
        started = time.monotonic()
        demo_job.seed(conn, tenancy, users)
        click.echo(f"tenancy {tenancy}: seeded {users} users in {time.monotonic() - started:.1f}s")
        target_dsn = demo_job.ensure_target(conn, obj.dsn, tenancy)
        click.echo(f"sync target {demo_job.TARGET_NAME!r}: {dsns.describe(target_dsn)}")

        for step in ("initial sync", "sync after changes"):
            if step != "initial sync":
                click.echo("changes: " + ", ".join(f"{k} {v}" for k, v in demo_job.make_changes(conn, tenancy).items()))
            started = time.monotonic()
            with Progress(targets.backlog(conn, tenancy), step) as progress:
                result = demo_job.sync(obj.dsn, tenancy, progress.advance)
            seconds = time.monotonic() - started
            click.echo(f"{step}: {result.rows} row(s) in {seconds:.1f}s ({result.rows / max(seconds, 1e-9):,.0f} rows/s)")
            if result.failed:
                raise PyglueError(f"demo sync failed: {result.failed[0].error}")

        click.echo(f"{'table':<22}{'source':>10}{'target':>10}")
        for table, n_src, n_dst in demo_job.compare(conn, tenancy, target_dsn):
            click.echo(f"{table:<22}{n_src:>10}{n_dst:>10}" + ("" if n_src == n_dst else "  MISMATCH"))
        mismatched = [t for t, a, b in demo_job.compare(conn, tenancy, target_dsn) if a != b]
    if mismatched:
        raise PyglueError(f"target differs from source in {', '.join(mismatched)}")
    click.echo("demo done: the target equals the source")
