"""app.metrics_cached (issue 12) over pyglue.cache_entries, on a database of its own with
committed rows and real concurrent sessions. app.metrics is wrapped there by a function
that counts its calls in a table (and sleeps, to hold a miss open): so "computed once" is a
number, not a guess."""

from __future__ import annotations

import datetime as dt
import threading
import time

import psycopg
import pytest
from psycopg.rows import dict_row

from tests import factories
from tests.sessions import refused, wait_for

NOW = dt.datetime(2026, 3, 31, 12, 0, tzinfo=dt.timezone.utc)

COUNTING_WRAPPER = """
    create table public.metrics_calls (tenancy_id uuid, include_anonymous boolean, now timestamptz,
                                       at timestamptz default clock_timestamp());
    alter function app.metrics(uuid, boolean, timestamptz) rename to _metrics_counted;
    create function app.metrics(p_tenancy_id uuid, p_include_anonymous boolean default false,
                                p_now timestamptz default now())
    returns jsonb language plpgsql as $$
    begin
        insert into public.metrics_calls values (p_tenancy_id, p_include_anonymous, p_now);
        perform pg_sleep(coalesce(nullif(current_setting('test.metrics_sleep', true), ''), '0')::float);
        return app._metrics_counted(p_tenancy_id, p_include_anonymous, p_now);
    end;
    $$;
"""


@pytest.fixture
def cached(fresh_db):
    """(dsn, tenancy) of a database with the counting wrapper and one user with an event."""
    with psycopg.connect(fresh_db, row_factory=dict_row, autocommit=True) as c:
        c.execute(COUNTING_WRAPPER)
        t = factories.tenancy(c, "cache")
        u = factories.user(c, t, "Ann")
        c.execute("insert into app.events (tenancy_id, event_type, user_id, occurred_at, country_code)"
                  " values (%s, '$user-activity', %s, %s, 'DE')", (t, u, NOW - dt.timedelta(hours=1)))
    return fresh_db, t


def calls(c) -> int:
    return c.execute("select count(*) as n from public.metrics_calls").fetchone()["n"]


def entries(c) -> int:
    return c.execute("select count(*) as n from pyglue.cache_entries").fetchone()["n"]


def cached_call(c, t, include=False, now=NOW, ttl="1 hour"):
    return c.execute("select app.metrics_cached(%s, %s, %s, %s::interval) as m", (t, include, now, ttl)
                     ).fetchone()["m"]


def test_hit_within_ttl_does_not_recompute_and_expiry_does(cached, connect):
    dsn, t = cached
    c = connect(dsn, autocommit=True)
    first = cached_call(c, t, ttl="1 second")
    assert first == c.execute("select app._metrics_counted(%s, false, %s) as m", (t, NOW)).fetchone()["m"]
    assert first["total_users"] == 1 and first["users_by_country"] == {"DE": 1}
    for _ in range(5):
        assert cached_call(c, t, ttl="1 second") == first
    assert calls(c) == 1 and entries(c) == 1
    time.sleep(1.1)
    assert cached_call(c, t, ttl="1 second") == first
    assert calls(c) == 2 and entries(c) == 1  # recomputed into the same row


def test_key_holds_every_parameter_and_the_utc_day(cached, connect):
    dsn, t = cached
    c = connect(dsn, autocommit=True)
    cached_call(c, t)
    cached_call(c, t, now=NOW + dt.timedelta(hours=11, minutes=59, seconds=59))  # 23:59:59, same UTC day: hit
    assert calls(c) == 1
    midnight = cached_call(c, t, now=dt.datetime(2026, 4, 1, tzinfo=dt.timezone.utc))  # next UTC day: miss
    assert midnight["daily_users"][-1]["date"] == "2026-04-01"
    cached_call(c, t, include=True)
    cached_call(c, t, ttl="2 hours")
    other = factories.tenancy(c, "cache_other")
    assert cached_call(c, other)["total_users"] == 0
    assert calls(c) == 5 and entries(c) == 5


def test_table_does_not_grow_with_repeated_calls(cached, connect):
    dsn, t = cached
    c = connect(dsn, autocommit=True)
    for i in range(30):
        cached_call(c, t, now=NOW + dt.timedelta(days=i % 3), ttl="0.2 seconds")
    assert entries(c) <= 3
    time.sleep(0.25)
    for i in range(10):  # new days: each miss purges what expired
        cached_call(c, t, now=NOW + dt.timedelta(days=10 + i), ttl="0.05 seconds")
        time.sleep(0.06)
    assert entries(c) <= 2
    time.sleep(0.06)
    assert c.execute("select pyglue.purge_cache_entries() as n").fetchone()["n"] >= 1
    assert entries(c) == 0


def test_eight_concurrent_misses_compute_once(cached, connect):
    dsn, t = cached
    watcher = connect(dsn, autocommit=True)
    sessions = [connect(dsn, autocommit=True) for _ in range(8)]
    for s in sessions:
        s.execute("set test.metrics_sleep = '0.5'")
    results, errors = [None] * 8, []
    barrier = threading.Barrier(8)

    def miss(i):
        try:
            barrier.wait()
            results[i] = cached_call(sessions[i], t)
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=miss, args=(i,)) for i in range(8)]
    for th in threads:
        th.start()
    # while the first computes, the seven others wait on its advisory lock
    wait_for(lambda: watcher.execute(
        "select count(*) as n from pg_stat_activity where wait_event_type = 'Lock' and wait_event = 'advisory'"
    ).fetchone()["n"] == 7, timeout=10)
    for th in threads:
        th.join(timeout=30)
    assert errors == []
    assert calls(watcher) == 1
    assert all(r == results[0] for r in results) and results[0]["total_users"] == 1
    assert entries(watcher) == 1


def test_ttl_must_be_positive(conn):
    t = factories.tenancy(conn, "cache_ttl")
    refused(conn, "22023", "p_ttl must be a positive interval, got 00:00:00",
            "select app.metrics_cached(%s, false, now(), '0 seconds')", (t,))
