"""Target-side faults of a mapping (issue 8): one clear error naming the mapping and the
target table, never a crash or the name of an internal stage table, and a way back."""

from __future__ import annotations

import json

import psycopg
import pytest

from pyglue.sync import engine, mappings
from tests import factories as f
from tests.syncing import make_world, write_mapping

FETCH = ("select u.sequence_id, false as is_deleted, u.id, u.display_name from app.users u"
         " where u.tenancy_id = %(tenancy_id)s and u.sequence_id > %(cursor)s order by u.sequence_id limit %(limit)s")
DELETING = ("(select u.sequence_id, false as is_deleted, u.id, u.display_name from app.users u"
            " where u.tenancy_id = %(tenancy_id)s and u.sequence_id > %(cursor)s order by u.sequence_id limit %(limit)s)"
            " union all (select d.sequence_id, true, (d.primary_key ->> 'id')::uuid, null from pyglue.deleted_rows d"
            " where d.tenancy_id = %(tenancy_id)s and d.table_name = 'app.users' and d.sequence_id > %(cursor)s"
            " order by d.sequence_id limit %(limit)s) order by sequence_id limit %(limit)s")


@pytest.fixture
def world(fresh_db, connect, make_database):
    w = make_world(fresh_db, connect, make_database)
    w.add_target()
    return w


def custom(tmp_path, name: str, ddl: str, fetch: str = FETCH) -> list[mappings.Mapping]:
    folder = write_mapping(tmp_path, name, fetch)
    (folder / name / "ddl.sql.j2").write_text(ddl)
    return [mappings.load(folder / name)]


def sync(world, chosen) -> engine.TenancyResult:
    return engine.sync_until_caught_up(world.dsn, world.tenancy, chosen, engine.Options(ignore_backoff=True))


def table_exists(world, table: str) -> bool:
    with psycopg.connect(world.targets["main"]) as c:
        return c.execute("select to_regclass(%s) is not null", (table,)).fetchone()[0]


def test_a_faulty_ddl_is_recovered_from_once_fixed(world, tmp_path):
    f.user(world.conn, world.tenancy, "someone")
    faulty = "create table if not exists {{ schema | ident }}.{{ table | ident }} (id uuid primary key)"
    [failed] = sync(world, custom(tmp_path / "one", "people", faulty)).failed
    assert failed.error == ("mapping people: target table people has no column 'display_name' that the fetch"
                            " returns; pyglue dropped the empty table: fix ddl.sql.j2 and sync again")
    assert not table_exists(world, "public.people")
    fixed = "create table if not exists {{ schema | ident }}.{{ table | ident }} (id uuid primary key, display_name text)"
    assert sync(world, custom(tmp_path / "two", "people", fixed)).failed == []
    assert [r["display_name"] for r in world.rows("people")] == ["someone"]


def test_a_table_with_rows_that_lost_a_column_says_how_to_start_over(world, tmp_path, connect):
    f.user(world.conn, world.tenancy, "first")
    ddl = "create table if not exists {{ schema | ident }}.{{ table | ident }} (id uuid primary key, display_name text)"
    chosen = custom(tmp_path, "people", ddl)
    assert sync(world, chosen).failed == []
    connect(world.targets["main"], autocommit=True).execute("alter table people drop column display_name")
    f.user(world.conn, world.tenancy, "second")
    [failed] = sync(world, chosen).failed
    assert failed.error == ("mapping people: target table people has no column 'display_name' that the fetch"
                            " returns; fix ddl.sql.j2, then drop table people and delete its row from"
                            " _pyglue_sync_metadata to sync it again from the start")
    assert table_exists(world, "public.people")


def test_a_key_column_missing_from_the_target_on_the_delete_path_is_one_line(world, tmp_path):
    u = f.user(world.conn, world.tenancy, "gone soon")
    ddl = "create table if not exists {{ schema | ident }}.{{ table | ident }} (uid uuid primary key, display_name text)"
    spec_dir = tmp_path / "m"
    folder = write_mapping(spec_dir, "people", DELETING)
    (folder / "people" / "ddl.sql.j2").write_text(ddl)
    world.conn.execute("delete from app.users where id = %s", (u,))  # the page holds only a delete
    [failed] = sync(world, [mappings.load(folder / "people")]).failed
    assert failed.error.startswith("mapping people: target table people has no column 'id'")


def test_apply_errors_name_the_mapping_and_target_table_not_the_stage_table(world, tmp_path):
    f.user(world.conn, world.tenancy, "not a number")
    ddl = "create table if not exists {{ schema | ident }}.{{ table | ident }} (id uuid primary key, display_name int)"
    [failed] = sync(world, custom(tmp_path, "people", ddl)).failed
    assert failed.error.startswith("mapping people: applying a page to target table people failed: ")
    assert "pyglue_stage" not in failed.error


def test_mapping_json_that_is_a_list_or_has_a_string_key_is_one_line(tmp_path):
    folder = write_mapping(tmp_path, "listy", FETCH)
    (folder / "listy" / "mapping.json").write_text(json.dumps(["app.users", "users"]))
    with pytest.raises(Exception) as listy:
        mappings.load(folder / "listy")
    assert str(listy.value).startswith("mapping listy: mapping.json must be a JSON object")
    (folder / "listy" / "mapping.json").write_text(json.dumps(
        {"source_table": "app.users", "target_table": "listy", "key_columns": "id"}))
    with pytest.raises(Exception) as stringy:
        mappings.load(folder / "listy")
    assert "key_columns" in str(stringy.value) and "\n" not in str(stringy.value)
