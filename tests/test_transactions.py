"""billing.transactions (migration 0018): every purchase, renewal, switch, cancellation,
refund and item entry of a customer exactly once, newest first, in pages without gaps or
duplicates."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from decimal import Decimal

import pytest

from tests import factories as f
from tests.sessions import refused
from tests.test_item_ledger_purchases import change, grant, product

DAY = dt.timedelta(days=1)
COLUMNS = "id, at, kind, product_id, item_id, quantity, amount, currency, source_kind"


def page(conn, tenancy, customer="c", limit=100, before=None, **window):
    return conn.execute(
        f"select {COLUMNS} from billing.transactions(%s, 'custom', %s, %s, %s, %s, %s, %s)",
        (tenancy, customer, window.get("p_from"), window.get("p_to"), limit, before and before["at"],
         before and before["id"])).fetchall()


def walk(conn, tenancy, limit) -> list[dict]:
    rows, before = [], None
    while True:
        got = page(conn, tenancy, limit=limit, before=before)
        rows += got
        if len(got) < limit:
            return rows
        before = got[-1]


@pytest.fixture
def year_of_history(conn):
    """A year of a monthly plan (100 credits each month, when-repeated), a switch to pro after
    5 months, a refund of the pro plan, two manual changes, and another customer's plan."""
    t = f.tenancy(conn)
    product(conn, t, "basic", {"credits": {"quantity": 100, "repeat": [1, "month"], "expires": "when-repeated"}},
            product_line="plans")
    product(conn, t, "pro", {"credits": {"quantity": 500, "repeat": [1, "month"], "expires": "when-repeated"}},
            product_line="plans")
    start = conn.execute("select date_trunc('day', now()) - interval '1 year' as s").fetchone()["s"]
    basic = grant(conn, t, "c", "basic", start)
    grant(conn, t, "someone-else", "basic", start)
    change(conn, t, "c", "credits", -40, start + 3 * DAY)
    change(conn, t, "c", "credits", 7, start + 40 * DAY)
    switched = conn.execute("select %s::timestamptz + interval '5 months' + interval '3 days' as s",
                            (start,)).fetchone()["s"]
    pro = conn.execute("select billing.switch_plan(%s, %s, 'pro', %s) as id", (t, basic, switched)).fetchone()["id"]
    conn.execute("select billing.refund(%s, 'subscription', %s, 0, 12.50, 'EUR', %s)", (t, pro, switched + DAY))
    return t, start, switched


def test_every_entry_once_newest_first(conn, year_of_history):
    t, start, switched = year_of_history
    rows = page(conn, t, limit=1000)
    kinds = Counter(r["kind"] for r in rows)
    # basic: started, renewed at months 1..5 (the 6th period starts after the switch); pro:
    # started at the switch, renewed each month until now (6 or 7 times)
    pro_renewals = sum(1 for r in rows if r["kind"] == "renewal" and r["product_id"] == "pro")
    assert sum(1 for r in rows if r["kind"] == "renewal" and r["product_id"] == "basic") == 5
    assert pro_renewals in (6, 7)
    assert kinds["purchase"] == 1 and kinds["plan_switch"] == 1 and kinds["cancellation"] == 0
    assert [(r["amount"], r["currency"]) for r in rows if r["kind"] == "refund"] == [(Decimal("12.50"), "EUR")]
    assert sorted(r["quantity"] for r in rows if r["kind"] == "item_change") == [-40, 7]
    # a grant per period: 6 of basic (start + 5 repeats), 1 + the pro renewals of pro
    assert kinds["item_grant"] == 6 + 1 + pro_renewals
    # when-repeated lots expire at each repeat and at the switch: what was left of them
    expiries = [r for r in rows if r["kind"] == "item_expiry"]
    assert expiries and all(r["quantity"] < 0 for r in expiries)
    assert len({r["id"] for r in rows}) == len(rows)
    assert [(r["at"], r["id"]) for r in rows] == sorted(((r["at"], r["id"]) for r in rows), reverse=True)
    assert all(r["at"] >= start for r in rows)
    assert next(r for r in rows if r["kind"] == "plan_switch")["at"] == switched


def test_pages_have_no_gaps_or_duplicates(conn, year_of_history):
    t, _, _ = year_of_history
    everything = page(conn, t, limit=1000)
    for limit in (1, 3, 7):
        assert walk(conn, t, limit) == everything


def test_entries_before_a_switch_read_the_same_after_it(conn):
    t = f.tenancy(conn)
    product(conn, t, "basic", {"credits": {"quantity": 100, "expires": "when-purchase-expires"}}, product_line="p")
    product(conn, t, "pro", {"credits": {"quantity": 500, "expires": "when-purchase-expires"}}, product_line="p")
    start = conn.execute("select now() - interval '10 days' as s").fetchone()["s"]
    basic = grant(conn, t, "c", "basic", start)
    change(conn, t, "c", "credits", -30, start + DAY)
    switch_at = start + 5 * DAY
    before = page(conn, t, p_to=switch_at)
    conn.execute("select billing.switch_plan(%s, %s, 'pro', %s)", (t, basic, switch_at))
    assert page(conn, t, p_to=switch_at) == before
    at_switch = [(r["kind"], r["quantity"]) for r in page(conn, t, p_from=switch_at, p_to=switch_at + DAY)]
    assert sorted(at_switch, key=str) == sorted([("plan_switch", 1), ("item_grant", 500), ("item_expiry", -70)],
                                                key=str)


def test_tenancy_wide_listing_and_bad_arguments(conn, year_of_history):
    t, _, _ = year_of_history
    everyone = conn.execute("select customer_id from billing.transactions(%s, p_limit => 1000)", (t,)).fetchall()
    assert {r["customer_id"] for r in everyone} == {"c", "someone-else"}
    query = "select * from billing.transactions(%s, %s, %s, p_limit => %s)"
    refused(conn, "22023", "customer type and customer id go together", query, (t, "custom", None, 10))
    refused(conn, "22023", "limit must be from 1 to 1000, got 1001", query, (t, None, None, 1001))
    refused(conn, "22023", "p_before_at and p_before_id go together",
            "select * from billing.transactions(%s, p_before_at => now())", (t,))


def test_transactions_cli_prints_lines_json_and_csv(fresh_db, connect):
    import csv
    import io
    import json

    from click.testing import CliRunner

    from pyglue.cli import cli

    c = connect(fresh_db, autocommit=True)
    t = f.tenancy(c)
    product(c, t, "pack", {"credits": {"quantity": 25, "expires": "never"}}, interval=None)
    purchase = grant(c, t, "c", "pack", dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc))
    c.execute("select billing.refund(%s, 'one_time_purchase', %s, 1, 9.00, 'USD', '2030-01-02')", (t, purchase))
    change(c, t, "c", "credits", -5, dt.datetime(2030, 1, 3, tzinfo=dt.timezone.utc))
    args = ["--dsn", fresh_db, "billing", "transactions", "--tenant", str(t), "--customer", "custom:c",
            "--to", "2031-01-01"]
    lines = CliRunner().invoke(cli, args).output.splitlines()
    assert lines[-1] == "4 entries"
    assert [line.split()[3] for line in lines[:-1]] == ["item_change", "refund", "purchase", "item_grant"]
    assert "9.00 USD" in lines[1]
    as_json = json.loads(CliRunner().invoke(cli, [*args, "--json"]).output)
    assert [(e["kind"], e["quantity"]) for e in as_json] == [("item_change", -5), ("refund", 1), ("purchase", 1),
                                                            ("item_grant", 25)]
    rows = list(csv.DictReader(io.StringIO(CliRunner().invoke(cli, [*args, "--csv"]).output)))
    assert [r["kind"] for r in rows] == ["item_change", "refund", "purchase", "item_grant"]
    assert rows[1]["amount"] == "9.00" and rows[1]["source_kind"] == "one_time_purchase"
    bad = CliRunner().invoke(cli, [*args, "--json", "--csv"])
    assert bad.exit_code == 2 and "--json and --csv exclude each other" in bad.output

