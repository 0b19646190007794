"""Bad input to the CLI (issue 8): each is one line on stderr naming the bad value, a non-zero
exit, no traceback, and nothing written (no target table, no recorded failure, the queue and
the flagged changes left as they were)."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from pyglue import dsn as dsns
from pyglue.sync import targets
from tests import factories as f
from tests.syncing import make_world
from tests.test_cli import run

UNREACHABLE = "postgresql://bob@127.0.0.1:1/nodb"  # a command that got as far as connecting says so
TENANT = "00000000-0000-0000-0000-000000000008"


def one_line(done) -> str:
    """The single line the command printed on stderr."""
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.fixture
def world(fresh_db, connect, make_database):
    w = make_world(fresh_db, connect, make_database)
    f.user(w.conn, w.tenancy, "alice")
    w.add_target()
    return w


def target_tables(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as c:
        return [r[0] for r in c.execute("select tablename from pg_tables where schemaname = 'public'")]


def recorded_state(world) -> list[tuple]:
    """What a run would change in the source: cursors, recorded errors, queue, unsequenced rows."""
    status = [(r["target_name"], r["mapping_name"], r["last_synced_sequence_id"], r["last_error"],
               r["queue_depth"]) for r in targets.status(world.conn, world.tenancy)]
    pending = world.conn.execute("select coalesce(sum(pending), 0) as n from pyglue.pending_changes()").fetchone()
    return sorted(status, key=str) + [("pending", pending["n"])]


# -- 1. numeric options out of range, nan and inf: usage errors before anything runs -------------

OUT_OF_RANGE = [
    (["sync", "--tenant", TENANT, "--page-size", str(10**20)], "--page-size", str(10**20)),
    (["sync", "--tenant", TENANT, "--page-size", "0"], "--page-size", "0"),
    (["sync", "--tenant", TENANT, "--statement-timeout", str(10**10)], "--statement-timeout", str(10**10)),
    (["sync", "--tenant", TENANT, "--lock-wait", "nan"], "--lock-wait", "nan"),
    (["sync", "--tenant", TENANT, "--lock-wait", "inf"], "--lock-wait", "inf"),
    (["worker", "--lease", "nan"], "--lease", "nan"),
    (["worker", "--lease", "inf"], "--lease", "inf"),
    (["worker", "--lease", "-inf"], "--lease", "-inf"),
    (["worker", "--lease", "1e400"], "--lease", "1e400"),  # reads as inf
    (["worker", "--lease", "86400.5"], "--lease", "86400.5"),
    (["worker", "--sequencer-interval", "nan"], "--sequencer-interval", "nan"),
    (["worker", "--sequencer-interval", "3600.5"], "--sequencer-interval", "3600.5"),
    (["worker", "--page-size", str(10**20)], "--page-size", str(10**20)),
    (["worker", "--statement-timeout", str(10**10)], "--statement-timeout", str(10**10)),
    (["worker", "--concurrency", "65"], "--concurrency", "65"),
    (["sequence", "--batch-size", str(2**31)], "--batch-size", str(2**31)),
    (["db", "migrate", "--lock-timeout", "nan"], "--lock-timeout", "nan"),
    (["db", "migrate", "--lock-timeout", "0.05"], "--lock-timeout", "0.05"),  # lock_timeout 0 would wait forever
    (["db", "rollback", "--all", "--lock-timeout", "inf"], "--lock-timeout", "inf"),
    (["demo", "--users", str(10**7)], "--users", str(10**7)),
]


@pytest.mark.parametrize("args, option, value", OUT_OF_RANGE, ids=[f"{a[0]} {o} {v}" for a, o, v in OUT_OF_RANGE])
def test_a_numeric_option_out_of_range_is_a_usage_error(args, option, value):
    done = run("--dsn", UNREACHABLE, *args)
    assert done.returncode == 2, done.stderr
    line = one_line(done)  # not "cannot connect": the value was refused before any connection
    assert line.startswith(f"error: Invalid value for '{option}': {value} "), line
    assert done.stdout == ""


def test_nan_is_named_as_not_finite():
    done = run("--dsn", UNREACHABLE, "worker", "--lease", "nan")
    assert one_line(done) == "error: Invalid value for '--lease': nan is not a finite number. (see 'pyglue worker -h')"


def test_in_range_values_still_pass(fresh_db):
    done = run("--dsn", fresh_db, "sequence", "--batch-size", "1000000", "--json")
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("args", [
    ["sync", "--page-size", str(10**20)],
    ["sync", "--statement-timeout", str(10**10)],
    ["sync", "--lock-wait", "nan"],
])
def test_a_sync_with_a_bad_value_records_no_failure_and_writes_nothing(world, args):
    before = recorded_state(world)
    done = run("--dsn", world.dsn, args[0], "--tenant", str(world.tenancy), *args[1:])
    assert done.returncode == 2
    assert args[-1] in one_line(done)
    assert recorded_state(world) == before
    assert target_tables(world.targets["main"]) == []


@pytest.mark.parametrize("args", [["--lease", "nan"], ["--lease", "inf"], ["--sequencer-interval", "nan"],
                                  ["--page-size", str(10**20)], ["--statement-timeout", str(10**10)]])
def test_a_worker_with_a_bad_value_claims_nothing(world, args):
    before = recorded_state(world)
    done = run("--dsn", world.dsn, "worker", "--until-idle", *args)
    assert done.returncode == 2
    assert args[-1] in one_line(done)
    assert recorded_state(world) == before  # the first-sync request is still queued
    assert target_tables(world.targets["main"]) == []


def test_sequence_with_a_bad_batch_size_stamps_nothing(world):
    before = recorded_state(world)
    done = run("--dsn", world.dsn, "sequence", "--batch-size", str(2**31))
    assert done.returncode == 2
    assert str(2**31) in one_line(done)
    assert recorded_state(world) == before
    assert before[-1][1] > 0  # alice is still flagged, not sequenced


def test_a_dsn_given_as_an_argument_is_not_echoed():
    done = run("--dsn", UNREACHABLE, "status", "postgresql://u:Zz-Secret-42@host/db")
    assert done.returncode == 2
    assert "Zz-Secret-42" not in done.stderr + done.stdout
    assert one_line(done).startswith("error: Got unexpected extra argument")


# -- 2. a database that is not migrated --------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["status"],
    ["status", "--tenant", TENANT],
    ["sync", "--tenant", TENANT],
    ["targets", "list"],
    ["targets", "add", "--tenant", TENANT, "--name", "main", "--dsn", "postgresql://u@h/db"],
    ["worker", "--until-idle"],
    ["sequence"],
    ["fusebox"],
])
def test_a_database_not_migrated_says_to_migrate(make_database, connect, args):
    empty = make_database()
    done = run("--dsn", empty, *args)
    assert done.returncode == 1, done.stderr
    line = one_line(done)
    where = dsns.describe(empty)
    assert line.startswith(f"error: {where} is not migrated ("), line
    assert line.endswith("): run pyglue db migrate"), line
    schemas = connect(empty).execute(
        "select nspname from pg_namespace where nspname in ('pyglue', 'app', 'billing')").fetchall()
    assert schemas == []


def test_other_missing_objects_are_not_called_unmigrated(conn):
    from pyglue.cli import _names_pyglue_object

    with pytest.raises(psycopg.errors.UndefinedTable) as caught:
        conn.execute("select * from myapp.things")
    assert not _names_pyglue_object(caught.value)


# -- 3. an unknown tenancy ---------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["sync"],
    ["status"],
    ["targets", "list"],
    ["targets", "verify"],  # says so itself
    ["targets", "enable", "--name", "main"],
    ["targets", "disable", "--name", "main"],
    ["targets", "remove", "--name", "main"],
    ["targets", "add", "--name", "main", "--dsn", "postgresql://u@127.0.0.1/db"],
])
def test_an_unknown_tenancy_is_an_error(world, args):
    before = recorded_state(world)
    unknown = uuid.uuid4()
    done = run("--dsn", world.dsn, *args[:2], "--tenant", str(unknown), *args[2:])
    assert done.returncode == 1, done.stderr
    assert one_line(done) == f"error: no tenancy {unknown}"
    assert recorded_state(world) == before
    assert [t["name"] for t in targets.listing(world.conn)] == ["main"]


def test_a_known_tenancy_still_syncs(world):
    done = run("--dsn", world.dsn, "sync", "--tenant", str(world.tenancy), "--json")
    assert done.returncode == 0, done.stderr
    assert "users" in target_tables(world.targets["main"])


# -- a target's connection string --------------------------------------------------------------

@pytest.mark.parametrize("bad, expected", [
    ("host=127.0.0.1 port=notaport password=Zz-Secret-42",
     "error: invalid connection string: port 'notaport' is not a number"),
    ("host=127.0.0.1 password='Zz-Secret-42", "error: invalid connection string: cannot parse it"),
    ("postgresql://u:Zz@Bad-Pw-123@127.0.0.1/db", "error: invalid connection string: the URL has an unencoded '@'"),
    ("postgresql://u:Zz/Bad-Pw-123@127.0.0.1/db", "error: invalid connection string"),
])
def test_a_malformed_target_dsn_is_refused_without_its_password(world, bad, expected):
    done = run("--dsn", world.dsn, "targets", "add", "--tenant", str(world.tenancy), "--name", "second", "--dsn", bad)
    assert done.returncode == 1, done.stderr
    assert one_line(done).startswith(expected)
    for secret in ("Zz-Secret-42", "Bad-Pw-123", "Zz@", "Zz/"):
        assert secret not in done.stderr + done.stdout
    assert [t["name"] for t in targets.listing(world.conn)] == ["main"]
