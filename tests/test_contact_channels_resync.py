"""sql/triggers/app.contact_channels__resync_user.sql: primary email changes flag the user."""

from __future__ import annotations

from tests import factories as f


def flagged(conn, user_id) -> bool:
    return conn.execute("select should_update_sequence_id as f from app.users where id = %s",
                        (user_id,)).fetchone()["f"]


def test_editing_adding_or_removing_a_primary_email_flags_the_user(conn):
    t = f.tenancy(conn)
    u = f.user(conn, t, email="a@example.com")
    f.sequence_all(conn)
    conn.execute("update app.contact_channels set is_verified = true where user_id = %s", (u,))
    assert flagged(conn, u)
    f.sequence_all(conn)
    conn.execute("delete from app.contact_channels where user_id = %s", (u,))
    assert flagged(conn, u)
    f.sequence_all(conn)
    f.contact_channel(conn, t, u, "b@example.com", is_primary=True)
    assert flagged(conn, u)


def test_other_channel_changes_do_not_flag_the_user(conn):
    t = f.tenancy(conn)
    u = f.user(conn, t, email="a@example.com")
    phone = f.contact_channel(conn, t, u, "+1555", type="phone", is_primary=True)
    f.sequence_all(conn)
    conn.execute("update app.contact_channels set value = '+1556' where id = %s", (phone,))
    conn.execute("update app.contact_channels set created_at = now() where type = 'email'")
    assert not flagged(conn, u)


def test_the_sequencer_stamping_a_channel_does_not_reflag_its_user(conn):
    """Channels inserted in the opposite order of their users: with batch size 1 the second
    user's email is stamped a pass after the user; that stamp must not flag the user again."""
    t = f.tenancy(conn)
    first, second = f.user(conn, t, "first"), f.user(conn, t, "second")
    f.contact_channel(conn, t, second, "second@example.com", is_primary=True)
    f.contact_channel(conn, t, first, "first@example.com", is_primary=True)
    passes = [conn.execute("select pyglue.sequence_changes(1) as n").fetchone()["n"] for _ in range(3)]
    assert passes == [2, 2, 0]
