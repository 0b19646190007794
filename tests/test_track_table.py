"""pyglue.track_table / untrack_table and the capture triggers they install."""

from __future__ import annotations

import psycopg
import pytest

from tests import factories as f


def columns(conn, table: str) -> list[str]:
    return [r["attname"] for r in conn.execute(
        "select attname from pg_attribute where attrelid = %s::regclass and attnum > 0 and not attisdropped"
        " order by attnum", (table,))]


def triggers(conn, table: str) -> list[str]:
    return [r["tgname"] for r in conn.execute(
        "select tgname from pg_trigger where tgrelid = %s::regclass and not tgisinternal order by tgname", (table,))]


def tombstones(conn, table: str | None = None) -> list[dict]:
    return conn.execute(
        "select table_name, primary_key, data from pyglue.deleted_rows where %(t)s::text is null or table_name = %(t)s"
        " order by id", {"t": table}).fetchall()


@pytest.fixture
def widgets(conn):
    conn.execute("create table public.widgets (tenancy_id uuid not null, id int, name text, primary key (tenancy_id, id))")
    return "public.widgets"


def test_app_tables_are_tracked_by_migration(conn):
    rows = conn.execute("select table_name::text as t, key_columns::text[] as k from pyglue.tracked_tables order by 1")
    assert [(r["t"], r["k"]) for r in rows] == [
        ("app.contact_channels", ["tenancy_id", "id"]),
        ("app.team_members", ["tenancy_id", "team_id", "user_id"]),
        ("app.teams", ["tenancy_id", "id"]),
        ("app.users", ["tenancy_id", "id"]),
    ]


def test_tracking_adds_columns_indexes_and_triggers(conn, widgets):
    conn.execute("insert into public.widgets values (gen_random_uuid(), 1, 'before tracking')")
    conn.execute("select pyglue.track_table('public.widgets')")
    assert columns(conn, widgets)[-2:] == ["sequence_id", "should_update_sequence_id"]
    assert triggers(conn, widgets) == ["_100_pyglue_flag_change", "_100_pyglue_log_insert", "_100_pyglue_log_update",
                                       "_900_pyglue_log_delete", "_900_pyglue_log_key_change", "_900_pyglue_log_truncate"]
    indexes = {r["indexname"] for r in conn.execute("select indexname from pg_indexes where tablename = 'widgets'")}
    assert indexes == {"widgets_pkey", "widgets_pyglue_sequence_idx"}  # no index on the flag (#13)
    assert conn.execute("select should_update_sequence_id as f from public.widgets").fetchone()["f"] is True


def test_tracking_twice_changes_nothing(conn, widgets):
    conn.execute("select pyglue.track_table('public.widgets')")
    before = (columns(conn, widgets), triggers(conn, widgets))
    conn.execute("select pyglue.track_table('public.widgets')")
    assert (columns(conn, widgets), triggers(conn, widgets)) == before
    n = conn.execute("select count(*) as n from pyglue.tracked_tables where table_name = 'public.widgets'::regclass")
    assert n.fetchone()["n"] == 1


def test_untrack_removes_triggers_and_optionally_columns(conn, widgets):
    conn.execute("select pyglue.track_table('public.widgets')")
    assert conn.execute("select pyglue.untrack_table('public.widgets', true) as r").fetchone()["r"] is True
    assert triggers(conn, widgets) == []
    assert "sequence_id" not in columns(conn, widgets)
    assert conn.execute("select pyglue.untrack_table('public.widgets') as r").fetchone()["r"] is False


@pytest.mark.parametrize("ddl, call, sqlstate, message", [
    ("create table public.nokey (tenancy_id uuid, id int)", "select pyglue.track_table('public.nokey')",
     "42P16", "cannot track public.nokey: it has no primary key"),
    ("create table public.notenant (id int primary key)", "select pyglue.track_table('public.notenant')",
     "42703", "cannot track public.notenant: it has no column tenancy_id"),
    ("create table public.textenant (tenant text, id int primary key)",
     "select pyglue.track_table('public.textenant', 'tenant')",
     "42804", "cannot track public.textenant: tenancy column tenant is text, not uuid"),
    ("create view public.aview as select gen_random_uuid() as tenancy_id", "select pyglue.track_table('public.aview')",
     "42809", "cannot track public.aview: not an ordinary table outside schema pyglue"),
    ("select 1", "select pyglue.track_table('public.does_not_exist')",
     "42P01", 'relation "public.does_not_exist" does not exist'),
])
def test_bad_tables_are_refused_with_their_name_and_nothing_changes(conn, ddl, call, sqlstate, message):
    conn.execute(ddl)
    conn.execute("savepoint before")
    table = call.split("'")[1]
    with pytest.raises(psycopg.Error) as error:
        conn.execute(call)
    assert error.value.sqlstate == sqlstate
    assert error.value.diag.message_primary == message
    conn.execute("rollback to savepoint before")
    if sqlstate != "42P01":
        assert "sequence_id" not in columns(conn, table)
        assert triggers(conn, table) == []
    assert conn.execute("select count(*) as n from pyglue.tracked_tables").fetchone()["n"] == 4


def test_application_update_reflags_but_sequencer_stamp_does_not(conn):
    t = f.tenancy(conn)
    u = f.user(conn, t)
    f.sequence_all(conn)
    row = conn.execute("select sequence_id, should_update_sequence_id as flagged from app.users where id = %s", (u,))
    stamped = row.fetchone()
    assert stamped["flagged"] is False and stamped["sequence_id"] is not None
    conn.execute("update app.users set display_name = 'renamed' where id = %s", (u,))
    row = conn.execute("select sequence_id, should_update_sequence_id as flagged from app.users where id = %s", (u,))
    assert row.fetchone() == {"sequence_id": stamped["sequence_id"], "flagged": True}


def test_delete_writes_a_tombstone_with_key_and_data(conn):
    t = f.tenancy(conn)
    u = f.user(conn, t, display_name="Zoë 🚀")
    conn.execute("delete from app.users where id = %s", (u,))
    [stone] = tombstones(conn, "app.users")
    assert stone["primary_key"] == {"tenancy_id": str(t), "id": str(u)}
    assert stone["data"]["display_name"] == "Zoë 🚀"
    assert "sequence_id" not in stone["data"] and "should_update_sequence_id" not in stone["data"]


def test_cascaded_deletes_leave_a_tombstone_per_child(conn):
    t = f.tenancy(conn)
    u = f.user(conn, t, email="a@example.com")
    f.contact_channel(conn, t, u, "+4912345", type="phone")
    team = f.team(conn, t)
    f.member(conn, t, team, u)
    conn.execute("delete from app.users where id = %s", (u,))
    by_table = {}
    for stone in tombstones(conn):
        by_table[stone["table_name"]] = by_table.get(stone["table_name"], 0) + 1
    assert by_table == {"app.users": 1, "app.contact_channels": 2, "app.team_members": 1}


def test_team_delete_cascades_to_member_tombstones(conn):
    t = f.tenancy(conn)
    team = f.team(conn, t)
    for i in range(3):
        f.member(conn, t, team, f.user(conn, t, f"u{i}"))
    conn.execute("delete from app.teams where id = %s", (team,))
    assert len(tombstones(conn, "app.team_members")) == 3
    assert len(tombstones(conn, "app.teams")) == 1


def test_truncate_writes_tombstones_for_every_row(conn):
    t = f.tenancy(conn)
    team = f.team(conn, t)
    f.member(conn, t, team, f.user(conn, t))
    conn.execute("truncate app.team_members")
    assert [s["primary_key"]["team_id"] for s in tombstones(conn, "app.team_members")] == [str(team)]


def test_rolled_back_delete_leaves_no_tombstone(conn):
    t = f.tenancy(conn)
    u = f.user(conn, t)
    conn.execute("savepoint s")
    conn.execute("delete from app.users where id = %s", (u,))
    conn.execute("rollback to savepoint s")
    assert tombstones(conn) == []


def test_a_primary_key_change_leaves_a_tombstone_for_the_old_key(conn):
    t = f.tenancy(conn)
    team, other = f.team(conn, t), f.team(conn, t)
    u = f.user(conn, t)
    f.member(conn, t, team, u)
    conn.execute("update app.team_members set team_id = %s where user_id = %s", (other, u))
    [stone] = tombstones(conn, "app.team_members")
    assert stone["primary_key"] == {"tenancy_id": str(t), "team_id": str(team), "user_id": str(u)}
    conn.execute("update app.team_members set display_name = 'no key change' where user_id = %s", (u,))
    assert len(tombstones(conn, "app.team_members")) == 1


def test_an_application_role_without_rights_on_pyglue_can_delete_and_update(fresh_db, connect):
    c = connect(fresh_db, autocommit=True)
    t = f.tenancy(c)
    u = f.user(c, t, email="a@example.com")
    with f.acting_role(c, "grant usage on schema app to {role}",
                       "grant select, insert, update, delete on all tables in schema app to {role}"):
        c.execute("update app.contact_channels set is_verified = true")
        c.execute("delete from app.users where id = %s", (u,))
    assert len(tombstones(c)) == 2
