"""The item ledger fed by purchases (migration 0014): included items of subscriptions and
one-time purchases, repeats and expiry rules, ends, version changes by regen, bulk writes
that leave histories to be folded on read, the horizon of open repeating purchases, and
`pyglue billing balance`."""

from __future__ import annotations

import datetime as dt
import itertools
import json

import pytest
from click.testing import CliRunner
from psycopg.types.json import Jsonb

from pyglue.cli import cli
from tests import factories as f

UTC = dt.timezone.utc
T0 = dt.datetime(2030, 1, 1, tzinfo=UTC)


def ms(n: int) -> dt.datetime:
    return T0 + dt.timedelta(milliseconds=n)


def product(conn, tenancy, product_id, items, interval=(1, "month"), **extra) -> str:
    body = {"display_name": product_id, "customer_type": "custom",
            "prices": {"p": {"amounts": {"USD": "9"}, "interval": list(interval) if interval else None}},
            "included_items": items} | extra
    return conn.execute("select billing.upsert_product(%s, %s, %s) as v",
                        (tenancy, product_id, Jsonb(body))).fetchone()["v"]


def grant(conn, tenancy, customer, product_id, at, quantity=1):
    return conn.execute("select billing.grant_product(%s, 'custom', %s, %s, %s, 'api_grant', %s) as id",
                        (tenancy, customer, product_id, quantity, at)).fetchone()["id"]


def end_subscription(conn, subscription, at) -> None:
    conn.execute("update billing.subscriptions set ended_at = %s, status = 'canceled' where id = %s",
                 (at, subscription))


def change(conn, tenancy, customer, item, delta, at, expires=None) -> None:
    conn.execute("select billing.change_item_quantity(%s, 'custom', %s, %s, %s, %s, true, %s)",
                 (tenancy, customer, item, delta, expires, at))


def quantities(conn, tenancy, customer, item, times) -> list[int]:
    return [r["q"] for r in conn.execute(
        "select billing.item_quantity(%s, 'custom', %s, %s, t) as q from unnest(%s::timestamptz[]) with ordinality u(t, n)"
        " order by n", (tenancy, customer, item, list(times)))]


def verify_empty(conn) -> None:
    assert conn.execute("select count(*) as n from billing.verify_ledger()").fetchone()["n"] == 0


@pytest.mark.parametrize("order", list(itertools.permutations(["subscription", "grant", "removal"])))
def test_subscription_item_expiring_with_the_purchase_beside_manual_changes(conn, order):
    """Issue 10's vector: item 10 when-purchase-expires (ends 100000) + manual +5 @1000 + −8 @2000
    → @1000 15, @2000 7, @100000 5, whatever is written first."""
    t = f.tenancy(conn)
    product(conn, t, "pro", {"credits": {"quantity": 10, "expires": "when-purchase-expires"}})
    for step in order:
        if step == "subscription":
            end_subscription(conn, grant(conn, t, "c", "pro", ms(0)), ms(100000))
        elif step == "grant":
            change(conn, t, "c", "credits", 5, ms(1000))
        else:
            change(conn, t, "c", "credits", -8, ms(2000))
    assert quantities(conn, t, "c", "credits", [ms(1000), ms(2000), ms(99999), ms(100000)]) == [15, 7, 7, 5]
    verify_empty(conn)


def test_monthly_when_repeated_grants_debt_and_end(conn):
    """Issue 10's vector: 100 every month when-repeated from 2030-01-01, −130 on day 10, ends day 65."""
    t = f.tenancy(conn)
    product(conn, t, "m", {"c": {"quantity": 100, "repeat": [1, "month"], "expires": "when-repeated"}})
    sub = grant(conn, t, "c", "m", T0)
    change(conn, t, "c", "c", -130, T0 + dt.timedelta(days=10))
    end_subscription(conn, sub, T0 + dt.timedelta(days=65))
    days = [T0, T0 + dt.timedelta(days=10), dt.datetime(2030, 2, 1, tzinfo=UTC), dt.datetime(2030, 3, 1, tzinfo=UTC),
            T0 + dt.timedelta(days=65), T0 + dt.timedelta(days=400)]
    assert quantities(conn, t, "c", "c", days) == [100, -30, 70, 100, 0, 0]
    verify_empty(conn)


def test_repeats_are_calendar_months_from_the_purchase_and_stop_strictly_before_the_end(conn):
    t = f.tenancy(conn)
    product(conn, t, "m", {"c": {"quantity": 1, "repeat": [1, "month"], "expires": "never"}})
    start = dt.datetime(2030, 1, 31, tzinfo=UTC)
    sub = grant(conn, t, "c", "m", start)
    end_subscription(conn, sub, dt.datetime(2030, 4, 30, tzinfo=UTC))  # the repeat at Apr 30 is not before the end
    at = [dt.datetime(2030, 2, 27, tzinfo=UTC), dt.datetime(2030, 2, 28, tzinfo=UTC),
          dt.datetime(2030, 3, 31, tzinfo=UTC), dt.datetime(2031, 1, 1, tzinfo=UTC)]
    assert quantities(conn, t, "c", "c", at) == [1, 2, 3, 3]  # Jan 31, Feb 28, Mar 31; never-expiring stays
    verify_empty(conn)


def test_due_repeats_of_an_open_subscription_count_without_any_job(conn):
    """Points are stored up to a horizon 13 months ahead; later times are folded on the fly."""
    t = f.tenancy(conn)
    product(conn, t, "m", {"c": {"quantity": 2, "repeat": [1, "month"], "expires": "never"}})
    start = conn.execute("select date_trunc('month', now()) - interval '3 months' as s").fetchone()["s"]
    grant(conn, t, "c", "m", start)
    horizon = conn.execute("select points_before from billing.item_histories where tenancy_id = %s",
                           (t,)).fetchone()["points_before"]
    assert horizon > start + dt.timedelta(days=390)
    far = [start + dt.timedelta(days=365 * 5 + 2), start + dt.timedelta(days=365 * 20 + 6)]
    assert quantities(conn, t, "c", "c", far) == [2 * (5 * 12 + 1), 2 * (20 * 12 + 1)]
    verify_empty(conn)


def test_quantity_times_purchase_quantity_and_one_time_purchases(conn):
    t = f.tenancy(conn)
    product(conn, t, "pack", {"credits": {"quantity": 50, "expires": "never"},
                              "boost": {"quantity": 5, "expires": "when-purchase-expires"}}, interval=None,
            stackable=True)
    purchase = grant(conn, t, "c", "pack", ms(0), quantity=3)
    assert quantities(conn, t, "c", "credits", [ms(0)]) == [150]
    assert quantities(conn, t, "c", "boost", [ms(0)]) == [15]
    conn.execute("update billing.one_time_purchases set revoked_at = %s where id = %s", (ms(5000), purchase))
    assert quantities(conn, t, "c", "credits", [ms(4999), ms(5000)]) == [150, 150]  # never: stays
    assert quantities(conn, t, "c", "boost", [ms(4999), ms(5000)]) == [15, 0]
    verify_empty(conn)


def test_regen_to_more_items_adjusts_from_the_move_and_leaves_history_before_it(conn):
    conn.execute("set billing.ledger_chunk_points = 1")  # a chunk per point: a kept point is a kept row
    t = f.tenancy(conn, "internal")
    product(conn, t, "m", {"c": {"quantity": 100, "repeat": [1, "month"], "expires": "when-repeated"}})
    start = conn.execute("select now() - interval '10 days' as s").fetchone()["s"]
    grant(conn, t, "c", "m", start)
    change(conn, t, "c", "c", -30, start + dt.timedelta(days=1))
    before = conn.execute("select first_at as at, xmin::text as x from billing.item_balance_chunks where tenancy_id = %s"
                          " and first_at < now()"
                          " order by at", (t,)).fetchall()
    product(conn, t, "m", {"c": {"quantity": 150, "repeat": [1, "month"], "expires": "when-repeated"}})
    assert conn.execute("select billing.regen_subscriptions_to_latest() as n").fetchone()["n"] == 1
    moved_at = conn.execute("select moved_at from billing.subscription_moves").fetchone()["moved_at"]
    after = quantities(conn, t, "c", "c", [moved_at - dt.timedelta(microseconds=1), moved_at])
    assert after == [70, 120]  # +50 from the move, the 30 used stay used
    next_repeat = conn.execute("select %s::timestamptz + interval '1 month' as r", (start,)).fetchone()["r"]
    assert quantities(conn, t, "c", "c", [next_repeat]) == [150]
    assert conn.execute("select first_at as at, xmin::text as x from billing.item_balance_chunks where tenancy_id = %s"
                        " and first_at < %s"
                        " order by at", (t, moved_at)).fetchall() == [r for r in before if r["at"] < moved_at]
    verify_empty(conn)


def test_regen_to_fewer_items_removes_the_difference(conn):
    t = f.tenancy(conn, "internal")
    product(conn, t, "p", {"c": {"quantity": 10, "expires": "never"}})
    grant(conn, t, "c", "p", conn.execute("select now() - interval '1 day' as s").fetchone()["s"])
    product(conn, t, "p", {"c": {"quantity": 4, "expires": "never"}, "d": {"quantity": 1, "expires": "never"}})
    conn.execute("select billing.regen_subscriptions_to_latest()")
    assert quantities(conn, t, "c", "c", [dt.datetime.now(UTC)]) == [4]
    assert quantities(conn, t, "c", "d", [dt.datetime.now(UTC)]) == [1]
    verify_empty(conn)


def test_regen_to_the_same_items_writes_no_ledger_row(conn):
    t = f.tenancy(conn, "internal")
    product(conn, t, "p", {"c": {"quantity": 10, "expires": "never"}})
    grant(conn, t, "c", "p", conn.execute("select now() - interval '1 day' as s").fetchone()["s"])
    state = "select (select array_agg(xmin::text order by first_at) from billing.item_balance_chunks) as b," \
            " (select array_agg(xmin::text) from billing.item_histories) as h"
    before = conn.execute(state).fetchone()
    product(conn, t, "p", {"c": {"quantity": 10, "expires": "never"}}, display_name="renamed")
    assert conn.execute("select billing.regen_subscriptions_to_latest() as n").fetchone()["n"] == 1
    assert conn.execute(state).fetchone() == before


def test_a_bulk_backfill_leaves_histories_to_be_folded_on_read_and_exact(conn):
    """Over 100 histories in one statement are not folded there: no ledger row is written, reads
    fold on the fly (exact), and a later manual change stores the history."""
    t = f.tenancy(conn, "internal")
    conn.execute("insert into app.teams (tenancy_id, display_name) select %s, 'team ' || g"
                 " from generate_series(1, 150) g", (t,))
    conn.execute("select billing.upsert_product(%s, 'free', %s)", (t, Jsonb({
        "display_name": "Free", "customer_type": "team", "product_line": "plans",
        "prices": {"free": {"amounts": {"USD": "0"}, "interval": [1, "month"]}},
        "included_items": {"seats": {"quantity": 3, "expires": "when-purchase-expires"}}})))
    assert conn.execute("select billing.backfill_free_plans() as n").fetchone()["n"] == 150
    assert conn.execute("select count(*) as n from billing.item_histories").fetchone()["n"] == 0
    team = str(conn.execute("select id from app.teams where tenancy_id = %s limit 1", (t,)).fetchone()["id"])
    seats = "select billing.item_quantity(%s, 'team', %s, 'seats') as q"
    assert conn.execute(seats, (t, team)).fetchone()["q"] == 3
    conn.execute("select billing.change_item_quantity(%s, 'team', %s, 'seats', -1)", (t, team))
    assert conn.execute(seats, (t, team)).fetchone()["q"] == 2
    assert conn.execute("select count(*) as n from billing.item_histories").fetchone()["n"] == 1
    verify_empty(conn)


def test_a_bulk_change_marks_stored_histories_and_refold_stores_them_again(conn):
    t = f.tenancy(conn)
    product(conn, t, "p", {"c": {"quantity": 10, "expires": "when-purchase-expires"}})
    subs = [grant(conn, t, f"c{i}", "p", ms(0)) for i in range(101)]
    for i in range(101):
        change(conn, t, f"c{i}", "c", -1, ms(10))
    conn.execute("update billing.subscriptions set ended_at = %s, status = 'canceled' where id = any(%s)",
                 (ms(500), subs))
    marked = conn.execute("select count(*) as n from billing.item_histories where points_before <= %s",
                          (ms(0),)).fetchone()["n"]
    assert marked == 101
    assert quantities(conn, t, "c7", "c", [ms(499), ms(500)]) == [9, 0]  # exact while marked
    assert conn.execute("select billing.refold_item_histories() as n").fetchone()["n"] == 101
    assert conn.execute("select count(*) as n from billing.item_histories where points_before <= %s",
                        (ms(0),)).fetchone()["n"] == 0
    assert quantities(conn, t, "c7", "c", [ms(499), ms(500)]) == [9, 0]
    verify_empty(conn)


def test_balance_cli_with_history_and_json(fresh_db, connect):
    c = connect(fresh_db, autocommit=True)
    t = f.tenancy(c)
    product(c, t, "pro", {"credits": {"quantity": 10, "expires": "when-purchase-expires"}})
    end_subscription(c, grant(c, t, "c", "pro", ms(0)), ms(100000))
    change(c, t, "c", "credits", 5, ms(1000))
    args = ["--dsn", fresh_db, "billing", "balance", "--tenant", str(t), "--customer", "custom:c", "--item", "credits"]
    result = CliRunner().invoke(cli, [*args, "--at", "2030-01-01 00:00:01", "--history"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[-1] == "custom:c has 15 credits at 2030-01-01 00:00:01 UTC"
    assert "balance       15  lots [10 until 2030-01-01T00:01:40+00:00, 5 never]" in lines[1]
    summary = json.loads(CliRunner().invoke(cli, [*args, "--at", "2030-06-01", "--history", "--json"]).output)
    assert summary["balance"] == 5
    assert [h["balance"] for h in summary["history"]] == [10, 15, 5]
    assert summary["history"][-1]["changes"] == []  # the expiry at the end
    bad = CliRunner().invoke(cli, [*args[:-4], "--customer", "group:c", "--item", "credits"])
    assert bad.exit_code == 1
    assert "customer must be TYPE:ID with TYPE one of user, team, custom, got 'group:c'" in str(bad.exception)
