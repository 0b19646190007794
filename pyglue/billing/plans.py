"""Plan switches from Python: in pyglue (billing.switch_plan) or, for a Stripe-backed plan, in
Stripe through the SDK.

A Stripe-backed plan is switched where its truth is: the Stripe subscription's item moves to
the new product's Stripe price (plan) and its metadata to the new product and its current
version; then the customer's subscriptions are synced back. The sync records the change as
a move of the row to the new product's version (billing.subscription_moves), and the ledger
treats a move to another product as a switch: the old product's purchase ends there and the
new one's starts (billing._item_events), the same forward-only result as billing.switch_plan.
"""

from __future__ import annotations

import uuid

import psycopg
import stripe

from pyglue import queries
from pyglue.billing import stripe as stripe_billing
from pyglue.errors import PyglueError


def switch_plan(conn: psycopg.Connection, tenancy_id: uuid.UUID | str, subscription_id: uuid.UUID | str,
                product_id: str, *, stripe_price: str | None = None, api_key: str | None = None,
                api_base: str | None = None) -> uuid.UUID:
    """Switch a live plan to another product of its line; the id of the subscription it is now."""
    params = {"tenancy_id": tenancy_id, "subscription_id": subscription_id, "product_id": product_id}
    row = conn.execute(queries.load("billing_subscription_in_stripe"), params).fetchone()
    if row is None or not row["stripe_subscription_id"]:
        try:
            with conn.transaction():
                return conn.execute(queries.load("billing_switch_plan"), params).fetchone()["subscription_id"]
        except psycopg.Error as exc:
            raise stripe_billing.sql_error(exc) from exc
    if row["current_version_id"] is None:
        raise PyglueError(f'no product "{product_id}" in tenancy {tenancy_id}')
    if not stripe_price:
        raise PyglueError(f"subscription {subscription_id} is backed by Stripe subscription"
                          f" {row['stripe_subscription_id']}: name the Stripe price (plan) of {product_id!r}")
    key = stripe_billing.api_key_for(conn, tenancy_id, api_key)
    client = stripe_billing.client(key, api_base)
    try:
        sub = client.v1.subscriptions.retrieve(row["stripe_subscription_id"])
        client.v1.subscriptions.update(sub.id, params={
            "items": [{"id": sub["items"].data[0].id, "plan": stripe_price}],
            "metadata": {stripe_billing.PRODUCT_KEY: product_id,
                         stripe_billing.VERSION_KEY: row["current_version_id"]}})
    except stripe.StripeError as exc:
        raise PyglueError(f"Stripe refused the switch of Stripe subscription {row['stripe_subscription_id']}:"
                          f" {stripe_billing.error_line(exc, key)}") from exc
    stripe_billing.sync_tenancy(conn, tenancy_id, customer=stripe_billing.object_id(sub["customer"]), api_key=key, api_base=api_base)
    return uuid.UUID(str(subscription_id))
