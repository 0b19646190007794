"""The webhook functions of migration 0020: add_webhook's checks, record_webhook_delivery's
outcomes and backoff, webhook_status, first stamps (insert vs update), purge_deleted_rows."""

from __future__ import annotations

import base64

import pytest

from tests import factories as f
from tests.sessions import refused

ADD = "select * from pyglue.add_webhook(%s, %s, %s, %s, %s, %s)"


@pytest.fixture
def tenancy(conn):
    return f.tenancy(conn)


def add(conn, tenancy, name="h", url="https://hooks.example.com/in", tables=None, secret=None, allow_private=False):
    return conn.execute(ADD, (tenancy, name, url, tables, secret, allow_private)).fetchone()


def hook(conn, name="h") -> dict:
    return conn.execute("select * from pyglue.webhooks where name = %s", (name,)).fetchone()


def test_add_generates_a_secret_and_starts_at_the_end_of_the_feed(conn, tenancy):
    f.user(conn, tenancy, "before")
    f.sequence_all(conn)
    at = conn.execute("select last_value from pyglue.change_sequence").fetchone()["last_value"]
    row = add(conn, tenancy)
    assert row["secret"].startswith("whsec_") and len(base64.b64decode(row["secret"][6:])) == 32
    assert hook(conn)["last_delivered_sequence_id"] == at
    assert add(conn, tenancy, "h2")["secret"] != row["secret"]
    given = "whsec_" + base64.b64encode(b"k" * 24).decode()
    assert add(conn, tenancy, "h3", secret=given)["secret"] == given


@pytest.mark.parametrize(("url", "message"), [
    ("ftp://example.com/x", "invalid webhook URL 'ftp://example.com/x': only http:// and https://"),
    ("http:///x", "invalid webhook URL"),
    ("https://bob:pw@ex ample.com/", "invalid webhook URL 'https://ex ample.com/'"),
    ("http://169.254.169.254/latest", "webhook URL host 169.254.169.254 is a loopback, private, link-local"),
    ("http://10.0.0.1/", "host 10.0.0.1 is a loopback"),
    ("http://192.168.0.10:8080/", "host 192.168.0.10 is a loopback"),
    ("http://127.0.0.1/", "host 127.0.0.1 is a loopback"),
    ("http://[::1]/", "host ::1 is a loopback"),
    ("http://[fd00:ec2::254]/", "host fd00:ec2::254 is a loopback"),
    ("http://[::ffff:127.0.0.1]/", "host ::ffff:127.0.0.1 is a loopback"),
    ("http://LocalHost:80/", "host localhost is a loopback"),
])
def test_bad_or_internal_urls_are_refused(conn, tenancy, url, message):
    refused(conn, "22023", message, ADD, (tenancy, "h", url, None, None, False))


def test_allow_private_accepts_loopback(conn, tenancy):
    add(conn, tenancy, url="http://127.0.0.1:9/hook", allow_private=True)
    assert hook(conn)["allow_private"] is True


def test_other_refusals(conn, tenancy):
    add(conn, tenancy)
    refused(conn, "23505", f"webhook h already exists for tenancy {tenancy}", ADD,
            (tenancy, "h", "https://x.example/", None, None, False))
    refused(conn, "23503", "no tenancy 00000000-0000-0000-0000-000000000000", ADD,
            ("00000000-0000-0000-0000-000000000000", "h", "https://x.example/", None, None, False))
    refused(conn, "22023", "invalid webhook name 'bad name'", ADD,
            (tenancy, "bad name", "https://x.example/", None, None, False))
    refused(conn, "42P01", "cannot subscribe webhook h2 to app.nope, pyglue.webhooks: not a tracked table", ADD,
            (tenancy, "h2", "https://x.example/", ["app.users", "app.nope", "pyglue.webhooks"], None, False))
    refused(conn, "22023", "invalid webhook secret", ADD, (tenancy, "h2", "https://x.example/", None, "short", False))
    conn.execute("select pyglue.register_mapping('users', 'app.users'::regclass)")
    refused(conn, "22023", "cannot shape webhook h2 rows with mapping users, Bad: not a mapping of a table it receives",
            "select * from pyglue.add_webhook(%s, %s, %s, %s, p_mappings => %s)",
            (tenancy, "h2", "https://x.example/", ["app.teams"], ["users", "Bad"]))
    refused(conn, "22023", "invalid webhook secret", ADD,
            (tenancy, "h2", "https://x.example/", None, "whsec_" + base64.b64encode(b"k" * 8).decode(), False))


def test_subscribed_tables_get_first_stamps_and_events_can_tell_insert_from_update(conn, tenancy):
    add(conn, tenancy, tables=["app.users"])
    columns = conn.execute("select attrelid::regclass::text as t from pg_attribute where attname = 'first_sequence_id'"
                           " and not attisdropped").fetchall()
    assert [c["t"] for c in columns] == ["app.users"]
    u = f.user(conn, tenancy, "new")
    f.sequence_all(conn)
    first = conn.execute("select sequence_id, first_sequence_id from app.users where id = %s", (u,)).fetchone()
    assert first["first_sequence_id"] == first["sequence_id"]
    conn.execute("update app.users set display_name = 'changed' where id = %s", (u,))
    f.sequence_all(conn)
    second = conn.execute("select sequence_id, first_sequence_id from app.users where id = %s", (u,)).fetchone()
    assert second["first_sequence_id"] == first["sequence_id"] < second["sequence_id"]


def test_tables_tracked_later_get_first_stamps_while_an_all_tables_webhook_exists(conn, tenancy):
    conn.execute("create table public.gadgets (tenancy_id uuid not null, id int, primary key (tenancy_id, id))")
    conn.execute("select pyglue.track_table('public.gadgets')")
    has = ("select count(*) as n from pg_attribute where attrelid = 'public.gadgets'::regclass"
           " and attname = 'first_sequence_id'")
    assert conn.execute(has).fetchone()["n"] == 0  # no webhook yet: tracking is unchanged
    add(conn, tenancy)
    assert conn.execute(has).fetchone()["n"] == 1
    conn.execute("create table public.widgets (tenancy_id uuid not null, id int, primary key (tenancy_id, id))")
    conn.execute("select pyglue.track_table('public.widgets')")
    assert conn.execute(has.replace("gadgets", "widgets")).fetchone()["n"] == 1
    assert conn.execute("select pyglue.untrack_table('public.widgets', true) as ok").fetchone()["ok"] is True
    assert conn.execute(has.replace("gadgets", "widgets")).fetchone()["n"] == 0


RECORD = ("select pyglue.record_webhook_delivery(%(id)s, %(cursor)s, %(end)s, 3, %(status)s, %(error)s, %(body)s, 5,"
          " %(retry_after)s, %(max)s, 10.0, 60.0) as outcome")


def record(conn, id_, cursor, end, status, retry_after=None, error=None, body=None, max_attempts=3) -> str:
    return conn.execute(RECORD, {"id": id_, "cursor": cursor, "end": end, "status": status, "error": error,
                                 "body": body, "retry_after": retry_after, "max": max_attempts}).fetchone()["outcome"]


def test_record_delivery_outcomes(conn, tenancy):
    id_ = add(conn, tenancy)["id"]
    start = hook(conn)["last_delivered_sequence_id"]
    assert record(conn, id_, start, start + 3, 204) == "delivered"
    assert hook(conn)["last_delivered_sequence_id"] == start + 3
    cursor = start + 3
    assert record(conn, id_, cursor, cursor + 3, 503, body="busy") == "retrying"
    h = conn.execute("select *, extract(epoch from retry_after - now()) as wait from pyglue.webhooks").fetchone()
    assert 5.0 <= h["wait"] <= 10.0  # base 10 s with 50-100 % jitter
    assert (h["attempts"], h["pending_batch_end"], h["last_status"], h["last_response"]) == (1, cursor + 3, 503, "busy")
    assert h["last_delivered_sequence_id"] == cursor
    assert record(conn, id_, cursor, cursor + 3, None, error="ConnectError: refused") == "retrying"
    h = conn.execute("select *, extract(epoch from retry_after - now()) as wait from pyglue.webhooks").fetchone()
    assert 10.0 <= h["wait"] <= 20.0 and h["last_error"] == "ConnectError: refused"
    assert record(conn, id_, cursor, cursor + 3, 429, retry_after=3600) == "parked"  # third attempt of 3
    h = hook(conn)
    assert h["parked_at"] is not None and h["retry_after"] is None and h["last_delivered_sequence_id"] == cursor
    outcomes = conn.execute("select outcome, status_code from pyglue.webhook_deliveries order by id").fetchall()
    assert [(o["outcome"], o["status_code"]) for o in outcomes] == [
        ("delivered", 204), ("retrying", 503), ("retrying", None), ("parked", 429)]
    conn.execute("select pyglue.retry_webhook(%s, 'h')", (tenancy,))
    h = hook(conn)
    assert (h["parked_at"], h["attempts"], h["retry_after"], h["pending_batch_end"]) == (None, 0, None, cursor + 3)


def test_retry_after_is_honoured_and_capped(conn, tenancy):
    id_ = add(conn, tenancy)["id"]
    cursor = hook(conn)["last_delivered_sequence_id"]
    assert record(conn, id_, cursor, cursor + 1, 429, retry_after=30, max_attempts=5) == "retrying"
    wait = conn.execute("select extract(epoch from retry_after - now()) as w from pyglue.webhooks").fetchone()["w"]
    assert wait == pytest.approx(30, abs=0.5)
    assert record(conn, id_, cursor, cursor + 1, 429, retry_after=99999, max_attempts=5) == "retrying"
    wait = conn.execute("select extract(epoch from retry_after - now()) as w from pyglue.webhooks").fetchone()["w"]
    assert wait == pytest.approx(60, abs=0.5)  # p_max_delay_s


@pytest.mark.parametrize("status", [400, 401, 404, 410, 301, 302, 100])
def test_other_statuses_park_at_once_with_the_response(conn, tenancy, status):
    id_ = add(conn, tenancy)["id"]
    cursor = hook(conn)["last_delivered_sequence_id"]
    assert record(conn, id_, cursor, cursor + 1, status, body="no such hook", max_attempts=10) == "parked"
    h = hook(conn)
    assert (h["last_status"], h["last_response"], h["attempts"]) == (status, "no such hook", 1)


def test_a_moved_cursor_is_refused(conn, tenancy):
    id_ = add(conn, tenancy)["id"]
    cursor = hook(conn)["last_delivered_sequence_id"]
    refused(conn, "40001", f"webhook h cursor is {cursor}, not {cursor + 7}", RECORD,
            {"id": id_, "cursor": cursor + 7, "end": cursor + 9, "status": 200, "error": None, "body": None,
             "retry_after": None, "max": 3})


def test_status_counts_pending_events_and_hides_secrets(conn, tenancy):
    add(conn, tenancy, url="https://bob:hunter2@hooks.example.com/in?x=1", tables=["app.users", "app.teams"])
    other = f.tenancy(conn, branch="other")
    f.user(conn, other, "not counted")
    u = f.user(conn, tenancy, "u", email="u@example.com")  # the channel is not subscribed
    f.team(conn, tenancy, "t")
    f.sequence_all(conn)
    f.user(conn, tenancy, "unsequenced")
    conn.execute("delete from app.users where id = %s", (u,))
    rows = conn.execute("select * from pyglue.webhook_status(%s)", (tenancy,)).fetchall()
    assert len(rows) == 1
    s = rows[0]
    assert s["pending_events"] == 3  # the team, the unsequenced user, the tombstone (its row is gone)
    assert s["url"] == "https://hooks.example.com/in?x=1" and s["state"] == "ok" and s["lag_seconds"] >= 0
    assert s["tables"] == ["app.teams", "app.users"]
    assert "secret" not in s and "hunter2" not in str(s)
    conn.execute("select pyglue.set_webhook_enabled(%s, 'h', false)", (tenancy,))
    assert conn.execute("select state from pyglue.webhook_status()").fetchone()["state"] == "disabled"
    assert conn.execute("select pyglue.remove_webhook(%s, 'h') as ok", (tenancy,)).fetchone()["ok"] is True
    assert conn.execute("select pyglue.remove_webhook(%s, 'h') as ok", (tenancy,)).fetchone()["ok"] is False
    assert conn.execute("select pyglue.retry_webhook(%s, 'h') as ok", (tenancy,)).fetchone()["ok"] is False


def test_purge_keeps_tombstones_an_endpoint_has_not_received(conn, tenancy):
    add(conn, tenancy, tables=["app.users"])
    u = f.user(conn, tenancy, "gone")
    f.sequence_all(conn)
    conn.execute("delete from app.users where id = %s", (u,))
    f.sequence_all(conn)
    conn.execute("update pyglue.deleted_rows set deleted_at = now() - interval '30 days'")
    assert conn.execute("select pyglue.purge_deleted_rows('7 days') as n").fetchone()["n"] == 0
    conn.execute("update pyglue.webhooks set last_delivered_sequence_id = (select max(sequence_id) from"
                 " pyglue.deleted_rows)")
    assert conn.execute("select pyglue.purge_deleted_rows('7 days') as n").fetchone()["n"] == 1
