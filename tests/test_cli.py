"""CLI errors: one line naming the bad value, non-zero exit, no traceback, never a password."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from pyglue import paths
from pyglue.cli import cli

SECRET = "s3cr3t-Pa55"


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pyglue", *args], capture_output=True, text=True,
                          cwd=paths.ROOT, timeout=60, env=env)


@pytest.mark.parametrize("dsn", [
    f"postgresql://bob:{SECRET}@127.0.0.1:1/nodb",
    f"host=127.0.0.1 port=1 user=bob password={SECRET} dbname=nodb",
])
def test_unreachable_database_is_one_line_without_password(dsn):
    done = run("--dsn", dsn, "db", "status")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: cannot connect to database 'nodb' on 127.0.0.1:1")
    assert SECRET not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr


def test_malformed_dsn_names_the_problem_not_the_password():
    done = run("--dsn", f"host=localhost password={SECRET} port=notaport", "db", "migrate")
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    assert "notaport" in done.stderr
    assert SECRET not in done.stderr


def test_dsn_from_environment_is_used_and_redacted():
    env = {"PATH": "/usr/bin:/bin", "PYGLUE_DSN": f"postgresql://bob:{SECRET}@127.0.0.1:1/envdb"}
    done = run("db", "status", env=env)
    assert done.returncode == 1
    assert "'envdb'" in done.stderr and SECRET not in done.stderr


def test_verbose_shows_the_traceback_still_without_password():
    done = run("-v", "--dsn", f"postgresql://bob:{SECRET}@127.0.0.1:1/nodb", "db", "status")
    assert done.returncode == 1
    assert "Traceback" in done.stderr
    assert SECRET not in done.stderr


def test_missing_migrations_dir_is_a_usage_error(shared_db):
    result = CliRunner().invoke(cli, ["--dsn", shared_db, "db", "migrate", "--migrations-dir", "/no/such/dir"])
    assert result.exit_code == 2
    assert "/no/such/dir" in result.output


def test_unknown_command_exits_nonzero():
    done = run("no-such-command")
    assert done.returncode == 2
    assert "no-such-command" in done.stderr


def test_every_option_has_help():
    def walk(command):
        yield command
        for sub in getattr(command, "commands", {}).values():
            yield from walk(sub)

    for command in walk(cli):
        for param in command.params:
            if param.param_type_name == "option" and param.name not in ("help", "version"):
                assert param.help, f"{command.name} --{param.name} has no help"


def test_db_status_lists_migrations(shared_db):
    result = CliRunner().invoke(cli, ["--dsn", shared_db, "db", "status"])
    assert result.exit_code == 0, result.output
    assert "applied  0001_schemas" in result.output
    assert " 0 pending" in result.output


@pytest.mark.parametrize("dsn", [
    f"postgresql://bob:my {SECRET}@127.0.0.1/db",  # libpq would quote the text around the space
    f"host=127.0.0.1 password=hunter2 {SECRET}",
])
def test_unparseable_dsn_never_echoes_its_text(dsn):
    done = run("--dsn", dsn, "db", "status")
    assert done.returncode == 1
    assert done.stderr.startswith("error: invalid connection string: cannot parse it")
    assert SECRET not in done.stderr and "hunter2" not in done.stderr


def test_a_short_password_is_not_scrubbed_out_of_other_words():
    from pyglue import dsn as dsns

    assert dsns.scrub("response on port 5: failed for p", "host=x password=p") == "response on port 5: failed for ***"


def test_db_rollback_needs_to_or_all(shared_db):
    result = CliRunner().invoke(cli, ["--dsn", shared_db, "db", "rollback"])
    assert result.exit_code == 2
    assert "give exactly one of --to MIGRATION or --all" in result.output
