"""`pyglue sequence`, `pyglue fusebox`, `pyglue purge-tombstones`: change capture by hand."""

from __future__ import annotations

import json

import click

from pyglue import capture, db
from pyglue.progress import Progress

ON_OFF = click.Choice(["on", "off"])


def _switch(value: str | None) -> bool | None:
    return None if value is None else value == "on"


@click.command()
@click.option("--batch-size", type=click.IntRange(min=1, max=1_000_000), default=10000, show_default=True,
              help="Rows stamped per table per pass (each pass is one transaction; at most 1,000,000).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def sequence(obj, batch_size: int, as_json: bool) -> None:
    """Run sequencer passes until nothing is flagged."""
    with db.connect(obj.dsn, autocommit=True) as conn:
        total_pending = sum(capture.pending_changes(conn).values())
        with Progress(total_pending, "sequencing", enabled=not as_json) as progress:
            stamped = capture.sequence_until_idle(conn, batch_size, progress.advance)
        enabled = capture.fusebox(conn)["sequencer_enabled"]
    if as_json:
        click.echo(json.dumps({"stamped": stamped, "sequencer_enabled": enabled}))
    else:
        click.echo(f"{stamped} change(s) sequenced" + ("" if enabled else " (sequencer is off in the fusebox)"))


@click.command()
@click.option("--sequencer", type=ON_OFF, help="Turn the sequencer on or off.")
@click.option("--poller", type=ON_OFF, help="Turn the request poller (workers claiming requests) on or off.")
@click.option("--sync", type=ON_OFF, help="Turn the sync engine (writes to targets) on or off.")
@click.option("--json", "as_json", is_flag=True, help="Print the switches as JSON.")
@click.pass_obj
def fusebox(obj, sequencer: str | None, poller: str | None, sync: str | None, as_json: bool) -> None:
    """Show or flip the kill switches every loop honours."""
    with db.connect(obj.dsn, autocommit=True) as conn:
        if (sequencer, poller, sync) == (None, None, None):
            state = capture.fusebox(conn)
        else:
            state = capture.set_fusebox(conn, _switch(sequencer), _switch(poller), _switch(sync))
    switches = {name: state[f"{name}_enabled"] for name in capture.SWITCHES}
    if as_json:
        click.echo(json.dumps(switches))
    else:
        for name, enabled in switches.items():
            click.echo(f"{name:<10} {'on' if enabled else 'off'}")


@click.command("purge-tombstones")
@click.option("--older-than", default="7 days", show_default=True,
              help="Retention: stamped tombstones deleted longer ago than this interval are removed.")
@click.pass_obj
def purge_tombstones(obj, older_than: str) -> None:
    """Delete old, already sequenced tombstones from pyglue.deleted_rows."""
    with db.connect(obj.dsn, autocommit=True) as conn:
        removed = capture.purge_deleted_rows(conn, older_than)
    click.echo(f"{removed} tombstone(s) purged")
