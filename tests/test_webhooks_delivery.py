"""Webhook delivery by the worker to real local receivers (issue 16): payloads, order,
signatures, retries with backoff, Retry-After, parking, retry, an outage, isolation."""

from __future__ import annotations


import json
import time
from dataclasses import replace

import pytest

from pyglue.errors import PyglueError
from pyglue.sync import mappings
from pyglue.webhooks import endpoints
from tests import factories as f
from tests.webhook_receiver import Receiver, free_port
from tests.webhooking import FAST, make_hooks, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def hooks(fresh_db, connect):
    return make_hooks(fresh_db, connect)


@pytest.fixture
def receiver():
    r = Receiver().up()
    yield r
    r.down()


def summary(events: list[dict]) -> list[tuple]:
    return [(e["type"], e["table"], e["key"].get("id") or e["key"].get("user_id")) for e in events]


def test_changes_arrive_in_order_with_payloads_signed_and_only_of_the_tenancy(hooks, receiver):
    secret = hooks.add("main", receiver)
    other = f.tenancy(hooks.conn, branch="other")
    f.user(hooks.conn, other, "not yours", email="other@example.com")
    alice = f.user(hooks.conn, hooks.tenancy, "alice")
    channel = f.contact_channel(hooks.conn, hooks.tenancy, alice, "alice@example.com", is_primary=True)
    hooks.run_until_idle()
    hooks.conn.execute("update app.users set display_name = 'Alice' where id = %s", (alice,))
    team = f.team(hooks.conn, hooks.tenancy, "crew")
    f.member(hooks.conn, hooks.tenancy, team, alice)
    hooks.run_until_idle()
    hooks.conn.execute("delete from app.users where id = %s", (alice,))  # cascades: channel, membership
    hooks.run_until_idle()

    events = receiver.all_events()
    assert [e["type"] for e in events[:2]] == ["insert", "insert"]
    assert {(e["table"], e["key"]["id"]) for e in events[:2]} == {("app.users", str(alice)),
                                                                  ("app.contact_channels", str(channel))}
    middle = events[2:5]
    assert sorted(summary(middle), key=str) == sorted([("update", "app.users", str(alice)),
                                                       ("insert", "app.teams", str(team)),
                                                       ("insert", "app.team_members", str(alice))], key=str)
    assert [e for e in middle if e["table"] == "app.users"][0]["row"]["display_name"] == "Alice"
    deletes = events[5:]
    assert sorted((e["type"], e["table"]) for e in deletes) == [
        ("delete", "app.contact_channels"), ("delete", "app.team_members"), ("delete", "app.users")]
    assert next(e for e in deletes if e["table"] == "app.users")["row"]["display_name"] == "Alice"
    assert len(events) == 8
    sequence = [e["sequence_id"] for e in events]
    assert sequence == sorted(sequence) and len(set(sequence)) == len(sequence)
    assert [e["id"] for e in events] == [f"evt_{s}" for s in sequence]
    assert all(e["occurred_at"] and e["key"]["tenancy_id"] == str(hooks.tenancy) for e in events)
    assert all("sequence_id" not in e["row"] and "first_sequence_id" not in e["row"] for e in events)
    assert all(json.loads(r.body)["data"]["tenancy_id"] == str(hooks.tenancy) for r in receiver.requests)
    assert "not yours" not in b"".join(r.body for r in receiver.requests).decode()
    assert all(r.verifies_with(secret) for r in receiver.requests)
    wrong = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo3ODkwMTI="
    assert not any(r.verifies_with(wrong) for r in receiver.requests)
    status = hooks.status("main")
    assert (status["state"], status["pending_events"], status["last_status"]) == ("ok", 0, 200)
    assert status["last_delivered_sequence_id"] == sequence[-1]


def test_tables_chosen_and_a_mapping_of_rows_never_crosses_tenancies(hooks, receiver):
    hooks.add("users-only", receiver, tables=["app.users"])
    u = f.user(hooks.conn, hooks.tenancy, "bob", email="bob@example.com")
    f.team(hooks.conn, hooks.tenancy, "t")
    hooks.run_until_idle()
    assert summary(receiver.all_events()) == [("insert", "app.users", str(u))]


def test_a_mapping_shapes_the_rows_of_its_table(hooks, receiver):
    users = mappings.select(mappings.load_all(), ["users"])
    hooks.add("shaped", receiver, tables=["app.users", "app.teams"], shaped_by=users)
    u = f.user(hooks.conn, hooks.tenancy, "carol", email="carol@example.com")
    hooks.run_until_idle()
    t = f.team(hooks.conn, hooks.tenancy, "crew")
    hooks.run_until_idle()
    hooks.conn.execute("update app.contact_channels set is_verified = true where user_id = %s", (u,))  # re-flags u
    hooks.conn.execute("delete from app.users where id = %s", (u,))
    hooks.run_until_idle()
    events = receiver.all_events()
    assert [(e["type"], e["table"], e.get("mapping")) for e in events] == [
        ("insert", "app.users", "users"), ("insert", "app.teams", None), ("delete", "app.users", None)]
    shaped = events[0]["row"]
    assert shaped["primary_email"] == "carol@example.com" and shaped["primary_email_verified"] is False
    assert set(shaped) == {"id", "display_name", "profile_image_url", "primary_email", "primary_email_verified",
                           "signed_up_at", "is_anonymous", "client_metadata", "client_read_only_metadata",
                           "server_metadata"}
    assert events[1]["row"]["id"] == str(t) and "created_at" in events[1]["row"]  # not shaped: the stored row
    assert events[2]["key"] == {"tenancy_id": str(hooks.tenancy), "id": str(u)}
    with pytest.raises(PyglueError, match="cannot shape webhook other rows with mapping users: its table app.users"
                                          " is not one the webhook receives"):
        hooks.add("other", receiver, tables=["app.teams"], shaped_by=users)


def test_500_three_times_then_200_resends_the_same_batch_then_later_events(hooks, receiver):
    receiver.script = [(500, {}, b"boom")] * 3
    hooks.add("main", receiver)
    first = [f.user(hooks.conn, hooks.tenancy, f"u{i}") for i in range(3)]
    with hooks.worker():
        wait_for(lambda: receiver.count() >= 1, what="first attempt")
        later = f.user(hooks.conn, hooks.tenancy, "later")  # changes while the batch is retried
        wait_for(lambda: len(receiver.all_events(only_2xx=True)) == 4, what="everything delivered")
    statuses = [r.status for r in receiver.requests]
    assert statuses == [500, 500, 500, 200, 200]
    batches = [[e["key"]["id"] for e in r.events] for r in receiver.requests]
    assert batches[:4] == [[str(u) for u in first]] * 4  # the same batch once per retry
    assert len({r.headers["webhook-id"] for r in receiver.requests[:4]}) == 1
    assert batches[4] == [str(later)]
    outcomes = [(d["outcome"], d["status_code"]) for d in hooks.deliveries("main")]
    assert outcomes == [("retrying", 500)] * 3 + [("delivered", 200)] * 2
    gaps = [b.at - a.at for a, b in zip(receiver.requests, receiver.requests[1:4])]
    assert all(g >= 0.02 for g in gaps), gaps  # backoff (0.05 s base, jitter 50-100 %)
    assert hooks.status("main")["attempts"] == 0


def test_429_waits_for_retry_after(hooks, receiver):
    receiver.script = [(429, {"Retry-After": "1"}, b"slow down")]
    hooks.add("main", receiver)
    f.user(hooks.conn, hooks.tenancy, "u")
    with hooks.worker(replace(FAST, base_delay_s=0.01, max_delay_s=5)):
        wait_for(lambda: receiver.all_events(only_2xx=True), what="delivered after Retry-After")
    first, second = receiver.requests
    assert (first.status, second.status) == (429, 200)
    assert second.at - first.at >= 0.95


def test_400_parks_that_endpoint_only_and_retry_resumes_it(hooks, receiver):
    good = Receiver().up()
    try:
        receiver.script = [(400, {}, b'{"error": "unknown field row"}')]
        hooks.add("picky", receiver)
        start = hooks.status("picky")["last_delivered_sequence_id"]
        hooks.add("fine", good)
        other = f.tenancy(hooks.conn, branch="second")
        other_receiver = Receiver().up()
        hooks.add("elsewhere", other_receiver, tenancy=other)
        a = f.user(hooks.conn, hooks.tenancy, "a")
        f.user(hooks.conn, other, "x")
        hooks.run_until_idle()
        b = f.user(hooks.conn, hooks.tenancy, "b")
        hooks.run_until_idle()
        picky = hooks.status("picky")
        assert picky["state"] == "parked" and picky["last_status"] == 400
        assert picky["last_response"] == '{"error": "unknown field row"}'
        assert picky["pending_events"] == 2 and picky["last_delivered_sequence_id"] == start
        assert receiver.count() == 1  # nothing more while parked
        assert summary(good.all_events()) == [("insert", "app.users", str(a)), ("insert", "app.users", str(b))]
        assert len(other_receiver.all_events(only_2xx=True)) == 1
        assert hooks.status("fine")["state"] == "ok"

        endpoints.retry(hooks.conn, hooks.tenancy, "picky")
        hooks.run_until_idle()
        delivered = receiver.all_events(only_2xx=True)
        assert summary(delivered) == [("insert", "app.users", str(a)), ("insert", "app.users", str(b))]
        assert receiver.requests[1].events == receiver.requests[0].events  # the parked batch first, as it was
        assert hooks.status("picky")["state"] == "ok"
        other_receiver.down()
    finally:
        good.down()


def test_a_hanging_receiver_times_out_and_backs_off_without_holding_the_others(hooks, receiver):
    slow = Receiver(delay_s=3.0).up()
    try:
        hooks.add("a-slow", slow)  # served first (by name)
        hooks.add("b-fast", receiver)
        u = f.user(hooks.conn, hooks.tenancy, "u")
        started = time.monotonic()
        with hooks.worker(replace(FAST, read_timeout_s=0.3, base_delay_s=5.0, max_delay_s=5.0)):
            wait_for(lambda: receiver.all_events(only_2xx=True), timeout=10, what="the fast endpoint served")
            took = time.monotonic() - started
            v = f.user(hooks.conn, hooks.tenancy, "v")  # while a-slow backs off, b-fast goes on
            wait_for(lambda: len(receiver.all_events(only_2xx=True)) == 2, timeout=10, what="next change")
        assert took < 2.5, took  # one read timeout of a-slow (0.3 s), not its 3 s answer
        assert summary(receiver.all_events()) == [("insert", "app.users", str(u)), ("insert", "app.users", str(v))]
        s = hooks.status("a-slow")
        assert s["state"] == "retrying" and s["last_status"] is None and "ReadTimeout" in s["last_error"]
        assert slow.count() == 1
    finally:
        slow.down()


OUTAGE_S = 30.0
# backoff 0.05 s doubling to 2 s: about 20 failed attempts in the outage, fewer than the 60 allowed
OUTAGE_OPTIONS = replace(FAST, max_delay_s=2.0, max_attempts=60)


def test_receiver_down_for_30_seconds_loses_nothing(hooks):
    """The issue's 30 s outage: every attempt fails to connect, the endpoint keeps retrying
    (not parked), and once the receiver is up the whole backlog arrives in order."""
    port = free_port()
    receiver = Receiver(port=port)  # not listening yet: connections are refused
    hooks.add("main", receiver)
    users = [f.user(hooks.conn, hooks.tenancy, f"u{i}") for i in range(5)]
    down_since = time.monotonic()
    try:
        with hooks.worker(OUTAGE_OPTIONS):
            wait_for(lambda: hooks.status("main")["attempts"] >= 2, what="failed attempts")
            more = [f.user(hooks.conn, hooks.tenancy, f"v{i}") for i in range(5)]
            wait_for(lambda: hooks.status("main")["attempts"] >= 5, timeout=10, what="more failed attempts")
            time.sleep(max(0.0, down_since + OUTAGE_S - time.monotonic()))
            assert hooks.status("main")["state"] == "retrying" and hooks.status("main")["attempts"] >= 7
            assert "ConnectError" in hooks.status("main")["last_error"]
            receiver.up()
            wait_for(lambda: len(receiver.all_events(only_2xx=True)) == 10, timeout=20, what="backlog delivered")
    finally:
        receiver.down()
    assert [e["key"]["id"] for e in receiver.all_events()] == [str(u) for u in users + more]
    assert hooks.status("main")["pending_events"] == 0


def test_a_retried_batch_whose_rows_moved_on_does_not_hold_the_endpoint(hooks, receiver):
    """The batch being retried named ids that are gone (its rows were changed and sequenced
    again, later): the endpoint goes on with what follows."""
    hooks.add("main", receiver)
    hooks.conn.execute("update pyglue.webhooks set pending_batch_end = last_delivered_sequence_id")
    u = f.user(hooks.conn, hooks.tenancy, "u")
    hooks.run_until_idle()
    assert summary(receiver.all_events()) == [("insert", "app.users", str(u))]
    assert hooks.status("main")["pending_events"] == 0


def test_disabled_endpoint_waits_then_gets_everything(hooks, receiver):
    hooks.add("main", receiver)
    endpoints.set_enabled(hooks.conn, hooks.tenancy, "main", False)
    u = f.user(hooks.conn, hooks.tenancy, "u")
    hooks.run_until_idle()
    assert receiver.count() == 0 and hooks.status("main")["state"] == "disabled"
    assert hooks.status("main")["pending_events"] == 1
    endpoints.set_enabled(hooks.conn, hooks.tenancy, "main", True)
    hooks.run_until_idle()
    assert summary(receiver.all_events()) == [("insert", "app.users", str(u))]


def test_large_backlog_in_batches_in_order(hooks, receiver):
    hooks.add("main", receiver)
    f.users_bulk(hooks.conn, hooks.tenancy, 450)
    hooks.run_until_idle(replace(FAST, batch_size=100))
    sizes = [len(r.events) for r in receiver.requests]
    assert sizes == [100, 100, 100, 100, 50]
    sequence = [e["sequence_id"] for e in receiver.all_events()]
    assert sequence == sorted(sequence) and len(set(sequence)) == 450


def test_secret_never_in_status_or_logs(hooks, receiver):
    receiver.script = [(500, {}, b"no")]
    secret = hooks.add("main", receiver)
    f.user(hooks.conn, hooks.tenancy, "u")
    with hooks.worker():
        wait_for(lambda: receiver.all_events(only_2xx=True), what="delivered")
    shown = json.dumps(endpoints.listing(hooks.conn), default=str) + "\n".join(hooks.logs)
    assert secret not in shown and secret.removeprefix("whsec_") not in shown
    assert any("HTTP 500" in line for line in hooks.logs)
