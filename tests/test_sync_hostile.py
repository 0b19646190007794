"""Hostile mappings: every attack of issue 8, run twice, with template validation on (refused
on load, one clear line naming the mapping) and off (the fetch login stops it at run time).

Each attack is a custom mapping of tenancy A, written to steal tenancy B's users or the
stored target connection strings. Afterwards none of B's names or the secret password of
B's target is anywhere: in A's target database, in status, in the sync's
errors; nothing was written to the source.
"""

from __future__ import annotations

import threading
import time
import uuid

import psycopg
import pytest

from pyglue import capture
from pyglue.errors import PyglueError
from pyglue.sync import engine, fetch, mappings, targets
from pyglue.sync import target as target_module
from tests import factories as f
from tests.syncing import make_world, without_snapshots, write_mapping

SECRET_NAME = "SECRET-OTHER-TENANT"
SECRET_PASSWORD = "TopSecret-Pw-42"

TAIL = "u.sequence_id > %(cursor)s and %(tenancy_id)s::uuid is not null order by u.sequence_id limit %(limit)s"


def steal(expression: str, extra_from: str = "") -> str:
    """A fetch of A's users whose display_name carries `expression` (what it tried to read)."""
    return (f"select u.sequence_id, false as is_deleted, u.id, ({expression})::text as display_name"
            f" from app.users u{extra_from} where {TAIL}")


XML_ESCAPE = "query_to_xml('select set_' || 'config(''role'', session_user, false)', true, false, '')"
# ts_stat runs any query given as text, like query_to_xml, and needs no libxml (the embedded
# server is built without it)
TS_ESCAPE = "ts_stat('select to_tsvector(set_' || 'config(''role'', session_user, false))')"
ATTACKS = {
    "role_escape_concatenated": steal(
        f"{XML_ESCAPE}::text || query_to_xml('select string_agg(display_name, '','') from app.users', true, false,"
        " '')::text || query_to_xml('select string_agg(connection_string, '','') from pyglue.sync_targets',"
        " true, false, '')::text"),
    "role_escape_unicode": steal(
        "query_to_xml('select U&\"set\\005fconfig\"(''role'', session_user, false)', true, false, '')::text"
        " || (select string_agg(display_name, ',') from app.users)"),
    "role_escape_ts_stat": steal(
        f"(select count(*) from {TS_ESCAPE})::text || (select string_agg(word, ',') from ts_stat("
        "'select to_tsvector(''simple'', string_agg(display_name, '' '')) from app.users'))"),
    "ts_stat_reads_target_secrets": steal(
        "(select string_agg(word, ',') from ts_stat('select to_tsvector(''simple'', string_agg(connection_string,"
        " '' '')) from pyglue.sync_targets'))"),
    "session_authorization": steal("set_config('session_authorization', 'postgres', false) ||"
                                   " (select string_agg(display_name, ',') from app.users)"),
    "reads_target_secrets": steal("(select string_agg(connection_string, ',') from pyglue.sync_targets)"),
    "reads_other_tenancy_setting": steal(
        "set_config('pyglue.tenancy_id', '{other}', false) || (select string_agg(display_name, ',') from app.users)"),
    "large_object": steal("lo_from_bytea(0, convert_to((select string_agg(display_name, ',') from app.users),"
                          " 'UTF8'))"),
    "notify": steal("pg_notify('pyglue_leak', (select string_agg(display_name, ',') from app.users))"),
    "sequencer_lock": steal("(select 1 from pyglue.sequencer_lock for update)"),
    "writes": ("with w as (insert into app.users (tenancy_id, display_name) values (%(tenancy_id)s, 'injected')"
               " returning *) select u.sequence_id, false as is_deleted, u.id, u.display_name from w u"
               f" where {TAIL}"),
    "two_statements": steal("1") + "; select 1",
    "catalog_secrets": steal("(select string_agg(rolname || coalesce(rolpassword, ''), ',') from pg_authid)"),
    "reads_files": steal("pg_read_file('/etc/passwd')"),
}
NO_XML = "FeatureNotSupported"  # the embedded server has no libxml: query_to_xml cannot run at all
# What stops each attack when validation is off: the sync fails with one of these in its one
# line, or it succeeds with only A's own rows (None). Where servers differ, each outcome is listed.
AT_RUN_TIME = {
    "role_escape_concatenated": ("permission denied for table sync_targets", NO_XML),
    "role_escape_unicode": (None, NO_XML),
    "role_escape_ts_stat": (None,),
    "ts_stat_reads_target_secrets": ("permission denied for table sync_targets",),
    "session_authorization": ("InsufficientPrivilege",),
    "reads_target_secrets": ("permission denied for table sync_targets",),
    "reads_other_tenancy_setting": (None,),
    "large_object": (None, "cannot execute lo_from_bytea() in a read-only transaction"),
    "notify": (None, "cannot execute pg_notify() in a read-only transaction"),
    "sequencer_lock": ("permission denied for table sequencer_lock", "in a read-only transaction"),
    "writes": ("FeatureNotSupported",),
    "two_statements": ("cannot insert multiple commands into a prepared statement",),
    "catalog_secrets": ("permission denied for table pg_authid",),
    "reads_files": ("permission denied for function pg_read_file",),
}


@pytest.fixture
def world(fresh_db, connect, make_database):
    w = make_world(fresh_db, connect, make_database)
    w.other = f.tenancy(w.conn, "other")
    w.mine = {f.user(w.conn, w.tenancy, f"mine{i}") for i in range(3)}
    for i in range(3):
        f.user(w.conn, w.other, f"{SECRET_NAME}-{i}")
    other_dsn = make_database()
    targets.add(w.conn, w.other, "theirs", other_dsn.replace("dbname=", f"password={SECRET_PASSWORD} dbname="))
    w.add_target()
    return w


def hostile(tmp_path, name: str, world) -> mappings.Mapping:
    fetch = ATTACKS[name].replace("{other}", str(world.other))
    folder = write_mapping(tmp_path, name, fetch)
    return mappings.load(folder / name, validate=False)


def everything_in(dsn: str) -> str:
    """Every value of every table of a database, as one string. Temporary tables are left out:
    they are private to their session (the sync's raw stage may still be listed for a moment
    while its closed session ends) and no other role can read them."""
    with psycopg.connect(dsn, autocommit=True) as c:
        tables = c.execute("select format('%I.%I', schemaname, tablename) from pg_tables"
                           " where schemaname not in ('pg_catalog', 'information_schema')"
                           " and schemaname not like 'pg\\_temp\\_%'").fetchall()
        return " ".join(str(c.execute(f"select array_agg(t::text) from {t} t").fetchone()[0]) for (t,) in tables)


def assert_nothing_leaked(world, result) -> None:
    secrets = [SECRET_NAME, SECRET_PASSWORD]
    seen = {
        "target": everything_in(world.targets["main"]),
        "status": str(targets.status(world.conn, world.tenancy)) + str(targets.listing(world.conn, world.tenancy)),
        "errors": " ".join(t.error or "" for t in result.targets),
    }
    for where, text in seen.items():
        for secret in secrets:
            assert secret not in text, f"{secret} leaked into {where}"
    assert world.conn.execute("select count(*) as n from app.users where display_name = 'injected'"
                              ).fetchone()["n"] == 0
    assert world.conn.execute("select count(*) as n from pg_largeobject_metadata").fetchone()["n"] == 0


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_validation_refuses_each_attack_with_one_line_naming_the_mapping(tmp_path, name):
    fetch = ATTACKS[name].replace("{other}", str(uuid.uuid4()))
    with pytest.raises(PyglueError) as refused:
        mappings.load(write_mapping(tmp_path, name, fetch) / name)
    message = str(refused.value)
    assert message.startswith(f"mapping {name}: fetch.sql.j2 ") and "\n" not in message


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_with_validation_off_the_fetch_login_stops_each_attack(tmp_path, world, name, connect):
    listener = connect(world.dsn, autocommit=True)
    listener.execute("listen pyglue_leak")
    mapping = hostile(tmp_path, name, world)
    result = engine.sync_until_caught_up(world.dsn, world.tenancy, [mapping], engine.Options(ignore_backoff=True))
    assert_nothing_leaked(world, result)
    assert list(listener.notifies(timeout=0.3, stop_after=1)) == []
    outcomes = AT_RUN_TIME[name]
    if not result.failed:
        assert None in outcomes, f"{name} was expected to fail"
        with psycopg.connect(world.targets["main"]) as c:
            assert {r[0] for r in c.execute(f"select id from {name}")} == world.mine
    else:
        [failed] = result.failed
        assert failed.error.startswith(f"mapping {name}: fetch failed: "), failed.error
        assert any(o and o in failed.error for o in outcomes), failed.error


def test_a_large_object_written_by_one_fetch_is_not_there_for_the_next(tmp_path, world):
    """The fetch of B writes B's names into a large object; a later fetch of A looks for it."""
    writer = hostile(tmp_path, "large_object", world)
    engine.sync_until_caught_up(world.dsn, world.other, [writer], engine.Options(ignore_backoff=True))
    reader = write_mapping(tmp_path, "reader", steal(
        "(select string_agg(convert_from(lo_get(m.oid), 'UTF8'), ',') from pg_largeobject_metadata m)"))
    result = engine.sync_until_caught_up(world.dsn, world.tenancy, [mappings.load(reader / "reader", validate=False)],
                                         engine.Options(ignore_backoff=True))
    assert_nothing_leaked(world, result)


def test_a_fetch_that_ignores_the_limit_gets_one_page_and_a_clear_error(tmp_path, world):
    f.users_bulk(world.conn, world.tenancy, 20)
    fetch = ("select u.sequence_id, false as is_deleted, u.id, u.display_name from app.users u"
             " where u.sequence_id > %(cursor)s and %(tenancy_id)s::uuid is not null and %(limit)s > 0"
             " order by u.sequence_id")
    mapping = mappings.load(write_mapping(tmp_path, "unlimited", fetch) / "unlimited", validate=False)
    result = engine.sync_until_caught_up(world.dsn, world.tenancy, [mapping],
                                         engine.Options(page_size=5, ignore_backoff=True))
    [failed] = result.failed
    assert failed.error == ("mapping unlimited: fetch returned more than the 5 rows asked for;"
                            " it must end with limit %(limit)s")


def test_a_fetch_whose_cursor_always_advances_ends_with_a_clear_error(tmp_path, world):
    fetch = ("select %(cursor)s::bigint + 1 as sequence_id, false as is_deleted, u.id, u.display_name"
             " from app.users u where %(tenancy_id)s::uuid is not null order by u.id limit least(%(limit)s, 1)")
    mapping = mappings.load(write_mapping(tmp_path, "endless", fetch) / "endless", validate=False)
    started = time.monotonic()
    result = engine.sync_until_caught_up(world.dsn, world.tenancy, [mapping], engine.Options(ignore_backoff=True))
    assert time.monotonic() - started < 60
    [failed] = result.failed
    assert failed.error.startswith("mapping endless: fetch returned sequence ids outside (")


def test_a_mapping_that_never_catches_up_in_a_round_is_stopped(tmp_path, world):
    f.users_bulk(world.conn, world.tenancy, 30)
    chosen = without_snapshots(mappings.select(mappings.load_all(), ["users"]))
    result = engine.sync_until_caught_up(world.dsn, world.tenancy, chosen,
                                         engine.Options(page_size=2, max_pages=3, ignore_backoff=True))
    [failed] = result.failed
    assert failed.error == ("mapping users was not caught up after 3 pages in one round; stopped"
                            " (does its fetch honour %(cursor)s?)")


def test_a_fetch_holding_an_advisory_lock_never_stalls_the_sequencer(tmp_path, world, connect):
    """The old sequencer key, taken by a slow fetch: passes go on, and the lock ends with the fetch."""
    slow = steal("pg_advisory_lock(hashtext('pyglue.sequence_changes'))::text || pg_sleep(1.5)::text")
    mapping = mappings.load(write_mapping(tmp_path, "locker", slow) / "locker", validate=False)
    done = threading.Event()
    sync = threading.Thread(target=lambda: (engine.sync_until_caught_up(
        world.dsn, world.tenancy, [mapping], engine.Options(ignore_backoff=True)), done.set()), daemon=True)
    sync.start()
    watcher = connect(world.dsn, autocommit=True)
    deadline = time.monotonic() + 10
    while not watcher.execute("select count(*) as n from pg_locks l join pg_stat_activity a using (pid)"
                              " where l.locktype = 'advisory' and a.application_name = 'pyglue fetch'"
                              ).fetchone()["n"]:
        assert time.monotonic() < deadline, "the fetch never took its lock"
        time.sleep(0.02)
    f.user(world.conn, world.tenancy, "during")
    started = time.monotonic()
    assert capture.sequence_pass(watcher, 100) >= 1
    assert time.monotonic() - started < 1.0
    sync.join(timeout=30)
    assert done.is_set()
    # in this database (a session of an earlier test elsewhere on the server may still be closing)
    assert watcher.execute("select count(*) as n from pg_locks where locktype = 'advisory' and database ="
                           " (select oid from pg_database where datname = current_database())").fetchone()["n"] == 0


def test_a_target_lock_taken_by_another_role_is_reported_not_waited_out_silently(world):
    """Any login of the target (here: pyglue_fetch, which may connect to it) that learned the
    key from pg_locks and holds it is named in the target's error."""
    f.user(world.conn, world.tenancy)
    key = world.conn.execute("select lock_key from pyglue.sync_targets where name = 'main'").fetchone()["lock_key"]
    with psycopg.connect(fetch.fetch_dsn(world.targets["main"]), autocommit=True) as squatter:
        squatter.execute("select pg_advisory_lock(%s)", (key,))
        result = engine.sync_until_caught_up(world.dsn, world.tenancy, mappings.load_all(),
                                             engine.Options(lock_timeout_s=0.3, ignore_backoff=True))
    [failed] = result.failed
    assert failed.error.startswith("the target's sync lock is held by role 'pyglue_fetch' (pid ")
    assert failed.error.endswith("not by a pyglue sync; end that session")


def test_the_source_database_itself_is_refused_as_a_target(world):
    targets.add(world.conn, world.tenancy, "self", world.dsn)
    result = world.sync()
    failed = {t.name: t.error for t in result.failed}
    assert failed == {"self": "the target is the source database itself; refusing to sync into it"}


def test_a_squatter_on_the_claim_lock_of_a_new_target_is_named(world):
    """The claim lock of a first sync has a fixed key (every tenancy's first sync into a
    database must meet on it); a session of another role holding it is named, after 10 s."""
    with psycopg.connect(fetch.fetch_dsn(world.targets["main"]), autocommit=True) as squatter:
        squatter.execute("select pg_advisory_lock(%s)", (target_module.CLAIM_KEY,))
        [failed] = world.sync().failed
    assert failed.error.startswith("the target's sync lock is held by role 'pyglue_fetch' (pid ")
