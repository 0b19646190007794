"""The sync request queue: dedup, FIFO claims, leases, backoff, dead requests, NOTIFY."""

from __future__ import annotations

import datetime
import uuid

import psycopg
import pytest


@pytest.fixture
def q(fresh_db, connect):
    """An autocommit connection (so now() moves between calls) on a fresh database."""
    return connect(fresh_db, autocommit=True)


def enqueue(conn, tenancy, delay="0") -> int:
    return conn.execute("select pyglue.enqueue_sync(%s, %s::interval) as id", (tenancy, delay)).fetchone()["id"]


def claim(conn, worker="w1", limit=10, lease="5 minutes") -> list[dict]:
    return conn.execute("select * from pyglue.claim_requests(%s, %s, %s::interval)", (worker, limit, lease)).fetchall()


def fail(conn, request_id, error="boom", max_attempts=8, base="1 second", cap="10 minutes") -> str:
    return conn.execute("select pyglue.fail_request(%s, %s, %s, %s::interval, %s::interval) as s",
                        (request_id, error, max_attempts, base, cap)).fetchone()["s"]


def request(conn, request_id) -> dict | None:
    return conn.execute("select *, run_after - now() as wait from pyglue.outgoing_requests where id = %s",
                        (request_id,)).fetchone()


def test_enqueue_deduplicates_pending_requests(q):
    t = uuid.uuid4()
    assert enqueue(q, t) == enqueue(q, t)
    assert q.execute("select count(*) as n from pyglue.outgoing_requests").fetchone()["n"] == 1


def test_a_new_request_may_queue_while_the_old_one_is_claimed(q):
    t = uuid.uuid4()
    first = enqueue(q, t)
    assert [r["id"] for r in claim(q)] == [first]
    second = enqueue(q, t)
    assert second != first
    assert enqueue(q, t) == second
    # the tenancy is held under a live lease: its new request waits for the old one
    assert claim(q, "w2") == []
    assert q.execute("select pyglue.complete_request(%s) as ok", (first,)).fetchone()["ok"] is True
    assert [r["id"] for r in claim(q, "w2")] == [second]


def test_claims_are_fifo_and_never_shared(q):
    ids = [enqueue(q, uuid.uuid4()) for _ in range(5)]
    first, second = claim(q, "a", 2), claim(q, "b", 10)
    assert [r["id"] for r in first] == ids[:2]
    assert [r["id"] for r in second] == ids[2:]
    assert {r["claimed_by"] for r in second} == {"b"}
    assert all(r["attempts"] == 1 for r in first + second)


def test_concurrent_claimers_skip_each_others_locks(fresh_db, connect, q):
    ids = [enqueue(q, uuid.uuid4()) for _ in range(4)]
    a, b = connect(fresh_db), connect(fresh_db)
    got_a = claim(a, "a", 2)  # a's claim is uncommitted and holds row locks
    got_b = claim(b, "b", 10)  # b does not wait: it takes the others
    a.commit()
    b.commit()
    assert sorted(r["id"] for r in got_a + got_b) == ids
    assert not {r["id"] for r in got_a} & {r["id"] for r in got_b}


def test_expired_lease_returns_a_crashed_workers_claim(q):
    t = uuid.uuid4()
    rid = enqueue(q, t)
    assert [r["id"] for r in claim(q, "crashed", lease="50 milliseconds")] == [rid]
    assert claim(q, "other") == []
    q.execute("select pg_sleep(0.1)")
    [again] = claim(q, "other")
    assert (again["id"], again["claimed_by"], again["attempts"]) == (rid, "other", 2)
    # the crashed worker can no longer complete it; the new holder can
    assert q.execute("select pyglue.complete_request(%s, 'crashed') as ok", (rid,)).fetchone()["ok"] is False
    assert q.execute("select pyglue.complete_request(%s, 'other') as ok", (rid,)).fetchone()["ok"] is True
    assert request(q, rid) is None


def test_backoff_grows_exponentially_and_caps(q):
    rid = enqueue(q, uuid.uuid4())
    waits = []
    for _ in range(6):
        [claimed] = claim(q)
        assert claimed["id"] == rid
        assert fail(q, rid, base="10 seconds", cap="1 minute") == "pending"
        waits.append(round(request(q, rid)["wait"].total_seconds()))
        q.execute("update pyglue.outgoing_requests set run_after = now() where id = %s", (rid,))  # skip the wait
    assert waits == [10, 20, 40, 60, 60, 60]


def test_failed_request_is_not_claimed_before_its_backoff(q):
    rid = enqueue(q, uuid.uuid4())
    claim(q)
    fail(q, rid, base="1 hour", cap="2 hours")
    assert claim(q) == []


def test_dead_after_max_attempts_keeps_the_last_error(q):
    rid = enqueue(q, uuid.uuid4())
    statuses = []
    for attempt in range(3):
        q.execute("update pyglue.outgoing_requests set run_after = now() where id = %s", (rid,))
        claim(q)
        statuses.append(fail(q, rid, error=f"target down #{attempt}", max_attempts=3))
    assert statuses == ["pending", "pending", "dead"]
    row = request(q, rid)
    assert (row["status"], row["attempts"], row["last_error"]) == ("dead", 3, "target down #2")
    assert row["dead_at"] is not None
    assert claim(q) == []


def test_requeue_dead_requests_gives_them_fresh_attempts(q):
    t = uuid.uuid4()
    rid = enqueue(q, t)
    claim(q)
    fail(q, rid, max_attempts=1)
    assert q.execute("select pyglue.requeue_dead_requests(%s) as n", (t,)).fetchone()["n"] == 1
    [fresh] = claim(q)
    assert (fresh["tenancy_id"], fresh["attempts"]) == (t, 1)


def test_failure_merges_into_a_request_queued_meanwhile(q):
    t = uuid.uuid4()
    old = enqueue(q, t)
    claim(q)
    new = enqueue(q, t)
    assert fail(q, old, error="while a newer one waited", base="1 hour", cap="2 hours") == "pending"
    assert request(q, old) is None
    merged = request(q, new)
    assert (merged["status"], merged["attempts"], merged["last_error"]) == ("pending", 1, "while a newer one waited")
    assert merged["wait"].total_seconds() > 3500


def test_scheduled_retry_is_pulled_forward_by_new_changes_but_backoff_is_not(q):
    t, u = uuid.uuid4(), uuid.uuid4()
    scheduled = enqueue(q, t, "1 hour")
    assert enqueue(q, t) == scheduled
    assert request(q, scheduled)["wait"].total_seconds() <= 0
    backing_off = enqueue(q, u)
    claim(q)
    fail(q, backing_off, base="1 hour", cap="2 hours")
    enqueue(q, u)
    assert request(q, backing_off)["wait"].total_seconds() > 3500


@pytest.mark.parametrize("call, sqlstate, message", [
    ("select pyglue.fail_request(424242, 'x')", "P0002", "sync request 424242 does not exist or is not claimed"),
    ("select * from pyglue.claim_requests('w', 0)", "22023", "claim limit must be at least 1, got 0"),
    ("select * from pyglue.claim_requests('w', 1, '0 seconds')", "22023", "lease must be positive, got 00:00:00"),
    ("select pyglue.enqueue_sync(null)", "22004", "tenancy id must not be null"),
])
def test_bad_queue_calls_are_refused_clearly(conn, call, sqlstate, message):
    with pytest.raises(psycopg.Error) as error:
        conn.execute(call)
    assert (error.value.sqlstate, error.value.diag.message_primary) == (sqlstate, message)


def test_enqueue_notifies_listeners(fresh_db, connect, q):
    listener = connect(fresh_db, autocommit=True)
    listener.execute("listen pyglue_requests")
    enqueue(q, uuid.uuid4())
    notes = list(listener.notifies(timeout=5, stop_after=1))
    assert [n.channel for n in notes] == ["pyglue_requests"]


@pytest.mark.parametrize("finish", ["complete_request", "release_request"])
def test_finishing_a_claim_wakes_listeners_only_when_it_matched(fresh_db, connect, q, finish):
    """A request of the tenancy queued behind the claim (or the released one) is claimable
    from that commit on: the workers are woken, whoever finished it."""
    t = uuid.uuid4()
    rid = enqueue(q, t)
    claim(q, "w")
    enqueue(q, t)  # queued behind the claim
    listener = connect(fresh_db, autocommit=True)
    listener.execute("listen pyglue_requests")
    assert q.execute(f"select pyglue.{finish}(%s, 'someone else') as ok", (rid,)).fetchone()["ok"] is False
    assert list(listener.notifies(timeout=0.5, stop_after=1)) == []
    with q.transaction():
        assert q.execute(f"select pyglue.{finish}(%s, 'w') as ok", (rid,)).fetchone()["ok"] is True
        assert list(listener.notifies(timeout=0.2, stop_after=1)) == []  # not before the commit
    assert [n.channel for n in listener.notifies(timeout=5, stop_after=1)] == ["pyglue_requests"]
    assert len(claim(q, "w2")) == 1


def test_one_claim_takes_one_request_per_tenancy(q):
    t = uuid.uuid4()
    old = enqueue(q, t)
    claim(q, "crashed", lease="50 milliseconds")
    new = enqueue(q, t)
    q.execute("select pg_sleep(0.1)")
    claimed = claim(q, "w2", limit=10)
    assert [r["id"] for r in claimed] == [old]  # the older one; the newer waits for it
    assert request(q, new)["status"] == "pending"


def test_fail_request_can_be_limited_to_the_claiming_worker(q):
    rid = enqueue(q, uuid.uuid4())
    claim(q, "owner")
    with pytest.raises(psycopg.Error) as error:
        q.execute("select pyglue.fail_request(%s, 'x', p_worker => 'someone else')", (rid,))
    assert error.value.sqlstate == "P0002"
    assert error.value.diag.message_primary == f"sync request {rid} does not exist or is not claimed by someone else"
    assert request(q, rid)["status"] == "claimed"


def test_backoff_never_overflows(q):
    rid = enqueue(q, uuid.uuid4())
    q.execute("update pyglue.outgoing_requests set attempts = 999 where id = %s", (rid,))
    q.execute("update pyglue.outgoing_requests set status = 'claimed', lease_expires_at = now() where id = %s", (rid,))
    assert fail(q, rid, max_attempts=10_000, cap="1 hour") == "pending"
    assert 3590 < request(q, rid)["wait"].total_seconds() <= 3600


def test_release_hands_a_claim_back_without_counting_it(q):
    t = uuid.uuid4()
    rid = enqueue(q, t)
    claim(q, "w")
    assert q.execute("select pyglue.release_request(%s, 'other') as ok", (rid,)).fetchone()["ok"] is False
    assert q.execute("select pyglue.release_request(%s, 'w') as ok", (rid,)).fetchone()["ok"] is True
    row = request(q, rid)
    assert (row["status"], row["attempts"], row["claimed_by"]) == ("pending", 0, None)


def test_extend_lease_only_for_the_holder(q):
    rid = enqueue(q, uuid.uuid4())
    claim(q, "w", lease="1 second")
    assert q.execute("select pyglue.extend_lease(%s, 'w', '1 hour') as ok", (rid,)).fetchone()["ok"] is True
    assert request(q, rid)["lease_expires_at"] > request(q, rid)["claimed_at"] + datetime.timedelta(minutes=59)
    assert q.execute("select pyglue.extend_lease(%s, 'x', '1 hour') as ok", (rid,)).fetchone()["ok"] is False
