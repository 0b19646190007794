"""`pyglue billing stripe-sync`, `pyglue billing stripe-deliver`: Stripe through pyglue.billing.stripe.

Keys come from the tenancy's setting (billing.set_stripe_api_key) or $PYGLUE_STRIPE_API_KEY,
never from an option (it would show in the process list and shell history) and never printed.
"""

from __future__ import annotations

import json
import uuid

import click

from pyglue.billing import stripe as stripe_billing
from pyglue.cli import FiniteFloatRange
from pyglue.cli.billing import billing

API_BASE = click.option("--api-base", envvar=stripe_billing.API_BASE_ENV, metavar="URL",
                        help="Stripe API base URL (e.g. a localstripe). Default: $PYGLUE_STRIPE_API_BASE, else Stripe's.")
AS_JSON = click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")


@billing.command("stripe-sync")
@click.option("--tenant", "tenant", type=click.UUID, required=True, help="Tenancy id (uuid).")
@click.option("--customer", metavar="CUS_ID", help="Only this Stripe customer's subscriptions (cus_...).")
@API_BASE
@AS_JSON
@click.pass_obj
def stripe_sync_cmd(obj, tenant: uuid.UUID, customer: str | None, api_base: str | None, as_json: bool) -> None:
    """Pull the tenancy's Stripe subscriptions and upsert them by Stripe id (unchanged ones are not written)."""
    result = stripe_billing.sync_tenancy(obj.dsn, tenant, customer=customer, api_base=api_base)
    if as_json:
        click.echo(json.dumps(result.as_dict()))
    else:
        click.echo(f"tenancy {result.tenancy_id}: {result.read} Stripe subscription(s) read,"
                   f" {result.written} row(s) written")


@billing.command("stripe-deliver")
@click.option("--tenant", "tenant", type=click.UUID, help="Only this tenancy's writes. Default: every tenancy.")
@click.option("--limit", type=click.IntRange(min=1, max=10_000), default=100, show_default=True,
              help="Writes claimed per round (at most 10,000).")
@click.option("--wait", "wait_s", type=FiniteFloatRange(min=0, max=86_400), default=0.0, show_default=True,
              help="Keep delivering, sleeping until the next retry is due, for up to this many seconds"
                   " (0: one round).")
@click.option("--base-delay", "base_delay_s", type=FiniteFloatRange(min=0.01, max=86_400), default=5.0,
              show_default=True, help="Seconds before the first retry of a failed write; doubles per attempt.")
@click.option("--max-delay", "max_delay_s", type=FiniteFloatRange(min=0.01, max=86_400), default=3600.0,
              show_default=True, help="Longest wait between retries, in seconds.")
@API_BASE
@AS_JSON
@click.pass_obj
def stripe_deliver_cmd(obj, tenant: uuid.UUID | None, limit: int, wait_s: float, base_delay_s: float,
                       max_delay_s: float, api_base: str | None, as_json: bool) -> None:
    """Write regen's new version ids into the Stripe subscriptions' metadata (the outbox), with retries."""
    if base_delay_s > max_delay_s:
        raise click.UsageError(f"--base-delay {base_delay_s:g} is above --max-delay {max_delay_s:g}")
    result = stripe_billing.deliver_until_done(obj.dsn, wait_s=wait_s, tenancy_id=tenant, limit=limit,
                                               api_base=api_base, base_delay_s=base_delay_s,
                                               max_delay_s=max_delay_s)
    if as_json:
        click.echo(json.dumps(result.as_dict()))
        return
    for line in result.errors:
        click.echo(f"failed: {line}", err=True)
    click.echo(f"{result.delivered} delivered, {result.failed} failed (retried later),"
               f" {result.superseded} superseded of {result.claimed} claimed")
