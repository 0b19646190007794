"""Refunds, in pyglue and, for Stripe-backed purchases, in Stripe, as one unit.

`refund_purchase` runs billing.refund (one refund per purchase, the quantity lowered, the
money recorded) in a transaction and, while it holds the purchase's row lock, makes Stripe
agree: the money goes back through a Stripe refund of the payment (the one-time purchase's
payment intent, or the charge of the subscription's latest invoice), then a Stripe
subscription gets the lowered quantity (or is set to cancel at its period end when nothing
is left). If Stripe refuses the money, the transaction rolls back and nothing is written
anywhere. If a later step fails after Stripe refunded, pyglue rolls back and a retry sends
the same idempotency keys, so Stripe does not refund twice. Purchases that are not Stripe-backed (API grants, test mode) are
refunded in pyglue only.
"""

from __future__ import annotations

import decimal
import uuid
from dataclasses import dataclass

import psycopg
import stripe

from pyglue import queries
from pyglue.billing import stripe as stripe_billing
from pyglue.errors import PyglueError

# currencies whose smallest unit is the unit itself (Stripe's list)
ZERO_DECIMAL = frozenset("BIF CLP DJF GNF JPY KMF KRW MGA PYG RWF UGX VND VUV XAF XOF XPF".split())


@dataclass(frozen=True)
class Refund:
    refund_id: int
    stripe_refund_id: str | None
    quantity_left: int


def minor_units(amount: decimal.Decimal, currency: str) -> int:
    """An amount in Stripe's smallest currency unit; one clear error if it does not divide."""
    scaled = amount if currency.upper() in ZERO_DECIMAL else amount * 100
    if scaled != scaled.to_integral_value():
        raise PyglueError(f"amount {amount} {currency} has more decimals than {currency} allows")
    return int(scaled)


def refund_purchase(conn: psycopg.Connection, tenancy_id: uuid.UUID | str, purchase_kind: str,
                    purchase_id: uuid.UUID | str, quantity: int, amount: decimal.Decimal, currency: str = "USD", *,
                    api_key: str | None = None, api_base: str | None = None) -> Refund:
    """Refund a purchase once, in pyglue and (when it is Stripe-backed) in Stripe; commits."""
    params = {"tenancy_id": tenancy_id, "purchase_kind": purchase_kind, "purchase_id": purchase_id,
              "quantity": quantity, "amount": amount, "currency": currency}
    key = None
    try:
        with conn.transaction():
            refund_id = conn.execute(queries.load("billing_refund"), params).fetchone()["refund_id"]
            purchase = conn.execute(queries.load("billing_purchase_in_stripe"), params).fetchone()
            stripe_refund_id = None
            if purchase["stripe_subscription_id"] or purchase["stripe_payment_intent_id"]:
                key = stripe_billing.api_key_for(conn, tenancy_id, api_key)
                stripe_refund_id = _in_stripe(stripe_billing.client(key, api_base), purchase, tenancy_id,
                                              purchase_kind, purchase_id, amount, currency)
                conn.execute(queries.load("billing_refund_stripe_id"), {
                    "tenancy_id": tenancy_id, "refund_id": refund_id, "stripe_refund_id": stripe_refund_id})
    except psycopg.Error as exc:
        raise stripe_billing.sql_error(exc) from exc
    except stripe.StripeError as exc:
        raise PyglueError(f"Stripe refused the refund, nothing was written: "
                          f"{stripe_billing.error_line(exc, key)}") from exc
    return Refund(refund_id, stripe_refund_id, purchase["quantity"])


def _in_stripe(client: stripe.StripeClient, purchase: dict, tenancy_id, purchase_kind: str, purchase_id,
               amount: decimal.Decimal, currency: str) -> str | None:
    """Make Stripe agree with the refund just written; the Stripe refund's id (None for no money).
    The money goes first (the step Stripe may refuse, e.g. more than was paid), the quantity after."""
    idempotency = f"pyglue-refund-{tenancy_id}-{purchase_kind}-{purchase_id}"
    sub = None
    if purchase["stripe_subscription_id"]:
        sub = client.v1.subscriptions.retrieve(purchase["stripe_subscription_id"])
    refund_id = None
    if amount > 0:
        if sub is None:
            payment = {"payment_intent": purchase["stripe_payment_intent_id"]}
        elif not sub.latest_invoice:
            raise PyglueError(f"Stripe subscription {sub.id} has no invoice to refund")
        else:
            invoice = client.v1.invoices.retrieve(sub.latest_invoice).to_dict()
            charge = stripe_billing.object_id(invoice.get("charge"))
            intent = stripe_billing.object_id(invoice.get("payment_intent"))
            payment = {"charge": charge} if charge else {"payment_intent": intent}
        if not any(payment.values()):
            raise PyglueError("the Stripe invoice has no payment to refund")
        refund_id = client.v1.refunds.create(params={**payment, "amount": minor_units(amount, currency)},
                                             options={"idempotency_key": idempotency}).id
    if sub is not None and purchase["quantity"] > 0:
        client.v1.subscriptions.update(sub.id, params={
            "items": [{"id": sub["items"].data[0].id, "quantity": purchase["quantity"]}]},
            options={"idempotency_key": idempotency + "-quantity"})
    elif sub is not None:
        client.v1.subscriptions.update(sub.id, params={"cancel_at_period_end": True},
                                       options={"idempotency_key": idempotency + "-cancel"})
    return refund_id
