"""Refunds and owned products (migration 0018): one refund per purchase, the purchase's own
quantity lowered (so a Stripe sync of it changes nothing), no clawback of granted items,
later repeats at the lowered quantity, a subscription refunded to 0 ending at its period end,
and billing.owned_products exact at any time."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests import factories as f
from tests.sessions import refused, wait_until_blocked
from tests.test_item_ledger_purchases import grant, product, quantities, verify_empty

DAY = dt.timedelta(days=1)
SEATS = {"seats": {"quantity": 10, "expires": "when-purchase-expires"}}


def now(conn) -> dt.datetime:
    return conn.execute("select now() as n").fetchone()["n"]


def owned(conn, tenancy, customer, at=None) -> list[tuple]:
    rows = conn.execute("select * from billing.owned_products(%s, 'custom', %s, coalesce(%s, now()))",
                        (tenancy, customer, at)).fetchall()
    return [(r["product_id"], r["quantity"], r["purchase_kind"]) for r in rows]


def refund(conn, tenancy, kind, purchase, quantity, amount="10.00", at=None):
    return conn.execute("select billing.refund(%s, %s, %s, %s, %s, 'USD', coalesce(%s, now())) as id",
                        (tenancy, kind, purchase, quantity, amount, at)).fetchone()["id"]


def stripe_row(stripe_id, customer, quantity, start) -> dict:
    return {"stripe_subscription_id": stripe_id, "customer_type": "custom", "customer_id": customer,
            "product_id": "team", "status": "active", "quantity": quantity, "started_at": int(start.timestamp()),
            "current_period_start": int(start.timestamp()), "current_period_end": int((start + 30 * DAY).timestamp())}


def test_refund_of_one_unit_keeps_the_seats_and_a_stripe_sync_of_the_same_quantity_changes_nothing(conn):
    t = f.tenancy(conn)
    product(conn, t, "team", SEATS, stackable=True)
    start = now(conn) - 2 * DAY
    stripe_id = "sub_" + uuid.uuid4().hex
    assert conn.execute("select billing.upsert_stripe_subscriptions(%s, %s) as n",
                        (t, Jsonb([stripe_row(stripe_id, "c", 3, start)]))).fetchone()["n"] == 1
    sub = conn.execute("select id from billing.subscriptions where stripe_subscription_id = %s",
                       (stripe_id,)).fetchone()["id"]
    assert owned(conn, t, "c") == [("team", 3, "subscription")]
    assert quantities(conn, t, "c", "seats", [now(conn)]) == [30]

    refund_id = refund(conn, t, "subscription", sub, 1, "19.99")
    assert owned(conn, t, "c") == [("team", 2, "subscription")]
    assert quantities(conn, t, "c", "seats", [now(conn)]) == [30]  # no clawback
    entry = conn.execute("select * from billing.refunds where id = %s", (refund_id,)).fetchone()
    assert (entry["quantity"], entry["quantity_before"], entry["amount"], entry["currency"]) == (1, 3, Decimal("19.99"), "USD")

    # Stripe reports the lowered quantity: nothing to write, nothing counted twice
    assert conn.execute("select billing.upsert_stripe_subscriptions(%s, %s) as n",
                        (t, Jsonb([stripe_row(stripe_id, "c", 2, start)]))).fetchone()["n"] == 0
    assert owned(conn, t, "c") == [("team", 2, "subscription")]
    assert quantities(conn, t, "c", "seats", [now(conn)]) == [30]
    # before the refund the customer owned 3
    assert owned(conn, t, "c", now(conn) - DAY) == [("team", 3, "subscription")]
    verify_empty(conn)


def test_a_second_refund_of_the_same_purchase_is_refused_and_writes_nothing(conn):
    t = f.tenancy(conn)
    product(conn, t, "team", SEATS, stackable=True)
    sub = grant(conn, t, "c", "team", now(conn) - DAY, quantity=3)
    refund(conn, t, "subscription", sub, 1)
    refused(conn, "23505", f"subscription {sub} was already refunded", "select billing.refund(%s, %s, %s, %s, %s)",
            (t, "subscription", sub, 1, 5))
    assert conn.execute("select count(*) as n from billing.refunds").fetchone()["n"] == 1
    assert owned(conn, t, "c") == [("team", 2, "subscription")]


def test_a_subscription_refunded_to_zero_ends_at_its_period_end_and_keeps_its_items_until_then(conn):
    t = f.tenancy(conn)
    product(conn, t, "team", SEATS | {"credits": {"quantity": 50, "expires": "never"}}, stackable=True)
    sub = grant(conn, t, "c", "team", now(conn) - DAY, quantity=2)
    period_end = conn.execute("select current_period_end as e from billing.subscriptions where id = %s",
                              (sub,)).fetchone()["e"]
    refund(conn, t, "subscription", sub, 5)  # more than it has: clamped at 0
    row = conn.execute("select quantity, cancel_at_period_end, ended_at from billing.subscriptions where id = %s",
                       (sub,)).fetchone()
    assert (row["quantity"], row["cancel_at_period_end"], row["ended_at"]) == (0, True, None)
    assert owned(conn, t, "c") == []  # quantity 0 is not owned
    just_before = period_end - dt.timedelta(microseconds=1)
    assert quantities(conn, t, "c", "seats", [now(conn), just_before, period_end]) == [20, 20, 0]
    assert quantities(conn, t, "c", "credits", [now(conn), period_end + DAY]) == [100, 100]  # never: stays
    verify_empty(conn)


def test_repeats_after_a_refund_grant_the_lowered_quantity(conn):
    t = f.tenancy(conn)
    product(conn, t, "team", {"credits": {"quantity": 100, "repeat": [1, "month"], "expires": "when-repeated"}},
            stackable=True)
    start = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
    sub = grant(conn, t, "c", "team", start, quantity=2)
    refund(conn, t, "subscription", sub, 1, at=start + 10 * DAY)
    # the refund is dated in the future of now(): it splits the purchase there
    assert quantities(conn, t, "c", "credits", [start, start + 10 * DAY, start + 31 * DAY, start + 59 * DAY]) \
        == [200, 200, 100, 100]
    assert owned(conn, t, "c", start + 9 * DAY) == [("team", 2, "subscription")]
    assert owned(conn, t, "c", start + 10 * DAY) == [("team", 1, "subscription")]
    verify_empty(conn)


def test_a_refund_dated_back_does_not_undo_repeats_already_granted(conn):
    t = f.tenancy(conn)
    product(conn, t, "team", {"credits": {"quantity": 100, "repeat": [1, "day"], "expires": "never"}}, stackable=True)
    start = now(conn) - 3 * DAY - dt.timedelta(hours=1)
    sub = grant(conn, t, "c", "team", start, quantity=2)
    assert quantities(conn, t, "c", "credits", [now(conn)]) == [800]  # 4 daily grants of 200
    refund(conn, t, "subscription", sub, 1, at=start)
    assert quantities(conn, t, "c", "credits", [now(conn)]) == [800]
    assert quantities(conn, t, "c", "credits", [start + 4 * DAY]) == [900]  # the next one grants 100
    verify_empty(conn)


def test_refund_of_a_one_time_purchase_revokes_ownership_and_keeps_its_items(conn):
    t = f.tenancy(conn)
    product(conn, t, "pack", {"credits": {"quantity": 25, "expires": "never"}}, interval=None, stackable=True)
    purchase = grant(conn, t, "c", "pack", now(conn) - DAY, quantity=2)
    assert owned(conn, t, "c") == [("pack", 2, "one_time_purchase")]
    refund(conn, t, "one_time_purchase", purchase, 2, "18.00")
    assert owned(conn, t, "c") == []
    assert owned(conn, t, "c", now(conn) - dt.timedelta(hours=1)) == [("pack", 2, "one_time_purchase")]
    assert quantities(conn, t, "c", "credits", [now(conn)]) == [50]
    verify_empty(conn)


def test_owned_products_over_time_follows_start_version_moves_and_end(conn):
    t = f.tenancy(conn, "internal")
    v1 = product(conn, t, "team", SEATS)
    start = now(conn) - 10 * DAY
    sub = grant(conn, t, "c", "team", start)
    v2 = product(conn, t, "team", {"seats": {"quantity": 20, "expires": "when-purchase-expires"}})
    conn.execute("select billing.regen_subscriptions_to_latest()")
    moved_at = conn.execute("select moved_at from billing.subscription_moves").fetchone()["moved_at"]
    versions = lambda at: [r["product_version_id"] for r in conn.execute(  # noqa: E731
        "select product_version_id from billing.owned_products(%s, 'custom', 'c', %s)", (t, at))]
    assert versions(start - DAY) == []
    assert versions(start) == [v1]
    assert versions(moved_at - dt.timedelta(microseconds=1)) == [v1]
    assert versions(moved_at) == [v2]
    conn.execute("select billing.cancel_subscription(%s, %s, false, now() + interval '1 day')", (t, sub))
    assert versions(now(conn) + DAY - dt.timedelta(microseconds=1)) == [v2]
    assert versions(now(conn) + DAY) == []
    assert versions(moved_at) == [v2]
    assert owned(conn, t, "someone-else") == []


@pytest.mark.parametrize("args, sqlstate, message", [
    (("gift", None, 1, 5, "USD"), "22023", "purchase kind must be subscription or one_time_purchase, got gift"),
    (("subscription", None, -1, 5, "USD"), "22023", "refunded quantity must not be negative, got -1"),
    (("subscription", None, 1, -5, "USD"), "22023", "refunded amount must not be negative, got -5"),
    (("subscription", None, 1, 5, "usd"), "22023", "currency must be an ISO 4217 code such as USD, got usd"),
    (("subscription", None, None, 5, "USD"), "22004", "must not be null"),
    (("subscription", uuid.UUID(int=7), 1, 5, "USD"), "P0002", "no subscription 00000000-0000-0000-0000-000000000007"),
    (("one_time_purchase", None, 1, 5, "USD"), "P0002", "no one-time-purchase"),
], ids=["kind", "negative-quantity", "negative-amount", "currency", "null", "unknown", "wrong-kind"])
def test_bad_refunds_are_refused_with_one_clear_message(conn, args, sqlstate, message):
    t = f.tenancy(conn)
    product(conn, t, "team", SEATS, stackable=True)
    sub = grant(conn, t, "c", "team", now(conn) - DAY)
    kind, purchase, quantity, amount, currency = args
    refused(conn, sqlstate, message, "select billing.refund(%s, %s, %s, %s, %s, %s)",
            (t, kind, purchase or sub, quantity, amount, currency))
    assert conn.execute("select count(*) as n from billing.refunds").fetchone()["n"] == 0


def test_a_refund_dated_before_the_purchase_is_refused(conn):
    t = f.tenancy(conn)
    product(conn, t, "team", SEATS, stackable=True)
    sub = grant(conn, t, "c", "team", now(conn) - DAY)
    refused(conn, "22023", "is before the purchase", "select billing.refund(%s, 'subscription', %s, 1, 5, 'USD', %s)",
            (t, sub, now(conn) - 2 * DAY))


def test_two_concurrent_refunds_of_one_purchase_exactly_one_succeeds(fresh_db, connect):
    setup = connect(fresh_db, autocommit=True)
    t = f.tenancy(setup)
    product(setup, t, "team", SEATS, stackable=True)
    sub = grant(setup, t, "c", "team", now(setup) - DAY, quantity=3)
    a, b = connect(fresh_db), connect(fresh_db)
    refund(a, t, "subscription", sub, 1)  # not committed: a holds the subscription's row lock
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(refund, b, t, "subscription", sub, 2)
        wait_until_blocked(setup, b)
        assert not running.done()
        a.commit()
        with pytest.raises(psycopg.errors.UniqueViolation, match="already refunded"):
            running.result(timeout=30)
    b.rollback()
    assert setup.execute("select quantity from billing.subscriptions where id = %s", (sub,)).fetchone()["quantity"] == 2
    assert setup.execute("select count(*) as n from billing.refunds").fetchone()["n"] == 1
    verify_empty(setup)


def test_a_test_mode_one_time_purchase_refunds_by_the_same_rule(conn):
    """The documented rule (README, Billing): recorded as given, quantity lowered, items kept."""
    t = f.tenancy(conn)
    product(conn, t, "pack", {"credits": {"quantity": 25, "expires": "never"}}, interval=None)
    purchase = conn.execute("select billing.grant_product(%s, 'custom', 'c', 'pack', 1, 'test_mode',"
                            " now() - interval '1 hour') as id", (t,)).fetchone()["id"]
    refund(conn, t, "one_time_purchase", purchase, 1, "0")
    assert conn.execute("select quantity, amount from billing.refunds").fetchone() == {"quantity": 1, "amount": 0}
    assert owned(conn, t, "c") == []
    assert quantities(conn, t, "c", "credits", [now(conn)]) == [25]
    verify_empty(conn)
