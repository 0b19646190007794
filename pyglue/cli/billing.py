"""`pyglue billing`: the billing jobs (free-plan backfill, regen to latest) and Stripe sync."""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import json
import sys
import uuid

import click

from pyglue import db
from pyglue.billing import jobs, ledger, plans, refunds, transactions
from pyglue.billing import stripe as stripe_billing
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
        stripe_writes, _next_due = stripe_billing.pending_outbox(conn)
    _report(result, as_json, f"{result.rows} subscription(s) of project {project_id} moved to the latest version",
            project_id=project_id, stripe_writes_pending=stripe_writes)
    if stripe_writes and not as_json:
        click.echo(f"{stripe_writes} Stripe metadata write(s) queued: run pyglue billing stripe-deliver", err=True)


def _show_notices(conn) -> None:
    """The jobs say "nothing to do, and why" as NOTICEs (a product that no tenancy has)."""
    conn.add_notice_handler(lambda diag: click.echo(f"note: {diag.message_primary}", err=True))


def _report(result: jobs.JobResult, as_json: bool, line: str, **facts) -> None:
    if as_json:
        click.echo(json.dumps(facts | result.as_dict()))
    else:
        click.echo(f"{line} in {result.batches} batch(es), {result.seconds:.1f} s")


_tenant = click.option("--tenant", "tenant", type=click.UUID, required=True, help="Tenancy id (uuid).")
_when = click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"])


@billing.command("transactions")
@_tenant
@click.option("--customer", metavar="TYPE:ID", help="Only this customer: team:ID, user:ID or custom:ID.")
@click.option("--from", "since", type=_when, help="Entries at or after this UTC time.")
@click.option("--to", "until", type=_when, help="Entries before this UTC time (default: now).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV with a header row.")
@click.pass_obj
def transactions_cmd(obj, tenant, customer: str | None, since, until, as_json: bool, as_csv: bool) -> None:
    """Purchases, renewals, plan switches, cancellations, refunds and item entries, newest first."""
    if as_json and as_csv:
        raise click.UsageError("--json and --csv exclude each other")
    who = ledger.Customer.parse(customer) if customer else None
    utc = [t.replace(tzinfo=dt.timezone.utc) if t else None for t in (since, until)]
    with db.connect(obj.dsn, autocommit=True, application_name="pyglue billing transactions") as conn:
        rows = list(transactions.entries(conn, tenant, who, *utc))
    if as_json:
        click.echo(json.dumps([{k: r[k] for k in transactions.COLUMNS} for r in rows], default=str))
    elif as_csv:
        out = csv.DictWriter(sys.stdout, fieldnames=transactions.COLUMNS, extrasaction="ignore")
        out.writeheader()
        out.writerows(rows)
    else:
        for r in rows:
            what = r["item_id"] or r["product_id"] or ""
            money = f"  {r['amount']} {r['currency']}" if r["amount"] is not None else ""
            qty = f"{r['quantity']:+d}" if r["quantity"] is not None else ""
            click.echo(f"{r['at']:%Y-%m-%d %H:%M:%S}  {r['customer_type']}:{r['customer_id']}  {r['kind']:<12}"
                       f" {what:<16} {qty:>8}{money}")
        click.echo(f"{len(rows)} entr{'y' if len(rows) == 1 else 'ies'}")


def _purchase(text: str) -> tuple[str, str]:
    kind, _, ident = text.partition(":")
    try:
        if kind in ("subscription", "one_time_purchase"):
            return kind, str(uuid.UUID(ident))
    except ValueError:
        pass
    raise click.BadParameter(f"must be subscription:UUID or one_time_purchase:UUID, got {text!r}")


@billing.command("refund")
@_tenant
@click.option("--purchase", required=True, metavar="KIND:ID", callback=lambda _c, _p, v: _purchase(v),
              help="subscription:UUID or one_time_purchase:UUID.")
@click.option("--quantity", type=click.IntRange(min=0), required=True, help="Units to take back (0: money only).")
@click.option("--amount", type=decimal.Decimal, required=True, help="Money refunded, e.g. 19.99.")
@click.option("--currency", default="USD", show_default=True, help="ISO 4217 code.")
@_as_json
@click.pass_obj
def refund_cmd(obj, tenant, purchase, quantity: int, amount, currency: str, as_json: bool) -> None:
    """Refund a purchase once: in pyglue, and in Stripe when it is Stripe-backed. Granted items stay."""
    kind, purchase_id = purchase
    with db.connect(obj.dsn, autocommit=True, application_name="pyglue billing refund") as conn:
        done = refunds.refund_purchase(conn, tenant, kind, purchase_id, quantity, amount, currency)
    if as_json:
        click.echo(json.dumps({"refund_id": done.refund_id, "stripe_refund_id": done.stripe_refund_id,
                               "quantity_left": done.quantity_left}))
        return
    stripe_part = f" (Stripe refund {done.stripe_refund_id})" if done.stripe_refund_id else ""
    click.echo(f"refund {done.refund_id} of {kind} {purchase_id}: {amount} {currency}{stripe_part},"
               f" quantity now {done.quantity_left}")


@billing.command("switch-plan")
@_tenant
@click.option("--subscription", "subscription_id", type=click.UUID, required=True, help="The live plan (uuid).")
@click.option("--product", "product_id", required=True, metavar="ID", help="Product of the same line to move to.")
@click.option("--stripe-price", metavar="ID", help="For a Stripe-backed plan: the new product's Stripe price (plan).")
@click.pass_obj
def switch_plan_cmd(obj, tenant, subscription_id, product_id: str, stripe_price: str | None) -> None:
    """Move a plan to another product of its line from now on (in Stripe when Stripe-backed)."""
    with db.connect(obj.dsn, autocommit=True, application_name="pyglue billing switch-plan") as conn:
        now = plans.switch_plan(conn, tenant, subscription_id, product_id, stripe_price=stripe_price)
    click.echo(f"subscription {subscription_id} switched to {product_id}: now subscription {now}")


@billing.command("balance")
@_tenant
@click.option("--customer", required=True, metavar="TYPE:ID", help="The customer: team:ID, user:ID or custom:ID.")
@click.option("--item", "item_id", required=True, metavar="ITEM", help="Item id, as in the products' included_items.")
@click.option("--at", "at", type=_when, help="Balance at this UTC time (default: now).")
@click.option("--history", is_flag=True, help="Also show every instant up to then: changes, balance, debt, lots.")
@_as_json
@click.pass_obj
def balance_cmd(obj, tenant, customer: str, item_id: str, at, history: bool, as_json: bool) -> None:
    """A customer's balance of one item, exact at any time; --history shows how it came about."""
    who = ledger.Customer.parse(customer)
    when = (at.replace(tzinfo=dt.timezone.utc) if at else dt.datetime.now(dt.timezone.utc))
    with db.connect(obj.dsn, autocommit=True, application_name="pyglue billing balance") as conn:
        amount = ledger.balance(conn, tenant, who, item_id, when)
        rows = ledger.timeline(conn, tenant, who, item_id, when) if history else []
    if as_json:
        summary = {"tenancy_id": str(tenant), "customer": str(who), "item_id": item_id, "at": when.isoformat(),
                   "balance": amount}
        if history:
            summary["history"] = [_history_entry(r) for r in rows]
        click.echo(json.dumps(summary, default=str))
        return
    for r in rows:
        changes = ", ".join(f"{c['delta']:+d}" + (f" until {c['expires_at']}" if c["expires_at"] else "")
                            + f" ({c['source']})" for c in r["changes"]) or "expiry"
        lots = ", ".join(f"{lot['quantity']}" + (f" until {lot['expires_at']}" if lot["expires_at"] else " never")
                         for lot in r["lots"])
        click.echo(f"{r['at']:%Y-%m-%d %H:%M:%S.%f}  {changes:<48} balance {r['balance']:>8}"
                   + (f"  debt {r['debt']}" if r["debt"] else "") + (f"  lots [{lots}]" if lots else ""))
    click.echo(f"{who} has {amount} {item_id} at {when:%Y-%m-%d %H:%M:%S} UTC")


def _history_entry(row: dict) -> dict:
    return {"at": row["at"].isoformat(), "changes": row["changes"], "balance": row["balance"], "debt": row["debt"],
            "lots": row["lots"]}
