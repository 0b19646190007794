"""app.metrics (issue 12): exact values on a small hand-computed dataset (UTC day
boundaries, anonymous users both ways, a country that changed, users without events, an
empty tenancy, another tenancy's rows), and rollups that stay equal to a rebuild from the
source tables through updates and deletes of users, channels, auth methods and events."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg.types.json import Jsonb  # noqa: F401  (kept for ad-hoc debugging of payloads)

from tests import factories

NOW = dt.datetime(2026, 3, 31, 12, 0, tzinfo=dt.timezone.utc)
DAYS = [(dt.date(2026, 3, 1) + dt.timedelta(days=i)).isoformat() for i in range(31)]


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.timezone.utc)


def add_user(conn, tenancy, name, signed_up, *, anonymous=False, email=None, verified=False, methods=(),
             last_active=None):
    uid = conn.execute(
        "insert into app.users (tenancy_id, display_name, signed_up_at, is_anonymous, last_active_at)"
        " values (%s, %s, %s, %s, %s) returning id",
        (tenancy, name, at(signed_up), anonymous, last_active and at(last_active))).fetchone()["id"]
    if email:
        factories.contact_channel(conn, tenancy, uid, email, is_primary=True, is_verified=verified)
    for method in methods:
        kind, provider = ("oauth", method) if method not in ("password", "otp", "passkey") else (method, None)
        conn.execute("insert into app.auth_methods (tenancy_id, user_id, kind, provider) values (%s, %s, %s, %s)",
                     (tenancy, uid, kind, provider))
    return uid


def event(conn, tenancy, user, occurred, country=None, event_type="$user-activity"):
    return conn.execute(
        "insert into app.events (tenancy_id, event_type, user_id, occurred_at, country_code)"
        " values (%s, %s, %s, %s, %s) returning id", (tenancy, event_type, user, at(occurred), country)
    ).fetchone()["id"]


def metrics(conn, tenancy, include_anonymous=False, now=NOW):
    return conn.execute("select app.metrics(%s, %s, %s) as m", (tenancy, include_anonymous, now)).fetchone()["m"]


def series(values: dict[str, int]) -> list[dict]:
    return [{"date": d, "activity": values.get(d, 0)} for d in DAYS]


def assert_rollups_match_rebuild(conn, tenancy):
    """The trigger-maintained rollups equal a rebuild from the source tables."""
    def snapshot():
        counters = conn.execute(
            "select metric, bucket, is_anonymous, n from app.metrics_counters where tenancy_id = %s and n <> 0"
            " order by 1, 2, 3", (tenancy,)).fetchall()
        state = conn.execute(
            "select user_id, is_anonymous, signup_day, verified, methods, last_active_at, country_code,"
            " country_event_id from app.metrics_user_state where tenancy_id = %s order by 1", (tenancy,)).fetchall()
        days = conn.execute("select user_id, day, events from app.metrics_active_days where tenancy_id = %s"
                            " order by 1, 2", (tenancy,)).fetchall()
        return counters, state, days
    incremental = snapshot()
    conn.execute("savepoint rebuild")
    conn.execute("select app._rebuild_metrics(%s)", (tenancy,))
    rebuilt = snapshot()
    conn.execute("rollback to savepoint rebuild")
    assert incremental == rebuilt


@pytest.fixture
def data(conn):
    conn.execute("set time zone 'Pacific/Kiritimati'")  # +14: UTC days must not follow the session
    t = factories.tenancy(conn, "metrics")
    other = factories.tenancy(conn, "metrics_other")
    u = {}
    u["ann"] = add_user(conn, t, "Ann", "2026-03-10 23:59:59", email="ann@x.test", verified=True,
                        methods=("password", "github"), last_active="2026-03-20 08:00")
    u["bob"] = add_user(conn, t, "Bob", "2026-03-11 00:00:00", anonymous=True, methods=("otp",))
    u["cy"] = add_user(conn, t, "Cy", "2026-02-01 09:00", email="cy@x.test", methods=("passkey", "google"))
    u["di"] = add_user(conn, t, "Di", "2026-03-31 11:00", last_active="2026-03-31 11:30")
    u["eve"] = add_user(conn, t, "Eve", "2026-03-05 10:00", email="eve@x.test", verified=True)
    event(conn, t, u["ann"], "2026-03-11 00:00:00", "DE")
    event(conn, t, u["ann"], "2026-03-20 08:00", "FR")            # latest country wins: FR
    event(conn, t, u["ann"], "2026-03-25 08:00", "JP", "$other")  # not activity: ignored
    event(conn, t, u["bob"], "2026-03-11 23:59:59", "US")
    event(conn, t, u["di"], "2026-03-01 10:00", "GB")             # before the MAU window, day 1 of the series
    event(conn, t, u["di"], "2026-03-31 11:30")                    # no country: GB stays
    event(conn, t, u["eve"], "2026-03-01 11:00", "BR")            # MAU window starts 03-01 12:00
    event(conn, t, None, "2026-03-15 10:00", "CA")                 # no user
    event(conn, t, "00000000-0000-4000-8000-000000000001", "2026-03-15 10:00", "CA")  # no such user
    factories.team(conn, t, "t1")
    factories.team(conn, t, "t2")
    # another tenancy, same days: never counted
    o = add_user(conn, other, "Other", "2026-03-10 12:00", email="o@x.test", verified=True, methods=("password",))
    event(conn, other, o, "2026-03-11 12:00", "DE")
    factories.team(conn, other, "t3")
    return t, other, u


def test_exact_metrics_without_anonymous_users(conn, data):
    t, _, u = data
    m = metrics(conn, t)
    assert m["total_users"] == 4
    assert m["daily_users"] == series({"2026-03-05": 1, "2026-03-10": 1, "2026-03-31": 1})
    assert m["daily_active_users"] == series({"2026-03-01": 2, "2026-03-11": 1, "2026-03-20": 1, "2026-03-31": 1})
    assert m["users_by_country"] == {"FR": 1, "GB": 1, "BR": 1}
    assert m["login_methods"] == [{"method": "github", "count": 1}, {"method": "google", "count": 1},
                                  {"method": "passkey", "count": 1}, {"method": "password", "count": 1}]
    assert m["auth_overview"] == {"verified_users": 2, "unverified_users": 2, "anonymous_users": 1,
                                  "total_teams": 2, "mau": 2}
    assert [x["id"] for x in m["recently_registered"]] == [str(u[k]) for k in ("di", "ann", "eve", "cy")]
    assert m["recently_registered"][1] == {
        "id": str(u["ann"]), "display_name": "Ann", "primary_email": "ann@x.test", "is_anonymous": False,
        "signed_up_at": m["recently_registered"][1]["signed_up_at"], "last_active_at":
        m["recently_registered"][1]["last_active_at"]}
    assert dt.datetime.fromisoformat(m["recently_registered"][1]["signed_up_at"]) == at("2026-03-10 23:59:59")
    assert [x["id"] for x in m["recently_active"]] == [str(u["di"]), str(u["ann"])]
    assert_rollups_match_rebuild(conn, t)


def test_exact_metrics_with_anonymous_users(conn, data):
    t, _, u = data
    m = metrics(conn, t, include_anonymous=True)
    assert m["total_users"] == 5
    # 23:59:59 is the 10th, 00:00:00 the 11th
    assert m["daily_users"] == series({"2026-03-05": 1, "2026-03-10": 1, "2026-03-11": 1, "2026-03-31": 1})
    assert m["daily_active_users"] == series({"2026-03-01": 2, "2026-03-11": 2, "2026-03-20": 1, "2026-03-31": 1})
    assert m["users_by_country"] == {"FR": 1, "GB": 1, "BR": 1, "US": 1}
    assert {x["method"]: x["count"] for x in m["login_methods"]} == {
        "github": 1, "google": 1, "passkey": 1, "password": 1, "otp": 1}
    assert m["auth_overview"] == {"verified_users": 2, "unverified_users": 3, "anonymous_users": 1,
                                  "total_teams": 2, "mau": 2}  # mau never counts anonymous users
    assert str(u["bob"]) in [x["id"] for x in m["recently_registered"]]


def test_day_series_ends_on_the_utc_day_of_p_now(conn, data):
    t, _, _ = data
    for now, last in ((at("2026-03-31 23:59:59"), "2026-03-31"), (at("2026-04-01 00:00:00"), "2026-04-01")):
        m = metrics(conn, t, now=now)
        assert len(m["daily_users"]) == len(m["daily_active_users"]) == 31
        assert m["daily_users"][-1]["date"] == m["daily_active_users"][-1]["date"] == last
    first = metrics(conn, t, now=at("2026-04-01 00:00:00"))["daily_active_users"][0]
    assert first == {"date": "2026-03-02", "activity": 0}  # 03-01 fell out of the window


def test_mau_when_later_activity_exists_reads_events_and_agrees(conn, data):
    t, _, u = data
    before = metrics(conn, t)["auth_overview"]["mau"]
    event(conn, t, u["cy"], "2026-04-02 10:00")  # after p_now: the exact path over app.events
    after = metrics(conn, t)
    assert before == after["auth_overview"]["mau"] == 2
    assert metrics(conn, t, now=at("2026-04-02 10:00"))["auth_overview"]["mau"] == 3  # ann, di, cy
    # the 30-day window is (p_now - 30 days, p_now]: both ends to the microsecond
    assert metrics(conn, t, now=at("2026-03-31 10:59:59"))["auth_overview"]["mau"] == 2  # ann, eve (03-01 11:00)
    assert metrics(conn, t, now=at("2026-03-31 11:00"))["auth_overview"]["mau"] == 1  # eve exactly 30 days: out
    assert metrics(conn, t, now=at("2026-03-31 11:30"))["auth_overview"]["mau"] == 2  # ann, di at p_now: in


def test_empty_tenancy_is_all_zeros_for_31_days(conn, data):
    empty = factories.tenancy(conn, "metrics_empty")
    for include in (False, True):
        m = metrics(conn, empty, include)
        assert m == {"total_users": 0, "daily_users": series({}), "daily_active_users": series({}),
                     "users_by_country": {}, "recently_registered": [], "recently_active": [],
                     "login_methods": [],
                     "auth_overview": {"verified_users": 0, "unverified_users": 0, "anonymous_users": 0,
                                       "total_teams": 0, "mau": 0}}


def test_other_tenancy_counts_only_its_own(conn, data):
    _, other, _ = data
    m = metrics(conn, other)
    assert m["total_users"] == 1
    assert m["users_by_country"] == {"DE": 1}
    assert m["daily_active_users"] == series({"2026-03-11": 1})
    assert m["auth_overview"]["total_teams"] == 1


def test_anonymous_flag_change_moves_every_count(conn, data):
    t, _, u = data
    conn.execute("update app.users set is_anonymous = false where id = %s", (u["bob"],))
    m = metrics(conn, t)
    assert m["total_users"] == 5
    assert m["daily_active_users"][10] == {"date": "2026-03-11", "activity": 2}
    assert m["users_by_country"]["US"] == 1
    assert {x["method"] for x in m["login_methods"]} >= {"otp"}
    assert m["auth_overview"]["anonymous_users"] == 0
    conn.execute("update app.users set is_anonymous = true where id = %s", (u["ann"],))
    m = metrics(conn, t)
    assert "FR" not in m["users_by_country"] and m["auth_overview"]["verified_users"] == 1
    assert m["auth_overview"]["mau"] == 2  # bob (now counted) and di
    assert_rollups_match_rebuild(conn, t)


def test_signup_time_change_and_unrelated_updates(conn, data):
    t, _, u = data
    conn.execute("update app.users set signed_up_at = '2026-03-15 00:00:00+00' where id = %s", (u["cy"],))
    conn.execute("update app.users set display_name = 'Renamed', last_active_at = now()")  # metrics unaffected
    assert metrics(conn, t)["daily_users"][14] == {"date": "2026-03-15", "activity": 1}
    assert_rollups_match_rebuild(conn, t)


def test_user_deletion_removes_its_counts_but_not_others(conn, data):
    t, _, u = data
    conn.execute("delete from app.users where id = %s", (u["ann"],))  # cascades to channels and methods
    m = metrics(conn, t)
    assert m["total_users"] == 3
    assert m["users_by_country"] == {"GB": 1, "BR": 1}
    assert m["daily_active_users"][10]["activity"] == 0 and m["daily_active_users"][19]["activity"] == 0
    assert {x["method"] for x in m["login_methods"]} == {"google", "passkey"}
    assert m["auth_overview"]["verified_users"] == 1 and m["auth_overview"]["mau"] == 1
    assert_rollups_match_rebuild(conn, t)


def test_event_delete_and_update_recompute_latest_country(conn, data):
    t, _, u = data
    fr = conn.execute("select id from app.events where user_id = %s and country_code = 'FR'", (u["ann"],)
                      ).fetchone()["id"]
    conn.execute("delete from app.events where id = %s", (fr,))
    m = metrics(conn, t)
    assert m["users_by_country"] == {"DE": 1, "GB": 1, "BR": 1}
    assert m["daily_active_users"][19]["activity"] == 0
    conn.execute("update app.events set country_code = 'IT', occurred_at = '2026-03-21 00:00:00+00'"
                 " where user_id = %s and country_code = 'DE'", (u["ann"],))
    m = metrics(conn, t)
    assert m["users_by_country"] == {"IT": 1, "GB": 1, "BR": 1}
    assert m["daily_active_users"][10]["activity"] == 0 and m["daily_active_users"][20]["activity"] == 1
    conn.execute("update app.events set event_type = '$other' where user_id = %s", (u["eve"],))
    assert "BR" not in metrics(conn, t)["users_by_country"]
    assert_rollups_match_rebuild(conn, t)


def test_channel_and_method_changes(conn, data):
    t, _, u = data
    conn.execute("update app.contact_channels set is_verified = true where user_id = %s", (u["cy"],))
    conn.execute("delete from app.auth_methods where user_id = %s and kind = 'password'", (u["ann"],))
    conn.execute("update app.auth_methods set provider = 'gitlab' where user_id = %s and kind = 'oauth'", (u["ann"],))
    m = metrics(conn, t)
    assert m["auth_overview"]["verified_users"] == 3
    assert {x["method"] for x in m["login_methods"]} == {"gitlab", "google", "passkey"}
    assert_rollups_match_rebuild(conn, t)


def test_user_created_after_its_events_counts_them(conn, data):
    t, _, _ = data
    uid = "00000000-0000-4000-8000-000000000001"  # has an event from the fixture (CA, 03-15)
    conn.execute("insert into app.users (tenancy_id, id, signed_up_at) values (%s, %s, '2026-03-01 00:00+00')",
                 (t, uid))
    m = metrics(conn, t)
    assert m["users_by_country"]["CA"] == 1 and m["daily_active_users"][14]["activity"] == 1
    assert_rollups_match_rebuild(conn, t)


def test_deleting_a_tenancy_leaves_no_rollups(conn, data):
    t, other, _ = data
    conn.execute("delete from app.tenancies where id = %s", (t,))
    for table in ("app.metrics_counters", "app.metrics_user_state", "app.metrics_active_days"):
        assert conn.execute(f"select count(*) as n from {table} where tenancy_id = %s", (t,)).fetchone()["n"] == 0
    assert metrics(conn, other)["total_users"] == 1


def test_cli_summary_and_json(fresh_db):
    """pyglue metrics --tenant: a summary for people, --json the whole object; an unknown tenancy fails."""
    import json

    import psycopg
    from click.testing import CliRunner
    from psycopg.rows import dict_row

    from pyglue.cli import cli

    with psycopg.connect(fresh_db, row_factory=dict_row, autocommit=True) as c:
        t = factories.tenancy(c, "metrics_cli")
        factories.user(c, t, "Ann")
    out = CliRunner().invoke(cli, ["--dsn", fresh_db, "metrics", "--tenant", str(t), "--json"])
    assert out.exit_code == 0, out.output
    m = json.loads(out.output)
    assert m["total_users"] == 1 and len(m["daily_users"]) == 31
    out = CliRunner().invoke(cli, ["--dsn", fresh_db, "metrics", "--tenant", str(t)])
    assert out.exit_code == 0 and out.output.startswith("users 1 (verified 0, unverified 1, anonymous 0)")
    missing = "00000000-0000-4000-8000-000000000099"
    out = CliRunner().invoke(cli, ["--dsn", fresh_db, "metrics", "--tenant", missing])
    assert out.exit_code != 0 and str(out.exception) == f"no tenancy {missing}"  # main() prints it as one line
