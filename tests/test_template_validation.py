"""Mapping templates checked with Postgres's grammar (pglast) on load, and mapping.json's types.

Each hostile template is refused with one line naming the mapping, the template and what was
refused; the shipped mappings pass; validation can be switched off for tests of the
database-side isolation."""

from __future__ import annotations

import json

import pytest

from pyglue import paths
from pyglue.errors import PyglueError
from pyglue.sync import mappings, validate

EXAMPLES = paths.ROOT / "examples" / "mappings"
SPEC = {"source_table": "app.users", "target_table": "stolen", "key_columns": ["id"]}
DDL = "create table if not exists {{ schema | ident }}.{{ table | ident }} (id uuid primary key, display_name text)"


def fetch(columns: str = "", source: str = "app.users u", tail: str = "") -> str:
    """A fetch of the usual shape with something spliced into its select list, FROM list or end."""
    return (f"select u.sequence_id, false as is_deleted, u.id, u.display_name{columns}\nfrom {source}\n"
            "where u.tenancy_id = %(tenancy_id)s and u.sequence_id > %(cursor)s\n"
            f"order by u.sequence_id limit %(limit)s{tail}")


def mapping_folder(tmp_path, name="evil", fetch_sql=None, ddl_sql=DDL, spec=None, raw_spec=None):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "mapping.json").write_text(raw_spec if raw_spec is not None else json.dumps(spec or SPEC))
    (folder / "fetch.sql.j2").write_text(fetch_sql if fetch_sql is not None else fetch())
    (folder / "ddl.sql.j2").write_text(ddl_sql)
    return folder


def refusal(folder, **kwargs) -> str:
    with pytest.raises(PyglueError) as error:
        mappings.load(folder, **kwargs)
    message = str(error.value)
    assert "\n" not in message
    return message


ROLE_ESCAPE = ("query_to_xml('select set_' || 'config(''role'', session_user, false)', true, false, '')"
               " as escaped")

FETCH_ATTACKS = [
    ("role escape in query_to_xml", fetch(", " + ROLE_ESCAPE), "may not use 'query_to_xml' (a dynamic SQL function)"),
    ("U& spelled set_config", fetch(r""", U&"set\005fconfig"('role', 'x', false)"""),
     "may not use 'set_config' (a role and setting function)"),
    ("session authorization", fetch(", set_config('session_authorization', 'postgres', false)"),
     "may not use 'set_config'"),
    ("qualified set_config", fetch(", pg_catalog.set_config('role', 'postgres', true)"), "may not use 'set_config'"),
    ("set_config in FROM", fetch(source="app.users u, set_config('role', 'x', true) s"), "may not use 'set_config'"),
    ("large object", fetch(", lo_from_bytea(0, 'x')"), "may not use 'lo_from_bytea' (a large-object function)"),
    ("large object read", fetch(", lo_get(16384)"), "may not use 'lo_get'"),
    ("notify", fetch(", pg_notify('c', 'x')"), "may not use 'pg_notify' (a notification function)"),
    ("advisory lock", fetch(", pg_advisory_lock(1)"), "may not use 'pg_advisory_lock' (an advisory lock function)"),
    ("advisory try lock", fetch(", pg_try_advisory_xact_lock(1)"), "may not use 'pg_try_advisory_xact_lock'"),
    ("sequence", fetch(", nextval('pyglue.change_sequence')"), "may not use 'nextval' (a sequence function)"),
    ("dblink", fetch(source="app.users u, dblink('dbname=x', 'select 1') as d(x int)"),
     "may not use 'dblink' (a remote connection function)"),
    ("server file", fetch(", pg_read_file('/etc/passwd')"), "may not use 'pg_read_file' (a file function)"),
    ("sleep", fetch(", pg_sleep(10)"), "may not use 'pg_sleep' (a sleep function)"),
    ("terminate", fetch(", pg_terminate_backend(1)"), "may not use 'pg_terminate_backend'"),
    ("ts_stat runs SQL text", fetch(", (select count(*) from ts_stat('select 1'))"), "may not use 'ts_stat'"),
    ("attribute notation call", fetch(", (1::bigint).pg_advisory_lock"),
     "may not use 'pg_advisory_lock' (an advisory lock function, here in attribute notation)"),
    ("attribute notation file", fetch(", ('/etc/passwd'::text).pg_read_file"), "may not use 'pg_read_file'"),
    ("pyglue function", fetch(", pyglue._fetch_tenancy()"), "may not call pyglue._fetch_tenancy"),
    ("two statements", fetch(tail=";\nselect 1"), "must be a single SELECT statement, found 2 statements"),
    ("select into", fetch().replace("u.display_name\n", "u.display_name into public.copied\n"),
     "may not use SELECT INTO"),
    ("data-modifying CTE", "with d as (delete from app.users returning *)\n" + fetch(source="d u"),
     "must be a plain SELECT: found DELETE in the WITH clause 'd'"),
    ("nested data-modifying CTE", fetch(", (with i as (insert into app.events default values returning 1)"
                                       " select 1 from i)"), "found INSERT in the WITH clause 'i'"),
    ("for update", fetch(tail=" for update"), "may not use FOR UPDATE (a locking clause)"),
    ("for share in a subquery", fetch(source="(select * from app.users for share) u"), "may not use FOR SHARE"),
    ("not a select", "update app.users set display_name = 'x' where tenancy_id = %(tenancy_id)s",
     "must be a single SELECT statement, found UPDATE"),
    ("sync_targets", fetch(", (select string_agg(connection_string, ',') from pyglue.sync_targets)"),
     "may not read pyglue.sync_targets (of pyglue's tables a mapping may read only pyglue.deleted_rows)"),
    ("sync_targets unqualified", fetch(source="app.users u, sync_targets t"), "may not read sync_targets"),
    ("fetch_sessions", fetch(source="app.users u, pyglue.fetch_sessions s"), "may not read pyglue.fetch_sessions"),
    ("pg_authid", fetch(", (select rolpassword from pg_authid limit 1)"),
     "may not read pg_authid (it holds credentials)"),
    ("pg_shadow", fetch(", (select passwd from pg_catalog.pg_shadow limit 1)"), "may not read pg_catalog.pg_shadow"),
    ("pg_largeobject", fetch(source="app.users u, pg_largeobject l"), "may not read pg_largeobject"),
    ("pg_user_mapping", fetch(source="app.users u, pg_user_mappings m"), "may not read pg_user_mappings"),
    ("pg_stats", fetch(source="app.users u, pg_stats s"), "may not read pg_stats"),
    ("hex literal", fetch(", 0x1F"), "may not use the number '0x1F'"),
    ("underscored number", fetch(", 1_000"), "may not use the number '1_000'"),
    ("backslash before a quote", fetch(", 'x\\' as y"), "may not end a string with a backslash"),
    ("NUL character", fetch(", 1\x00; select 2"), "may not contain a NUL character"),
    ("syntax error", fetch(tail=" limit limit"), "is not valid SQL: syntax error at or near \"limit\" (line 4)"),
    ("unknown parameter", fetch().replace("%(cursor)s", "%(cursor)s + %(offset)s"),
     "uses the unknown parameter %(offset)s"),
    ("lone percent", fetch(", u.display_name like 'a%'"), "has a '%' that is no placeholder"),
    ("positional parameter", fetch(", %s"), "has a '%' that is no placeholder ('%s')"),
]


@pytest.mark.parametrize("fetch_sql, expected", [a[1:] for a in FETCH_ATTACKS], ids=[a[0] for a in FETCH_ATTACKS])
def test_a_hostile_fetch_is_refused_naming_mapping_template_and_what(tmp_path, fetch_sql, expected):
    message = refusal(mapping_folder(tmp_path, fetch_sql=fetch_sql))
    assert message.startswith("mapping evil: fetch.sql.j2 "), message
    assert expected in message, message


DDL_ATTACKS = [
    ("another table", DDL + ";\ncreate table public.secrets (x text)",
     "may only create public.stolen, its indexes and comments on it; found CREATE TABLE public.secrets"),
    ("do block", DDL + ";\ndo $$ begin perform 1; end $$", "found DO"),
    ("create extension", "create extension if not exists dblink;\n" + DDL, "found CREATE EXTENSION"),
    ("create function", DDL + ";\ncreate function public.f() returns int language sql as 'select 1'",
     "found CREATE FUNCTION"),
    ("grant", DDL + ";\ngrant select on {{ schema | ident }}.{{ table | ident }} to public", "found GRANT"),
    ("select", DDL + ";\nselect dblink_connect('x')", "found SELECT"),
    ("insert", DDL + ";\ninsert into {{ schema | ident }}.{{ table | ident }} (id) values (gen_random_uuid())",
     "found INSERT"),
    ("default reads a file", "create table {{ schema | ident }}.{{ table | ident }}"
                             " (id uuid primary key, display_name text default pg_read_file('/etc/passwd'))",
     "may not use 'pg_read_file' (a file function)"),
    ("check calls dblink", "create table {{ schema | ident }}.{{ table | ident }}"
                           " (id uuid primary key, display_name text check (dblink_exec('x') is not null))",
     "may not use 'dblink_exec' (a remote connection function)"),
    ("index expression sleeps", DDL + ";\ncreate index on {{ schema | ident }}.{{ table | ident }}"
                                      " ((pg_sleep(1)::text))", "may not use 'pg_sleep'"),
    ("index on another table", DDL + ";\ncreate index on public.users (id)", "found CREATE INDEX on public.users"),
    ("foreign key elsewhere", "create table {{ schema | ident }}.{{ table | ident }}"
                              " (id uuid primary key references public.users (id), display_name text)",
     "may not reference public.users (only public.stolen)"),
    ("like", "create table {{ schema | ident }}.{{ table | ident }} (like public.users)", "may not use LIKE"),
    ("unqualified", "create table if not exists {{ table | ident }} (id uuid primary key, display_name text)",
     "found CREATE TABLE stolen"),
    ("no table", "create index on {{ schema | ident }}.{{ table | ident }} (id)", "must create the table public.stolen"),
    ("comment on another table", DDL + ";\ncomment on table public.users is 'x'",
     "found COMMENT ON TABLE public.users"),
]


@pytest.mark.parametrize("ddl_sql, expected", [a[1:] for a in DDL_ATTACKS], ids=[a[0] for a in DDL_ATTACKS])
def test_a_hostile_ddl_is_refused_naming_mapping_template_and_what(tmp_path, ddl_sql, expected):
    message = refusal(mapping_folder(tmp_path, ddl_sql=ddl_sql))
    assert message.startswith("mapping evil: ddl.sql.j2 "), message
    assert expected in message, message


def test_a_ddl_may_create_its_table_indexes_and_comments(tmp_path):
    ddl = (DDL + ";\ncreate index if not exists {{ (table ~ '_name_idx') | ident }}"
           " on {{ schema | ident }}.{{ table | ident }} (lower(display_name));\n"
           "create unique index on {{ schema | ident }}.{{ table | ident }} (display_name) where display_name <> '';\n"
           "comment on table {{ schema | ident }}.{{ table | ident }} is 'synced users';\n"
           "comment on column {{ schema | ident }}.{{ table | ident }}.display_name is 'their name'")
    loaded = mappings.load(mapping_folder(tmp_path, ddl_sql=ddl), schema="tenant data")
    assert loaded.ddl_sql.startswith('create table if not exists "tenant data"."stolen"')


def test_the_shipped_and_example_mappings_pass_validation():
    loaded = mappings.load_all([EXAMPLES])
    assert [m.name for m in loaded] == ["contact_channels", "team_member_profiles", "teams", "users", "verified_users"]
    for m in loaded:
        validate.validate_fetch(m.fetch_sql, m.name)
        validate.validate_ddl(m.ddl_sql, m.name, m.schema, m.target_table)


def test_harmless_functions_percent_signs_and_set_operations_pass(tmp_path):
    fine = ("(select u.sequence_id, false as is_deleted, u.id, lower(u.display_name) as display_name\n"
            " from app.users u where u.tenancy_id = %(tenancy_id)s and u.sequence_id > %(cursor)s\n"
            "   and coalesce(u.display_name, '') not like 'test%%' and current_setting('pyglue.x', true) is null\n"
            " order by u.sequence_id limit %(limit)s)\n"
            "union all\n"
            "(select d.sequence_id, true, (d.primary_key ->> 'id')::uuid, null from pyglue.deleted_rows d\n"
            " where d.tenancy_id = %(tenancy_id)s and d.sequence_id > %(cursor)s order by 1 limit %(limit)s)\n"
            "order by sequence_id limit %(limit)s")
    assert mappings.load(mapping_folder(tmp_path, fetch_sql=fine)).fetch_sql == fine


def test_names_that_only_look_like_denied_ones_pass():
    validate.validate_fetch("select t.lo_threshold, t.lower_bound, '^\\d+$' ~ t.x, $$it's$$, E'\\'' from t", "ok")


def test_placeholders_become_what_psycopg_sends():
    # psycopg leaves a '%' just before a line break alone, as does the conversion here
    text = "select %(cursor)s, %(limit)s, %(cursor)s, 'a%%b', %(tenancy_id)b %\n 2"
    assert validate.to_postgres_placeholders(text) == "select $1, $2, $1, 'a%b', $3 %\n 2"


def test_validation_is_switched_off_by_parameter_and_by_the_test_only_env_var(tmp_path, monkeypatch):
    hostile = fetch(", pg_notify('c', 'x')")
    (tmp_path / "ddl").mkdir()
    bad_ddl = mapping_folder(tmp_path / "ddl", fetch_sql=hostile, ddl_sql=DDL + "; create extension dblink")
    assert "found CREATE EXTENSION" in refusal(bad_ddl, validate=False)  # DDL templates are always checked
    folder = mapping_folder(tmp_path, fetch_sql=hostile, ddl_sql=DDL)
    assert "pg_notify" in refusal(folder)
    assert mappings.load(folder, validate=False).fetch_sql == hostile
    assert mappings.select(mappings.load_all([tmp_path], validate=False), ["evil"])[0].fetch_sql == hostile
    monkeypatch.setenv(mappings.SKIP_VALIDATION_ENV, "0")
    with pytest.raises(PyglueError, match="pg_notify"):
        mappings.load_all([tmp_path])
    monkeypatch.setenv(mappings.SKIP_VALIDATION_ENV, "1")
    assert mappings.select(mappings.load_all([tmp_path]), ["evil"])[0].fetch_sql == hostile


def test_the_bound_parameters_are_still_required_without_validation(tmp_path):
    folder = mapping_folder(tmp_path, fetch_sql="select 1")
    assert "must use the bound parameter %(tenancy_id)s" in refusal(folder, validate=False)


@pytest.mark.parametrize("raw, expected", [
    ('["app.users"]', "mapping.json must be a JSON object, not a list"),
    ('"app.users"', "mapping.json must be a JSON object, not a string"),
    ('{"source_table": "app.users", "target_table": "t"}', "mapping.json lacks key_columns"),
    ('{"source_table": "app.users", "target_table": "t", "key_columns": "id"}',
     "key_columns must be a non-empty list of column names, not a string"),
    ('{"source_table": "app.users", "target_table": "t", "key_columns": []}', "key_columns must be a non-empty list"),
    ('{"source_table": "app.users", "target_table": "t", "key_columns": ["id", 1]}', "1 is not one"),
    ('{"source_table": "app.users", "target_table": "t", "key_columns": ["id", "id"]}', "names 'id' twice"),
    ('{"source_table": "app.users", "target_table": 7, "key_columns": ["id"]}',
     "target_table must be a table name (a string), not a number"),
    ('{"source_table": "app.users", "target_table": "' + "t" * 64 + '", "key_columns": ["id"]}',
     "is not a valid identifier (at most 63 bytes"),
    ('{"source_table": "app.users", "target_table": "_pyglue_sync_metadata", "key_columns": ["id"]}',
     "may not start with _pyglue"),
    ('{"source_table": null, "target_table": "t", "key_columns": ["id"]}',
     "source_table must be a table name (a string), not null"),
    ('{"source_table": ["app.users"], "target_table": "t", "key_columns": ["id"]}', "source_table must be a table name"),
    ("{not json", "cannot read mapping.json"),
])
def test_a_malformed_mapping_json_is_one_clear_line(tmp_path, raw, expected):
    message = refusal(mapping_folder(tmp_path, raw_spec=raw))
    assert message.startswith("mapping evil: "), message
    assert expected in message, message


def test_the_users_mapping_declares_its_dependency_on_contact_channels():
    users = mappings.select(mappings.load_all(), ["users"])[0]
    assert users.depends_on == (mappings.Dependency(
        "app.contact_channels", (("tenancy_id", "tenancy_id"), ("user_id", "id")),
        ("type", "value", "is_primary", "is_verified", "user_id")),)
    assert all(m.depends_on == () for m in mappings.load_all() if m.name != "users")


def test_a_dependency_without_watch_watches_every_column(tmp_path):
    spec = dict(SPEC, depends_on=[{"table": "app.contact_channels", "columns": {"user_id": "id"}}])
    [dependency] = mappings.load(mapping_folder(tmp_path, spec=spec)).depends_on
    assert dependency == mappings.Dependency("app.contact_channels", (("user_id", "id"),), ())


@pytest.mark.parametrize("depends_on, expected", [
    ({"table": "app.contact_channels"}, "depends_on must be a list of objects, not an object"),
    (["app.contact_channels"], "depends_on[0] must be an object with table, columns and optionally watch"),
    ([{"columns": {"user_id": "id"}}], "depends_on[0].table must be a table name (a string), not null"),
    ([{"table": 3, "columns": {"user_id": "id"}}], "depends_on[0].table must be a table name"),
    ([{"table": "app.contact_channels"}], "depends_on[0].columns must be a non-empty object"),
    ([{"table": "app.contact_channels", "columns": ["user_id"]}], "depends_on[0].columns must be a non-empty object"),
    ([{"table": "app.contact_channels", "columns": {}}], "depends_on[0].columns must be a non-empty object"),
    ([{"table": "app.contact_channels", "columns": {"user_id": 1}}], "must map column names to column names"),
    ([{"table": "app.contact_channels", "columns": {"user_id": "id"}, "watch": "value"}],
     "depends_on[0].watch must be a non-empty list of app.contact_channels's column names, not a string"),
    ([{"table": "app.contact_channels", "columns": {"user_id": "id"}, "watch": []}], "watch must be a non-empty list"),
    ([{"table": "app.contact_channels", "columns": {"user_id": "id"}, "colums": {}}], "unknown key 'colums'"),
    ([{"table": "app.users", "columns": {"id": "id"}}], "is the source table app.users itself"),
    ([{"table": "pyglue.sync_targets", "columns": {"id": "id"}}], "is one of pyglue's own tables"),
    ([{"table": "app.contact_channels", "columns": {"user_id": "id"}}] * 2, "names app.contact_channels twice"),
])
def test_a_malformed_dependency_is_one_clear_line(tmp_path, depends_on, expected):
    message = refusal(mapping_folder(tmp_path, spec=dict(SPEC, depends_on=depends_on)))
    assert message.startswith("mapping evil: mapping.json: depends_on"), message
    assert expected in message, message
