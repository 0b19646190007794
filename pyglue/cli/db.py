"""`pyglue db`: the embedded server and migrations."""

from __future__ import annotations

import json
from pathlib import Path

import click

from pyglue import embedded, migrate, paths
from pyglue.billing import init
from pyglue import dsn as dsns
from pyglue.cli import FiniteFloatRange


@click.group()
def db() -> None:
    """Start the embedded Postgres and migrate databases."""


@db.command()
def up() -> None:
    """Start (or reuse) the embedded server and print where it is."""
    server = embedded.start()
    click.echo(f"embedded Postgres running (pid {server.pid}) in {server.data_dir}")
    click.echo(server.dsn)


@db.command()
def url() -> None:
    """Print the embedded server's DSN (starting it if needed)."""
    click.echo(embedded.start().dsn)


@db.command()
def down() -> None:
    """Stop the embedded server."""
    if embedded.stop():
        click.echo("embedded Postgres stopped")
    else:
        click.echo("embedded Postgres was not running")


_migrations_dir = click.option(
    "--migrations-dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=paths.MIGRATIONS, show_default=True, help="Folder of yoyo migrations to apply.",
)

# Postgres's lock_timeout 0 means "wait forever", so the least is a tenth of a second
_lock_timeout = click.option(
    "--lock-timeout", type=FiniteFloatRange(min=0.1, max=86400), default=300.0, show_default=True,
    help="Seconds to wait for another migration run before giving up (at most a day).",
)


@db.command("migrate")
@_migrations_dir
@_lock_timeout
@click.option("--break-lock", is_flag=True,
              help="Delete a stale yoyo_lock row left by a killed `yoyo apply` before migrating.")
@click.pass_obj
def migrate_cmd(obj, migrations_dir: Path, lock_timeout: float, break_lock: bool) -> None:
    """Apply pending migrations; safe to run from many processes at once."""
    applied = migrate.migrate(obj.dsn, migrations_dir, lock_timeout=lock_timeout, break_lock=break_lock,
                              report=click.echo)
    click.echo(f"{len(applied)} migration(s) applied to {dsns.describe(obj.dsn)}")


@db.command("rollback")
@_migrations_dir
@click.option("--to", "to", metavar="MIGRATION", help="Keep this migration and those before it; undo the rest.")
@click.option("--all", "everything", is_flag=True, help="Undo every migration (drops pyglue's schemas and data).")
@_lock_timeout
@click.pass_obj
def rollback_cmd(obj, migrations_dir: Path, to: str | None, everything: bool, lock_timeout: float) -> None:
    """Roll back migrations newer than --to (or --all), newest first."""
    if (to is None) == (not everything):
        raise click.UsageError("give exactly one of --to MIGRATION or --all")
    undone = migrate.rollback(obj.dsn, to, migrations_dir, lock_timeout=lock_timeout, report=click.echo)
    click.echo(f"{len(undone)} migration(s) rolled back in {dsns.describe(obj.dsn)}")


@db.command("status")
@_migrations_dir
@click.pass_obj
def status_cmd(obj, migrations_dir: Path) -> None:
    """List migrations and whether each is applied."""
    states = migrate.status(obj.dsn, migrations_dir)
    for state in states:
        click.echo(f"{'applied' if state.applied else 'pending'}  {state.id}")
    pending = sum(not s.applied for s in states)
    click.echo(f"{len(states) - pending} applied, {pending} pending in {dsns.describe(obj.dsn)}")


@db.command("new-migration")
@click.argument("slug")
@click.argument("routines", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
def new_migration_cmd(slug: str, routines: tuple[Path, ...]) -> None:
    """Write the next migration SLUG, copying ROUTINES (files of sql/functions, sql/triggers) into it."""
    path = migrate.new_migration(slug, list(routines))
    click.echo(f"wrote {path.relative_to(paths.ROOT)}")


@db.command("init")
@click.option("--project", "project_id", default="internal", show_default=True, metavar="ID",
              help="Project whose teams get the free plan and whose subscriptions move to the latest versions.")
@click.option("--free-product", "free_product_id", default="free", show_default=True, metavar="ID",
              help="The free product of the backfill.")
@click.option("--batch-size", type=click.IntRange(min=1, max=1_000_000), default=10000, show_default=True,
              help="Rows per committed batch of the backfill and the regen.")
@_lock_timeout
@click.option("--json", "as_json", is_flag=True, help="Print the steps as JSON.")
@click.pass_obj
def init_cmd(obj, project_id: str, free_product_id: str, batch_size: int, lock_timeout: float,
             as_json: bool) -> None:
    """After a deploy: migrate, backfill free plans, regen to the latest versions (each step idempotent)."""
    def line(step: init.Step) -> None:
        if not as_json:
            click.echo(f"{step.name:<9} {step.line}")

    steps = init.run(obj.dsn, project_id, free_product_id, batch_size, lock_timeout, report=line)
    if as_json:
        click.echo(json.dumps({step.name: step.count for step in steps}))
