"""`pyglue demo` (issue 15) at a reduced size on a test database: every step runs, the
targets equal their sources, a re-run works, --reset starts clean."""

from __future__ import annotations

import psycopg
from click.testing import CliRunner

from pyglue import demo as job
from pyglue.cli import cli

STEPS = ["[1/8] server and migrations", "[2/8] projects and seeds", "[3/8] a sync target per tenancy",
         "[4/8] changes and deletes arrive", "[5/8] billing of the internal project", "[6/8] metrics of acme",
         "[7/8] targets equal their sources", "[8/8] look around"]


def run(dsn, *extra):
    return CliRunner().invoke(cli, ["--dsn", dsn, "demo", "--users", "300", "--events", "3000", *extra])


def test_demo_runs_every_step_twice_and_after_a_reset(fresh_db, server, tmp_path):
    chart = tmp_path / "chart.png"
    try:
        first = run(fresh_db, "--chart", str(chart))
        assert first.exit_code == 0, first.output
        out = first.output
        assert all(s in out for s in STEPS), out
        assert "acme (tenancy 00000000-0000-4000-8000-00000000ac3e): 300 users (300 added now), 3,000 events" in out
        assert "in the target: 2 of 2 new names, deleted user present: no, new user present: yes" in out
        assert "backfill: 4 team(s) granted the free plan; regen: 4 subscription(s) moved" in out
        # 100 credits a month (when-repeated) and 50 by hand that expire in a week; 5 seats since the regen
        assert ": credits 150 now, 100 in 40 days; seats 5 now, 5 in 40 days" in out
        assert "item_change   credits  50" in out
        assert "MISMATCH" not in out and "FAILING" not in out
        assert "every target equals its source" in out
        assert chart.read_bytes()[:4] == b"\x89PNG"
        pending = [line for line in out.splitlines() if line.startswith("status ")]
        assert len(pending) == 8 and all(" pending      0 " in line for line in pending), pending

        again = run(fresh_db)
        assert again.exit_code == 0, again.output
        assert "0 applied now" in again.output and "(0 added now), 0 events added now" in again.output
        assert "backfill: 0 team(s) granted the free plan; regen: 0 subscription(s) moved" in again.output
        assert ": credits 150 now, 100 in 40 days; seats 5 now, 5 in 40 days" in again.output

        reset = run(fresh_db, "--reset")
        assert reset.exit_code == 0, reset.output
        assert "reset: dropped project acme" in reset.output and f"reset: dropped database {job.CUSTOMERS[0].target_db(fresh_db)}" in reset.output
        assert "300 users (300 added now)" in reset.output
    finally:
        with psycopg.connect(server.dsn, autocommit=True) as c:
            for t in job.CUSTOMERS:
                c.execute(f"drop database if exists {t.target_db(fresh_db)} with (force)")
