"""`pyglue demo` end to end on a test database: seed, sync, change, sync, compare."""

from __future__ import annotations

import psycopg
from click.testing import CliRunner

from pyglue import demo as demo_job
from pyglue.cli import cli


def test_demo_syncs_and_the_target_equals_the_source(fresh_db, server):
    try:
        result = CliRunner().invoke(cli, ["--dsn", fresh_db, "demo", "--users", "300"])
        assert result.exit_code == 0, result.output
        assert "demo done: the target equals the source" in result.output
        assert "MISMATCH" not in result.output
        again = CliRunner().invoke(cli, ["--dsn", fresh_db, "demo", "--users", "300"])  # re-runnable
        assert again.exit_code == 0, again.output
        assert "0 applied now" in again.output
    finally:
        with psycopg.connect(server.dsn, autocommit=True) as c:
            c.execute(f"drop database if exists {demo_job.TARGET_DB} with (force)")
