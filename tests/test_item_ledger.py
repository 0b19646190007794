"""The item ledger core (issue 10, migration 0014), manual changes only: the acceptance vectors
in every insertion order, a hypothesis property test against the reference model in
tests/ledger_model.py, incremental refolds, errors, two-connection races, verify/rebuild, and
tenancy isolation. Times are integer milliseconds after EPOCH throughout."""

from __future__ import annotations

import itertools
import random
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import factories as f
from tests.sessions import refused, wait_until_blocked
from tests import ledger_model as model
from tests.ledger_model import Change

EPOCH = datetime(2030, 1, 1, tzinfo=timezone.utc)
ITEM = "seats"


def ts(ms: int | None) -> datetime | None:
    return None if ms is None else EPOCH + timedelta(milliseconds=ms)


def ms(at: datetime | None) -> int | None:
    return None if at is None else (at - EPOCH) // timedelta(milliseconds=1)


def change(conn, tenancy, customer: str, c: Change, *, allow_negative: bool = True, item: str = ITEM) -> int:
    return conn.execute(
        "select billing.change_item_quantity(%s, 'team', %s, %s, %s, p_expires_at => %s,"
        " p_allow_negative => %s, p_at => %s) as id",
        (tenancy, customer, item, c.delta, ts(c.expires_at), allow_negative, ts(c.at))).fetchone()["id"]


def insert_rows(conn, tenancy, customer: str, changes: list[Change]) -> list[int]:
    """One direct multi-row INSERT into billing.item_quantity_changes (one trigger firing)."""
    rows = conn.execute(
        "insert into billing.item_quantity_changes (tenancy_id, customer_type, customer_id, item_id, delta,"
        " expires_at, at) select %s, 'team', %s, %s, d, e, a"
        " from unnest(%s::bigint[], %s::timestamptz[], %s::timestamptz[]) with ordinality u(d, e, a, o)"
        " order by o returning id",
        (tenancy, customer, ITEM, [c.delta for c in changes], [ts(c.expires_at) for c in changes],
         [ts(c.at) for c in changes])).fetchall()
    return [r["id"] for r in rows]


def quantities(conn, tenancy, customer: str, probes: list[int], item: str = ITEM) -> list[int]:
    """item_quantity at every probe, in one query."""
    rows = conn.execute(
        "select billing.item_quantity(%s, 'team', %s, %s, p) as q from unnest(%s::timestamptz[]) with ordinality"
        " u(p, o) order by o", (tenancy, customer, item, [ts(p) for p in probes])).fetchall()
    return [r["q"] for r in rows]


def points(conn, tenancy, customer: str) -> list[dict]:
    """The derived points of one history, from its chunks: {at, balance, debt, lots, chunk}; lots
    ({expiry ms or None: quantity}) only at the end of a chunk (None elsewhere), and chunk the
    chunk's first instant, ctid and xmin, to tell a rewritten chunk from a kept one."""
    rows = conn.execute(
        "select c.ctid::text as ctid, c.xmin::text as xmin, c.first_at, x.at, x.balance, x.debt,"
        " x.at = c.last_at as chunk_end, c.lot_quantities,"
        " array(select nullif(e, 'infinity') from unnest(c.lot_expiries) e) as lot_expiries"
        " from billing.item_balance_chunks c cross join lateral unnest(c.ats, c.balances, c.debts) x (at, balance, debt)"
        " where c.tenancy_id = %s and c.customer_type = 'team' and c.customer_id = %s and c.item_id = %s"
        " order by x.at", (tenancy, customer, ITEM)).fetchall()
    return [{"at": ms(r["at"]), "balance": r["balance"], "debt": r["debt"],
             "chunk": (ms(r["first_at"]), r["ctid"], r["xmin"]),
             "lots": {ms(e): q for e, q in zip(r["lot_expiries"], r["lot_quantities"])} if r["chunk_end"] else None}
            for r in rows]


def model_point(changes: list[Change], at: int) -> dict:
    s = model.state(changes, at)
    return {"at": at, "balance": s.balance, "debt": s.debt, "lots": s.lots_by_expiry()}


def stored_states(pts: list[dict]) -> list[dict]:
    return [{k: p[k] for k in ("at", "balance", "debt", "lots")} for p in pts]


def model_states(changes: list[Change], pts: list[dict]) -> list[dict]:
    """What stored_states(pts) must be: the model's state at each stored instant (lots where stored)."""
    return [model_point(changes, p["at"]) | ({} if p["lots"] is not None else {"lots": None}) for p in pts]


def differences(conn) -> list[dict]:
    return conn.execute("select * from billing.verify_ledger()").fetchall()


def boundaries(changes: list[Change]) -> list[int]:
    """Every event time and expiry, and 1 ms either side."""
    times = {c.at for c in changes} | {c.expires_at for c in changes if c.expires_at is not None}
    return sorted({t + d for t in times for d in (-1, 0, 1)})


def blocked_by(watcher, session) -> dict:
    """The lock the session waits for (pg_locks) and the sessions it waits on."""
    return watcher.execute(
        "select (select count(*) from pg_locks where pid = %(pid)s and not granted) as waiting,"
        " pg_blocking_pids(%(pid)s) as blockers", {"pid": session.info.backend_pid}).fetchone()


# --- the acceptance vectors of issue 10 (manual changes only) --------------------------

FAR = 100 * 365 * 24 * 3600 * 1000  # a century of milliseconds

VECTORS = {
    "two-expiring-lots-removal-first-from-soonest": (
        [Change(1000, 10, 5000), Change(1000, 20, 3000), Change(2000, -8)],
        {2000: 22, 3000: 10, 5000: 0}),
    "removal-after-the-sooner-expiry": (
        [Change(1000, 20, 3000), Change(1000, 10, 5000), Change(3500, -8)],
        {3500: 2}),
    "debt-then-paid": (
        [Change(1000, 10), Change(2000, -25), Change(3000, 20)],
        {2000: -15, 3000: 5}),
    "expiring-and-permanent-with-debt": (
        [Change(0, 50, 1000), Change(1, 30), Change(2, -40), Change(3, -60), Change(4, 25)],
        {0: 50, 1: 80, 2: 40, 3: -20, 4: 5, 1000: 5}),
    "three-lots-one-instant": (
        [Change(1000, 30, 2000), Change(1000, 50, 4000), Change(1000, 20), Change(1500, -10)],
        {1500: 90, 2000: 70, 4000: 20}),
    "ten-events": (
        [Change(5, -20), Change(10, 100, 50), Change(20, 40), Change(25, -30), Change(35, -70), Change(40, 60, 45),
         Change(44, -50), Change(46, 30), Change(47, -70), Change(48, 50, 60)],
        {5: -20, 10: 80, 20: 120, 25: 90, 35: 20, 40: 80, 44: 30, 45: 20, 46: 50, 47: -20, 48: 30, 59: 30, 60: 0}),
    "far-future-expiry-counts-now": (
        [Change(0, 10, FAR)],
        {0: 10, FAR - 1: 10, FAR: 0}),
    "lot-used-at-its-expiry-instant": (
        [Change(0, 10, 1000), Change(1000, -4)],
        {1000: 0}),
    "debt-paid-by-an-expiring-grant": (
        [Change(1000, -4), Change(3000, 10, 5000)],
        {3000: 6, 5000: 0}),
    "grant-expiring-at-its-own-time": (
        [Change(1000, 4, 1000)],
        {1000: 0}),
    "grant-expiring-before-its-own-time": (
        [Change(1000, 4, 500)],
        {1000: 0}),
    "debt-paid-from-the-soonest-expiring-grant-of-an-instant": (
        [Change(1, -5), Change(5, 10), Change(5, 10, 20)],
        {20: 10}),
    "grants-before-removals-at-one-instant": (
        [Change(5, 10), Change(5, 10, 20), Change(5, -15)],
        {20: 5}),
}


def insertion_orders(changes: list[Change]) -> list[tuple[Change, ...]]:
    if len(changes) <= 6:
        return list(itertools.permutations(changes))
    rng = random.Random(10)
    return [tuple(changes)] + [tuple(rng.sample(changes, len(changes))) for _ in range(24)]


@pytest.mark.parametrize("name", VECTORS)
def test_the_model_gives_the_acceptance_vectors(name):
    changes, expected = VECTORS[name]
    for order in insertion_orders(changes):
        assert {at: model.balance(list(order), at) for at in expected} == expected, order


@pytest.mark.parametrize("name", VECTORS)
def test_acceptance_vector_in_every_insertion_order(conn, name):
    changes, expected = VECTORS[name]
    t = f.tenancy(conn)
    probes = sorted(expected)
    for i, order in enumerate(insertion_orders(changes)):
        customer = f"{name}-{i}"
        for c in order:
            change(conn, t, customer, c)
        assert dict(zip(probes, quantities(conn, t, customer, probes))) == expected, order
    assert differences(conn) == []


def test_a_far_future_expiry_counts_now(conn):
    t = f.tenancy(conn)
    conn.execute("select billing.change_item_quantity(%s, 'team', 'c', %s, 10, now() + interval '100 years')",
                 (t, ITEM))
    assert conn.execute("select billing.item_quantity(%s, 'team', 'c', %s) as q", (t, ITEM)).fetchone()["q"] == 10


def test_a_grant_that_is_never_granted_pays_no_debt(conn):
    t = f.tenancy(conn)
    history = [Change(0, -3), Change(1000, 4, 1000), Change(2000, 4, 1500)]
    for c in history:
        change(conn, t, "c", c)
    probes = [0, 1000, 1500, 2000]
    assert quantities(conn, t, "c", probes) == [model.balance(history, p) for p in probes] == [-3, -3, -3, -3]


# --- property: SQL == model for random histories ----------------------------------------

EXAMPLES = 2000  # issue 10: at least 2,000 random histories in CI
instants = st.integers(0, 40)  # a small range, so that instants and expiries often coincide
amounts = st.integers(1, 40)


def as_change(at: int, delta: int, expires_after: int | None) -> Change:
    return Change(at, delta, None if delta < 0 or expires_after is None else at + expires_after)


# grants with and without expiry (some expiring at or before their own time), removals
changes_ = st.builds(as_change, instants, st.integers(-40, 40).filter(bool), st.none() | st.integers(-2, 25))
edits_ = st.lists(st.tuples(st.sampled_from(["delete", "move", "delta"]), st.integers(0, 7), instants), max_size=3)


@dataclass
class History:
    changes: list[Change]
    seed: int  # the insertion order and how it is cut into statements
    edits: list[tuple[str, int, int]]  # afterwards: delete, move in time, or change the delta of some


histories = st.builds(History, st.lists(changes_, min_size=1, max_size=8), st.integers(0, 2**32 - 1), edits_)


def edited(c: Change, kind: str, value: int) -> Change:
    if kind == "move":  # an expiring grant keeps its lifetime
        return Change(value, c.delta, None if c.expires_at is None else c.expires_at + value - c.at)
    return Change(c.at, max(value, 1) * (1 if c.delta > 0 else -1), c.expires_at)


def apply_history(conn, tenancy, customer: str, history: History) -> tuple[list[Change], list[int]]:
    """Write one drawn history in a random order, as single change_item_quantity calls and
    multi-row INSERTs, then edit some of it; returns the final changes and every boundary that
    ever existed (where the moved and deleted changes were, too)."""
    rng = random.Random(history.seed)
    changes = history.changes
    order = rng.sample(range(len(changes)), len(changes))
    ids: dict[int, int] = {}
    while order:
        batch = order[:rng.randint(1, 4)]
        order = order[len(batch):]
        if rng.random() < 0.3:
            ids.update(zip(batch, insert_rows(conn, tenancy, customer, [changes[i] for i in batch])))
        else:
            for i in batch:
                ids[i] = change(conn, tenancy, customer, changes[i])
    final = dict(enumerate(changes))
    for kind, index, value in history.edits:
        i = index % len(changes)
        if i not in final:
            continue
        if kind == "delete":
            conn.execute("delete from billing.item_quantity_changes where tenancy_id = %s and id = %s",
                         (tenancy, ids[i]))
            del final[i]
        else:
            final[i] = edited(final[i], kind, value)
            conn.execute("update billing.item_quantity_changes set at = %s, delta = %s, expires_at = %s"
                         " where tenancy_id = %s and id = %s",
                         (ts(final[i].at), final[i].delta, ts(final[i].expires_at), tenancy, ids[i]))
    return list(final.values()), boundaries(changes + list(final.values()))


_examples = {"n": 0, "seconds": 0.0}
_customers = itertools.count()


@pytest.fixture
def tenancy(conn):
    """One tenancy for all examples of a property test (hypothesis runs them in one test call)."""
    return f.tenancy(conn)


@pytest.fixture
def ledger_db(fresh_db, connect):
    """(connection, tenancy, vacuum) on a database of the property test's own. Each example is a
    transaction that is rolled back; vacuum() now and then clears the dead rows the examples
    leave, so that verify_ledger(), which folds every history there is, stays as cheap as in
    the first example (in one long transaction dead rows pile up and nothing can clear them)."""
    setup = connect(fresh_db, autocommit=True)
    t = f.tenancy(setup)

    def vacuum():
        setup.execute("vacuum billing.item_quantity_changes, billing.item_histories, billing.item_balance_chunks")

    return connect(fresh_db), t, vacuum


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=histories)
def test_random_histories_match_the_model(ledger_db, history):
    """Each example a customer of its own in a transaction that is rolled back."""
    conn, t, vacuum = ledger_db
    started = time.perf_counter()
    customer = f"c{next(_customers)}"
    with conn.transaction(force_rollback=True):
        # chunks of 2 or 3 points cross chunk boundaries often; 64 is the default
        conn.execute("select set_config('billing.ledger_chunk_points', %s, true)",
                     (str((2, 3, 64)[_examples["n"] % 3]),))
        final, probes = apply_history(conn, t, customer, history)
        assert dict(zip(probes, quantities(conn, t, customer, probes))) == {p: model.balance(final, p) for p in probes}
        pts = points(conn, t, customer)
        assert stored_states(pts) == model_states(final, pts)
        assert conn.execute("select count(*) as n from billing.verify_ledger()").fetchone()["n"] == 0
    _examples["n"] += 1
    _examples["seconds"] += time.perf_counter() - started
    if _examples["n"] % 200 == 0:
        vacuum()


def test_random_histories_ran_enough_examples():
    """Runs after the property test (file order): it really tried EXAMPLES histories."""
    if _examples["n"] == 0:
        pytest.skip("the property test did not run in this session")
    print(f"\n{_examples['n']} random histories, {_examples['seconds']:.1f} s of it in the examples")
    assert _examples["n"] >= EXAMPLES


@st.composite
def checked_removals(draw) -> tuple[list[Change], Change]:
    """A history, and a removal at one of its boundaries (often an expiry) or anywhere."""
    before = draw(st.lists(changes_, max_size=6))
    times = sorted({c.at for c in before} | {c.expires_at for c in before if c.expires_at is not None})
    at = draw(st.sampled_from(times) | instants if times else instants)
    return before, Change(at, -draw(amounts))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=checked_removals())
def test_the_no_negative_check_refuses_exactly_the_removals_the_model_would_leave_negative(conn, tenancy, case):
    """p_allow_negative = false: a removal passes iff the balance at p_at after it is 0 or more."""
    before, removal = case
    at = removal.at
    allowed = model.balance(before + [removal], at) >= 0
    customer = f"c{next(_customers)}"
    with conn.transaction(force_rollback=True):
        for c in before:
            change(conn, tenancy, customer, c)
        try:
            with conn.transaction():
                change(conn, tenancy, customer, removal, allow_negative=False)
            passed = True
        except psycopg.errors.RaiseException:
            passed = False
        assert passed == allowed, (before, removal, model.balance(before, at))


# --- incremental refolds -----------------------------------------------------------------

BASE = [Change(1000, 10), Change(2000, 5, 4000), Change(3000, -3), Change(5000, 7), Change(6000, -2),
        Change(7000, 4, 9000)]


def rewritten_from(before: list[dict], after: list[dict]) -> list[int]:
    """First instants of the chunks that are new or were rewritten (another row version)."""
    kept = {p["chunk"] for p in before}
    return sorted({p["chunk"][0] for p in after if p["chunk"] not in kept})


@pytest.mark.parametrize("edit, expected_from", [
    ("insert", 3500),
    ("insert-at-an-existing-instant", 3000),
    ("delete", 3000),
    ("move-earlier", 2500),
    ("move-later", 5000),
    ("delta", 6000),
    ("expiry", 7000),
])
def test_an_edit_in_the_middle_rewrites_only_chunks_at_or_after_it(conn, edit, expected_from):
    """Chunks of two points: [1000 2000] [3000 4000] [5000 6000] [7000 9000] (4000 and 9000 are
    expiries); a chunk that ends before the edit is kept as it is, the one holding it and the
    later ones are written again."""
    conn.execute("set billing.ledger_chunk_points = 2")
    t = f.tenancy(conn)
    ids = [change(conn, t, "c", c) for c in BASE]
    final = list(BASE)
    before = points(conn, t, "c")
    assert stored_states(before) == model_states(BASE, before)
    with conn.transaction():  # a subtransaction: rows it writes have an xmin of their own
        if edit == "insert":
            change(conn, t, "c", Change(3500, -1))
            final.append(Change(3500, -1))
        elif edit == "insert-at-an-existing-instant":
            change(conn, t, "c", Change(3000, 2, 3100))
            final.append(Change(3000, 2, 3100))
        elif edit == "delete":
            conn.execute("delete from billing.item_quantity_changes where id = %s", (ids[2],))
            final.remove(BASE[2])
        elif edit == "move-earlier":
            conn.execute("update billing.item_quantity_changes set at = %s where id = %s", (ts(2500), ids[3]))
            final[3] = Change(2500, 7)
        elif edit == "move-later":
            conn.execute("update billing.item_quantity_changes set at = %s where id = %s", (ts(6500), ids[3]))
            final[3] = Change(6500, 7)
        elif edit == "delta":
            conn.execute("update billing.item_quantity_changes set delta = -9 where id = %s", (ids[4],))
            final[4] = Change(6000, -9)
        elif edit == "expiry":
            conn.execute("update billing.item_quantity_changes set expires_at = %s where id = %s", (ts(8000), ids[5]))
            final[5] = Change(7000, 4, 8000)
    after = points(conn, t, "c")
    assert stored_states(after) == model_states(final, after)
    assert {p["chunk"][0] for p in before} == {1000, 3000, 5000, 7000}
    # the chunks that end before the edit are the same row versions; only later ones were written
    ends_before = [p for p in before if max(q["at"] for q in before if q["chunk"] == p["chunk"]) < expected_from]
    assert [p for p in after if p["chunk"] in {q["chunk"] for q in ends_before}] == ends_before
    rewritten = rewritten_from(before, after)
    assert rewritten, "nothing was written"
    for first in rewritten:  # each rewritten chunk reaches the edit or lies after it
        assert max(p["at"] for p in after if p["chunk"][0] == first) >= expected_from, (first, rewritten)
    assert differences(conn) == []


def test_another_history_is_not_rewritten(conn):
    t = f.tenancy(conn)
    for c in BASE:
        change(conn, t, "c", c)
        change(conn, t, "other", c)
    before = points(conn, t, "other")
    with conn.transaction():
        change(conn, t, "c", Change(0, 1))
    assert points(conn, t, "other") == before


# --- errors ------------------------------------------------------------------------------

CHANGE = ("select billing.change_item_quantity(%(t)s, %(type)s, %(customer)s, %(item)s, %(delta)s, %(expires)s,"
          " %(allow)s, %(at)s)")


def args(tenancy, **overrides) -> dict:
    return {"t": tenancy, "type": "team", "customer": "c", "item": ITEM, "delta": 5, "expires": None, "allow": True,
            "at": ts(1000)} | overrides


def assert_nothing_written(conn, t, before_points: list[dict], before_rows: int) -> None:
    assert conn.execute("select count(*) as n from billing.item_quantity_changes where tenancy_id = %s",
                        (t,)).fetchone()["n"] == before_rows
    assert points(conn, t, "c") == before_points


@pytest.mark.parametrize("overrides, sqlstate, message", [
    ({"delta": -5, "expires": ts(5000)}, "22023", "a removal (delta -5) of item seats cannot expire"),
    ({"delta": 0}, "22023", "delta of item seats must not be 0"),
    ({"t": None}, "22004", "must not be null"),
    ({"type": None}, "22004", "must not be null"),
    ({"customer": None}, "22004", "must not be null"),
    ({"item": None}, "22004", "must not be null"),
    ({"delta": None}, "22004", "must not be null"),
    ({"allow": None}, "22004", "must not be null"),
    ({"at": None}, "22004", "must not be null"),
    ({"type": "org"}, "23514", "item_histories_customer_type_check"),
    ({"customer": ""}, "23514", "item_histories_customer_id_check"),
    ({"item": ""}, "23514", "item_histories_item_id_check"),
    ({"t": "00000000-0000-0000-0000-000000000000"}, "23503", "item_histories_tenancy_id_fkey"),
], ids=["removal-with-expiry", "zero-delta", "null-tenancy", "null-type", "null-customer", "null-item",
        "null-delta", "null-allow-negative", "null-at", "bad-customer-type", "empty-customer", "empty-item",
        "unknown-tenancy"])
def test_bad_changes_are_refused_and_write_nothing(conn, overrides, sqlstate, message):
    t = f.tenancy(conn)
    change(conn, t, "c", Change(0, 10))
    before = points(conn, t, "c")
    refused(conn, sqlstate, message, CHANGE, args(t, **overrides))
    assert_nothing_written(conn, t, before, 1)


def test_a_removal_the_balance_does_not_cover_is_refused_naming_the_balance(conn):
    conn.execute("set timezone = 'UTC'")  # the message shows p_at in the session's time zone
    t = f.tenancy(conn)
    change(conn, t, "c", Change(1000, 10))
    change(conn, t, "c", Change(2000, -7))
    before = points(conn, t, "c")
    e = refused(conn, "P0001", "insufficient quantity of item seats for team:c: 3 ",
                CHANGE, args(t, delta=-5, allow=False, at=ts(3000)))
    assert re.match(r"insufficient quantity of item seats for team:c: 3 .*at 2030-01-01 00:00:03\+00, change -5$",
                    e.diag.message_primary), e.diag.message_primary
    assert e.diag.message_hint == "pass p_allow_negative => true to allow a negative balance"
    assert_nothing_written(conn, t, before, 2)
    # the balance at p_at counts, not the latest one: before the grant there is nothing
    refused(conn, "P0001", "insufficient quantity of item seats for team:c: 0 ", CHANGE,
            args(t, delta=-1, allow=False, at=ts(500)))
    assert_nothing_written(conn, t, before, 2)
    change(conn, t, "c", Change(3000, -3), allow_negative=False)  # exactly covered
    assert quantities(conn, t, "c", [3000]) == [0]


def test_a_removal_at_an_expiry_instant_may_use_the_expiring_lot(conn):
    """A lot expiring at T can still be used at T, so the no-negative check must count it: -4 @1000
    from a 10 expiring at 1000 leaves 0 (issue 10's vector), and -6 from 5 expiring + 3 never leaves 2."""
    t = f.tenancy(conn)
    change(conn, t, "c", Change(0, 10, 1000))
    change(conn, t, "c", Change(1000, -4), allow_negative=False)
    change(conn, t, "d", Change(0, 5, 1000))
    change(conn, t, "d", Change(0, 3))
    change(conn, t, "d", Change(1000, -6), allow_negative=False)
    assert quantities(conn, t, "c", [999, 1000]) == [10, 0]
    assert quantities(conn, t, "d", [999, 1000]) == [8, 2]


# --- two connections ---------------------------------------------------------------------

def test_two_concurrent_removals_that_exceed_the_balance_exactly_one_succeeds(fresh_db, connect):
    setup = connect(fresh_db, autocommit=True)
    t = f.tenancy(setup)
    change(setup, t, "c", Change(1000, 10))
    a, b = connect(fresh_db), connect(fresh_db)
    b.execute("set timezone = 'UTC'")
    b.commit()
    change(a, t, "c", Change(2000, -7), allow_negative=False)  # not committed
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(change, b, t, "c", Change(2000, -7), allow_negative=False)
        wait_until_blocked(setup, b)
        assert blocked_by(setup, b) == {"waiting": 1, "blockers": [a.info.backend_pid]}  # on a's history row
        assert not running.done()
        a.commit()
        with pytest.raises(psycopg.errors.RaiseException) as e:
            running.result(timeout=30)
        assert re.match(r"insufficient quantity of item seats for team:c: 3 .*at 2030-01-01 00:00:02\+00, change -7$",
                        e.value.diag.message_primary), e.value.diag.message_primary
    b.rollback()
    assert quantities(setup, t, "c", [1000, 2000]) == [10, 3]
    assert setup.execute("select count(*) as n from billing.item_quantity_changes").fetchone()["n"] == 2
    assert differences(setup) == []


@pytest.mark.parametrize("a_at, b_at", [(2000, 1500), (1500, 2000), (2000, 2000)])
def test_direct_inserts_from_two_sessions_into_one_history_serialize(fresh_db, connect, a_at, b_at):
    setup = connect(fresh_db, autocommit=True)
    t = f.tenancy(setup)
    history = [Change(1000, 10, 3000), Change(2500, 4)]
    for c in history:
        change(setup, t, "c", c)
    a, b = connect(fresh_db), connect(fresh_db)
    mine, theirs = Change(a_at, -6), Change(b_at, 5, 2600)
    insert_rows(a, t, "c", [mine])  # not committed; its trigger holds the history's row lock
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(insert_rows, b, t, "c", [theirs])
        wait_until_blocked(setup, b)
        a.commit()
        running.result(timeout=30)
    b.commit()
    final = history + [mine, theirs]
    probes = boundaries(final)
    assert quantities(setup, t, "c", probes) == [model.balance(final, p) for p in probes]
    assert differences(setup) == []


def test_a_new_history_created_by_two_sessions_at_once(fresh_db, connect):
    setup = connect(fresh_db, autocommit=True)
    t = f.tenancy(setup)
    a, b = connect(fresh_db), connect(fresh_db)
    change(a, t, "new", Change(1000, 3))
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(change, b, t, "new", Change(2000, -2), allow_negative=False)
        wait_until_blocked(setup, b)  # on a's uncommitted billing.item_histories row
        a.commit()
        running.result(timeout=30)
    b.commit()
    assert quantities(setup, t, "new", [1000, 2000]) == [3, 1]
    assert differences(setup) == []


# --- verify and rebuild ------------------------------------------------------------------

HISTORY = [Change(1000, 10, 5000), Change(1000, 20, 3000), Change(2000, -8)]  # points 1000, 2000, 3000, 5000


@pytest.mark.parametrize("corruption", ["balance", "debt", "lots", "delete", "bogus", "twice"])
def test_verify_lists_a_corrupted_point_and_rebuild_repairs_it(conn, corruption):
    t = f.tenancy(conn)
    for c in HISTORY:
        change(conn, t, "c", c)
        change(conn, t, "untouched", c)
    good = points(conn, t, "c")
    assert [p["at"] for p in good] == [1000, 2000, 3000, 5000]
    assert differences(conn) == []
    where = "tenancy_id = %s and customer_id = 'c'"
    row = {"tenancy_id": t, "customer_type": "team", "customer_id": "c", "item_id": ITEM, "at": ts(3000),
           "expected_balance": 10, "stored_balance": 10, "expected_debt": 0, "stored_debt": 0}
    if corruption == "balance":
        conn.execute(f"update billing.item_balance_chunks set balances[3] = 11 where {where}", (t,))
        row |= {"stored_balance": 11}
    elif corruption == "debt":
        conn.execute(f"update billing.item_balance_chunks set debts[3] = 1, balances[3] = 9 where {where}", (t,))
        row |= {"stored_balance": 9, "stored_debt": 1}
    elif corruption == "lots":  # same balance, other lots after the chunk's last point (5000: none)
        conn.execute(f"update billing.item_balance_chunks set lot_expiries = array['infinity'::timestamptz],"
                     f" lot_quantities = array[0::bigint] where {where}", (t,))
        row |= {"at": ts(5000), "expected_balance": 0, "stored_balance": 0}
    elif corruption == "delete":
        conn.execute(f"update billing.item_balance_chunks set ats = ats[:2] || ats[4:],"
                     f" balances = balances[:2] || balances[4:], debts = debts[:2] || debts[4:] where {where}", (t,))
        row |= {"stored_balance": None, "stored_debt": None}
    elif corruption == "bogus":
        conn.execute(f"update billing.item_balance_chunks set ats = ats[:2] || %s::timestamptz || ats[3:],"
                     f" balances = balances[:2] || 99::bigint || balances[3:], debts = debts[:2] || 0::bigint || debts[3:]"
                     f" where {where}", (ts(2500), t))
        row |= {"at": ts(2500), "expected_balance": None, "stored_balance": 99, "expected_debt": None,
                "stored_debt": 0}
    else:  # one point in two chunks
        conn.execute("insert into billing.item_balance_chunks select tenancy_id, customer_type, customer_id, item_id,"
                     " %s, %s, array[%s::timestamptz], array[10::bigint], array[0::bigint], '{}', '{}'"
                     f" from billing.item_balance_chunks where {where}", (ts(3000), ts(3000), ts(3000), t))
    assert differences(conn) == ([row, row] if corruption == "twice" else [row])
    histories = conn.execute("select count(*) as n from billing.item_histories").fetchone()["n"]
    assert conn.execute("select billing.rebuild_ledger() as n").fetchone()["n"] == histories
    assert differences(conn) == []
    assert stored_states(points(conn, t, "c")) == stored_states(good)


def test_verify_lists_points_of_a_history_whose_inputs_are_gone(conn):
    t = f.tenancy(conn)
    change(conn, t, "c", Change(1000, 10))
    conn.execute("alter table billing.item_quantity_changes disable trigger item_quantity_changes_refold_delete")
    conn.execute("delete from billing.item_quantity_changes where tenancy_id = %s", (t,))
    conn.execute("alter table billing.item_quantity_changes enable trigger item_quantity_changes_refold_delete")
    assert [(d["at"], d["expected_balance"], d["stored_balance"]) for d in differences(conn)] == [(ts(1000), None, 10)]
    conn.execute("select billing.rebuild_ledger()")
    assert differences(conn) == [] and points(conn, t, "c") == []


# --- tenancies ---------------------------------------------------------------------------

def test_histories_of_one_customer_id_in_two_tenancies_do_not_mix(conn):
    one, two = f.tenancy(conn), f.tenancy(conn, "other")
    change(conn, one, "42", Change(1000, 10, 3000))
    change(conn, two, "42", Change(1000, 3))
    change(conn, two, "42", Change(2000, -5))
    change(conn, one, "42", Change(2000, -4))
    assert quantities(conn, one, "42", [1000, 2000, 3000]) == [10, 6, 0]
    assert quantities(conn, two, "42", [1000, 2000, 3000]) == [3, -2, -2]
    assert differences(conn) == []

    conn.execute("delete from app.tenancies where id = %s", (one,))
    for table in ("item_quantity_changes", "item_histories", "item_balance_chunks"):
        counts = conn.execute(f"select count(*) filter (where tenancy_id = %s) as one,"
                              f" count(*) filter (where tenancy_id = %s) as two from billing.{table}",
                              (one, two)).fetchone()
        assert counts["one"] == 0 and counts["two"] > 0, table
    assert quantities(conn, two, "42", [1000, 2000, 3000]) == [3, -2, -2]
    assert differences(conn) == []
