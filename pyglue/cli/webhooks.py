"""`pyglue webhooks add|list|remove|enable|disable|retry`: a tenancy's HTTP endpoints."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import click

from pyglue import db
from pyglue.cli.sync import MAPPINGS_DIR
from pyglue.sync import mappings, targets
from pyglue.webhooks import endpoints

TENANT = click.option("--tenant", "tenant", type=click.UUID, required=True, help="Tenancy id (uuid).")
NAME = click.option("--name", required=True, help="Webhook name, unique within the tenancy.")


@click.group("webhooks")
def webhooks_group() -> None:
    """HTTP endpoints that receive a tenancy's changes as signed POSTs (delivered by `pyglue worker`)."""


@webhooks_group.command("add")
@TENANT
@NAME
@click.option("--url", required=True, help="http:// or https:// URL the changes are POSTed to.")
@click.option("--table", "tables", multiple=True,
              help="Tracked table to subscribe to, e.g. app.users (repeatable; default: every tracked table).")
@click.option("--secret", envvar="PYGLUE_WEBHOOK_SECRET", default=None,
              help="Signing secret whsec_<base64> (default: generated and printed once). Also"
                   " $PYGLUE_WEBHOOK_SECRET.")
@click.option("--allow-private", is_flag=True,
              help="Accept loopback, private and link-local addresses (tests, internal receivers).")
@click.option("--mapping", "mapping_names", multiple=True,
              help="Sync mapping whose rows replace its source table's stored rows in events (repeatable).")
@MAPPINGS_DIR
@click.pass_obj
def webhooks_add(obj, tenant: uuid.UUID, name: str, url: str, tables: tuple[str, ...], secret: str | None,
                 allow_private: bool, mapping_names: tuple[str, ...], mappings_dirs: tuple[Path, ...]) -> None:
    """Add an endpoint; it receives every change sequenced from now on."""
    shaped_by = mappings.select(mappings.load_all(list(mappings_dirs)), list(mapping_names)) if mapping_names else []
    with db.connect(obj.dsn) as conn:
        hook_id, stored = endpoints.add(conn, tenant, name, url, list(tables) or None, secret, allow_private,
                                        shaped_by)
    click.echo(f"webhook {name} (id {hook_id}) added for tenancy {tenant}")
    if secret is None:  # generated: this is the only time it is shown
        click.echo(f"signing secret (shown once, store it now): {stored}")


@webhooks_group.command("list")
@click.option("--tenant", type=click.UUID, help="Only this tenancy's webhooks.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def webhooks_list(obj, tenant: uuid.UUID | None, as_json: bool) -> None:
    """Endpoints with their state: pending events, cursor, last success and failure, lag (never the secret)."""
    with db.connect(obj.dsn) as conn:
        if tenant is not None:
            targets.require_tenancy(conn, tenant)
        rows = endpoints.listing(conn, tenant)
    if as_json:
        click.echo(json.dumps(rows, default=str))
        return
    if not rows:
        click.echo("no webhooks")
    for r in rows:
        line = (f"{r['tenancy_id']}  {r['name']:<16} {r['state']:<8} pending {r['pending_events']:>7}"
                f"  cursor {r['last_delivered_sequence_id']:>10}  {r['url']}")
        if r["lag_seconds"] is not None:
            line += f"  lag {r['lag_seconds']:.1f}s"
        if r["state"] in ("retrying", "parked") and r["last_failure_at"] is not None:
            status = f"HTTP {r['last_status']}" if r["last_status"] is not None else r["last_error"]
            line += f"  last failure {r['last_failure_at']:%Y-%m-%d %H:%M:%S%z}: {status}"
            if r["last_response"]:
                line += f" {' '.join(r['last_response'].split())[:120]!r}"
        click.echo(line)


def _command(command_name: str, doc: str, action, done: str):
    @webhooks_group.command(command_name, help=doc)
    @TENANT
    @click.option("--name", required=True, help="Webhook name.")
    @click.pass_obj
    def command(obj, tenant: uuid.UUID, name: str) -> None:
        with db.connect(obj.dsn) as conn:
            action(conn, tenant, name)
        click.echo(f"webhook {name} {done}")

    return command


webhooks_remove = _command("remove", "Forget an endpoint and its delivery log.", endpoints.remove, "removed")
webhooks_enable = _command("enable", "Resume deliveries to an endpoint (clears its backoff).",
                           lambda c, t, n: endpoints.set_enabled(c, t, n, True), "enabled")
webhooks_disable = _command("disable", "Pause deliveries to an endpoint; changes wait, nothing is lost.",
                            lambda c, t, n: endpoints.set_enabled(c, t, n, False), "disabled")
webhooks_retry = _command("retry", "Resume a parked endpoint from its cursor now.", endpoints.retry,
                          "queued for delivery from its cursor")
