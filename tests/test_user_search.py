"""app.user_search (issue 12): the search rows of app.list_users follow every write to users
and contact channels in the same transaction, stay whole when two transactions change one
user's channels at once, and are rebuilt (with the metrics rollups) after a TRUNCATE."""

from __future__ import annotations

import threading

import pytest

from tests import factories
from tests.sessions import wait_until_blocked
from tests.test_metrics import add_user, assert_rollups_match_rebuild, event

EXPECTED = """
    select u.tenancy_id, u.id as user_id, u.signed_up_at, u.is_anonymous,
           lower(coalesce(u.display_name, '')) || coalesce(
               (select string_agg(chr(10) || lower(c.value), '' order by c.id) from app.contact_channels c
                where c.tenancy_id = u.tenancy_id and c.user_id = u.id), '') as haystack
    from app.users u where u.tenancy_id = %(t)s order by 2"""
STORED = """
    select tenancy_id, user_id, signed_up_at, is_anonymous, haystack
    from app.user_search where tenancy_id = %(t)s order by 2"""


def assert_search_rows_current(conn, t):
    assert conn.execute(STORED, {"t": t}).fetchall() == conn.execute(EXPECTED, {"t": t}).fetchall()


def search(conn, t, query, **kw):
    page = conn.execute("select app.list_users(%s, 50, null, %s, null, %s) as p",
                        (t, query, kw.get("include_anonymous", False))).fetchone()["p"]
    return sorted(i["display_name"] for i in page["items"])


def test_search_rows_follow_every_write(conn):
    t = factories.tenancy(conn, "search_rows")
    other = factories.tenancy(conn, "search_rows_other")
    ada = factories.user(conn, t, "Ada Lovelace", email="Ada@Example.test")
    bob = factories.user(conn, t, "Bob")
    factories.user(conn, other, "Ada Elsewhere", email="ada@other.test")
    assert_search_rows_current(conn, t)
    assert search(conn, t, "EXAMPLE.T") == ["Ada Lovelace"]

    factories.contact_channel(conn, t, bob, "+49 170 555")
    conn.execute("update app.users set display_name = 'Robert', is_anonymous = true,"
                 " signed_up_at = signed_up_at - interval '1 day' where tenancy_id = %s and id = %s", (t, bob))
    assert_search_rows_current(conn, t)
    assert search(conn, t, "bob") == [] and search(conn, t, "170 5") == []
    assert search(conn, t, "170 5", include_anonymous=True) == ["Robert"]

    # a channel moves to another user, changes its value, goes
    conn.execute("update app.contact_channels set user_id = %s where tenancy_id = %s and user_id = %s",
                 (bob, t, ada))
    assert_search_rows_current(conn, t)
    assert search(conn, t, "ada@") == []
    conn.execute("update app.contact_channels set value = 'robert@example.test' where tenancy_id = %s"
                 " and value = 'Ada@Example.test'", (t,))
    conn.execute("delete from app.contact_channels where tenancy_id = %s and type = 'phone'", (t,))
    assert_search_rows_current(conn, t)

    # stamping by the sequencer changes no searched column: the rows stay as they are
    before = conn.execute("select xmin::text from app.user_search where tenancy_id = %s order by user_id",
                          (t,)).fetchall()
    factories.sequence_all(conn)
    conn.execute("update app.users set server_metadata = '{\"k\": 1}' where tenancy_id = %s", (t,))
    assert conn.execute("select xmin::text from app.user_search where tenancy_id = %s order by user_id",
                        (t,)).fetchall() == before

    conn.execute("delete from app.users where tenancy_id = %s and id = %s", (t, bob))
    assert_search_rows_current(conn, t)
    assert conn.execute("select count(*) as n from app.user_search where tenancy_id = %s", (t,)).fetchone()["n"] == 1
    assert conn.execute("select count(*) as n from app.user_search where tenancy_id = %s",
                        (other,)).fetchone()["n"] == 1


def test_a_line_break_in_the_query_matches_within_one_value_only(conn):
    t = factories.tenancy(conn, "search_lines")
    factories.user(conn, t, "ab", email="cd@x.test")
    factories.user(conn, t, "two\nlines")
    assert search(conn, t, "ab\ncd") == []
    assert search(conn, t, "O\nL") == ["two\nlines"]
    conn.execute("select set_config('app.list_users_walk', '1', true)")  # the matching set path too
    factories.users_bulk(conn, t, 3)
    assert search(conn, t, "ab\ncd") == [] and search(conn, t, "o\nl") == ["two\nlines"]


def test_concurrent_writes_to_one_user_keep_both(fresh_db, connect):
    """T1 renames a user and holds its transaction open; T2 adds a channel to that user and
    is parked on the search row's lock; T1 commits, T2 resumes and computes the haystack from
    a statement that sees the new name. Without the lock T2 would overwrite the row with the
    old name beside its channel. The other triggers of the channel insert are switched off:
    the metrics trigger and the users mapping's re-flag of the user lock the user row first,
    which would park T2 before the trigger under test and hide what is tested."""
    setup = connect(fresh_db, autocommit=True)
    for row in setup.execute("select tgname from pg_trigger where tgrelid = 'app.contact_channels'::regclass"
                             " and not tgisinternal and tgname not like '\\_510\\_user\\_search%'").fetchall():
        setup.execute(f'alter table app.contact_channels disable trigger "{row["tgname"]}"')
    t = factories.tenancy(setup, "search_race")
    u = factories.user(setup, t, "Racer")
    t1, t2, watcher = connect(fresh_db), connect(fresh_db), connect(fresh_db, autocommit=True)
    factories.contact_channel(setup, t, u, "first@race.test")
    t1.execute("update app.users set display_name = 'Renamed' where tenancy_id = %s and id = %s", (t, u))
    errors = []

    def second():
        try:
            factories.contact_channel(t2, t, u, "second@race.test")
            t2.commit()
        except Exception as exc:  # reported by the main thread
            errors.append(exc)

    runner = threading.Thread(target=second)
    runner.start()
    wait_until_blocked(watcher, t2)
    t1.commit()
    runner.join(30)
    assert not runner.is_alive() and errors == []
    haystack = setup.execute("select haystack from app.user_search where tenancy_id = %s and user_id = %s",
                             (t, u)).fetchone()["haystack"]
    assert sorted(haystack.split("\n")) == ["first@race.test", "renamed", "second@race.test"]
    assert_search_rows_current(setup, t)


@pytest.mark.parametrize("table", ["app.events", "app.contact_channels", "app.auth_methods"])
def test_truncate_rebuilds_the_rollups_and_search_rows(conn, table):
    t = factories.tenancy(conn, "search_truncate")
    ada = add_user(conn, t, "Ada", "2026-03-01 10:00", email="ada@t.test", verified=True, methods=("password",))
    add_user(conn, t, "Bob", "2026-03-02 10:00", email="bob@t.test", methods=("otp",))
    event(conn, t, ada, "2026-03-03 09:00", "DE")
    before = conn.execute("select app.metrics(%s, false, '2026-03-04') as m", (t,)).fetchone()["m"]
    conn.execute(f"truncate {table}")
    assert_rollups_match_rebuild(conn, t)
    assert_search_rows_current(conn, t)
    after = conn.execute("select app.metrics(%s, false, '2026-03-04') as m", (t,)).fetchone()["m"]
    assert after != before  # the truncated rows counted before and do not now
    if table == "app.contact_channels":
        assert search(conn, t, "@t.test") == [] and search(conn, t, "ada") == ["Ada"]


def test_truncate_of_users_leaves_no_search_rows(conn):
    t = factories.tenancy(conn, "search_truncate_users")
    factories.user(conn, t, "Ada", email="ada@t.test")
    conn.execute("truncate app.users cascade")
    assert conn.execute("select count(*) as n from app.user_search").fetchone()["n"] == 0
    assert_rollups_match_rebuild(conn, t)


def _event_and_user_creation(fresh_db, connect, event_first: bool):
    """T_first writes first and holds its transaction open; T_second writes and either waits
    (the metrics lock) or finishes; T_first commits, then T_second. The rollups must equal a
    rebuild: the event counts for the user whichever order the two ran in."""
    setup = connect(fresh_db, autocommit=True)
    t = factories.tenancy(setup, "metrics_race")
    user_id = "00000000-0000-4000-8000-00000000a11c"
    first, second, watcher = connect(fresh_db), connect(fresh_db), connect(fresh_db, autocommit=True)

    def create_user(c):
        c.execute("insert into app.users (tenancy_id, id, display_name, signed_up_at) values"
                  " (%s, %s, 'Racer', '2026-03-01 10:00+00')", (t, user_id))

    def add_event(c):
        event(c, t, user_id, "2026-03-02 09:00", "DE")

    first_write, second_write = (add_event, create_user) if event_first else (create_user, add_event)
    first_write(first)
    errors = []

    def run_second():
        try:
            second_write(second)
        except Exception as exc:  # reported by the main thread
            errors.append(exc)

    runner = threading.Thread(target=run_second)
    runner.start()
    runner.join(1.0)
    waited = runner.is_alive()
    if waited:
        wait_until_blocked(watcher, second)
    first.commit()
    runner.join(30)
    assert not runner.is_alive() and errors == []
    second.commit()
    check = connect(fresh_db)
    assert_rollups_match_rebuild(check, t)
    m = check.execute("select app.metrics(%s, false, '2026-03-03') as m", (t,)).fetchone()["m"]
    assert m["users_by_country"] == {"DE": 1} and m["auth_overview"]["mau"] == 1
    assert {d["date"]: d["activity"] for d in m["daily_active_users"]}["2026-03-02"] == 1
    assert waited, "the second writer did not wait for the first"


def test_an_event_written_while_its_user_is_created_counts(fresh_db, connect):
    _event_and_user_creation(fresh_db, connect, event_first=False)


def test_a_user_created_while_its_event_is_written_counts(fresh_db, connect):
    _event_and_user_creation(fresh_db, connect, event_first=True)
