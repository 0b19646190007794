"""Targets, status and failures: isolation between tenancies, a dead target, redaction."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from pyglue.cli import cli
from pyglue.errors import PyglueError
from pyglue.sync import targets
from tests import factories as f
from tests.syncing import make_world

SECRET = "hunter2-Secret"
BAD_DSN = f"postgresql://syncer:{SECRET}@127.0.0.1:1/nowhere"


@pytest.fixture
def world(fresh_db, connect, make_database):
    return make_world(fresh_db, connect, make_database)


def test_two_tenancies_with_two_and_three_targets_each_see_only_their_rows(world):
    a, b = world.tenancy, f.tenancy(world.conn, "second")
    users = {a: {f.user(world.conn, a, f"a{i}") for i in range(5)},
             b: {f.user(world.conn, b, f"b{i}") for i in range(7)}}
    for name in ("a1", "a2"):
        world.add_target(name, tenancy=a)
    for name in ("b1", "b2", "b3"):
        world.add_target(name, tenancy=b)
    world.sync(tenancy=a)
    world.sync(tenancy=b)
    for name in ("a1", "a2"):
        assert {r["id"] for r in world.rows("users", name)} == users[a]
    for name in ("b1", "b2", "b3"):
        assert {r["id"] for r in world.rows("users", name)} == users[b]


def test_a_dead_target_does_not_block_a_good_one_and_its_error_is_kept(world):
    f.users_bulk(world.conn, world.tenancy, 20)
    world.add_target("good")
    targets.add(world.conn, world.tenancy, "bad", BAD_DSN)
    result = world.sync()
    assert len(world.rows("users", "good")) == 20
    [failed] = result.failed
    assert failed.name == "bad" and "cannot connect to database 'nowhere' on 127.0.0.1:1" in failed.error
    status = {(r["target_name"], r["mapping_name"]): r for r in targets.status(world.conn, world.tenancy)}
    assert status[("good", "users")]["pending_rows"] == 0
    assert status[("bad", "users")]["pending_rows"] == 20
    assert "cannot connect" in status[("bad", "users")]["last_error"]
    assert status[("bad", "users")]["retry_after"] is not None
    assert SECRET not in json.dumps(targets.status(world.conn), default=str)

    # a second failure backs off longer; the target comes back when it is fixed
    first_retry = status[("bad", "users")]["retry_after"]
    world.sync()
    again = world.conn.execute("select retry_after, consecutive_failures from pyglue.sync_targets"
                               " where name = 'bad'").fetchone()
    assert again["consecutive_failures"] == 2 and again["retry_after"] > first_retry
    fixed = world.make_database()
    world.conn.execute("update pyglue.sync_targets set connection_string = %s where name = 'bad'", (fixed,))
    world.targets["bad"] = fixed
    assert world.sync().failed == []
    assert len(world.rows("users", "bad")) == 20
    healed = world.conn.execute("select retry_after, consecutive_failures from pyglue.sync_targets"
                                " where name = 'bad'").fetchone()
    assert healed == {"retry_after": None, "consecutive_failures": 0}


def test_status_counts_pending_rows_not_id_gaps(world):
    world.add_target()
    f.users_bulk(world.conn, world.tenancy, 10)
    world.sync()
    for _ in range(5):  # five updates of one row: ids jump by five, one row is pending
        world.conn.execute("update app.users set display_name = display_name || '!'"
                           " where id = (select id from app.users order by display_name limit 1)")
        f.sequence_all(world.conn)
    world.conn.execute("delete from app.users where id = (select id from app.users order by display_name desc limit 1)")
    rows = {r["mapping_name"]: r for r in targets.status(world.conn, world.tenancy)}
    assert rows["users"]["pending_rows"] == 2
    assert rows["users"]["queue_depth"] == 1


def test_status_cli_and_json(world):
    world.add_target()
    f.user(world.conn, world.tenancy)
    world.sync()
    result = CliRunner().invoke(cli, ["--dsn", world.dsn, "status", "--tenant", str(world.tenancy), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert {r["mapping_name"] for r in rows} == {"users", "contact_channels", "teams", "team_member_profiles"}
    assert all(r["pending_rows"] == 0 for r in rows)


def test_targets_cli_add_list_disable_enable_remove_never_print_the_password(world):
    run = CliRunner().invoke
    t = str(world.tenancy)
    added = run(cli, ["--dsn", world.dsn, "targets", "add", "--tenant", t, "--name", "ext", "--dsn", BAD_DSN])
    assert added.exit_code == 0, added.output
    listed = run(cli, ["--dsn", world.dsn, "targets", "list"])
    assert "ext" in listed.output and "'nowhere' on 127.0.0.1:1" in listed.output and SECRET not in listed.output
    assert "disabled" in run(cli, ["--dsn", world.dsn, "targets", "disable", "--tenant", t, "--name", "ext"]).output
    assert run(cli, ["--dsn", world.dsn, "targets", "enable", "--tenant", t, "--name", "ext"]).exit_code == 0
    duplicate = run(cli, ["--dsn", world.dsn, "targets", "add", "--tenant", t, "--name", "ext", "--dsn", BAD_DSN])
    assert duplicate.exit_code != 0
    assert run(cli, ["--dsn", world.dsn, "targets", "remove", "--tenant", t, "--name", "ext"]).exit_code == 0
    missing = run(cli, ["--dsn", world.dsn, "targets", "remove", "--tenant", t, "--name", "ext"])
    assert isinstance(missing.exception, PyglueError) and "no sync target 'ext'" in str(missing.exception)


@pytest.mark.parametrize("name, dsn, message", [
    ("bad name!", "dbname=x", "invalid sync target name 'bad name!'"),
    ("ok", "  ", "connection string of sync target ok must not be empty"),
    ("ok", f"host=x password={SECRET} port=notaport", "invalid connection string"),
])
def test_bad_targets_are_refused(world, name, dsn, message):
    with pytest.raises(PyglueError, match=message) as error:
        targets.add(world.conn, world.tenancy, name, dsn)
    assert SECRET not in str(error.value)
    assert world.conn.execute("select count(*) as n from pyglue.sync_targets").fetchone()["n"] == 0


def test_sync_cli_exits_nonzero_with_one_line_when_a_target_fails(world):
    import subprocess
    import sys

    f.user(world.conn, world.tenancy)
    world.add_target("good")
    targets.add(world.conn, world.tenancy, "bad", BAD_DSN)
    done = subprocess.run([sys.executable, "-m", "pyglue", "--dsn", world.dsn, "sync", "--tenant", str(world.tenancy)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().startswith(f"error: target 'bad' of tenancy {world.tenancy} failed: cannot connect")
    assert len(done.stderr.strip().splitlines()) == 1
    assert "good: 1 row(s) applied" in done.stdout
    assert SECRET not in done.stdout + done.stderr


def test_purge_keeps_tombstones_a_target_still_needs(world):
    world.add_target()
    a, b = f.user(world.conn, world.tenancy), f.user(world.conn, world.tenancy)
    world.sync()
    world.conn.execute("delete from app.users where id = %s", (a,))
    world.sync()  # the target has seen a's tombstone
    world.conn.execute("delete from app.users where id = %s", (b,))
    f.sequence_all(world.conn)  # b's tombstone is stamped but not synced
    world.conn.execute("update pyglue.deleted_rows set deleted_at = now() - interval '30 days'")
    assert world.conn.execute("select pyglue.purge_deleted_rows('1 day') as n").fetchone()["n"] == 1
    left = [r["k"] for r in world.conn.execute("select primary_key->>'id' as k from pyglue.deleted_rows")]
    assert left == [str(b)]
    world.sync()
    assert world.rows("users") == []


def test_a_target_for_an_unknown_tenancy_is_refused(world):
    import uuid

    stranger = uuid.uuid4()
    with pytest.raises(PyglueError, match=f"no tenancy {stranger}"):
        targets.add(world.conn, stranger, "x", "dbname=x")


def test_status_says_failing_until_a_success_keeps_the_error_as_history_and_reports_lag(world, connect):
    f.users_bulk(world.conn, world.tenancy, 3)
    dsn = world.add_target("flaky")
    name = dsn.split("dbname=")[1].split()[0]
    admin = connect(world.dsn, autocommit=True)
    admin.execute(f'alter database "{name}" with allow_connections false')
    world.sync()
    down = {r["mapping_name"]: r for r in targets.status(world.conn, world.tenancy)}["users"]
    assert down["failing"] and "is not currently accepting connections" in down["last_error"]
    assert down["oldest_unapplied_age"] is not None and down["oldest_unapplied_age"].total_seconds() >= 0
    line = CliRunner().invoke(cli, ["--dsn", world.dsn, "status", "--tenant", str(world.tenancy)]).output
    assert "FAILING since" in line and " lag " in line

    admin.execute(f'alter database "{name}" with allow_connections true')
    assert world.sync().failed == []
    up = {r["mapping_name"]: r for r in targets.status(world.conn, world.tenancy)}["users"]
    assert not up["failing"] and up["last_error"] == down["last_error"]
    assert up["last_error_at"] == down["last_error_at"] and up["oldest_unapplied_age"] is None
    line = CliRunner().invoke(cli, ["--dsn", world.dsn, "status", "--tenant", str(world.tenancy)]).output
    assert "FAILING" not in line and "(recovered; last error at " in line


def test_status_lists_only_the_mappings_a_target_syncs(world, tmp_path):
    from tests.syncing import write_mapping

    f.user(world.conn, world.tenancy)
    world.add_target()
    extra = write_mapping(tmp_path, "extra_users", "select u.sequence_id, false as is_deleted, u.id, u.display_name"
                          " from app.users u where u.tenancy_id = %(tenancy_id)s and u.sequence_id > %(cursor)s"
                          " order by u.sequence_id limit %(limit)s")
    world.sync(names=["extra_users"], extra_dirs=[extra])  # registered once, for this target only
    other = f.tenancy(world.conn, "other")
    world.add_target("theirs", tenancy=other)
    world.sync(tenancy=other)
    mine = {r["mapping_name"] for r in targets.status(world.conn, world.tenancy)}
    theirs = {r["mapping_name"] for r in targets.status(world.conn, other)}
    assert mine == {"extra_users"}
    assert theirs == {"users", "contact_channels", "teams", "team_member_profiles"}
