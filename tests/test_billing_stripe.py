"""Stripe sync (migration 0013, pyglue.billing.stripe, `pyglue billing stripe-*`) against a real
Postgres and a localstripe started on a free loopback port (tests/localstripe_server.py, which
also explains the one localstripe bug it fixes: subscription metadata updates were dropped).

Stripe state is made through the official SDK, and everything checked in Stripe is read back
through it; nothing of Stripe or the database is mocked.
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import re
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from decimal import Decimal

import psycopg
import pytest
import stripe
from click.testing import CliRunner
from psycopg.types.json import Jsonb

from pyglue.billing import plans, refunds
from pyglue.billing import stripe as sb
from pyglue.cli import cli
from pyglue.errors import PyglueError
from tests import factories as f
from tests.localstripe_server import API_KEY, LocalStripe, free_port

PRO = {"display_name": "Pro", "customer_type": "team", "product_line": "plans",
       "prices": {"monthly": {"amounts": {"USD": "49"}, "interval": [1, "month"]}}}
PRO_2 = PRO | {"display_name": "Pro (2026)"}
SEATS = {"display_name": "Seats", "customer_type": "user", "stackable": True,
         "prices": {"seat": {"amounts": {"USD": "5"}, "interval": [1, "month"]}}}
FREE = PRO | {"display_name": "Free", "prices": {"free": {"amounts": {"USD": "0"}, "interval": [1, "month"]}}}


@pytest.fixture(scope="session")
def localstripe(tmp_path_factory):
    server = LocalStripe(tmp_path_factory.mktemp("localstripe"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def env(localstripe, monkeypatch):
    """The default key and API base in the environment, as a deployment would set them."""
    monkeypatch.setenv(sb.API_KEY_ENV, API_KEY)
    monkeypatch.setenv(sb.API_BASE_ENV, localstripe.api_base)
    if not localstripe.responds():  # an earlier test's outage must not leak
        localstripe.restart()
    return localstripe


@pytest.fixture(scope="session")
def sc(localstripe) -> stripe.StripeClient:
    return stripe.StripeClient(API_KEY, base_addresses={"api": localstripe.api_base}, max_network_retries=0)


@pytest.fixture(scope="session")
def plan(sc) -> str:
    product = sc.v1.products.create(params={"name": "Pro"})
    return sc.v1.plans.create(params={"product": product.id, "amount": 4900, "currency": "usd",
                                      "interval": "month"}).id


@pytest.fixture
def db(fresh_db, connect):
    """A migrated database of this test's own (the code under test commits) and an autocommit
    dict-row connection to it."""
    return fresh_db, connect(fresh_db, autocommit=True)


def upsert_product(conn, tenancy, product_id, body) -> str:
    return conn.execute("select billing.upsert_product(%s, %s, %s) as v",
                        (tenancy, product_id, Jsonb(body))).fetchone()["v"]


def tenancy_with_team(conn, project="internal"):
    tenancy = f.tenancy(conn, project)
    return str(tenancy), str(f.team(conn, tenancy))


def customer(sc, tenancy, customer_type="team", customer_id=None) -> str:
    """A Stripe customer that names its pyglue tenancy and customer, with a card that pays."""
    cus = sc.v1.customers.create(params={"metadata": {
        sb.TENANCY_KEY: tenancy, sb.CUSTOMER_TYPE_KEY: customer_type, sb.CUSTOMER_ID_KEY: customer_id}})
    pm = sc.v1.payment_methods.create(params={"type": "card", "card": {
        "number": "4242424242424242", "exp_month": 12, "exp_year": 2030, "cvc": "123"}})
    sc.v1.payment_methods.attach(pm.id, params={"customer": cus.id})
    sc.v1.customers.update(cus.id, params={"invoice_settings": {"default_payment_method": pm.id}})
    return cus.id


def subscribe(sc, cus, plan, product_id="pro", quantity=1, **metadata) -> stripe.Subscription:
    return sc.v1.subscriptions.create(params={
        "customer": cus, "items": [{"plan": plan, "quantity": quantity}],
        "metadata": {sb.PRODUCT_KEY: product_id, **metadata}})


def row(conn, stripe_id) -> dict | None:
    return conn.execute("select *, xmin::text as xmin from billing.subscriptions where stripe_subscription_id = %s",
                        (stripe_id,)).fetchone()


def outbox(conn, stripe_id) -> list[dict]:
    return conn.execute("select *, next_attempt_at - now() as due_in from billing.stripe_outbox"
                        " where stripe_subscription_id = %s order by id", (stripe_id,)).fetchall()


def stripe_metadata(sc, stripe_id) -> dict:
    return sc.v1.subscriptions.retrieve(stripe_id).to_dict()["metadata"]


def epoch(ts) -> int:
    return int(ts.timestamp())


# --- sync ----------------------------------------------------------------------------------


def test_a_subscription_made_through_the_sdk_becomes_a_row(db, env, sc, plan):
    dsn, conn = db
    tenancy, team = tenancy_with_team(conn)
    version = upsert_product(conn, tenancy, "pro", PRO)
    sub = subscribe(sc, customer(sc, tenancy, "team", team), plan)

    result = sb.sync_tenancy(dsn, tenancy)

    assert (result.read, result.written) == (1, 1)
    r = row(conn, sub.id)
    assert {k: r[k] for k in ("tenancy_id", "customer_type", "customer_id", "product_id", "product_version_id",
                              "status", "quantity", "cancel_at_period_end", "ended_at", "creation_source")} == {
        "tenancy_id": uuid.UUID(tenancy), "customer_type": "team", "customer_id": team, "product_id": "pro",
        "product_version_id": version, "status": "active", "quantity": 1, "cancel_at_period_end": False,
        "ended_at": None, "creation_source": "stripe"}
    fetched = sc.v1.subscriptions.retrieve(sub.id)
    assert (epoch(r["started_at"]), epoch(r["current_period_start"]), epoch(r["current_period_end"])) == (
        fetched.start_date, fetched["current_period_start"], fetched["current_period_end"])


def test_a_resync_of_unchanged_stripe_state_writes_no_row_version(db, env, sc, plan):
    dsn, conn = db
    tenancy, team = tenancy_with_team(conn)
    upsert_product(conn, tenancy, "pro", PRO)
    sub = subscribe(sc, customer(sc, tenancy, "team", team), plan)
    sb.sync_tenancy(dsn, tenancy)
    before = row(conn, sub.id)

    assert sb.sync_tenancy(dsn, tenancy).written == 0
    # the same statement as the sync, in a transaction of our own: no transaction id assigned
    conn.execute("begin")
    rows = [sb.subscription_row(sc.v1.subscriptions.retrieve(sub.id, params={"expand": ["customer"]}).to_dict(),
                                tenancy)]
    assert conn.execute("select billing.upsert_stripe_subscriptions(%s, %s) as n",
                        (tenancy, Jsonb(rows))).fetchone()["n"] == 0
    assert conn.execute("select pg_current_xact_id_if_assigned() as x").fetchone()["x"] is None
    conn.execute("commit")

    assert row(conn, sub.id)["xmin"] == before["xmin"]


def test_changes_and_cancellation_in_stripe_reach_the_row(db, env, sc, plan):
    dsn, conn = db
    tenancy, team = tenancy_with_team(conn)
    upsert_product(conn, tenancy, "pro", PRO)
    sub = subscribe(sc, customer(sc, tenancy, "team", team), plan)
    sb.sync_tenancy(dsn, tenancy)

    sc.v1.subscription_items.update(sub["items"]["data"][0]["id"], params={"quantity": 3})
    sc.v1.subscriptions.update(sub.id, params={"cancel_at_period_end": True})
    assert sb.sync_tenancy(dsn, tenancy).written == 1
    r = row(conn, sub.id)
    assert (r["quantity"], r["cancel_at_period_end"], r["status"], r["ended_at"]) == (3, True, "active", None)

    sc.v1.subscriptions.cancel(sub.id)
    assert sb.sync_tenancy(dsn, tenancy).written == 1
    r = row(conn, sub.id)
    ended = sc.v1.subscriptions.retrieve(sub.id).ended_at
    assert (r["status"], epoch(r["ended_at"])) == ("canceled", ended)
    # the line is free again: a new plan may be granted
    conn.execute("select billing.grant_product(%s, 'team', %s, 'pro')", (tenancy, team))


def test_version_comes_from_metadata_and_without_it_the_row_keeps_its_own(db, env, sc, plan):
    dsn, conn = db
    tenancy, team = tenancy_with_team(conn)
    v1 = upsert_product(conn, tenancy, "pro", PRO)
    v2 = upsert_product(conn, tenancy, "pro", PRO_2)
    named = subscribe(sc, customer(sc, tenancy, "team", team), plan, **{sb.VERSION_KEY: v1})
    other_team = str(f.team(conn, tenancy))
    unnamed = subscribe(sc, customer(sc, tenancy, "team", other_team), plan)
    sb.sync_tenancy(dsn, tenancy)
    assert row(conn, named.id)["product_version_id"] == v1
    assert row(conn, unnamed.id)["product_version_id"] == v2  # new, no version named: current

    # a row without a version in its metadata keeps the one it has (here: an older one)
    conn.execute("update billing.subscriptions s set product_version_id = %s where stripe_subscription_id = %s",
                 (v1, unnamed.id))
    sc.v1.subscription_items.update(unnamed["items"]["data"][0]["id"], params={"quantity": 2})
    sb.sync_tenancy(dsn, tenancy)
    assert (row(conn, unnamed.id)["product_version_id"], row(conn, unnamed.id)["quantity"]) == (v1, 2)

    # metadata naming another version moves it, logged like a regen move
    sc.v1.subscriptions.update(named.id, params={"metadata": {sb.VERSION_KEY: v2}})
    sb.sync_tenancy(dsn, tenancy)
    r = row(conn, named.id)
    assert r["product_version_id"] == v2
    moves = conn.execute("select from_version_id, to_version_id from billing.subscription_moves"
                         " where subscription_id = %s", (r["id"],)).fetchall()
    assert moves == [{"from_version_id": v1, "to_version_id": v2}]


def test_only_the_tenancys_subscriptions_are_synced(db, env, sc, plan):
    dsn, conn = db
    tenancy, team = tenancy_with_team(conn)
    other, other_team = tenancy_with_team(conn)
    upsert_product(conn, tenancy, "pro", PRO)
    mine = subscribe(sc, customer(sc, tenancy, "team", team), plan)
    theirs = subscribe(sc, customer(sc, other, "team", other_team), plan)  # other has no product "pro"
    sb.sync_tenancy(dsn, tenancy)
    assert row(conn, mine.id) is not None and row(conn, theirs.id) is None


def test_a_stripe_plan_ends_the_api_granted_plan_of_its_line(db, env, sc, plan):
    dsn, conn = db
    tenancy, team = tenancy_with_team(conn)
    upsert_product(conn, tenancy, "free", FREE)
    upsert_product(conn, tenancy, "pro", PRO)
    free_id = conn.execute("select billing.grant_product(%s, 'team', %s, 'free') as id",
                           (tenancy, team)).fetchone()["id"]
    sub = subscribe(sc, customer(sc, tenancy, "team", team), plan)
    assert sb.sync_tenancy(dsn, tenancy).written == 2
    free = conn.execute("select status, ended_at from billing.subscriptions where id = %s", (free_id,)).fetchone()
    assert free["status"] == "canceled" and free["ended_at"] is not None
    assert row(conn, sub.id)["ended_at"] is None

    # a second live Stripe plan in the same line is refused, naming both
    second = subscribe(sc, sc.v1.subscriptions.retrieve(sub.id).customer, plan)
    first, then = sorted([sub.id, second.id])
    with pytest.raises(PyglueError, match=f'^Stripe subscriptions {first} and {then} would both be live plans'
                                          f' of team {team} in product line "plans"$'):
        sb.sync_tenancy(dsn, tenancy)
    assert row(conn, second.id) is None


# --- regen and the outbox ------------------------------------------------------------------


def test_regen_writes_the_new_version_into_stripe_and_a_later_sync_keeps_it(db, env, sc, plan):
    dsn, conn = db
    tenancy, team = tenancy_with_team(conn)
    v1 = upsert_product(conn, tenancy, "pro", PRO)
    sub = subscribe(sc, customer(sc, tenancy, "team", team), plan, **{sb.VERSION_KEY: v1})
    upsert_product(conn, tenancy, "seats", SEATS)
    test_mode = conn.execute("select billing.grant_product(%s, 'user', %s, 'seats', 1, 'test_mode') as id",
                             (tenancy, str(f.user(conn, tenancy)))).fetchone()["id"]
    sb.sync_tenancy(dsn, tenancy)
    v2 = upsert_product(conn, tenancy, "pro", PRO_2)
    upsert_product(conn, tenancy, "seats", SEATS | {"display_name": "Seats 2"})

    assert conn.execute("select billing.regen_subscriptions_to_latest('internal') as n").fetchone()["n"] == 2
    [queued] = outbox(conn, sub.id)
    assert (queued["metadata"], queued["attempts"], queued["delivered_at"]) == ({sb.VERSION_KEY: v2}, 0, None)
    assert conn.execute("select count(*) as n from billing.stripe_outbox where subscription_id = %s",
                        (test_mode,)).fetchone()["n"] == 0  # test-mode moves need no Stripe write

    # before delivery Stripe still says v1: a sync keeps v2 and writes nothing
    assert stripe_metadata(sc, sub.id)[sb.VERSION_KEY] == v1
    moved = row(conn, sub.id)
    assert sb.sync_tenancy(dsn, tenancy).written == 0
    assert row(conn, sub.id)["product_version_id"] == v2 and row(conn, sub.id)["xmin"] == moved["xmin"]

    result = sb.deliver_outbox(dsn)
    assert (result.claimed, result.delivered, result.failed) == (1, 1, 0)
    assert stripe_metadata(sc, sub.id) == {sb.PRODUCT_KEY: "pro", sb.VERSION_KEY: v2}  # other keys kept
    assert outbox(conn, sub.id)[0]["delivered_at"] is not None
    assert sb.sync_tenancy(dsn, tenancy).written == 0
    assert row(conn, sub.id)["product_version_id"] == v2
    assert sb.deliver_outbox(dsn).claimed == 0
    # a delivered row is kept a day (a sync that began before the delivery needs it), then purged
    assert sb.deliver_outbox(dsn).purged == 0
    conn.execute("update billing.stripe_outbox set delivered_at = delivered_at - interval '2 days'"
                 " where stripe_subscription_id = %s", (sub.id,))
    assert sb.deliver_outbox(dsn).purged == 1
    assert outbox(conn, sub.id) == []


def test_regen_rolled_back_queues_nothing(db, env, sc, plan):
    dsn, conn = db
    tenancy, team = tenancy_with_team(conn)
    upsert_product(conn, tenancy, "pro", PRO)
    sub = subscribe(sc, customer(sc, tenancy, "team", team), plan)
    sb.sync_tenancy(dsn, tenancy)
    upsert_product(conn, tenancy, "pro", PRO_2)
    with pytest.raises(RuntimeError):
        with conn.transaction():
            conn.execute("select billing.regen_subscriptions_to_latest('internal')")
            assert len(outbox(conn, sub.id)) == 1
            raise RuntimeError("roll back")
    assert outbox(conn, sub.id) == []


def test_stripe_down_during_regen_the_write_is_retried_and_lands(db, env, sc, plan):
    dsn, conn = db
    tenancy, team = tenancy_with_team(conn)
    v1 = upsert_product(conn, tenancy, "pro", PRO)
    sub = subscribe(sc, customer(sc, tenancy, "team", team), plan, **{sb.VERSION_KEY: v1})
    sb.sync_tenancy(dsn, tenancy)
    v2 = upsert_product(conn, tenancy, "pro", PRO_2)

    env.stop()
    try:
        assert conn.execute("select billing.regen_subscriptions_to_latest('internal') as n").fetchone()["n"] == 1
        result = sb.deliver_outbox(dsn, base_delay_s=1.0)
        assert (result.claimed, result.delivered, result.failed) == (1, 0, 1)
        [pending] = outbox(conn, sub.id)
        assert pending["attempts"] == 1 and pending["delivered_at"] is None
        assert "APIConnectionError" in pending["last_error"] and API_KEY not in pending["last_error"]
        assert 0.5 < pending["due_in"].total_seconds() < 1.5  # 1 s backoff with ±20% jitter
        with pytest.raises(PyglueError, match=f"cannot read Stripe subscriptions of tenancy {tenancy}") as e:
            sb.sync_tenancy(dsn, tenancy)
        assert API_KEY not in str(e.value)
        assert row(conn, sub.id)["product_version_id"] == v2
        # a second failure doubles the wait
        conn.execute("update billing.stripe_outbox set next_attempt_at = now() where stripe_subscription_id = %s",
                     (sub.id,))
        assert sb.deliver_outbox(dsn, base_delay_s=1.0).failed == 1
        [pending] = outbox(conn, sub.id)
        assert pending["attempts"] == 2 and 1.5 < pending["due_in"].total_seconds() < 2.5
    finally:
        env.start()

    assert sb.deliver_outbox(dsn).claimed == 0  # not due yet: backoff is kept after the restart
    result = sb.deliver_until_done(dsn, wait_s=10)
    assert (result.delivered, result.failed) == (1, 0)
    [done] = outbox(conn, sub.id)
    assert done["attempts"] == 3 and done["delivered_at"] is not None
    assert stripe_metadata(sc, sub.id)[sb.VERSION_KEY] == v2
    assert sb.sync_tenancy(dsn, tenancy).written == 0
    assert row(conn, sub.id)["product_version_id"] == v2


def test_two_deliverers_never_take_the_same_write(db, connect):
    dsn, conn = db
    tenancy, team = tenancy_with_team(conn)
    sub_id = _stripe_row(conn, tenancy, team)
    a, b = connect(dsn), connect(dsn)
    claim = "select id from billing.claim_stripe_outbox(10)"
    assert len(a.execute(claim).fetchall()) == 1  # A holds the row locked, uncommitted
    assert b.execute(claim).fetchall() == []  # B skips it without waiting
    a.commit()
    assert b.execute(claim).fetchall() == []  # and after A's commit the lease keeps it A's
    b.commit()
    attempts = conn.execute("select attempts, next_attempt_at - now() as lease from billing.stripe_outbox"
                            " where subscription_id = %s", (sub_id,)).fetchone()
    assert attempts["attempts"] == 1 and attempts["lease"].total_seconds() > 250


def test_a_write_superseded_in_flight_stays_due(db):
    dsn, conn = db
    tenancy, team = tenancy_with_team(conn)
    _stripe_row(conn, tenancy, team)
    [claimed] = conn.execute("select * from billing.claim_stripe_outbox(10)").fetchall()
    # regen moves it again while the write is in flight
    v3 = upsert_product(conn, tenancy, "pro", PRO | {"display_name": "Pro 3"})
    conn.execute("select billing.regen_subscriptions_to_latest('internal')")
    assert conn.execute("select billing.complete_stripe_outbox(%s, %s, %s) as ok",
                        (tenancy, claimed["id"], Jsonb(claimed["metadata"]))).fetchone()["ok"] is False
    now = conn.execute("select metadata, delivered_at, next_attempt_at <= now() as due from billing.stripe_outbox"
                       " where id = %s", (claimed["id"],)).fetchone()
    assert now == {"metadata": {sb.VERSION_KEY: v3}, "delivered_at": None, "due": True}


def test_sync_read_before_a_delivery_does_not_move_the_version_back(db):
    """The Stripe read began, then the metadata write landed and was marked delivered, then the
    read's (old) data arrives: the local version stays."""
    dsn, conn = db
    tenancy, team = tenancy_with_team(conn)
    _stripe_row(conn, tenancy, team)
    read_at = conn.execute("select clock_timestamp() as t").fetchone()["t"]
    [claimed] = conn.execute("select * from billing.claim_stripe_outbox(10)").fetchall()
    conn.execute("select billing.complete_stripe_outbox(%s, %s, %s)",
                 (tenancy, claimed["id"], Jsonb(claimed["metadata"])))
    r = conn.execute("select * from billing.subscriptions where id = %s", (claimed["subscription_id"],)).fetchone()
    old_version = conn.execute("select from_version_id as v from billing.subscription_moves where subscription_id = %s",
                               (r["id"],)).fetchone()["v"]
    stale = [_row_json(r, team, version=old_version)]
    assert conn.execute("select billing.upsert_stripe_subscriptions(%s, %s, %s) as n",
                        (tenancy, Jsonb(stale), read_at)).fetchone()["n"] == 0
    # a read that began after the delivery is believed
    assert conn.execute("select billing.upsert_stripe_subscriptions(%s, %s, clock_timestamp()) as n",
                        (tenancy, Jsonb(stale))).fetchone()["n"] == 1
    assert conn.execute("select product_version_id as v from billing.subscriptions where id = %s",
                        (r["id"],)).fetchone()["v"] == old_version


def _stripe_row(conn, tenancy, team) -> uuid.UUID:
    """A Stripe-backed subscription at v1 moved by regen to v2, its outbox row pending."""
    upsert_product(conn, tenancy, "pro", PRO)
    conn.execute("select billing.upsert_stripe_subscriptions(%s, %s)", (tenancy, Jsonb([{
        "stripe_subscription_id": "sub_" + uuid.uuid4().hex, "customer_type": "team", "customer_id": team,
        "product_id": "pro", "status": "active", "quantity": 1, "started_at": 1_790_000_000,
        "current_period_start": 1_790_000_000, "current_period_end": 1_792_600_000}])))
    upsert_product(conn, tenancy, "pro", PRO_2)
    conn.execute("select billing.regen_subscriptions_to_latest('internal')")
    return conn.execute("select subscription_id from billing.stripe_outbox o join billing.subscriptions s"
                        " on s.id = o.subscription_id where s.customer_id = %s", (team,)).fetchone()["subscription_id"]


def _row_json(r, team, version) -> dict:
    return {"stripe_subscription_id": r["stripe_subscription_id"], "customer_type": "team", "customer_id": team,
            "product_id": "pro", "product_version_id": version, "status": r["status"], "quantity": r["quantity"],
            "started_at": r["started_at"].timestamp(), "current_period_start": r["current_period_start"].timestamp(),
            "current_period_end": r["current_period_end"].timestamp(), "cancel_at_period_end": False}


# --- webhooks ------------------------------------------------------------------------------


class _Receiver(http.server.BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((body, self.headers["Stripe-Signature"]))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook_receiver(env):
    """An endpoint on a free loopback port that localstripe posts its signed events to."""
    secret = "whsec_" + uuid.uuid4().hex
    received: list = []
    handler = type("Receiver", (_Receiver,), {"received": received})
    server = http.server.HTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hook = uuid.uuid4().hex
    # localstripe's own configuration endpoint (not a Stripe API, so not through the SDK)
    data = urllib.parse.urlencode({"url": f"http://127.0.0.1:{server.server_address[1]}/", "secret": secret})
    with urllib.request.urlopen(f"{env.api_base}/_config/webhooks/{hook}", data=data.encode(), timeout=10) as r:
        assert r.status == 200
    yield secret, received
    server.shutdown()
    server.server_close()
    env.restart()  # localstripe keeps registered webhooks until it stops


def wait_for_event(received, event_type, subscription_id, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for body, signature in list(received):
            event = json.loads(body)
            if event["type"] == event_type and event["data"]["object"]["id"] == subscription_id:
                return body, signature
        time.sleep(0.1)
    raise AssertionError(f"no {event_type} event for {subscription_id} arrived")


def test_a_signed_webhook_syncs_the_customer(db, sc, plan, webhook_receiver):
    dsn, conn = db
    secret, received = webhook_receiver
    tenancy, team = tenancy_with_team(conn)
    upsert_product(conn, tenancy, "pro", PRO)
    cus = customer(sc, tenancy, "team", team)
    sub = subscribe(sc, cus, plan)
    body, signature = wait_for_event(received, "customer.subscription.created", sub.id)

    result = sb.handle_event(body, signature, secret, conn_or_dsn=dsn)
    assert result | {"event_id": None} == {"event_id": None, "type": "customer.subscription.created", "handled": True,
                                           "tenancy_id": tenancy, "customer": cus, "read": 1, "written": 1}
    assert row(conn, sub.id)["status"] == "active"

    sc.v1.subscriptions.cancel(sub.id)
    body, signature = wait_for_event(received, "customer.subscription.deleted", sub.id)
    assert sb.handle_event(body, signature, secret, conn_or_dsn=dsn)["written"] == 1
    assert row(conn, sub.id)["status"] == "canceled"

    # a replayed event changes nothing
    assert sb.handle_event(body, signature, secret, conn_or_dsn=dsn)["written"] == 0


def test_a_webhook_with_a_bad_signature_is_refused_and_writes_nothing(db, sc, plan, webhook_receiver):
    dsn, conn = db
    secret, received = webhook_receiver
    tenancy, team = tenancy_with_team(conn)
    upsert_product(conn, tenancy, "pro", PRO)
    sub = subscribe(sc, customer(sc, tenancy, "team", team), plan)
    body, signature = wait_for_event(received, "customer.subscription.created", sub.id)

    with pytest.raises(PyglueError, match="^Stripe webhook signature does not verify"):
        sb.handle_event(body, signature, "whsec_wrong", conn_or_dsn=dsn)
    with pytest.raises(PyglueError, match="^Stripe webhook signature does not verify"):
        sb.handle_event(body.replace(b'"active"', b'"past_due"'), signature, secret, conn_or_dsn=dsn)
    with pytest.raises(PyglueError, match="^Stripe webhook signature does not verify"):
        sb.handle_event(body, None, secret, conn_or_dsn=dsn)
    with pytest.raises(PyglueError, match="^no Stripe webhook signing secret given"):
        sb.handle_event(body, signature, "", conn_or_dsn=dsn)
    assert row(conn, sub.id) is None


def test_events_other_than_subscriptions_are_verified_and_ignored(db, sc, webhook_receiver):
    dsn, conn = db
    secret, received = webhook_receiver
    cus = sc.v1.customers.create(params={"email": "x@example.com"})
    deadline = time.monotonic() + 15
    while not any(json.loads(b)["type"].startswith("customer.") and json.loads(b)["data"]["object"]["id"] == cus.id
                  for b, _ in received) and time.monotonic() < deadline:
        time.sleep(0.1)
    body, signature = next((b, s) for b, s in received if json.loads(b)["data"]["object"]["id"] == cus.id)
    result = sb.handle_event(body, signature, secret, conn_or_dsn=dsn)
    assert result["handled"] is False and not result["type"].startswith("customer.subscription.")


# --- keys and bad input --------------------------------------------------------------------


def test_a_tenancys_own_key_is_used_and_the_mapping_reader_cannot_read_it(db, localstripe, monkeypatch, sc, plan):
    dsn, conn = db
    monkeypatch.delenv(sb.API_KEY_ENV, raising=False)
    monkeypatch.setenv(sb.API_BASE_ENV, localstripe.api_base)
    tenancy, team = tenancy_with_team(conn)
    upsert_product(conn, tenancy, "pro", PRO)
    sub = subscribe(sc, customer(sc, tenancy, "team", team), plan)
    own_key = "sk_test_tenancy_" + uuid.uuid4().hex
    assert conn.execute("select billing.set_stripe_api_key(%s, %s) as ok", (tenancy, own_key)).fetchone()["ok"]
    assert sb.sync_tenancy(dsn, tenancy).written == 1 and row(conn, sub.id) is not None

    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        with conn.transaction():
            conn.execute("set local role pyglue_mapping_reader")
            conn.execute("select api_key from billing.stripe_settings")
    with pytest.raises(psycopg.Error, match="must be a secret or restricted key") as e:
        conn.execute("select billing.set_stripe_api_key(%s, %s)", (tenancy, "pk_test_public_0123456789"))
    assert "pk_test_public_0123456789" not in str(e.value)


def test_unknown_tenancy_and_missing_key_are_one_line_errors(db, localstripe, monkeypatch):
    dsn, conn = db
    monkeypatch.delenv(sb.API_KEY_ENV, raising=False)
    monkeypatch.setenv(sb.API_BASE_ENV, localstripe.api_base)
    nobody = uuid.uuid4()
    with pytest.raises(PyglueError, match=f"^no tenancy {nobody}$"):
        sb.sync_tenancy(dsn, nobody)
    tenancy, _ = tenancy_with_team(conn)
    with pytest.raises(PyglueError, match=f"^no Stripe API key for tenancy {tenancy}: set \\$PYGLUE_STRIPE_API_KEY"):
        sb.sync_tenancy(dsn, tenancy)


@pytest.mark.parametrize("case", ["unknown product", "unknown version", "customer type", "no product"])
def test_metadata_the_catalog_does_not_know_is_refused_naming_the_value(db, env, sc, plan, case):
    dsn, conn = db
    tenancy, team = tenancy_with_team(conn)
    upsert_product(conn, tenancy, "pro", PRO)
    good = subscribe(sc, customer(sc, tenancy, "team", team), plan)
    other_team = str(f.team(conn, tenancy))
    if case == "unknown product":
        bad = subscribe(sc, customer(sc, tenancy, "team", other_team), plan, product_id="nope")
        message = f'Stripe subscription {bad.id} names product "nope", which does not exist in tenancy {tenancy}'
    elif case == "unknown version":
        bad = subscribe(sc, customer(sc, tenancy, "team", other_team), plan, **{sb.VERSION_KEY: "f00d"})
        message = f'Stripe subscription {bad.id} names product version f00d, which is not a version of product "pro"'
    elif case == "customer type":
        user = str(f.user(conn, tenancy))
        bad = subscribe(sc, customer(sc, tenancy, "user", user), plan)
        message = f'Stripe subscription {bad.id}: product "pro" is for team customers, not user {user}'
    else:
        bad = sc.v1.subscriptions.create(params={"customer": customer(sc, tenancy, "team", other_team),
                                                 "items": [{"plan": plan}]})
        message = f"Stripe subscription {bad.id} of tenancy {tenancy} has no pyglue_product_id"
    with pytest.raises(PyglueError, match="^" + re.escape(message)):
        sb.sync_tenancy(dsn, tenancy)
    assert row(conn, good.id) is None and row(conn, bad.id) is None  # nothing written

    done = CliRunner().invoke(cli, ["--dsn", dsn, "billing", "stripe-sync", "--tenant", tenancy],
                              standalone_mode=False, catch_exceptions=True)
    assert isinstance(done.exception, PyglueError) and message in str(done.exception)


def test_bad_rows_are_refused_by_the_sql_function_naming_field_and_value(conn):
    tenancy = f.tenancy(conn, "internal")
    team = str(f.team(conn, tenancy))
    upsert_product(conn, tenancy, "pro", PRO)
    base = {"stripe_subscription_id": "sub_x1", "customer_type": "team", "customer_id": team, "product_id": "pro",
            "status": "active", "quantity": 1, "started_at": 1_790_000_000, "current_period_start": 1_790_000_000,
            "current_period_end": 1_792_600_000}
    for change, message in [
        ({"status": "happy"}, 'Stripe subscription sub_x1 (row 1): status "happy" is not a Stripe subscription status'),
        ({"quantity": 0}, "Stripe subscription sub_x1 (row 1): quantity must be an integer from 1 to 999999999, got 0"),
        ({"customer_id": "t1"}, 'Stripe subscription sub_x1 (row 1): team id must be a uuid, got "t1"'),
        ({"current_period_end": 1_780_000_000}, "current_period_end 1780000000 is not after current_period_start"),
        ({"stripe_subscription_id": "cus_1"}, 'stripe_subscription_id must be a Stripe subscription id (sub_...), got "cus_1"'),
    ]:
        with pytest.raises(psycopg.Error, match=re.escape(message)) as e:
            with conn.transaction():
                conn.execute("select billing.upsert_stripe_subscriptions(%s, %s)", (tenancy, Jsonb([base | change])))
        assert e.value.sqlstate == "22023"
    with pytest.raises(psycopg.Error, match="Stripe subscription sub_x1 is in the batch more than once"):
        with conn.transaction():
            conn.execute("select billing.upsert_stripe_subscriptions(%s, %s)", (tenancy, Jsonb([base, base])))
    with pytest.raises(psycopg.errors.NoDataFound, match=f"no tenancy {uuid.UUID(int=1)}"):
        conn.execute("select billing.upsert_stripe_subscriptions(%s, '[]')", (uuid.UUID(int=1),))


def test_the_api_key_never_appears_in_cli_output(db, localstripe, monkeypatch, sc, plan):
    dsn, conn = db
    tenancy, team = tenancy_with_team(conn)
    upsert_product(conn, tenancy, "pro", PRO)
    subscribe(sc, customer(sc, tenancy, "team", team), plan)
    bad_key = "rk_test_" + uuid.uuid4().hex  # localstripe refuses keys that are not sk_: HTTP 401
    monkeypatch.setenv(sb.API_KEY_ENV, bad_key)
    monkeypatch.setenv(sb.API_BASE_ENV, localstripe.api_base)
    done = subprocess.run([sys.executable, "-m", "pyglue", "--dsn", dsn, "billing", "stripe-sync", "--tenant",
                           tenancy], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(f"error: cannot read Stripe subscriptions of"
                                                                   f" tenancy {tenancy}: Stripe AuthenticationError")
    assert bad_key not in done.stdout + done.stderr and bad_key[8:] not in done.stdout + done.stderr

    # stored as the tenancy's key, with Stripe down: the outbox error and CLI output lack it too
    conn.execute("select billing.set_stripe_api_key(%s, %s)", (tenancy, "sk_test_" + uuid.uuid4().hex))
    key = conn.execute("select api_key from billing.stripe_settings").fetchone()["api_key"]
    monkeypatch.setenv(sb.API_BASE_ENV, f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv(sb.API_KEY_ENV, API_KEY)
    sb.sync_tenancy(dsn, tenancy, api_base=localstripe.api_base)
    upsert_product(conn, tenancy, "pro", PRO_2)
    conn.execute("select billing.regen_subscriptions_to_latest('internal')")
    done = subprocess.run([sys.executable, "-m", "pyglue", "--dsn", dsn, "billing", "stripe-deliver", "--json"],
                          capture_output=True, text=True, timeout=60)
    summary = json.loads(done.stdout)
    assert (done.returncode, summary["failed"], summary["delivered"]) == (0, 1, 0)
    last_error = conn.execute("select last_error from billing.stripe_outbox").fetchone()["last_error"]
    for text in (done.stdout, done.stderr, last_error):
        assert key not in text and key[8:] not in text and API_KEY not in text


def test_cli_json_summaries(db, env, sc, plan):
    dsn, conn = db
    tenancy, team = tenancy_with_team(conn)
    upsert_product(conn, tenancy, "pro", PRO)
    sub = subscribe(sc, customer(sc, tenancy, "team", team), plan)
    runner = CliRunner()
    done = runner.invoke(cli, ["--dsn", dsn, "billing", "stripe-sync", "--tenant", tenancy, "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.output) == {"tenancy_id": tenancy, "customer": None, "read": 1, "written": 1}
    upsert_product(conn, tenancy, "pro", PRO_2)
    conn.execute("select billing.regen_subscriptions_to_latest('internal')")
    done = runner.invoke(cli, ["--dsn", dsn, "billing", "stripe-deliver", "--tenant", tenancy, "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.output) == {"claimed": 1, "delivered": 1, "failed": 0, "superseded": 0, "purged": 0,
                                       "errors": []}
    assert stripe_metadata(sc, sub.id)[sb.VERSION_KEY] == row(conn, sub.id)["product_version_id"]


def test_a_sync_racing_regen_waits_and_keeps_the_new_version(db, connect):
    """Fixed interleaving: regen has moved a Stripe-backed subscription (uncommitted) when a
    sync brings Stripe's old metadata and a new quantity; the sync waits for regen's commit,
    then takes the quantity and keeps regen's version."""
    from tests.test_billing_backfill_regen import wait_until_blocked

    dsn, conn = db
    tenancy, team = tenancy_with_team(conn)
    v1 = upsert_product(conn, tenancy, "pro", PRO)
    stripe_id = "sub_" + uuid.uuid4().hex
    stale = {"stripe_subscription_id": stripe_id, "customer_type": "team", "customer_id": team, "product_id": "pro",
             "product_version_id": v1, "status": "active", "quantity": 1, "started_at": 1_790_000_000,
             "current_period_start": 1_790_000_000, "current_period_end": 1_792_600_000}
    conn.execute("select billing.upsert_stripe_subscriptions(%s, %s)", (tenancy, Jsonb([stale])))
    v2 = upsert_product(conn, tenancy, "pro", PRO_2)

    regen, sync = connect(dsn), connect(dsn)
    assert regen.execute("select billing.regen_subscriptions_to_latest('internal') as n").fetchone()["n"] == 1
    done = {}
    worker = threading.Thread(target=lambda: done.setdefault("n", sync.execute(
        "select billing.upsert_stripe_subscriptions(%s, %s) as n",
        (tenancy, Jsonb([stale | {"quantity": 4}]))).fetchone()["n"]))
    worker.start()
    wait_until_blocked(conn, sync)
    regen.commit()
    worker.join(timeout=30)
    sync.commit()
    assert done["n"] == 1
    r = row(conn, stripe_id)
    assert (r["product_version_id"], r["quantity"]) == (v2, 4)


# --- refunds -------------------------------------------------------------------------------

TEAM_SEATS = PRO | {"stackable": True, "included_items": {"seats": {"quantity": 10, "expires": "when-purchase-expires"}}}


def seats(conn, tenancy, team) -> int:
    return conn.execute("select billing.item_quantity(%s, 'team', %s, 'seats') as q", (tenancy, team)).fetchone()["q"]


def owned(conn, tenancy, team) -> list[tuple]:
    return [(r["product_id"], r["quantity"]) for r in conn.execute(
        "select * from billing.owned_products(%s, 'team', %s)", (tenancy, team))]


def test_refund_of_a_stripe_subscription_lowers_stripe_too_and_the_next_sync_counts_it_once(db, env, sc, plan):
    dsn, conn = db
    tenancy, team = tenancy_with_team(conn)
    upsert_product(conn, tenancy, "pro", TEAM_SEATS)
    sub = subscribe(sc, customer(sc, tenancy, "team", team), plan, quantity=3)
    sb.sync_tenancy(dsn, tenancy)
    assert (owned(conn, tenancy, team), seats(conn, tenancy, team)) == ([("pro", 3)], 30)
    purchase = row(conn, sub.id)["id"]

    done = refunds.refund_purchase(conn, tenancy, "subscription", purchase, 1, Decimal("49.00"))
    assert done.quantity_left == 2 and done.stripe_refund_id.startswith("re_")
    assert sc.v1.subscriptions.retrieve(sub.id)["items"].data[0].quantity == 2
    refunded = sc.v1.refunds.retrieve(done.stripe_refund_id)
    assert (refunded.amount, refunded.status) == (4900, "succeeded")
    assert (owned(conn, tenancy, team), seats(conn, tenancy, team)) == ([("pro", 2)], 30)  # no clawback

    assert sb.sync_tenancy(dsn, tenancy).written == 0  # Stripe says 2, pyglue has 2: nothing twice
    assert (owned(conn, tenancy, team), seats(conn, tenancy, team)) == ([("pro", 2)], 30)
    assert conn.execute("select stripe_refund_id from billing.refunds").fetchone()["stripe_refund_id"] == refunded.id

    with pytest.raises(PyglueError, match="was already refunded"):
        refunds.refund_purchase(conn, tenancy, "subscription", purchase, 1, Decimal("1"))
    assert sc.v1.subscriptions.retrieve(sub.id)["items"].data[0].quantity == 2


def test_refund_while_stripe_is_down_writes_nothing_and_names_the_failure(db, env, sc, plan):
    dsn, conn = db
    tenancy, team = tenancy_with_team(conn)
    upsert_product(conn, tenancy, "pro", TEAM_SEATS)
    sub = subscribe(sc, customer(sc, tenancy, "team", team), plan, quantity=3)
    sb.sync_tenancy(dsn, tenancy)
    purchase = row(conn, sub.id)["id"]
    env.stop()  # the next test's env fixture starts it again
    with pytest.raises(PyglueError, match="Stripe refused the refund, nothing was written: Stripe APIConnectionError"
                       ) as e:
        refunds.refund_purchase(conn, tenancy, "subscription", purchase, 1, Decimal("49.00"))
    assert API_KEY not in str(e.value)
    assert conn.execute("select count(*) as n from billing.refunds").fetchone()["n"] == 0
    assert (row(conn, sub.id)["quantity"], owned(conn, tenancy, team)) == (3, [("pro", 3)])


def test_refund_cli_of_an_api_granted_plan_needs_no_stripe(db):
    dsn, conn = db
    tenancy, team = tenancy_with_team(conn)
    upsert_product(conn, tenancy, "pro", TEAM_SEATS)
    purchase = conn.execute("select billing.grant_product(%s, 'team', %s, 'pro', 2) as id",
                            (tenancy, team)).fetchone()["id"]
    args = ["--dsn", dsn, "billing", "refund", "--tenant", tenancy, "--purchase", f"subscription:{purchase}",
            "--quantity", "1", "--amount", "5.00"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith(f"subscription {purchase}: 5.00 USD, quantity now 1")
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 1 and "was already refunded" in str(again.exception)
    bad = CliRunner().invoke(cli, [*args[:6], "--purchase", "gift:1", *args[8:]])
    assert bad.exit_code == 2 and "must be subscription:UUID or one_time_purchase:UUID, got 'gift:1'" in bad.output


# --- plan switches -------------------------------------------------------------------------

BASIC_CREDITS = PRO | {"display_name": "Basic",
                       "included_items": {"credits": {"quantity": 100, "expires": "when-purchase-expires"}}}
PRO_CREDITS = PRO | {"included_items": {"credits": {"quantity": 500, "expires": "when-purchase-expires"}}}


def credits(conn, tenancy, team, at) -> int:
    return conn.execute("select billing.item_quantity(%s, 'team', %s, 'credits', %s) as q",
                        (tenancy, team, at)).fetchone()["q"]


def test_a_stripe_plan_switched_through_the_sdk_is_forward_only(db, env, sc, plan):
    dsn, conn = db
    tenancy, team = tenancy_with_team(conn)
    upsert_product(conn, tenancy, "basic", BASIC_CREDITS)
    upsert_product(conn, tenancy, "pro", PRO_CREDITS)
    pro_plan = sc.v1.plans.create(params={"product": sc.v1.products.create(params={"name": "Pro 500"}).id,
                                          "amount": 9900, "currency": "usd", "interval": "month"}).id
    sub = subscribe(sc, customer(sc, tenancy, "team", team), plan, product_id="basic")
    sb.sync_tenancy(dsn, tenancy)
    conn.execute("select billing.change_item_quantity(%s, 'team', %s, 'credits', -30)", (tenancy, team))
    purchase = row(conn, sub.id)["id"]

    with pytest.raises(PyglueError, match="name the Stripe price"):
        plans.switch_plan(conn, tenancy, purchase, "pro")
    assert plans.switch_plan(conn, tenancy, purchase, "pro", stripe_price=pro_plan) == purchase
    fetched = sc.v1.subscriptions.retrieve(sub.id)
    assert fetched["items"].data[0].plan.id == pro_plan and fetched.metadata[sb.PRODUCT_KEY] == "pro"
    moved_at = conn.execute("select moved_at from billing.subscription_moves").fetchone()["moved_at"]
    before = moved_at - dt.timedelta(microseconds=1)
    assert (credits(conn, tenancy, team, before), credits(conn, tenancy, team, moved_at)) == (70, 500)
    products_at = lambda at: [r["product_id"] for r in conn.execute(  # noqa: E731
        "select product_id from billing.owned_products(%s, 'team', %s, %s)", (tenancy, team, at))]
    assert (products_at(before), products_at(moved_at)) == (["basic"], ["pro"])
    assert conn.execute("select count(*) as n from billing.verify_ledger()").fetchone()["n"] == 0
    assert sb.sync_tenancy(dsn, tenancy).written == 0
    entries = conn.execute("select kind, product_id, at from billing.transactions(%s, 'team', %s)"
                           " where kind in ('purchase', 'plan_switch') order by at", (tenancy, team)).fetchall()
    assert [(e["kind"], e["product_id"]) for e in entries] == [("purchase", "basic"), ("plan_switch", "pro")]
    assert entries[1]["at"] == moved_at


def test_refund_of_a_stripe_one_time_purchase_refunds_its_payment_intent(db, env, sc, plan):
    dsn, conn = db
    tenancy, team = tenancy_with_team(conn)
    upsert_product(conn, tenancy, "pack", {"display_name": "Pack", "customer_type": "team", "stackable": True,
                                           "prices": {"once": {"amounts": {"USD": "20"}}},
                                           "included_items": {"credits": {"quantity": 25, "expires": "never"}}})
    cus = customer(sc, tenancy, "team", team)
    pm = sc.v1.customers.retrieve(cus).invoice_settings.default_payment_method
    intent = sc.v1.payment_intents.create(params={"amount": 4000, "currency": "usd", "customer": cus,
                                                  "payment_method": pm, "confirm": True})
    purchase = conn.execute(
        "insert into billing.one_time_purchases (tenancy_id, customer_type, customer_id, product_id, product_version_id,"
        " quantity, creation_source, stripe_payment_intent_id, purchased_at)"
        " select %s, 'team', %s, 'pack', current_version_id, 2, 'stripe', %s, now() - interval '1 hour'"
        " from billing.products where tenancy_id = %s and product_id = 'pack' returning id",
        (tenancy, team, intent.id, tenancy)).fetchone()["id"]
    done = refunds.refund_purchase(conn, tenancy, "one_time_purchase", purchase, 1, Decimal("20.00"))
    refunded = sc.v1.refunds.retrieve(done.stripe_refund_id)
    assert (refunded.amount, refunded.payment_intent, done.quantity_left) == (2000, intent.id, 1)
    assert conn.execute("select billing.item_quantity(%s, 'team', %s, 'credits') as q",
                        (tenancy, team)).fetchone()["q"] == 50  # granted items stay
    with pytest.raises(PyglueError, match="has more decimals than USD allows"):
        refunds.minor_units(Decimal("0.001"), "USD")
    assert refunds.minor_units(Decimal("500"), "JPY") == 500
