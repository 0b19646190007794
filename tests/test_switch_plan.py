"""Plan switches (migration 0018): billing.switch_plan ends the old subscription at the switch
and starts the new one then; the ledger's own rules apply from that instant, nothing before it
changes."""

from __future__ import annotations

import datetime as dt
import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests import factories as f
from tests.sessions import refused, wait_until_blocked
from tests.test_item_ledger_purchases import change, grant, product, quantities, verify_empty

DAY = dt.timedelta(days=1)
TICK = dt.timedelta(microseconds=1)


def plans(conn, tenancy):
    """basic: 100 credits that expire with the plan and 5 badges that never do; pro: 500 credits;
    other: a product of another line."""
    product(conn, tenancy, "basic", {"credits": {"quantity": 100, "expires": "when-purchase-expires"},
                                     "badges": {"quantity": 5, "expires": "never"}}, product_line="plans")
    product(conn, tenancy, "pro", {"credits": {"quantity": 500, "expires": "when-purchase-expires"}},
            product_line="plans")
    product(conn, tenancy, "other", {}, product_line="extras")


def switch(conn, tenancy, subscription, product_id, at):
    return conn.execute("select billing.switch_plan(%s, %s, %s, %s) as id",
                        (tenancy, subscription, product_id, at)).fetchone()["id"]


def owned_ids(conn, tenancy, at) -> list[str]:
    return [r["product_id"] for r in conn.execute(
        "select product_id from billing.owned_products(%s, 'custom', 'c', %s)", (tenancy, at))]


def test_switch_is_forward_only_by_the_ledgers_own_rules(conn):
    t = f.tenancy(conn)
    plans(conn, t)
    start = conn.execute("select now() - interval '10 days' as s").fetchone()["s"]
    old = grant(conn, t, "c", "basic", start)
    change(conn, t, "c", "credits", -30, start + DAY)
    switch_at = start + 5 * DAY
    before = {at: quantities(conn, t, "c", "credits", [at]) for at in (start, start + DAY, switch_at - TICK)}
    new = switch(conn, t, old, "pro", switch_at)

    assert quantities(conn, t, "c", "credits", [switch_at - TICK, switch_at]) == [70, 500]
    assert quantities(conn, t, "c", "badges", [switch_at - TICK, switch_at, switch_at + 100 * DAY]) == [5, 5, 5]
    assert {at: quantities(conn, t, "c", "credits", [at]) for at in before} == before  # history as it was
    assert owned_ids(conn, t, switch_at - TICK) == ["basic"]
    assert owned_ids(conn, t, switch_at) == ["pro"]
    rows = {r["id"]: r for r in conn.execute("select id, status, started_at, ended_at, quantity, creation_source"
                                             " from billing.subscriptions where tenancy_id = %s", (t,))}
    assert (rows[old]["status"], rows[old]["ended_at"]) == ("canceled", switch_at)
    assert (rows[new]["status"], rows[new]["started_at"], rows[new]["ended_at"]) == ("active", switch_at, None)
    assert rows[new]["creation_source"] == rows[old]["creation_source"] == "api_grant"
    verify_empty(conn)


def test_switch_refusals_name_the_problem_and_write_nothing(conn):
    t = f.tenancy(conn)
    plans(conn, t)
    start = conn.execute("select now() - interval '10 days' as s").fetchone()["s"]
    sub = grant(conn, t, "c", "basic", start)
    query = "select billing.switch_plan(%s, %s, %s, %s)"
    refused(conn, "22023", 'product "other" is not in the product line of subscription', query,
            (t, sub, "other", start + DAY))
    refused(conn, "22023", 'is already on product "basic"', query, (t, sub, "basic", start + DAY))
    refused(conn, "P0002", 'no product "gold"', query, (t, sub, "gold", start + DAY))
    refused(conn, "P0002", "no subscription", query, (t, uuid.uuid4(), "pro", start + DAY))
    refused(conn, "22023", "it cannot switch before", query, (t, sub, "pro", start - DAY))
    refused(conn, "22004", "must not be null", query, (t, sub, "pro", None))
    assert conn.execute("select count(*) as n, count(ended_at) as ended from billing.subscriptions"
                        " where tenancy_id = %s", (t,)).fetchone() == {"n": 1, "ended": 0}
    switch(conn, t, sub, "pro", start + DAY)
    refused(conn, "22023", "has ended", query, (t, sub, "pro", start + 2 * DAY))


def test_a_stripe_backed_plan_is_switched_in_stripe(conn):
    t = f.tenancy(conn)
    plans(conn, t)
    conn.execute("select billing.upsert_stripe_subscriptions(%s, %s)", (t, Jsonb([{
        "stripe_subscription_id": "sub_switch", "customer_type": "custom", "customer_id": "c",
        "product_id": "basic", "status": "active", "quantity": 1, "started_at": 1_790_000_000,
        "current_period_start": 1_790_000_000, "current_period_end": 1_792_600_000}])))
    sub = conn.execute("select id from billing.subscriptions where stripe_subscription_id = 'sub_switch'"
                       ).fetchone()["id"]
    refused(conn, "22023", "is backed by Stripe subscription sub_switch: change its plan in Stripe",
            "select billing.switch_plan(%s, %s, 'pro')", (t, sub))


def test_two_concurrent_switches_of_one_plan_one_wins(fresh_db, connect):
    setup = connect(fresh_db, autocommit=True)
    t = f.tenancy(setup)
    plans(setup, t)
    sub = grant(setup, t, "c", "basic", setup.execute("select now() - interval '1 day' as s").fetchone()["s"])
    a, b = connect(fresh_db), connect(fresh_db)
    switch(a, t, sub, "pro", dt.datetime.now(dt.timezone.utc))
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(switch, b, t, sub, "pro", dt.datetime.now(dt.timezone.utc))
        wait_until_blocked(setup, b)
        a.commit()
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="has ended"):
            running.result(timeout=30)
    b.rollback()
    assert setup.execute("select count(*) as n from billing.subscriptions where ended_at is null").fetchone()["n"] == 1
    verify_empty(setup)


def test_switch_plan_cli(fresh_db, connect):
    from click.testing import CliRunner

    from pyglue.cli import cli

    c = connect(fresh_db, autocommit=True)
    t = f.tenancy(c)
    plans(c, t)
    sub = grant(c, t, "c", "basic", c.execute("select now() - interval '1 day' as s").fetchone()["s"])
    args = ["--dsn", fresh_db, "billing", "switch-plan", "--tenant", str(t), "--subscription", str(sub)]
    result = CliRunner().invoke(cli, [*args, "--product", "pro"])
    assert result.exit_code == 0, result.output
    new = c.execute("select id from billing.subscriptions where ended_at is null").fetchone()["id"]
    assert result.output.strip() == f"subscription {sub} switched to pro: now subscription {new}"
    again = CliRunner().invoke(cli, [*args, "--product", "pro"])
    assert again.exit_code == 1 and f"subscription {sub} has ended" in str(again.exception)
