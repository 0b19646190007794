"""billing.upsert_product, billing.grant_product, billing.cancel_subscription and the
constraints of the billing tables (migration 0012): content-addressed versions, validation
errors, purchases pinned to a version, one live plan per customer and product line."""

from __future__ import annotations

import copy
import datetime as dt
import re

import pytest
from psycopg.types.json import Jsonb

from tests import factories as f
from tests.sessions import refused

PLAN = {
    "display_name": "Pro",
    "customer_type": "team",
    "product_line": "plans",
    "prices": {"monthly": {"amounts": {"USD": "49"}, "interval": [1, "month"]},
               "yearly": {"amounts": {"USD": "490", "EUR": "450.50"}, "interval": [1, "year"]}},
    "included_items": {"seats": {"quantity": 5, "repeat": "never", "expires": "when-purchase-expires"},
                       "credits": {"quantity": 100, "repeat": [1, "month"], "expires": "when-repeated"}},
}
ONE_TIME = {"display_name": "Credit pack", "customer_type": "team",
            "prices": {"once": {"amounts": {"USD": "10"}, "interval": None}},
            "included_items": {"credits": {"quantity": 1000}}}
AT = dt.datetime(2024, 1, 31, 12, 0, tzinfo=dt.timezone.utc)


def content(base=PLAN, **changes):
    result = copy.deepcopy(base)
    for key, value in changes.items():
        if value is ...:
            result.pop(key, None)
        else:
            result[key] = value
    return result


def upsert(conn, tenancy, product_id, body) -> str:
    return conn.execute("select billing.upsert_product(%s, %s, %s) as v",
                        (tenancy, product_id, Jsonb(body))).fetchone()["v"]


def grant(conn, tenancy, customer_type, customer_id, product_id, quantity=1, source="api_grant", at=AT):
    return conn.execute("select billing.grant_product(%s, %s, %s, %s, %s, %s, %s) as id",
                        (tenancy, customer_type, str(customer_id), product_id, quantity, source, at)).fetchone()["id"]


def versions(conn, tenancy) -> int:
    return conn.execute("select count(*) as n from billing.product_versions where tenancy_id = %s",
                        (tenancy,)).fetchone()["n"]


# --- content addressing ---------------------------------------------------------------

def test_the_same_content_written_a_thousand_times_leaves_one_version(conn):
    t = f.tenancy(conn)
    ids = conn.execute("select distinct billing.upsert_product(%s, 'pro', %s) as v from generate_series(1, 1000)",
                       (t, Jsonb(PLAN))).fetchall()
    assert len(ids) == 1 and re.fullmatch(r"[0-9a-f]{64}", ids[0]["v"])
    assert versions(conn, t) == 1
    changed = upsert(conn, t, "pro", content(display_name="Pro 2"))
    assert changed != ids[0]["v"] and versions(conn, t) == 2
    current = conn.execute("select current_version_id as v from billing.products where tenancy_id = %s", (t,)).fetchone()
    assert current["v"] == changed


def test_key_order_and_whitespace_do_not_change_the_id(conn):
    t = f.tenancy(conn)
    first = upsert(conn, t, "pro", PLAN)
    reordered = conn.execute(
        "select billing.upsert_product(%s, 'pro', %s::jsonb) as v",
        (t, '{ "prices" : {"yearly": {"interval": [1,"year"], "amounts": {"EUR":"450.50","USD":"490"}},'
            '  "monthly":{"interval":[1, "month"],"amounts":{"USD":"49"}}},\n'
            '"included_items": {"credits": {"expires": "when-repeated", "repeat": [1, "month"], "quantity": 100},'
            ' "seats": {"expires": "when-purchase-expires", "quantity": 5, "repeat": "never"}},'
            '"product_line":"plans", "customer_type":"team", "display_name":"Pro"}')).fetchone()["v"]
    assert reordered == first and versions(conn, t) == 1


def test_writing_the_current_content_again_writes_no_row(conn):
    """A row version written in this transaction would get a new ctid; none appears."""
    t = f.tenancy(conn)

    def product_row():
        return conn.execute("select ctid::text as c, current_version_id as v from billing.products"
                            " where tenancy_id = %s", (t,)).fetchone()

    upsert(conn, t, "pro", PLAN)
    first = product_row()
    upsert(conn, t, "pro", PLAN)
    assert product_row() == first
    upsert(conn, t, "pro", content(display_name="Pro 2"))
    assert product_row()["c"] != first["c"]
    assert upsert(conn, t, "pro", PLAN) == first["v"]  # back to an earlier version: its row is reused
    assert versions(conn, t) == 2


def test_equal_content_of_two_products_or_two_tenancies_is_two_versions(conn):
    t, other = f.tenancy(conn), f.tenancy(conn)
    ids = {upsert(conn, t, "pro", PLAN), upsert(conn, t, "pro_copy", PLAN), upsert(conn, other, "pro", PLAN)}
    assert len(ids) == 3


def test_a_version_row_cannot_be_edited(conn):
    t = f.tenancy(conn)
    upsert(conn, t, "pro", PLAN)
    refused(conn, "23514", "product_versions_content_address_check",
            "update billing.product_versions set content = content || '{\"display_name\": \"Edited\"}'"
            " where tenancy_id = %s", (t,))


# --- validation -----------------------------------------------------------------------

def _price(**changes):
    price = {"amounts": {"USD": "49"}, "interval": [1, "month"]}
    price.update(changes)
    return {"monthly": price}


def _item(**changes):
    item = {"quantity": 5, "repeat": "never", "expires": "never"}
    item.update(changes)
    return {"seats": item}


@pytest.mark.parametrize("body, message", [
    ([1, 2], 'product "pro": content must be a JSON object, got [1, 2]'),
    (content(colour="red"), 'product "pro": unknown field(s) colour'),
    (content(display_name=...), 'product "pro": display_name must be a non-empty string, got nothing'),
    (content(display_name=" "), 'display_name must be a non-empty string, got " "'),
    (content(customer_type="org"), 'product "pro": customer_type must be one of user, team, custom, got "org"'),
    (content(customer_type=...), "customer_type must be one of user, team, custom, got nothing"),
    (content(product_line=""), 'product_line must be a non-empty string or null, got ""'),
    (content(product_line=3), "product_line must be a non-empty string or null, got 3"),
    (content(stackable="yes"), 'stackable must be true or false, got "yes"'),
    (content(is_add_on_to=True), "is_add_on_to must be false, null, {product_id: true, ...} or a non-empty list"),
    (content(is_add_on_to={}), "is_add_on_to must be false, null"),
    (content(is_add_on_to={"base": False}), "is_add_on_to.base must be true, got false"),
    (content(is_add_on_to=[1]), "is_add_on_to must list product ids as strings, got [1]"),
    (content(is_add_on_to=["ghost"]), 'is_add_on_to names product "ghost", which does not exist in tenancy'),
    (content(is_add_on_to={"pro": True}), 'product "pro": is_add_on_to names the product itself'),
    (content(prices=...), "prices must be an object of {price_id: {amounts, interval}}, got nothing"),
    (content(prices=[]), "prices must be an object of {price_id: {amounts, interval}}, got []"),
    (content(prices={"monthly": 49}), "prices.monthly must be an object {amounts, interval}, got 49"),
    (content(prices=_price(trial=True)), "unknown field(s) trial in prices.monthly"),
    (content(prices=_price(amounts={})), 'prices.monthly.amounts must be a non-empty object {"USD": "49"}, got {}'),
    (content(prices=_price(amounts={"usd": "49"})), 'prices.monthly.amounts has currency "usd"'),
    (content(prices=_price(amounts={"USD": 49})), 'prices.monthly.amounts.USD must be a decimal string like "49" or "9.99", got 49'),
    (content(prices=_price(amounts={"USD": "-1"})), 'prices.monthly.amounts.USD must be a decimal string like "49" or "9.99", got "-1"'),
    (content(prices=_price(interval=[1, "months"])), 'prices.monthly.interval must be [count 1..9999, "day" | "week" | "month" | "year"] or null, got [1, "months"]'),
    (content(prices=_price(interval=[0, "month"])), 'prices.monthly.interval must be [count 1..9999, "day" | "week" | "month" | "year"] or null, got [0, "month"]'),
    (content(prices=_price(interval=[1.5, "day"])), "prices.monthly.interval must be [count 1..9999"),
    (content(prices=_price(interval=[1])), "prices.monthly.interval must be [count 1..9999"),
    (content(prices=_price(interval="monthly")), 'prices.monthly.interval must be [count, unit] or null, got "monthly"'),
    (content(prices={"a": {"amounts": {"USD": "1"}, "interval": [1, "month"]}, "b": {"amounts": {"USD": "9"}}}),
     "prices.b has none, but an earlier price has one; a product is either a subscription or a one-time purchase"),
    (content(included_items=[]), "included_items must be an object of {item_id: {quantity, repeat, expires}}, got []"),
    (content(included_items={"seats": 5}), "included_items.seats must be an object {quantity, repeat, expires}, got 5"),
    (content(included_items=_item(max=1)), "unknown field(s) max in included_items.seats"),
    (content(included_items=_item(quantity=-1)), "included_items.seats.quantity must be an integer >= 0, got -1"),
    (content(included_items=_item(quantity=1.0)), "included_items.seats.quantity must be an integer >= 0, got 1.0"),
    (content(included_items=_item(quantity="5")), 'included_items.seats.quantity must be an integer >= 0, got "5"'),
    (content(included_items={"seats": {}}), "included_items.seats.quantity must be an integer >= 0, got nothing"),
    (content(included_items=_item(repeat=[1, "fortnight"])), 'included_items.seats.repeat must be [count 1..9999, "day" | "week" | "month" | "year"] or "never", got [1, "fortnight"]'),
    (content(included_items=_item(repeat="always")), 'included_items.seats.repeat must be [count, unit] or "never", got "always"'),
    (content(included_items=_item(expires="later")), 'included_items.seats.expires must be "never", "when-purchase-expires" or "when-repeated", got "later"'),
    (content(included_items=_item(expires="when-repeated")), 'included_items.seats.expires is "when-repeated" but the item never repeats'),
])
def test_invalid_content_is_refused_naming_the_product_field_and_value(conn, body, message):
    t = f.tenancy(conn)
    refused(conn, "22023", message, "select billing.upsert_product(%s, 'pro', %s)", (t, Jsonb(body)))
    assert versions(conn, t) == 0
    assert conn.execute("select count(*) as n from billing.products where tenancy_id = %s", (t,)).fetchone()["n"] == 0


def test_valid_variants_are_accepted(conn):
    t = f.tenancy(conn)
    upsert(conn, t, "base", PLAN)
    for i, body in enumerate([
        content(product_line=None, stackable=False, is_add_on_to=False, included_items=None),
        content(product_line=..., included_items=...),
        content(is_add_on_to={"base": True}),
        content(is_add_on_to=["base"], stackable=True),
        content(prices={}),  # no price: granted only, a one-time purchase
        content(prices={"free": {"amounts": {"USD": "0"}, "interval": [2, "week"]}}),
        ONE_TIME,
        content(customer_type="custom", included_items={"x": {"quantity": 0, "repeat": [3, "day"]}}),
    ]):
        upsert(conn, t, f"p{i}", body)


def test_bad_product_ids_and_tenancies_are_refused(conn):
    refused(conn, "22004", "tenancy id must not be null", "select billing.upsert_product(null, 'pro', %s)",
            (Jsonb(PLAN),))
    t = f.tenancy(conn)
    refused(conn, "22023", "product id must be 1 to 64 letters, digits, _ or -, got 'no spaces'",
            "select billing.upsert_product(%s, 'no spaces', %s)", (t, Jsonb(PLAN)))
    refused(conn, "22023", "product id must be 1 to 64 letters, digits, _ or -, got null",
            "select billing.upsert_product(%s, null, %s)", (t, Jsonb(PLAN)))
    ghost = "00000000-0000-4000-8000-000000000001"
    refused(conn, "P0002", f"no tenancy {ghost}", "select billing.upsert_product(%s, 'pro', %s)", (ghost, Jsonb(PLAN)))


def test_a_product_keeps_its_customer_type(conn):
    t = f.tenancy(conn)
    upsert(conn, t, "pro", PLAN)
    refused(conn, "22023", 'product "pro": customer_type cannot change from team to user',
            "select billing.upsert_product(%s, 'pro', %s)", (t, Jsonb(content(customer_type="user"))))


# --- grants ---------------------------------------------------------------------------

def test_a_recurring_product_grants_a_subscription_pinned_to_the_current_version(conn):
    t = f.tenancy(conn)
    team = f.team(conn, t)
    v1 = upsert(conn, t, "pro", PLAN)
    sid = grant(conn, t, "team", str(team).upper(), "pro", source="test_mode")
    row = conn.execute("select * from billing.subscriptions where id = %s", (sid,)).fetchone()
    assert row["product_version_id"] == v1 and row["customer_id"] == str(team)  # canonical uuid text
    assert (row["status"], row["quantity"], row["creation_source"], row["product_line"]) == \
        ("active", 1, "test_mode", "plans")
    assert row["started_at"] == row["current_period_start"] == AT
    # the monthly price is the first by id; a month from Jan 31 is Feb 29 in 2024
    assert row["current_period_end"] == dt.datetime(2024, 2, 29, 12, 0, tzinfo=dt.timezone.utc)
    assert row["stripe_subscription_id"] is None and row["ended_at"] is None and not row["cancel_at_period_end"]
    v2 = upsert(conn, t, "pro", content(display_name="Pro 2"))
    assert v2 != v1
    pinned = conn.execute("select product_version_id as v from billing.subscriptions where id = %s", (sid,)).fetchone()
    assert pinned["v"] == v1
    other = f.team(conn, t)
    assert conn.execute("select product_version_id as v from billing.subscriptions where id = %s",
                        (grant(conn, t, "team", other, "pro"),)).fetchone()["v"] == v2


def test_a_product_without_interval_grants_a_one_time_purchase(conn):
    t = f.tenancy(conn)
    team = f.team(conn, t)
    version = upsert(conn, t, "pack", content(ONE_TIME, stackable=True))
    pid = grant(conn, t, "team", team, "pack", quantity=3)
    row = conn.execute("select * from billing.one_time_purchases where id = %s", (pid,)).fetchone()
    assert (row["product_version_id"], row["quantity"], row["purchased_at"], row["revoked_at"]) == (version, 3, AT, None)
    assert conn.execute("select count(*) as n from billing.subscriptions where tenancy_id = %s", (t,)).fetchone()["n"] == 0
    grant(conn, t, "team", team, "pack")  # one-time purchases do not occupy a product line


def test_users_and_custom_customers_can_be_granted(conn):
    t = f.tenancy(conn)
    user = f.user(conn, t)
    upsert(conn, t, "personal", content(customer_type="user"))
    upsert(conn, t, "machine", content(customer_type="custom"))
    assert grant(conn, t, "user", user, "personal")
    assert grant(conn, t, "custom", "org:42", "machine")


@pytest.mark.parametrize("args, sqlstate, message", [
    (("team", "{team}", "ghost", 1, "api_grant"), "P0002", 'no product "ghost" in tenancy {t}'),
    (("user", "{team}", "pro", 1, "api_grant"), "22023", 'product "pro" is for team customers, not user {team}'),
    (("org", "{team}", "pro", 1, "api_grant"), "22023", "customer type must be one of user, team, custom, got 'org'"),
    (("team", "{team}", "pro", 0, "api_grant"), "22023", "quantity must be at least 1, got 0"),
    (("team", "{team}", "pro", -2, "api_grant"), "22023", "quantity must be at least 1, got -2"),
    (("team", "{team}", "pro", None, "api_grant"), "22023", "quantity must be at least 1, got null"),
    (("team", "{team}", "pro", 2, "api_grant"), "22023", 'product "pro" is not stackable: quantity must be 1, got 2'),
    (("team", "{team}", "pro", 1, "stripe"), "22023",
     "creation source must be test_mode or api_grant, got 'stripe' (Stripe purchases come from the Stripe sync)"),
    (("team", "{team}", "pro", 1, "gift"), "22023", "creation source must be test_mode or api_grant, got 'gift'"),
    (("team", "not-a-uuid", "pro", 1, "api_grant"), "22023", "team id must be a uuid, got 'not-a-uuid'"),
    (("team", "00000000-0000-4000-8000-000000000009", "pro", 1, "api_grant"), "P0002",
     "no team 00000000-0000-4000-8000-000000000009 in tenancy {t}"),
    (("custom", " ", "machine", 1, "api_grant"), "22023", "custom customer id must not be empty"),
    ((None, "{team}", "pro", 1, "api_grant"), "22004", "tenancy, customer type, customer id, product and time must not be null"),
])
def test_bad_grants_are_refused_and_write_nothing(conn, args, sqlstate, message):
    t = f.tenancy(conn)
    team = f.team(conn, t)
    upsert(conn, t, "pro", PLAN)
    upsert(conn, t, "machine", content(customer_type="custom"))
    fill = {"team": str(team), "t": str(t)}
    args = tuple(a.format(**fill) if isinstance(a, str) else a for a in args)
    refused(conn, sqlstate, message.format(**fill),
            "select billing.grant_product(%s, %s, %s, %s, %s, %s)", (t, *args))
    for table in ("subscriptions", "one_time_purchases"):
        assert conn.execute(f"select count(*) as n from billing.{table} where tenancy_id = %s", (t,)).fetchone()["n"] == 0


# --- one live plan per customer and product line --------------------------------------

def test_a_second_live_plan_in_a_product_line_is_refused(conn):
    t = f.tenancy(conn)
    team = f.team(conn, t)
    upsert(conn, t, "pro", PLAN)
    upsert(conn, t, "team_plan", content(display_name="Team"))
    upsert(conn, t, "storage", content(product_line="storage"))
    first = grant(conn, t, "team", team, "pro")
    refused(conn, "23505", f'team {team} already has a live subscription in product line "plans": {first} of product "pro"',
            "select billing.grant_product(%s, 'team', %s, 'team_plan')", (t, str(team)))
    refused(conn, "23505", f'team {team} already has a live subscription in product line "plans": {first}',
            "select billing.grant_product(%s, 'team', %s, 'pro')", (t, str(team)))
    assert grant(conn, t, "team", team, "storage")  # another line
    assert grant(conn, t, "team", f.team(conn, t), "team_plan")  # another customer
    conn.execute("select billing.cancel_subscription(%s, %s, false, %s)", (t, first, AT))
    assert grant(conn, t, "team", team, "team_plan")  # an ended plan frees the line


def test_a_product_without_a_line_excludes_only_itself(conn):
    t = f.tenancy(conn)
    team = f.team(conn, t)
    upsert(conn, t, "a", content(product_line=...))
    upsert(conn, t, "b", content(product_line=...))
    upsert(conn, t, "plans_line_named_a", content(product_line="a"))
    first = grant(conn, t, "team", team, "a")
    refused(conn, "23505", f'team {team} already has a live subscription in product "a": {first} of product "a"',
            "select billing.grant_product(%s, 'team', %s, 'a')", (t, str(team)))
    assert grant(conn, t, "team", team, "b")
    assert grant(conn, t, "team", team, "plans_line_named_a")  # a line named like a product is another key


def test_add_ons_and_stackable_products_may_be_held_many_times(conn):
    t = f.tenancy(conn)
    team = f.team(conn, t)
    upsert(conn, t, "pro", PLAN)
    upsert(conn, t, "extra_seats", content(display_name="Seats", is_add_on_to={"pro": True}))
    upsert(conn, t, "boost", content(display_name="Boost", stackable=True))
    grant(conn, t, "team", team, "pro")
    add_ons = [grant(conn, t, "team", team, "extra_seats") for _ in range(2)]
    boosts = [grant(conn, t, "team", team, "boost", quantity=q) for q in (1, 4)]
    assert len(set(add_ons + boosts)) == 4
    rows = conn.execute("select product_id, is_add_on, stackable, quantity from billing.subscriptions"
                        " where tenancy_id = %s order by product_id, quantity", (t,)).fetchall()
    assert [(r["product_id"], r["is_add_on"], r["stackable"], r["quantity"]) for r in rows] == [
        ("boost", False, True, 1), ("boost", False, True, 4),
        ("extra_seats", True, False, 1), ("extra_seats", True, False, 1), ("pro", False, False, 1)]


# --- constraints the tables hold on their own -----------------------------------------

INSERT = """
insert into billing.subscriptions (tenancy_id, customer_type, customer_id, product_id, product_version_id,
    product_line, is_add_on, stackable, status, quantity, started_at, current_period_start, current_period_end,
    creation_source, stripe_subscription_id, ended_at)
values (%(t)s, %(type)s, 'c1', 'pro', %(v)s, %(line)s, false, %(stackable)s, %(status)s, %(quantity)s, now(), now(),
        now() + interval '1 month', %(source)s, %(stripe)s, %(ended)s)
"""


@pytest.mark.parametrize("changes, sqlstate, constraint", [
    ({"line": "other"}, "23503", "subscriptions_version_fkey"),
    ({"line": None}, "23503", "subscriptions_version_fkey"),
    ({"type": "user"}, "23503", "subscriptions_version_fkey"),
    ({"quantity": -1}, "23514", "subscriptions_quantity_check"),
    ({"status": "expired"}, "23514", "subscriptions_status_check"),
    ({"status": "canceled"}, "23514", "subscriptions_ended_status_check"),
    ({"ended": dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)}, "23514", "subscriptions_ended_status_check"),
    ({"source": "stripe"}, "23514", "subscriptions_stripe_source_check"),
    ({"stripe": "sub_123"}, "23514", "subscriptions_stripe_source_check"),
    ({"source": "gift"}, "23514", "subscriptions_creation_source_check"),
])
def test_bad_subscription_rows_cannot_exist(conn, changes, sqlstate, constraint):
    t = f.tenancy(conn)
    version = upsert(conn, t, "pro", content(customer_type="custom"))
    row = {"t": t, "type": "custom", "v": version, "line": "plans", "status": "active", "quantity": 1,
           "source": "api_grant", "stripe": None, "ended": None, "stackable": False}
    with conn.transaction(force_rollback=True):
        conn.execute(INSERT, row)  # the row without the change is fine
    refused(conn, sqlstate, constraint, INSERT, row | changes)


def test_stripe_ids_are_unique_per_tenancy(conn):
    t, other = f.tenancy(conn), f.tenancy(conn)
    base = {"type": "custom", "line": "plans", "status": "active", "quantity": 1, "source": "stripe",
            "stripe": "sub_1", "ended": None, "stackable": True}
    for tenancy in (t, other):
        conn.execute(INSERT, base | {"t": tenancy, "v": upsert(conn, tenancy, "pro", content(customer_type="custom",
                                                                                            stackable=True))})
    version = conn.execute("select current_version_id as v from billing.products where tenancy_id = %s",
                           (t,)).fetchone()["v"]
    refused(conn, "23505", "subscriptions_stripe_id_idx", INSERT, base | {"t": t, "v": version})


# --- cancel ---------------------------------------------------------------------------

def test_cancel_at_period_end_then_now(conn):
    t = f.tenancy(conn)
    team = f.team(conn, t)
    upsert(conn, t, "pro", PLAN)
    sid = grant(conn, t, "team", team, "pro")
    end = dt.datetime(2024, 2, 29, 12, 0, tzinfo=dt.timezone.utc)
    call = "select billing.cancel_subscription(%s, %s, %s, %s) as at"
    assert conn.execute(call, (t, sid, True, AT)).fetchone()["at"] == end
    ctid = conn.execute("select ctid::text as c from billing.subscriptions where id = %s", (sid,)).fetchone()["c"]
    assert conn.execute(call, (t, sid, True, AT)).fetchone()["at"] == end
    assert conn.execute("select ctid::text as c from billing.subscriptions where id = %s", (sid,)).fetchone()["c"] == ctid
    row = conn.execute("select status, ended_at, cancel_at_period_end from billing.subscriptions where id = %s",
                       (sid,)).fetchone()
    assert row == {"status": "active", "ended_at": None, "cancel_at_period_end": True}
    refused(conn, "22023", f"subscription {sid} started at", call, (t, sid, False, AT - dt.timedelta(days=1)))
    later = AT + dt.timedelta(days=3)
    assert conn.execute(call, (t, sid, False, later)).fetchone()["at"] == later
    assert conn.execute(call, (t, sid, False, later + dt.timedelta(days=1))).fetchone()["at"] == later  # already ended
    row = conn.execute("select status, ended_at from billing.subscriptions where id = %s", (sid,)).fetchone()
    assert row == {"status": "canceled", "ended_at": later}


def test_cancel_refuses_unknown_and_stripe_backed_subscriptions(conn):
    t = f.tenancy(conn)
    ghost = "00000000-0000-4000-8000-000000000002"
    refused(conn, "P0002", f"no subscription {ghost} in tenancy {t}", "select billing.cancel_subscription(%s, %s)",
            (t, ghost))
    version = upsert(conn, t, "pro", content(customer_type="custom"))
    sid = conn.execute(INSERT + " returning id", {"t": t, "type": "custom", "v": version, "line": "plans",
                                                  "status": "active", "quantity": 1, "source": "stripe",
                                                  "stripe": "sub_9", "ended": None, "stackable": False}).fetchone()["id"]
    refused(conn, "22023", f"subscription {sid} is backed by Stripe subscription sub_9: cancel it in Stripe",
            "select billing.cancel_subscription(%s, %s)", (t, sid))
