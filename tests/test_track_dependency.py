"""pyglue.track_dependency: rows of a table a mapping reads beside its source re-flag the
source rows they lead to (installed by migration 0010 for app.contact_channels -> app.users)."""

from __future__ import annotations

import psycopg
import pytest

from tests import factories as f


def flagged(conn, user_id) -> bool:
    return conn.execute("select should_update_sequence_id as f from app.users where id = %s",
                        (user_id,)).fetchone()["f"]


def test_adding_editing_moving_or_removing_a_channel_flags_its_users(conn):
    t = f.tenancy(conn)
    u, other = f.user(conn, t, email="a@example.com"), f.user(conn, t)
    f.sequence_all(conn)
    conn.execute("update app.contact_channels set is_verified = true where user_id = %s", (u,))
    assert flagged(conn, u) and not flagged(conn, other)
    f.sequence_all(conn)
    conn.execute("update app.contact_channels set user_id = %s where user_id = %s", (other, u))
    assert flagged(conn, u) and flagged(conn, other)  # old and new owner
    f.sequence_all(conn)
    conn.execute("delete from app.contact_channels where user_id = %s", (other,))
    assert flagged(conn, other) and not flagged(conn, u)
    f.sequence_all(conn)
    f.contact_channel(conn, t, u, "b@example.com", is_primary=True)
    assert flagged(conn, u)


def test_unwatched_columns_do_not_flag_the_user(conn):
    t = f.tenancy(conn)
    u = f.user(conn, t, email="a@example.com")
    f.sequence_all(conn)
    conn.execute("update app.contact_channels set created_at = created_at - interval '1 day', used_for_auth = not used_for_auth")
    assert not flagged(conn, u)


def test_an_identical_declaration_is_a_no_op_and_a_new_one_replaces_the_triggers(conn):
    args = "'app.contact_channels', 'app.users', '{tenancy_id,user_id}', '{tenancy_id,id}'"
    same = conn.execute(f"select pyglue.track_dependency({args}, '{{type,value,is_primary,is_verified,user_id}}')"
                        " as changed").fetchone()["changed"]
    assert same is False
    assert conn.execute(f"select pyglue.track_dependency({args}, '{{created_at}}') as changed").fetchone()["changed"]
    t = f.tenancy(conn)
    u = f.user(conn, t, email="a@example.com")
    f.sequence_all(conn)
    conn.execute("update app.contact_channels set created_at = created_at - interval '1 day' where user_id = %s", (u,))
    assert flagged(conn, u)
    assert conn.execute("select pyglue.untrack_dependency('app.contact_channels', 'app.users') as ok").fetchone()["ok"]
    f.sequence_all(conn)
    conn.execute("update app.contact_channels set value = 'x@example.com' where user_id = %s", (u,))
    assert not flagged(conn, u)
    triggers = conn.execute("select count(*) as n from pg_trigger where tgrelid = 'app.contact_channels'::regclass"
                            " and tgname like '_500_pyglue_reflag%%'").fetchone()["n"]
    assert triggers == 0


@pytest.mark.parametrize("call, sqlstate, message", [
    ("'app.contact_channels', 'app.projects', '{user_id}', '{id}'", "22023",
     "cannot track a dependency of app.projects: it is not tracked"),
    ("'app.users', 'app.users', '{id}', '{id}'", "22023", "cannot track app.users as a dependency of app.users"),
    ("'pyglue.deleted_rows', 'app.users', '{tenancy_id}', '{tenancy_id}'", "22023",
     "cannot track pyglue.deleted_rows as a dependency of app.users"),
    ("'app.contact_channels', 'app.users', '{user_id}', '{}'", "22023", "must be non-empty lists of the same length"),
    ("'app.contact_channels', 'app.users', '{owner}', '{id}'", "42703", "no column app.contact_channels.owner"),
    ("'app.contact_channels', 'app.users', '{user_id}', '{id}', '{colour}'", "42703",
     "no column app.contact_channels.colour"),
])
def test_bad_declarations_are_refused(conn, call, sqlstate, message):
    with pytest.raises(psycopg.Error, match=message) as e:
        conn.execute(f"select pyglue.track_dependency({call})")
    assert e.value.sqlstate == sqlstate


def test_the_sequencer_stamping_channels_does_not_reflag_users(conn):
    """Channels inserted in the opposite order of their users: with batch size 1 the second
    user's email is stamped a pass after the user; that stamp must not flag the user again."""
    t = f.tenancy(conn)
    first, second = f.user(conn, t, "first"), f.user(conn, t, "second")
    f.contact_channel(conn, t, second, "second@example.com", is_primary=True)
    f.contact_channel(conn, t, first, "first@example.com", is_primary=True)
    passes = [conn.execute("select pyglue.sequence_changes(1) as n").fetchone()["n"] for _ in range(3)]
    assert passes == [2, 2, 0]


def test_untracking_the_source_drops_its_dependencies(conn):
    conn.execute("select pyglue.untrack_table('app.users')")
    assert conn.execute("select count(*) as n from pyglue.dependencies").fetchone()["n"] == 0
