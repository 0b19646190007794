"""billing.backfill_free_plans and billing.regen_subscriptions_to_latest (migration 0012):
which rows they touch, that a re-run writes nothing, two runs at once as fixed
interleavings of two connections, forward-only history, and 100,000 rows."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from psycopg.types.json import Jsonb

from tests import factories as f
from tests.sessions import refused, wait_until_blocked

FREE = {"display_name": "Free", "customer_type": "team", "product_line": "plans",
        "prices": {"free": {"amounts": {"USD": "0"}, "interval": [1, "month"]}},
        "included_items": {"seats": {"quantity": 3, "expires": "when-purchase-expires"}}}
PRO = FREE | {"display_name": "Pro", "prices": {"monthly": {"amounts": {"USD": "49"}, "interval": [1, "month"]}}}

BACKFILL = "select billing.backfill_free_plans() as n"
REGEN = "select billing.regen_subscriptions_to_latest() as n"


def upsert(conn, tenancy, product_id, body) -> str:
    return conn.execute("select billing.upsert_product(%s, %s, %s) as v",
                        (tenancy, product_id, Jsonb(body))).fetchone()["v"]


def grant(conn, tenancy, team, product_id) -> str:
    return conn.execute("select billing.grant_product(%s, 'team', %s, %s) as id",
                        (tenancy, str(team), product_id)).fetchone()["id"]


def plans(conn, tenancy) -> dict[str, list[str]]:
    """{team id: [product ids of its live subscriptions]} of a tenancy."""
    rows = conn.execute("select t.id::text as team, s.product_id from app.teams t left join billing.subscriptions s"
                        " on s.tenancy_id = t.tenancy_id and s.customer_id = t.id::text and s.ended_at is null"
                        " where t.tenancy_id = %s order by 1, 2", (tenancy,)).fetchall()
    result: dict[str, list[str]] = {}
    for r in rows:
        result.setdefault(r["team"], [])
        if r["product_id"]:
            result[r["team"]].append(r["product_id"])
    return result


def row_versions(conn, ids) -> dict:
    rows = conn.execute("select id, xmin::text as x, product_version_id as v from billing.subscriptions"
                        " where id = any(%s)", (list(ids),)).fetchall()
    return {r["id"]: (r["x"], r["v"]) for r in rows}


def wrote_nothing(conn, query: str) -> int:
    """Run query in a transaction of its own; no transaction id was assigned, so no row was written."""
    conn.commit()
    n = conn.execute(query).fetchone()["n"]
    assert conn.execute("select pg_current_xact_id_if_assigned() as x").fetchone()["x"] is None
    conn.commit()
    return n


# --- backfill -------------------------------------------------------------------------

def test_backfill_grants_teams_without_a_plan_and_nothing_else(fresh_db, connect):
    conn = connect(fresh_db)
    t = f.tenancy(conn, "internal")
    bare, on_free, on_pro, on_storage = (f.team(conn, t, name) for name in ("bare", "free", "pro", "storage"))
    no_free = f.tenancy(conn, "internal")  # a tenancy of the project without the product: skipped
    skipped = f.team(conn, no_free)
    other = f.tenancy(conn, "acme")
    elsewhere = f.team(conn, other)
    free_v1 = upsert(conn, t, "free", FREE)
    upsert(conn, t, "pro", PRO)
    upsert(conn, t, "storage", PRO | {"product_line": "storage"})
    upsert(conn, other, "free", FREE)
    kept = [grant(conn, t, on_free, "free"), grant(conn, t, on_pro, "pro"), grant(conn, t, on_storage, "storage")]
    free_v2 = upsert(conn, t, "free", FREE | {"display_name": "Free 2"})
    conn.commit()
    before = row_versions(conn, kept)

    assert conn.execute(BACKFILL).fetchone()["n"] == 2  # bare, and storage (another line)
    conn.commit()
    assert plans(conn, t) == {str(bare): ["free"], str(on_free): ["free"], str(on_pro): ["pro"],
                              str(on_storage): ["free", "storage"]}
    assert plans(conn, no_free) == {str(skipped): []} and plans(conn, other) == {str(elsewhere): []}
    assert row_versions(conn, kept) == before
    assert before[kept[0]][1] == free_v1  # the existing free plan keeps its version (regen moves it)
    granted = conn.execute("select product_version_id as v, creation_source as s, status, quantity,"
                           " current_period_end = current_period_start + interval '1 month' as monthly"
                           " from billing.subscriptions where customer_id = %s", (str(bare),)).fetchone()
    assert granted == {"v": free_v2, "s": "api_grant", "status": "active", "quantity": 1, "monthly": True}
    assert wrote_nothing(conn, BACKFILL) == 0


def test_backfill_in_limited_calls_and_small_batches_equals_one_run(conn):
    tenancies = [f.tenancy(conn, "internal") for _ in range(2)]
    for t in tenancies:
        upsert(conn, t, "free", FREE)
        for i in range(5):
            f.team(conn, t, f"team{i}")
    calls = [conn.execute("select billing.backfill_free_plans('internal', 'free', 2, 3) as n").fetchone()["n"]
             for _ in range(5)]
    assert calls == [3, 3, 3, 1, 0]
    assert all(p == ["free"] for t in tenancies for p in plans(conn, t).values())


def test_backfill_in_batches_of_one(conn):
    t = f.tenancy(conn, "internal")
    upsert(conn, t, "free", FREE)
    for i in range(4):
        f.team(conn, t, f"team{i}")
    assert conn.execute("select billing.backfill_free_plans('internal', 'free', 1) as n").fetchone()["n"] == 4


def test_two_backfills_at_once_grant_each_team_once(fresh_db, connect):
    setup = connect(fresh_db, autocommit=True)
    t = f.tenancy(setup, "internal")
    upsert(setup, t, "free", FREE)
    teams = [f.team(setup, t, f"team{i}") for i in range(6)]
    first, second = connect(fresh_db), connect(fresh_db)
    # the first run grants two teams and keeps its transaction open
    assert first.execute("select billing.backfill_free_plans('internal', 'free', 10000, 2) as n").fetchone()["n"] == 2
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(lambda: second.execute(BACKFILL).fetchone()["n"])
        wait_until_blocked(setup, second)  # on the first run's two rows
        first.commit()
        assert running.result(timeout=30) == 4
    second.commit()
    assert plans(setup, t) == {str(team): ["free"] for team in teams}


def test_a_backfill_waiting_for_one_that_rolls_back_grants_its_teams(fresh_db, connect):
    setup = connect(fresh_db, autocommit=True)
    t = f.tenancy(setup, "internal")
    upsert(setup, t, "free", FREE)
    teams = [f.team(setup, t, f"team{i}") for i in range(3)]
    killed, second = connect(fresh_db), connect(fresh_db)
    assert killed.execute(BACKFILL).fetchone()["n"] == 3
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(lambda: second.execute(BACKFILL).fetchone()["n"])
        wait_until_blocked(setup, second)
        killed.close()  # a run killed mid-way: its transaction is gone
        assert running.result(timeout=30) == 3
    second.commit()
    assert plans(setup, t) == {str(team): ["free"] for team in teams}


def test_backfill_refuses_a_free_product_that_is_no_exclusive_team_subscription(conn):
    good, bad = f.tenancy(conn, "internal"), f.tenancy(conn, "internal")
    upsert(conn, good, "free", FREE)
    f.team(conn, good)
    for body, shown in [
        (FREE | {"prices": {"free": {"amounts": {"USD": "0"}, "interval": None}}}, "interval none"),
        (FREE | {"customer_type": "user"}, "customer_type user"),
        (FREE | {"stackable": True}, "stackable t)"),
    ]:
        with conn.transaction(force_rollback=True):
            conn.execute("delete from billing.products where tenancy_id = %s", (bad,))
            upsert(conn, bad, "free", body)
            refused(conn, "22023", f'free product "free" of tenancy {bad} must be a team subscription that is'
                                   " neither an add-on nor stackable", BACKFILL)
            refused(conn, "22023", shown, BACKFILL)
    assert conn.execute("select count(*) as n from billing.subscriptions").fetchone()["n"] == 0


def test_backfill_bad_arguments(conn):
    refused(conn, "P0002", "no project 'nope'", "select billing.backfill_free_plans('nope')")
    refused(conn, "22023", "batch size must be at least 1, got 0", "select billing.backfill_free_plans('internal', 'free', 0)")
    refused(conn, "22023", "batch size must be at least 1, got null",
            "select billing.backfill_free_plans('internal', 'free', null)")
    refused(conn, "22023", "limit must be at least 1 or null, got 0",
            "select billing.backfill_free_plans('internal', 'free', 10, 0)")


def test_backfill_without_the_product_anywhere_returns_0_with_a_notice(conn):
    f.team(conn, f.tenancy(conn, "internal"))
    notices: list[str] = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary))
    assert conn.execute("select billing.backfill_free_plans('internal', 'fre') as n").fetchone()["n"] == 0
    assert notices == ['no tenancy of project internal has a product "fre"; nothing to backfill']


# --- regen ----------------------------------------------------------------------------

STRIPE_SUB = """
insert into billing.subscriptions (tenancy_id, customer_type, customer_id, product_id, product_version_id,
    product_line, is_add_on, stackable, status, quantity, started_at, current_period_start, current_period_end,
    creation_source, stripe_subscription_id)
select %(t)s, 'team', %(team)s, p.product_id, v.id, v.product_line, v.is_add_on, v.stackable, 'active', 2, now(),
       now(), now() + interval '1 month', 'stripe', %(stripe)s
from billing.products p join billing.product_versions v on v.id = p.current_version_id
where p.tenancy_id = %(t)s and p.product_id = %(product)s
returning id
"""


def test_regen_moves_stale_live_subscriptions_of_the_project_only(fresh_db, connect):
    conn = connect(fresh_db)
    t, other = f.tenancy(conn, "internal"), f.tenancy(conn, "acme")
    upsert(conn, t, "free", FREE)
    pro_v1 = upsert(conn, t, "pro", PRO)
    upsert(conn, other, "free", FREE)
    teams = [f.team(conn, t, f"team{i}") for i in range(5)]
    stale_free = grant(conn, t, teams[0], "free")
    stale_test_mode = conn.execute("select billing.grant_product(%s, 'team', %s, 'pro', 1, 'test_mode') as id",
                                   (t, str(teams[1]))).fetchone()["id"]
    stale_stripe = conn.execute(STRIPE_SUB, {"t": t, "team": str(teams[2]), "product": "pro",
                                             "stripe": "sub_1"}).fetchone()["id"]
    ended = grant(conn, t, teams[3], "free")
    conn.execute("select billing.cancel_subscription(%s, %s, false)", (t, ended))
    elsewhere = grant(conn, other, f.team(conn, other), "free")
    free_v2 = upsert(conn, t, "free", FREE | {"display_name": "Free 2"})
    pro_v2 = upsert(conn, t, "pro", PRO | {"display_name": "Pro 2"})
    upsert(conn, other, "free", FREE | {"display_name": "Acme free 2"})  # acme's is stale too, but not ours to move
    current = grant(conn, t, teams[4], "free")
    conn.commit()
    untouched = [ended, elsewhere, current]
    before = row_versions(conn, untouched)
    version_rows = conn.execute("select count(*) as n from billing.product_versions").fetchone()["n"]

    assert conn.execute(REGEN).fetchone()["n"] == 3
    conn.commit()
    after = row_versions(conn, [stale_free, stale_test_mode, stale_stripe])
    assert {k: v for k, (_, v) in after.items()} == {stale_free: free_v2, stale_test_mode: pro_v2,
                                                       stale_stripe: pro_v2}
    assert row_versions(conn, untouched) == before  # same row versions (xmin)
    moves = conn.execute("select subscription_id as s, from_version_id as f, to_version_id as t"
                         " from billing.subscription_moves order by to_version_id, from_version_id").fetchall()
    assert sorted((m["s"], m["f"], m["t"]) for m in moves) == sorted([
        (stale_free, before[ended][1], free_v2), (stale_test_mode, pro_v1, pro_v2), (stale_stripe, pro_v1, pro_v2)])
    assert conn.execute("select count(*) as n from billing.product_versions").fetchone()["n"] == version_rows
    assert wrote_nothing(conn, REGEN) == 0
    assert conn.execute("select billing.regen_subscriptions_to_latest('acme') as n").fetchone()["n"] == 1


def test_regen_history_is_forward_only(conn):
    t = f.tenancy(conn, "internal")
    v1 = upsert(conn, t, "free", FREE)
    sid = grant(conn, t, f.team(conn, t), "free")
    v2 = upsert(conn, t, "free", FREE | {"display_name": "Free 2"})
    assert conn.execute(REGEN).fetchone()["n"] == 1
    first_move = conn.execute("select ctid::text as c, * from billing.subscription_moves").fetchone()
    v3 = upsert(conn, t, "free", FREE | {"display_name": "Free 3"})
    assert conn.execute(REGEN).fetchone()["n"] == 1
    moves = conn.execute("select ctid::text as c, * from billing.subscription_moves where subscription_id = %s"
                         " order by id", (sid,)).fetchall()
    assert [(m["from_version_id"], m["to_version_id"]) for m in moves] == [(v1, v2), (v2, v3)]
    assert moves[0] == first_move  # the earlier move is kept as it was
    assert conn.execute(REGEN).fetchone()["n"] == 0
    refused(conn, "23514", "subscription_moves_check",
            "insert into billing.subscription_moves (tenancy_id, subscription_id, from_version_id, to_version_id)"
            " values (%s, %s, %s, %s)", (t, sid, v3, v3))


def test_regen_in_limited_calls(conn):
    t = f.tenancy(conn, "internal")
    upsert(conn, t, "free", FREE)
    for i in range(5):
        grant(conn, t, f.team(conn, t, f"team{i}"), "free")
    upsert(conn, t, "free", FREE | {"display_name": "Free 2"})
    calls = [conn.execute("select billing.regen_subscriptions_to_latest('internal', 2) as n").fetchone()["n"]
             for _ in range(4)]
    assert calls == [2, 2, 1, 0]


def test_two_regens_at_once_move_each_subscription_once(fresh_db, connect):
    setup = connect(fresh_db, autocommit=True)
    t = f.tenancy(setup, "internal")
    upsert(setup, t, "free", FREE)
    for i in range(6):
        grant(setup, t, f.team(setup, t, f"team{i}"), "free")
    upsert(setup, t, "free", FREE | {"display_name": "Free 2"})
    first, second = connect(fresh_db), connect(fresh_db)
    assert first.execute("select billing.regen_subscriptions_to_latest('internal', 2) as n").fetchone()["n"] == 2
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(lambda: second.execute(REGEN).fetchone()["n"])
        wait_until_blocked(setup, second)
        first.commit()
        assert running.result(timeout=30) == 4
    second.commit()
    moves = setup.execute("select count(*) as n, count(distinct subscription_id) as d"
                          " from billing.subscription_moves").fetchone()
    assert moves == {"n": 6, "d": 6}


def test_regen_that_would_double_a_product_line_names_the_project(conn):
    t = f.tenancy(conn, "internal")
    team = f.team(conn, t)
    upsert(conn, t, "pro", PRO)
    upsert(conn, t, "storage", PRO | {"product_line": "storage"})
    grant(conn, t, team, "pro")
    grant(conn, t, team, "storage")
    upsert(conn, t, "pro", PRO | {"product_line": "storage"})
    refused(conn, "23505", f"regen of project internal would give a customer two live plans in one product line"
                           f" in tenancy {t}: Key (tenancy_id, customer_type, customer_id, line_key)=", REGEN)


def test_regen_bad_arguments(conn):
    refused(conn, "P0002", "no project 'nope'", "select billing.regen_subscriptions_to_latest('nope')")
    refused(conn, "22023", "limit must be at least 1 or null, got -5",
            "select billing.regen_subscriptions_to_latest('internal', -5)")


# --- volume ---------------------------------------------------------------------------

@pytest.mark.slow
def test_100k_teams_backfilled_and_100k_subscriptions_regenerated(conn):
    t, other = f.tenancy(conn, "internal"), f.tenancy(conn, "acme")
    for tenancy in (t, other):
        conn.execute("insert into app.teams (tenancy_id, display_name) select %s, 'team ' || g"
                     " from generate_series(1, 100000) g", (tenancy,))
        upsert(conn, tenancy, "free", FREE)
    assert conn.execute(BACKFILL).fetchone()["n"] == 100000
    assert conn.execute("select billing.backfill_free_plans('acme') as n").fetchone()["n"] == 100000
    assert conn.execute(BACKFILL).fetchone()["n"] == 0
    for tenancy in (t, other):
        upsert(conn, tenancy, "free", FREE | {"display_name": "Free 2"})
    assert conn.execute(REGEN).fetchone()["n"] == 100000
    assert conn.execute(REGEN).fetchone()["n"] == 0
    stale = conn.execute("select count(*) filter (where s.product_version_id <> p.current_version_id) as n"
                         " from billing.subscriptions s join billing.products p using (tenancy_id, product_id)"
                         " where s.tenancy_id = %s", (other,)).fetchone()["n"]
    assert stale == 100000
    assert conn.execute("select count(*) as n from billing.subscription_moves").fetchone()["n"] == 100000


def test_moves_go_with_their_subscription_and_tenancy(conn):
    t = f.tenancy(conn, "internal")
    team = f.team(conn, t)
    upsert(conn, t, "free", FREE)
    first = grant(conn, t, team, "free")
    upsert(conn, t, "free", FREE | {"display_name": "Free 2"})
    assert conn.execute(REGEN).fetchone()["n"] == 1
    moves = "select count(*) as n from billing.subscription_moves where tenancy_id = %s"
    assert conn.execute(moves, (t,)).fetchone()["n"] == 1
    conn.execute("delete from billing.subscriptions where id = %s", (first,))
    assert conn.execute(moves, (t,)).fetchone()["n"] == 0
    second = grant(conn, t, team, "free")
    upsert(conn, t, "free", FREE | {"display_name": "Free 3"})
    assert conn.execute(REGEN).fetchone()["n"] == 1
    assert conn.execute(moves, (t,)).fetchone()["n"] == 1 and second
    conn.execute("delete from app.tenancies where id = %s", (t,))
    assert conn.execute(moves, (t,)).fetchone()["n"] == 0
