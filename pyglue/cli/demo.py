"""`pyglue demo`: the main job end to end on the embedded server."""

from __future__ import annotations

import click

from pyglue import embedded, migrate
from pyglue import dsn as dsns


@click.command()
@click.pass_obj
def demo(obj) -> None:
    """Start the embedded server, migrate it and show the migration status."""
    if obj.explicit_dsn is None:
        server = embedded.start()
        click.echo(f"embedded Postgres running (pid {server.pid}) in {server.data_dir}")
    applied = migrate.migrate(obj.dsn, report=click.echo)
    click.echo(f"{len(applied)} migration(s) applied to {dsns.describe(obj.dsn)}")
    for state in migrate.status(obj.dsn):
        click.echo(f"{'applied' if state.applied else 'pending'}  {state.id}")
