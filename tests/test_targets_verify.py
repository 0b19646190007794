"""`pyglue targets verify`: lost, stale and extra rows found and repaired; pending changes are not differences."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pyglue import paths
from pyglue.sync import mappings, targets, verify
from tests import factories as f
from tests.syncing import make_world

SECRET = "v3rify-Pa55word"


@pytest.fixture
def world(fresh_db, connect, make_database):
    w = make_world(fresh_db, connect, make_database)
    w.add_target()
    return w


@pytest.fixture
def synced(world):
    """Three users (emails, metadata), a team with two members, all synced; ids in world.ids."""
    c, t = world.conn, world.tenancy
    ada = f.user(c, t, "Ada", email="ada@example.com")
    bob = f.user(c, t, "Bob", email="bob@example.com")
    cy = f.user(c, t, "Cy")
    c.execute("update app.users set client_metadata = %s, server_metadata = %s where id = %s",
              ('{"theme": "dark", "tags": ["a", "b"], "n": 1.50}', '{"plan": "pro"}', ada))
    core = f.team(c, t, "core")
    f.member(c, t, core, ada)
    f.member(c, t, core, bob)
    world.sync()
    world.ids = {"ada": ada, "bob": bob, "cy": cy, "core": core}
    return world


def check(world, repair=False, names=None, **options) -> verify.VerifyResult:
    chosen = mappings.select(mappings.load_all(), names)
    return verify.verify_tenancy(world.dsn, world.tenancy, chosen, verify.VerifyOptions(repair=repair, **options))


def by_mapping(result: verify.VerifyResult, target: str = "main") -> dict[str, verify.MappingCheck]:
    [t] = [t for t in result.targets if t.name == target]
    assert t.error is None, t.error
    return {m.mapping: m for m in t.mappings}


def target_exec(world, query, params=(), target="main"):
    with psycopg.connect(world.targets[target], autocommit=True) as c:
        c.execute(query, params)


def users_by_id(world) -> dict:
    return {r["id"]: r for r in world.rows("users")}


def test_a_healthy_target_reports_no_differences(synced):
    result = check(synced)
    found = by_mapping(result)
    assert set(found) == {"users", "contact_channels", "teams", "team_member_profiles"}
    assert {name: (m.source_rows, m.pending, m.differences) for name, m in found.items()} == {
        "users": (3, 0, 0), "contact_channels": (2, 0, 0), "teams": (1, 0, 0), "team_member_profiles": (2, 0, 0)}
    assert result.problem() is None
    assert result.lines()[0] == "main contact_channels: ok (2 rows, 0 pending)"


def test_rows_deleted_in_the_target_are_lost_and_repair_restores_them(synced):
    before = users_by_id(synced)
    ada, bob = synced.ids["ada"], synced.ids["bob"]
    target_exec(synced, "delete from users where id = any(%s)", ([ada, bob],))
    target_exec(synced, "delete from team_member_profiles where user_id = %s", (bob,))

    found = by_mapping(check(synced))
    assert found["users"].lost == sorted([(str(ada),), (str(bob),)])
    assert (found["users"].stale, found["users"].extra) == ([], [])
    assert found["team_member_profiles"].lost == [(str(synced.ids["core"]), str(bob))]
    assert found["contact_channels"].differences == 0

    repaired = by_mapping(check(synced, repair=True))
    assert repaired["users"].repaired and len(repaired["users"].lost) == 2
    assert users_by_id(synced) == before  # every column, the jsonb metadata and timestamps included
    assert {(r["team_id"], r["user_id"]) for r in synced.rows("team_member_profiles")} == \
        {(synced.ids["core"], ada), (synced.ids["core"], bob)}
    assert check(synced).problem() is None


def test_rows_altered_in_the_target_are_stale_and_repaired(synced):
    before = users_by_id(synced)
    ada, bob, cy = synced.ids["ada"], synced.ids["bob"], synced.ids["cy"]
    target_exec(synced, "update users set display_name = 'Mallory' where id = %s", (bob,))
    target_exec(synced, """update users set client_metadata = jsonb_set(client_metadata, '{theme}', '"light"')
                           where id = %s""", (ada,))
    # the same jsonb written with another key order and spacing is equal, not stale
    target_exec(synced, """update users set server_metadata = '{ "plan":"pro" }' where id = %s""", (ada,))
    target_exec(synced, "update users set primary_email_verified = true where id = %s", (cy,))

    found = by_mapping(check(synced))
    assert found["users"].stale == sorted([(str(ada),), (str(bob),), (str(cy),)])
    assert (found["users"].lost, found["users"].extra) == ([], [])

    check(synced, repair=True)
    after = users_by_id(synced)
    assert after == before
    assert after[bob]["display_name"] == "Bob"
    assert after[ada]["client_metadata"] == {"theme": "dark", "tags": ["a", "b"], "n": 1.50}
    assert after[cy]["primary_email_verified"] is False
    assert check(synced).problem() is None


PRINTED_MAPPING = """select u.sequence_id, false as is_deleted, u.id,
       json_build_object('name', u.display_name, 'n', 1.50) as meta, 2.5::numeric as amount
from app.users u
where u.tenancy_id = %(tenancy_id)s and u.sequence_id > %(cursor)s
order by u.sequence_id
limit %(limit)s"""


def printed_mapping(folder):
    d = folder / "printed"
    d.mkdir()
    (d / "mapping.json").write_text(json.dumps({"source_table": "app.users", "target_table": "printed",
                                                "key_columns": ["id"]}))
    (d / "fetch.sql.j2").write_text(PRINTED_MAPPING)
    (d / "ddl.sql.j2").write_text("create table if not exists {{ schema | ident }}.{{ table | ident }}"
                                  " (id uuid primary key, meta jsonb, amount numeric(10, 2))")
    return folder


def test_values_printed_differently_but_stored_equal_are_not_stale(synced, tmp_path):
    """json in the source, jsonb in the target (key order, spacing) and a numeric whose scale the target
    sets: the text differs, the values do not, and the engine's upsert would write nothing."""
    folder = printed_mapping(tmp_path)
    synced.sync(names=["printed"], extra_dirs=[folder])
    row = synced.rows("printed")[0]
    assert (row["meta"], str(row["amount"])) == ({"name": row["meta"]["name"], "n": 1.50}, "2.50")
    chosen = mappings.select(mappings.load_all([folder]), ["printed"])
    result = verify.verify_tenancy(synced.dsn, synced.tenancy, chosen)
    assert by_mapping(result)["printed"].differences == 0, result.lines()

    ada = synced.ids["ada"]
    target_exec(synced, """update printed set meta = '{"name": "Eve", "n": 1.5}' where id = %s""", (ada,))
    [printed] = by_mapping(verify.verify_tenancy(synced.dsn, synced.tenancy, chosen))["printed"].stale
    assert printed == (str(ada),)
    verify.verify_tenancy(synced.dsn, synced.tenancy, chosen, verify.VerifyOptions(repair=True))
    assert {r["id"]: r["meta"]["name"] for r in synced.rows("printed")}[ada] == "Ada"


def test_rows_inserted_in_the_target_are_extra_and_repair_removes_them(synced):
    intruder = uuid.uuid4()
    target_exec(synced, "insert into users (id, display_name) values (%s, 'intruder')", (intruder,))
    stray_team = uuid.uuid4()
    target_exec(synced, "insert into team_member_profiles (team_id, user_id, created_at) values (%s, %s, now())",
                (stray_team, synced.ids["ada"]))

    found = by_mapping(check(synced))
    assert found["users"].extra == [(str(intruder),)]
    assert found["team_member_profiles"].extra == [(str(stray_team), str(synced.ids["ada"]))]
    assert found["users"].lost == [] and found["users"].stale == []

    result = check(synced, repair=True)
    assert "main users: repaired 0 lost, 0 stale, 1 extra (3 rows, 0 pending)" in result.lines()
    assert result.lines()[-1] == "repaired 2 row(s)"
    assert intruder not in users_by_id(synced)
    assert set(users_by_id(synced)) == {synced.ids[n] for n in ("ada", "bob", "cy")}
    assert len(synced.rows("team_member_profiles")) == 2
    assert check(synced).problem() is None


def test_a_row_deleted_in_the_source_but_kept_in_the_target_is_extra(synced):
    """The target kept a row whose source was deleted and whose tombstone the target passed."""
    cy = synced.ids["cy"]
    synced.conn.execute("delete from app.users where id = %s", (cy,))
    synced.sync()
    target_exec(synced, "insert into users (id, display_name) values (%s, 'Cy')", (cy,))
    found = by_mapping(check(synced))
    assert found["users"].extra == [(str(cy),)] and found["users"].source_rows == 2


def test_changes_not_yet_synced_are_pending_not_differences(synced):
    c, t = synced.conn, synced.tenancy
    c.execute("update app.users set display_name = 'Ada L.' where id = %s", (synced.ids["ada"],))
    f.sequence_all(c)
    c.execute("delete from app.users where id = %s", (synced.ids["cy"],))  # not even sequenced
    f.user(c, t, "Dee")  # new, not sequenced

    result = check(synced)
    users = by_mapping(result)["users"]
    assert (users.pending, users.differences) == (3, 0)
    assert result.problem() is None
    assert "main users: ok (3 rows, 3 pending)" in result.lines()

    # a hand edit of a pending row is not reported either: the next sync overwrites it
    target_exec(synced, "update users set display_name = 'x' where id = %s", (synced.ids["ada"],))
    assert by_mapping(check(synced))["users"].differences == 0
    synced.sync()
    users = by_mapping(check(synced))["users"]
    assert (users.pending, users.differences, users.source_rows) == (0, 0, 3)
    assert {r["display_name"] for r in synced.rows("users")} == {"Ada L.", "Bob", "Dee"}


def test_pending_and_differences_are_told_apart_in_one_table(synced):
    ada, bob = synced.ids["ada"], synced.ids["bob"]
    synced.conn.execute("update app.users set display_name = 'Ada 2' where id = %s", (ada,))
    target_exec(synced, "delete from users where id = %s", (bob,))
    users = by_mapping(check(synced))["users"]
    assert (users.pending, users.lost, users.stale, users.extra) == (1, [(str(bob),)], [], [])


def test_a_mapping_never_synced_into_the_target_is_not_a_difference(world):
    f.users_bulk(world.conn, world.tenancy, 4)
    world.sync(names=["users"])
    found = by_mapping(check(world))
    assert found["users"].differences == 0 and found["users"].synced
    assert (found["teams"].synced, found["teams"].pending) == (False, 0)
    assert "main teams: not synced yet (0 pending)" in check(world).lines()


def test_repair_batches_and_takes_the_sync_lock(synced, connect):
    f.users_bulk(synced.conn, synced.tenancy, 25)
    synced.sync()
    target_exec(synced, "delete from users where display_name like 'bulk%%'")

    holder = connect(synced.targets["main"], autocommit=True)
    key = synced.conn.execute("select lock_key from pyglue.sync_targets").fetchone()["lock_key"]
    holder.execute("select pg_advisory_lock(%s)", (key,))
    [busy] = check(synced, repair=True, lock_timeout_s=0.2).targets
    assert "another sync of tenancy" in busy.error
    assert len(synced.rows("users")) == 3  # nothing written without the lock

    holder.execute("select pg_advisory_unlock_all()")
    users = by_mapping(check(synced, repair=True, batch_size=10))["users"]
    assert users.repaired and len(users.lost) == 25
    assert len(synced.rows("users")) == 28
    assert check(synced).problem() is None


def test_two_targets_are_checked_separately(synced):
    synced.add_target("second")
    synced.sync()
    target_exec(synced, "delete from teams", target="second")
    result = check(synced)
    assert by_mapping(result, "main")["teams"].differences == 0
    assert by_mapping(result, "second")["teams"].lost == [(str(synced.ids["core"]),)]
    assert result.problem().startswith("1 target table(s) of tenancy")


def run_cli(world, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pyglue", "--dsn", world.dsn, "targets", "verify",
                           "--tenant", str(world.tenancy), *args],
                          capture_output=True, text=True, cwd=paths.ROOT, timeout=120)


def with_password(dsn: str) -> tuple[str, str]:
    """The DSN with a password to watch for (the server's own, or one trust auth ignores)."""
    given = conninfo_to_dict(dsn).get("password")
    return (dsn, given) if given else (make_conninfo(dsn, password=SECRET), SECRET)


@pytest.mark.slow
def test_cli_exits_1_on_differences_then_repairs_and_exits_0(fresh_db, connect, make_database):
    world = make_world(fresh_db, connect, make_database)
    dsn, secret = with_password(make_database())
    world.add_target("main", dsn=dsn)
    f.users_bulk(world.conn, world.tenancy, 5)
    world.sync()
    target_exec(world, "delete from users where display_name = 'bulk1'")

    done = run_cli(world)
    assert done.returncode == 1
    assert "main users: 1 lost, 0 stale, 0 extra (5 rows, 0 pending)" in done.stdout.splitlines()
    assert done.stderr.strip().splitlines() == [
        f"error: 1 target table(s) of tenancy {world.tenancy} differ from the source"
        " (rerun with --repair to re-send the rows)"]
    assert secret not in done.stdout + done.stderr

    as_json = run_cli(world, "--json", "--mapping", "users")
    assert as_json.returncode == 1
    [report] = json.loads(as_json.stdout)["targets"]
    [users] = report["mappings"]
    assert (users["lost"], users["stale"], users["extra"], users["source_rows"]) == (1, 0, 0, 5)
    assert users["examples"]["lost"] == [[str(world.conn.execute(
        "select id from app.users where display_name = 'bulk1'").fetchone()["id"])]]

    fixed = run_cli(world, "--repair")
    assert fixed.returncode == 0, fixed.stderr
    assert "main users: repaired 1 lost, 0 stale, 0 extra (5 rows, 0 pending)" in fixed.stdout
    assert fixed.stdout.strip().endswith("repaired 1 row(s)")

    again = run_cli(world)
    assert again.returncode == 0 and again.stderr == ""
    assert "main users: ok (5 rows, 0 pending)" in again.stdout
    assert secret not in fixed.stdout + fixed.stderr + again.stdout


@pytest.mark.slow
def test_cli_unreachable_target_is_one_line_without_password(world):
    targets.add(world.conn, world.tenancy, "gone", f"postgresql://syncer:{SECRET}@127.0.0.1:1/nowhere")
    world.conn.execute("update pyglue.sync_targets set enabled = false where name = 'main'")
    done = run_cli(world)
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: target 'gone': cannot connect to database 'nowhere' on 127.0.0.1:1")
    assert done.stdout == ""
    assert SECRET not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def test_an_unreachable_target_does_not_stop_the_others(synced):
    targets.add(synced.conn, synced.tenancy, "gone", f"postgresql://syncer:{SECRET}@127.0.0.1:1/nowhere")
    result = check(synced)
    assert by_mapping(result)["users"].differences == 0
    [failed] = result.failed
    assert failed.name == "gone" and SECRET not in failed.error
    assert result.problem().startswith("target 'gone': cannot connect to database 'nowhere' on 127.0.0.1:1")


def test_unknown_tenancy_is_one_error(world):
    from pyglue.errors import PyglueError

    with pytest.raises(PyglueError, match="no tenancy"):
        verify.verify_tenancy(world.dsn, uuid.uuid4(), mappings.load_all())


def test_a_dropped_target_table_fails_that_target_without_a_half_report(synced):
    target_exec(synced, "drop table teams")
    result = check(synced)
    [failed] = result.failed
    assert '"public.teams" does not exist' in failed.error
    assert [m.mapping for m in failed.mappings] == ["contact_channels", "team_member_profiles"]  # checked before it


def test_sync_switched_off_in_the_fusebox_stops_verify(synced):
    from pyglue.errors import PyglueError

    synced.conn.execute("select pyglue.set_fusebox(null, null, false)")
    with pytest.raises(PyglueError, match="sync is off in the fusebox"):
        check(synced)
