"""Bulk loads into tables without statistics of their rows (0028): analyzed while they held
only dead rows, never analyzed, or analyzed with many small tenancies before a big one
arrives. The search-row and metrics refreshes find stored rows by joins on the key, and those
of 1,000 users or more first ANALYZE the tables analyzed while empty (app._analyze_if_stale),
so each per-user lookup reads that user's rows, not the whole tenancy's. Measured by the rows
the transaction read (pg_stat_xact_user_tables), not by time: before 0028 a load of N users
and their emails read more than N²/4 of them."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.rows import dict_row

from tests import factories

N = 2_000
LINEAR = 100 * N  # rows read by a load of N users and their emails whose lookups go by key
# (about 52 per user: the scans and probes of the triggers, foreign keys and tenancy checks);
# with the lookups walking the tenancy it is N * N / 2 and more
STATS_TABLES = ("app.users", "app.contact_channels", "app.user_search", "app.metrics_user_state")


BOTH_STATES = pytest.mark.parametrize("stale_db", ["analyzed while empty", "never analyzed"], indirect=True)


@pytest.fixture
def stale_db(request, fresh_db):
    """A migrated database whose app tables hold only the dead rows of a rolled-back load of N
    users, and either were analyzed then (0 tuples on pages that still exist: what autovacuum
    leaves) or never were (no statistics, pages to size them by)."""
    with psycopg.connect(fresh_db, row_factory=dict_row) as c:
        without_fresh_statistics(c)  # as before 0028, so the load itself analyzes nothing
        load(c, factories.tenancy(c, "stale"), N)
        c.rollback()
    with psycopg.connect(fresh_db, row_factory=dict_row, autocommit=True) as c:
        state = getattr(request, "param", "analyzed while empty")
        if state == "analyzed while empty":
            c.execute(f"analyze {', '.join(STATS_TABLES)}")
        expected = 0 if state == "analyzed while empty" else -1
        assert [reltuples(c, table) for table in STATS_TABLES] == [expected] * len(STATS_TABLES)
    return fresh_db


def without_fresh_statistics(c) -> None:
    """Make app._analyze_if_stale a no-op until the transaction ends."""
    c.execute("create or replace function app._analyze_if_stale(p_rows bigint, p_tables regclass[])"
              " returns void language sql as 'select'")


def load(c, tenancy_id, n: int) -> None:
    c.execute("""insert into app.users (tenancy_id, display_name, signed_up_at)
                 select %s, 'User ' || i, now() - i * interval '1 minute' from generate_series(1, %s) i""",
              (tenancy_id, n))
    c.execute("""insert into app.contact_channels (tenancy_id, user_id, type, value, is_primary)
                 select u.tenancy_id, u.id, 'email', 'u' || substr(u.display_name, 6) || '@ex.test', true
                 from app.users u where u.tenancy_id = %s""", (tenancy_id,))


def rows_read(c) -> int:
    """Rows of the app tables this transaction read, by index or by scan."""
    return c.execute("select coalesce(sum(idx_tup_fetch + seq_tup_read), 0)::bigint as n"
                     " from pg_stat_xact_user_tables where schemaname = 'app'").fetchone()["n"]


def reltuples(c, table: str) -> float:
    return c.execute("select reltuples from pg_class where oid = %s::regclass", (table,)).fetchone()["reltuples"]


@pytest.mark.parametrize("stale_db, analyzed", [("analyzed while empty", True), ("never analyzed", False)],
                         indirect=["stale_db"])
def test_a_bulk_load_reads_each_users_rows_by_key_not_the_whole_tenancy(stale_db, analyzed):
    """Tables analyzed while empty are analyzed again first; tables never analyzed are left
    alone (the key joins need no statistics there)."""
    with psycopg.connect(stale_db, row_factory=dict_row) as c:
        t = factories.tenancy(c, "bulk")
        load(c, t, N)
        read = rows_read(c)
        assert read < LINEAR, f"{read} rows read for {N} users and their emails"
        counted = [reltuples(c, "app.users"), reltuples(c, "app.contact_channels")]
        assert counted == ([N, N] if analyzed else [-1, -1])
        searchable = c.execute("select count(*) as n from app.user_search where tenancy_id = %s and haystack like %s",
                               (t, "user %@ex.test")).fetchone()["n"]
        assert searchable == N
        assert c.execute("select sum(n) as n from app.metrics_counters where tenancy_id = %s and metric = 'signup'",
                         (t,)).fetchone()["n"] == N
        c.rollback()


def test_the_same_load_reads_the_whole_tenancy_per_user_without_the_fresh_statistics(stale_db):
    """The measure above can fail: with the helper made a no-op, tables analyzed while empty
    make the lookups quadratic. (Never analyzed ones do not since the key joins of 0028.)"""
    with psycopg.connect(stale_db, row_factory=dict_row) as c:
        without_fresh_statistics(c)
        t = factories.tenancy(c, "bulk")
        load(c, t, N)
        assert rows_read(c) > N * N / 4
        c.rollback()


def test_a_small_batch_leaves_the_statistics_alone(stale_db):
    with psycopg.connect(stale_db, row_factory=dict_row) as c:
        t = factories.tenancy(c, "small")
        before = [reltuples(c, table) for table in STATS_TABLES]
        load(c, t, 999)
        assert [reltuples(c, table) for table in STATS_TABLES] == before
        c.rollback()


def test_a_table_another_session_analyzes_is_skipped_without_waiting_or_a_warning(stale_db, connect):
    holder = connect(stale_db)
    holder.execute("lock table app.contact_channels in share update exclusive mode")  # as ANALYZE or VACUUM holds it
    with psycopg.connect(stale_db, row_factory=dict_row) as c:
        notices = []
        c.add_notice_handler(lambda d: notices.append(d.message_primary))
        c.execute("set statement_timeout = '60s'")  # a wait for the holder would end the test here
        t = factories.tenancy(c, "skipped")
        load(c, t, N)
        assert reltuples(c, "app.users") >= N  # the others were analyzed
        assert reltuples(c, "app.contact_channels") < N  # this one was skipped
        assert notices == []
        assert c.execute("select count(*) as n from app.user_search where tenancy_id = %s",
                         (t,)).fetchone()["n"] == N
        c.rollback()
    holder.rollback()


@BOTH_STATES
def test_a_rolled_back_load_leaves_no_rows_and_later_loads_still_find_them_by_key(stale_db):
    with psycopg.connect(stale_db, row_factory=dict_row) as c:
        load(c, factories.tenancy(c, "first"), N)
        c.rollback()
        t = factories.tenancy(c, "second")
        load(c, t, N)
        assert rows_read(c) < LINEAR
        assert c.execute("select count(*) as n from app.users").fetchone()["n"] == N
        c.rollback()


def test_a_role_that_may_not_analyze_gets_the_fresh_statistics_too(stale_db):
    """ANALYZE needs the table's owner: the helper is security definer, so an application role
    with only INSERT and SELECT loads at the same speed."""
    with psycopg.connect(stale_db, row_factory=dict_row, autocommit=True) as c:
        t = factories.tenancy(c, "role")
        with factories.acting_role(c, "grant usage on schema app to {role}",
                                   "grant select, insert on app.users, app.contact_channels to {role}"):
            with c.transaction():
                load(c, t, N)
                read = rows_read(c)
        assert read < LINEAR
        assert reltuples(c, "app.users") >= N


def test_a_big_new_tenancy_among_many_small_ones_is_loaded_by_key(fresh_db):
    """Fresh statistics do not save this one: with 2,000 tenancies of 5 users analyzed, the
    planner takes a tenancy for 5 rows, and a lookup that only has to find whether a user
    exists (an anti join) walked the new tenancy's users through users_pyglue_sequence_idx
    for each of them: 10,000 users took 3.6 s a statement on Debian (100M rows read)."""
    with psycopg.connect(fresh_db, row_factory=dict_row, autocommit=True) as c:
        c.execute("insert into app.projects (id, display_name) values ('small', 'small')")
        c.execute("insert into app.tenancies (project_id, branch_id) select 'small', 'b' || i"
                  " from generate_series(1, 2000) i")
        c.execute("insert into app.users (tenancy_id, display_name, signed_up_at)"
                  " select t.id, 'U ' || i, now() from app.tenancies t, generate_series(1, 5) i")
        c.execute("vacuum analyze app.users, app.contact_channels, app.user_search, app.metrics_user_state")
    with psycopg.connect(fresh_db, row_factory=dict_row) as c:
        t = factories.tenancy(c, "big")
        load(c, t, N)
        read = rows_read(c)
        assert read < LINEAR, f"{read} rows read for {N} users and their emails"
        assert c.execute("select count(*) as n from app.user_search where tenancy_id = %s", (t,)).fetchone()["n"] == N
        c.rollback()
