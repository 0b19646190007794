"""`pyglue docs`: write (or check) docs/sql-api.md from the migrated database's catalog."""

from __future__ import annotations

from pathlib import Path

import click

from pyglue import db, docs
from pyglue.errors import PyglueError


@click.command("docs")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=docs.PAGE, show_default=True,
              help="Where the page goes.")
@click.option("--check", is_flag=True, help="Write nothing; exit 1 when the page is out of date.")
@click.pass_obj
def docs_cmd(obj, output: Path, check: bool) -> None:
    """Generate the SQL API reference (every public function of pyglue, app, billing) from the catalog."""
    with db.connect(obj.dsn, autocommit=True) as conn:
        if check:
            if not output.exists() or output.read_text() != docs.render_page(conn):
                raise PyglueError(f"{output} is out of date: run pyglue docs")
            click.echo(f"{output} is up to date")
            return
        changed = docs.write(conn, output)
        n = len(docs.functions(conn))
    click.echo(f"{output}: {n} functions, {'written' if changed else 'unchanged'}")
