"""The perf seeds (issue 12): perf/mock-users.sql and perf/mock-metric-events.sql run twice
continue the numbering; `pyglue seed users|events` drives them in batches, one transaction
each, with clear errors; `pyglue metrics --plot` writes the chart."""

from __future__ import annotations

import shutil
import subprocess

import psycopg
import pytest
from click.testing import CliRunner
from psycopg.rows import dict_row

from pyglue import paths, seed
from pyglue.cli import cli
from pyglue.errors import PyglueError
from tests.test_metrics import assert_rollups_match_rebuild, at, metrics

MOCK = "00000000-0000-4000-8000-00000000f00d"
END = "2026-03-31 00:00:00"


def invoke(dsn, *args):
    return CliRunner().invoke(cli, ["--dsn", dsn, *args])


def counts(dsn, tenancy):
    with psycopg.connect(dsn, row_factory=dict_row) as c:
        return c.execute("""
            select (select count(*) from app.users where tenancy_id = %(t)s) as users,
                   (select count(distinct display_name) from app.users where tenancy_id = %(t)s) as names,
                   (select max((server_metadata ->> 'mock_n')::int) from app.users where tenancy_id = %(t)s) as top,
                   (select count(*) from app.events where tenancy_id = %(t)s and event_type = '$user-activity') as events,
                   (select count(distinct id) from app.events where tenancy_id = %(t)s) as event_ids""",
                         {"t": tenancy}).fetchone()


def test_scripts_are_rerunnable_and_continue_the_numbering(fresh_db):
    """mock-users.sql twice adds the second batch; mock-metric-events.sql likewise (the next
    number is read from its marker event); the rollups they leave equal a rebuild."""
    for script, size in (("mock-users.sql", "users=60"), ("mock-users.sql", "users=60"),
                         ("mock-metric-events.sql", "events=900"), ("mock-metric-events.sql", "events=900")):
        subprocess.run([shutil.which("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-v", size, "-v",
                        f"end_at={END}+00", "-d", fresh_db, "-f", str(paths.ROOT / "perf" / script)],
                       check=True, capture_output=True)
    assert counts(fresh_db, MOCK) == {"users": 120, "names": 120, "top": 120, "events": 1800, "event_ids": 1801}
    with psycopg.connect(fresh_db, row_factory=dict_row) as c:
        marker = c.execute("select data from app.events where tenancy_id = %s and event_type = '$mock-seed'",
                           (MOCK,)).fetchall()
        assert marker == [{"data": {"next_k": 1800}}]
        m = metrics(c, MOCK, True, at(END))
        assert m["total_users"] == 120 and len(m["users_by_country"]) > 10 and m["auth_overview"]["total_teams"] == 3
        assert_rollups_match_rebuild(c, MOCK)


def test_seed_cli_adds_in_batches_and_continues(fresh_db):
    t = "00000000-0000-4000-8000-0000000005e1"
    out = invoke(fresh_db, "seed", "users", "--tenant", t, "--count", "25", "--batch", "10", "--end-at", END)
    assert out.exit_code == 0, out.output
    assert f"seeded 25 users into tenancy {t}" in out.output
    out = invoke(fresh_db, "seed", "events", "--tenant", t, "--count", "700", "--batch", "300", "--end-at", END)
    assert out.exit_code == 0, out.output
    assert invoke(fresh_db, "seed", "users", "--tenant", t, "--count", "5", "--end-at", END).exit_code == 0
    assert counts(fresh_db, t) == {"users": 30, "names": 30, "top": 30, "events": 700, "event_ids": 701}
    with psycopg.connect(fresh_db, row_factory=dict_row) as c:
        assert_rollups_match_rebuild(c, t)
        assert metrics(c, t, True, at(END))["total_users"] == 30


def test_seed_refuses_events_without_users_and_bad_counts(fresh_db):
    unknown = "00000000-0000-4000-8000-0000000005e2"
    out = invoke(fresh_db, "seed", "events", "--tenant", unknown, "--count", "10")
    assert out.exit_code != 0 and str(out.exception) == (
        f"no tenancy {unknown}: seed users first (pyglue seed users --tenant {unknown})")
    with psycopg.connect(fresh_db, autocommit=True) as c:
        c.execute("insert into app.projects (id, display_name) values ('plain', 'Plain') on conflict do nothing")
        c.execute("insert into app.tenancies (id, project_id, branch_id) values (%s, 'plain', 'main')", (unknown,))
    out = invoke(fresh_db, "seed", "events", "--tenant", unknown, "--count", "10")
    assert out.exit_code != 0 and str(out.exception) == (
        f"tenancy {unknown} has no mock users: run pyglue seed users --tenant {unknown}")
    out = invoke(fresh_db, "seed", "users", "--tenant", unknown, "--count", "0")
    assert out.exit_code == 2 and "0 is not in the range" in out.output
    out = invoke(fresh_db, "seed", "teams", "--tenant", unknown, "--count", "1")
    assert out.exit_code == 2 and "'teams' is not one of 'events', 'users'" in out.output
    assert counts(fresh_db, unknown)["users"] == 0


def test_a_failing_batch_keeps_the_batches_before_it_and_nothing_of_itself(fresh_db):
    """User 15's id is taken already: the second batch (users 11-20) fails on the key, the
    first stays, nothing of the second is written, and the error names how far it got."""
    t = "00000000-0000-4000-8000-0000000005e3"
    assert invoke(fresh_db, "seed", "users", "--tenant", t, "--count", "1").exit_code == 0
    with psycopg.connect(fresh_db, autocommit=True) as c:
        c.execute("insert into app.users (tenancy_id, id, display_name) values (%s, md5(%s || ':user:15')::uuid, 'squatter')",
                  (t, t))
    out = invoke(fresh_db, "seed", "users", "--tenant", t, "--count", "29", "--batch", "10")
    assert out.exit_code != 0
    message = str(out.exception)
    assert message.startswith("seeding users failed after 10 of 29: ") and "users_pkey" in message, message
    assert counts(fresh_db, t)["users"] == 1 + 10 + 1  # the first run, the first batch, the squatter


def test_psql_gets_the_connection_through_its_environment():
    env = seed.psql_environment("postgresql://alice:s3cret@db.example:6543/app?sslmode=require")
    assert {k: env[k] for k in ("PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE", "PGSSLMODE")} == {
        "PGHOST": "db.example", "PGPORT": "6543", "PGUSER": "alice", "PGPASSWORD": "s3cret", "PGDATABASE": "app",
        "PGSSLMODE": "require"}
    with pytest.raises(PyglueError, match="connection parameter 'krbsrvname' cannot be passed to psql"):
        seed.psql_environment("host=x krbsrvname=y")
    assert seed.batches(25, 10) == [10, 10, 5] and seed.batches(10, 10) == [10]


def test_metrics_plot_writes_a_png(fresh_db, tmp_path):
    from matplotlib import image

    t = "00000000-0000-4000-8000-0000000005e4"
    assert invoke(fresh_db, "seed", "users", "--tenant", t, "--count", "50").exit_code == 0
    assert invoke(fresh_db, "seed", "events", "--tenant", t, "--count", "2000").exit_code == 0
    chart = tmp_path / "metrics.png"
    out = invoke(fresh_db, "metrics", "--tenant", t, "--plot", str(chart))
    assert out.exit_code == 0, out.output
    assert out.output.rstrip().endswith(f"chart written to {chart}")
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width = image.imread(chart).shape[:2]
    assert (width, height) == (1300, 450)
    out = invoke(fresh_db, "metrics", "--tenant", t, "--plot", str(tmp_path / "metrics.svg"))
    assert out.exit_code != 0 and "name the file *.png" in str(out.exception)
    out = invoke(fresh_db, "metrics", "--tenant", t, "--plot", str(tmp_path / "missing" / "m.png"))
    assert out.exit_code != 0 and str(out.exception).startswith("cannot write the chart to ")
