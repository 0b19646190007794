"""`pyglue seed users|events`: load the perf seeds into a tenancy, in batches, with progress."""

from __future__ import annotations

import datetime as dt
import time

import click

from pyglue import db
from pyglue import seed as seeds
from pyglue.progress import Progress


@click.command("seed")
@click.argument("kind", type=click.Choice(sorted(seeds.SEEDS)))
@click.option("--tenant", "tenant", type=click.UUID, required=True,
              help="Tenancy id (uuid); users create it in project 'perf' when missing.")
@click.option("--count", type=click.IntRange(min=1, max=100_000_000), required=True,
              help="How many users or events to add (a re-run adds more, continuing the numbering).")
@click.option("--batch", type=click.IntRange(min=1, max=10_000_000), default=None,
              help="Rows per transaction (default: 10,000 users or 200,000 events).")
@click.option("--end-at", type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]), default=None,
              help="UTC end of the seeded time window (default: now); the same value gives the same rows.")
@click.pass_obj
def seed_cmd(obj, kind: str, tenant, count: int, batch: int | None, end_at: dt.datetime | None) -> None:
    """Add mock users (emails, auth methods, teams) or activity events (100 countries, 30 days)."""
    started = time.monotonic()
    with db.connect(obj.dsn, autocommit=True) as conn, Progress(count, f"seeding {kind}") as progress:
        added = seeds.seed(conn, obj.dsn, kind, tenant, count, batch=batch, advance=progress.advance,
                           end_at=None if end_at is None else f"{end_at:%Y-%m-%d %H:%M:%S}+00")
    seconds = time.monotonic() - started
    click.echo(f"seeded {added:,} {kind} into tenancy {tenant} in {seconds:.1f}s"
               f" ({added / max(seconds, 1e-9):,.0f}/s)")
