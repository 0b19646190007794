"""`pyglue billing`: the billing jobs (free-plan backfill, regen to latest) and Stripe sync."""

from __future__ import annotations

import json

import click

from pyglue import db
from pyglue.billing import jobs
from pyglue.progress import Progress


@click.group()
def billing() -> None:
    """Billing jobs: free-plan backfill, regen to the latest version, Stripe sync."""


_project = click.option("--project", "project_id", default="internal", show_default=True, metavar="ID",
                        help="Project whose tenancies the job covers (no other project is read or written).")
_batch_size = click.option("--batch-size", type=click.IntRange(min=1, max=1_000_000), default=10000,
                           show_default=True, help="Rows per transaction (each batch is committed; at most 1,000,000).")
_as_json = click.option("--json", "as_json", is_flag=True, help="Print a JSON summary instead of a line.")


@billing.command("backfill-free-plans")
@_project
@click.option("--product", "product_id", default="free", show_default=True, metavar="ID",
              help="The free product every team without a plan in its product line gets.")
@_batch_size
@_as_json
@click.pass_obj
def backfill_free_plans_cmd(obj, project_id: str, product_id: str, batch_size: int, as_json: bool) -> None:
    """Grant the free plan to every team of the project that has no live plan in its line.

    Idempotent: a re-run grants nothing; a killed run is finished by running it again."""
    with db.connect(obj.dsn, autocommit=True, application_name="pyglue billing backfill") as conn:
        _show_notices(conn)
        pending = jobs.backfill_pending(conn, project_id, product_id)
        with Progress(pending, "backfilling free plans", enabled=not as_json) as progress:
            result = jobs.backfill_free_plans(conn, project_id, product_id, batch_size, progress.advance)
    _report(result, as_json, f"{result.rows} team(s) of project {project_id} granted {product_id}",
            project_id=project_id, product_id=product_id)


@billing.command("regen")
@_project
@_batch_size
@_as_json
@click.pass_obj
def regen_cmd(obj, project_id: str, batch_size: int, as_json: bool) -> None:
    """Move every live subscription of the project to its product's current version.

    Forward-only (each move is logged) and idempotent: a re-run moves nothing."""
    with db.connect(obj.dsn, autocommit=True, application_name="pyglue billing regen") as conn:
        pending = jobs.regen_pending(conn, project_id)
        with Progress(pending, "moving subscriptions", enabled=not as_json) as progress:
            result = jobs.regen_subscriptions(conn, project_id, batch_size, progress.advance)
    _report(result, as_json, f"{result.rows} subscription(s) of project {project_id} moved to the latest version",
            project_id=project_id)


def _show_notices(conn) -> None:
    """The jobs say "nothing to do, and why" as NOTICEs (a product that no tenancy has)."""
    conn.add_notice_handler(lambda diag: click.echo(f"note: {diag.message_primary}", err=True))


def _report(result: jobs.JobResult, as_json: bool, line: str, **facts: str) -> None:
    if as_json:
        click.echo(json.dumps(facts | result.as_dict()))
    else:
        click.echo(f"{line} in {result.batches} batch(es), {result.seconds:.1f} s")
