"""Mapping templates: each renders and runs; a custom mapping is added with files only."""

from __future__ import annotations

import psycopg
import pytest

from pyglue import paths
from pyglue.errors import PyglueError
from pyglue.sync import mappings
from tests import factories as f
from tests.syncing import make_world

EXAMPLES = paths.ROOT / "examples" / "mappings"


@pytest.mark.parametrize("mapping", mappings.load_all([EXAMPLES]), ids=lambda m: m.name)
def test_every_template_renders_and_runs(conn, mapping, make_database):
    """Fetch runs (rolled back) on the source; DDL runs on an empty database."""
    t = f.tenancy(conn)
    f.user(conn, t, email="x@example.com")
    f.sequence_all(conn)
    cur = conn.cursor()
    cur.execute(mapping.fetch_sql, {"tenancy_id": t, "cursor": 0, "limit": 10})
    names = [d.name for d in cur.description]
    assert names[:2] == ["sequence_id", "is_deleted"]
    assert set(mapping.key_columns) <= set(names)

    with psycopg.connect(make_database()) as target:
        target.execute(mapping.ddl_sql)
        columns = {r[0] for r in target.execute(
            "select column_name from information_schema.columns where table_name = %s", (mapping.target_table,))}
    assert set(names[2:]) == columns


def test_the_default_mappings_are_the_four_of_the_design():
    assert [m.name for m in mappings.load_all()] == ["contact_channels", "team_member_profiles", "teams", "users"]


def test_ident_filter_quotes_and_strict_undefined_fails(tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "mapping.json").write_text('{"source_table": "app.users", "target_table": "Odd Name", "key_columns": ["id"]}')
    (folder / "fetch.sql.j2").write_text("select %(tenancy_id)s, %(cursor)s, %(limit)s")
    (folder / "ddl.sql.j2").write_text("create table {{ schema | ident }}.{{ table | ident }} (id int)")
    assert mappings.load(folder).ddl_sql == 'create table "public"."Odd Name" (id int)'
    (folder / "ddl.sql.j2").write_text("create table {{ no_such_variable }} (id int)")
    with pytest.raises(PyglueError, match="template error: 'no_such_variable' is undefined"):
        mappings.load(folder)


def test_unknown_mapping_name_is_one_clear_error():
    with pytest.raises(PyglueError, match="unknown mapping 'nope' \\(known: contact_channels, "):
        mappings.select(mappings.load_all(), ["nope"])


def test_custom_example_mapping_exports_only_verified_users(fresh_db, connect, make_database):
    world = make_world(fresh_db, connect, make_database)
    world.add_target()
    c, t = world.conn, world.tenancy
    verified = f.user(c, t, "v")
    f.contact_channel(c, t, verified, "v@example.com", is_primary=True, is_verified=True)
    unverified = f.user(c, t, "u", email="u@example.com")
    world.sync(names=["verified_users"], extra_dirs=[EXAMPLES])
    assert [(r["id"], r["email"]) for r in world.rows("verified_users")] == [(verified, "v@example.com")]
    # a row that stops matching is deleted downstream; one that starts matching arrives
    c.execute("update app.contact_channels set is_verified = (user_id = %s) where tenancy_id = %s", (unverified, t))
    world.sync(names=["verified_users"], extra_dirs=[EXAMPLES])
    assert [r["id"] for r in world.rows("verified_users")] == [unverified]


def test_users_fetch_reads_pages_by_index_and_probes_emails_by_tenancy_and_user(conn):
    """The plan a fetch gets for a tenancy the statistics have not seen: the page comes from
    the (tenancy, sequence_id) index and each email lookup is an index probe on tenancy and
    user (a regression here turned a 1M-user sync into statement timeouts)."""
    t = f.tenancy(conn)
    f.users_bulk(conn, t, 200)
    conn.execute("insert into app.contact_channels (tenancy_id, user_id, type, value, is_primary)"
                 " select tenancy_id, id, 'email', id::text, true from app.users where tenancy_id = %s", (t,))
    f.sequence_all(conn)
    conn.execute("analyze app.users, app.contact_channels")
    t2 = f.tenancy(conn)
    f.users_bulk(conn, t2, 50)  # rows of a tenancy that is not in the statistics yet
    f.sequence_all(conn)
    users = mappings.select(mappings.load_all(), ["users"])[0]
    conn.execute("set local role pyglue_mapping_reader")  # the policies the fetch login plans under
    plan = [r["QUERY PLAN"] for r in conn.execute("explain (costs off) " + users.fetch_sql,
                                                   {"tenancy_id": t2, "cursor": 0, "limit": 5000})]
    text = "\n".join(plan)
    assert "users_pyglue_sequence_idx" in text, text
    lookup = next(i for i, line in enumerate(plan) if "on contact_channels e" in line)
    condition = next(line for line in plan[lookup:] if "Index Cond" in line)
    assert "tenancy_id" in condition and "user_id" in condition, text
