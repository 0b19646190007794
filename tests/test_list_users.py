"""app.list_users (issue 12): every page of 10k users in both directions, with and without
search, team and anonymous filters, equals the plain query's order exactly (no duplicate,
no gap); the trigram path and the scan fallback agree; the page cap and cursor errors."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.rows import dict_row

from tests import factories
from tests.sessions import refused

N = 10_000


@pytest.fixture(scope="module")
def crowd_db(server, template_db):
    """A database of its own holding the committed crowd, built once for the module: 10k users
    with sign-up times shared by three users each (ties broken by id), every 10th anonymous,
    a primary email per user, a phone for every 5th, every 3rd in a team; one user of another
    tenancy. (Built per test on the shared clone before 0028, the inserts ran after
    autovacuum had analyzed the tables while only the previous test's rolled-back rows filled
    them: with 0 rows on many pages in pg_class, the search and metrics triggers' key lookups
    took an index on tenancy_id alone and the setup 15-40 s instead of 1.5 s.)"""
    with server.clone(template_db, "list_users") as dsn:
        with psycopg.connect(dsn, row_factory=dict_row) as c:
            t = factories.tenancy(c, "list_users")
            team = factories.team(c, t, "threes")
            c.execute("""
                insert into app.users (tenancy_id, display_name, signed_up_at, is_anonymous)
                select %s, 'User ' || i, timestamptz '2026-01-01 00:00:00+00' + (i / 3) * interval '1 second',
                       i %% 10 = 0
                from generate_series(1, %s) i""", (t, N))
            c.execute("""
                insert into app.contact_channels (tenancy_id, user_id, type, value, is_primary)
                select u.tenancy_id, u.id, 'email', 'p' || substr(u.display_name, 6) || '@Ex'
                       || (substr(u.display_name, 6)::int %% 7) || '.test', true
                from app.users u where u.tenancy_id = %s""", (t,))
            c.execute("""
                insert into app.contact_channels (tenancy_id, user_id, type, value)
                select u.tenancy_id, u.id, 'phone', '+49 170 ' || substr(u.display_name, 6)
                from app.users u where u.tenancy_id = %s and substr(u.display_name, 6)::int %% 5 = 0""", (t,))
            c.execute("""
                insert into app.team_members (tenancy_id, team_id, user_id)
                select u.tenancy_id, %s, u.id from app.users u
                where u.tenancy_id = %s and substr(u.display_name, 6)::int %% 3 = 0""", (team, t))
            other = factories.tenancy(c, "list_users_other")
            factories.user(c, other, "User 1", email="p1@ex1.test")
            c.commit()
            c.autocommit = True
            c.execute("vacuum analyze app.users, app.contact_channels, app.user_search, app.team_members")
        yield dsn, t, team


@pytest.fixture
def conn(crowd_db):
    """A connection to the crowd's database; everything a test does there is rolled back."""
    with psycopg.connect(crowd_db[0], row_factory=dict_row) as connection:
        yield connection
        connection.rollback()


@pytest.fixture
def crowd(crowd_db):
    return crowd_db[1:]


def expected_ids(conn, t, query=None, team=None, include_anonymous=False, desc=False):
    pattern = None if query is None else "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    rows = conn.execute(f"""
        select u.id from app.users u
        where u.tenancy_id = %(t)s and (%(anon)s or not u.is_anonymous)
          and (%(p)s::text is null or u.display_name ilike %(p)s or exists (
               select 1 from app.contact_channels c where c.tenancy_id = u.tenancy_id and c.user_id = u.id
                 and c.value ilike %(p)s))
          and (%(team)s::uuid is null or exists (select 1 from app.team_members m where m.tenancy_id = u.tenancy_id
               and m.team_id = %(team)s and m.user_id = u.id))
        order by u.signed_up_at {'desc' if desc else 'asc'}, u.id {'desc' if desc else 'asc'}""",
                        {"t": t, "p": pattern, "team": team, "anon": include_anonymous}).fetchall()
    return [str(r["id"]) for r in rows]


def walk(conn, t, limit=200, **filters):
    ids, cursor, pages = [], None, 0
    while True:
        page = conn.execute(
            "select app.list_users(%s, %s, %s, %s, %s, %s, %s) as p",
            (t, limit, cursor, filters.get("query"), filters.get("team"), filters.get("include_anonymous", False),
             filters.get("desc", False))).fetchone()["p"]
        pages += 1
        assert len(page["items"]) <= limit
        ids += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return ids, pages
        assert len(page["items"]) == limit  # only the last page is short


FILTERS = [{}, {"include_anonymous": True}, {"query": "ex3.T"}, {"query": "user 99"}, {"query": "9999"},
           {"query": "170 2"}, {"team": True}, {"team": True, "query": "1"}, {"query": "no such user"}]


@pytest.mark.parametrize("walk_size", [None, 300])
def test_walks_every_page_in_order(conn, crowd, walk_size):
    """Plain, with anonymous users, search on an email domain (dense), a name prefix, a rare
    term, a phone number, a team, team and search, nothing found: ascending and descending.
    With the default walk (20,000 search rows) the walk finds every page of 10k users; with a
    walk of 300 a rare term is found in the matching set instead."""
    t, team = crowd
    if walk_size:
        conn.execute("select set_config('app.list_users_walk', %s, true)", (str(walk_size),))
    for base in FILTERS:
        for desc in (False, True):
            filters = dict(base, desc=desc, team=team if base.get("team") else None)
            want = expected_ids(conn, t, filters.get("query"), filters["team"],
                                filters.get("include_anonymous", False), desc)
            got, pages = walk(conn, t, **filters)
            assert got == want, filters
            assert len(set(got)) == len(got)
            assert pages == max(1, -(-len(want) // 200))  # a full last page says so: no empty page after it


def test_counts_are_what_the_data_says(conn, crowd):
    t, team = crowd
    assert len(walk(conn, t, include_anonymous=True)[0]) == N
    assert len(walk(conn, t)[0]) == N - N // 10
    assert len(walk(conn, t, query="9999")[0]) == 1  # 'User 9999' (p9999@…); users end at 10000
    assert len(walk(conn, t, team=team, include_anonymous=True)[0]) == N // 3


def test_scan_fallback_without_trigram_indexes_gives_the_same_pages(conn, crowd):
    t, _ = crowd
    with_trgm = {q: walk(conn, t, query=q)[0] for q in ("9999", "ex3.T", "User 12")}
    conn.execute("select set_config('app.list_users_walk', '300', true)")
    conn.execute("drop index if exists app.user_search_haystack_trgm_idx")
    for q, ids in with_trgm.items():
        assert walk(conn, t, query=q)[0] == ids
        assert ids == expected_ids(conn, t, q)


def test_wildcards_in_the_query_are_literal(conn, crowd):
    t, _ = crowd
    u = factories.user(conn, t, "100% real_name")
    assert [i["id"] for i in conn.execute("select app.list_users(%s, 10, null, %s) as p", (t, "0% R")
                                          ).fetchone()["p"]["items"]] == [str(u)]
    assert conn.execute("select app.list_users(%s, 10, null, 'a_e') as p", (t,)).fetchone()["p"]["items"] == []


def test_page_items_have_the_user_fields(conn, crowd):
    t, _ = crowd
    page = conn.execute("select app.list_users(%s, 2) as p", (t,)).fetchone()["p"]
    first = {i["display_name"]: i for i in page["items"]}["User 1"]  # users 1 and 2 share a sign-up time
    assert first["primary_email"] == "p1@Ex1.test" and first["signed_up_at"].startswith("2026-01-01T00:00:00")
    assert set(page["items"][0]) == {"id", "display_name", "primary_email", "signed_up_at", "last_active_at",
                                     "is_anonymous"}


def test_page_size_cap_and_bad_cursors_are_refused(conn, crowd):
    t, _ = crowd
    refused(conn, "22023", "p_limit 201 exceeds the maximum page size 200", "select app.list_users(%s, 201)", (t,))
    refused(conn, "22023", "p_limit 0 is below the minimum page size 1", "select app.list_users(%s, 0)", (t,))
    refused(conn, "22023", "malformed cursor 'garbage'", "select app.list_users(%s, 10, 'garbage')", (t,))
    refused(conn, "22023", "malformed cursor '2026-13-45T00:00:00.000000Z/",
            "select app.list_users(%s, 10, '2026-13-45T00:00:00.000000Z/00000000-0000-0000-0000-000000000000')", (t,))
