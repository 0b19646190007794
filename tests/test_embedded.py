"""The embedded default: start, reuse, url, down; works as root (the server runs as `pgserver`)."""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg
import pytest

from pyglue import embedded, paths


@pytest.mark.slow
def test_start_reuse_and_stop(tmp_path):
    home = tmp_path / "home"
    first = embedded.start(home)
    try:
        again = embedded.start(home)
        assert again.pid == first.pid
        assert embedded.running(home).dsn == first.dsn
        with psycopg.connect(first.dsn) as c:
            assert c.execute("select 1").fetchone() == (1,)
            if os.geteuid() == 0:
                owner = c.execute("select current_setting('data_directory')").fetchone()[0]
                assert owner == str(home / "pgdata")
    finally:
        assert embedded.stop(home) is True
    assert embedded.running(home) is None
    assert embedded.stop(home) is False


@pytest.mark.slow
def test_cli_up_url_down_use_pyglue_home(tmp_path):
    env = dict(os.environ, PYGLUE_HOME=str(tmp_path / "cli-home"))
    env.pop("PYGLUE_DSN", None)
    env.pop("DATABASE_URL", None)

    def run(*args):
        return subprocess.run([sys.executable, "-m", "pyglue", *args], env=env, capture_output=True,
                              text=True, timeout=120, cwd=paths.ROOT)

    up = run("db", "up")
    assert up.returncode == 0, up.stderr
    assert "embedded Postgres running" in up.stdout
    url = run("db", "url")
    assert url.stdout.strip() == up.stdout.strip().splitlines()[-1]
    status = run("db", "status")  # no --dsn: uses the embedded server
    assert status.returncode == 0, status.stderr
    assert "pending" in status.stdout
    down = run("db", "down")
    assert down.stdout.strip() == "embedded Postgres stopped"
    assert run("db", "down").stdout.strip() == "embedded Postgres was not running"
