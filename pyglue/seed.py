"""`pyglue seed users|events`: the perf seeds (perf/mock-users.sql, perf/mock-metric-events.sql)
run through psql in batches, one transaction each, with progress.

The scripts stay the one definition of the mock data (a person can run them with psql); this
module only cuts a count into batches and passes the connection to psql through PG*
environment variables, so no password shows in a process list. psql is the one on PATH, else
the one the pgserver wheel ships. A batch that fails rolls back alone: the batches before it
stay, and a re-run continues the numbering.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict

from pyglue import dsn as dsns
from pyglue import paths, queries
from pyglue.errors import PyglueError

PERF = paths.ROOT / "perf"


@dataclass(frozen=True)
class Seed:
    script: str
    size_variable: str
    batch: int


SEEDS = {
    "users": Seed("mock-users.sql", "users", 10_000),
    "events": Seed("mock-metric-events.sql", "events", 200_000),
}

# libpq connection parameters and the environment variables psql reads them from
_ENV = {"host": "PGHOST", "hostaddr": "PGHOSTADDR", "port": "PGPORT", "dbname": "PGDATABASE", "user": "PGUSER",
        "password": "PGPASSWORD", "sslmode": "PGSSLMODE", "sslrootcert": "PGSSLROOTCERT", "sslcert": "PGSSLCERT",
        "sslkey": "PGSSLKEY", "connect_timeout": "PGCONNECT_TIMEOUT", "options": "PGOPTIONS",
        "application_name": "PGAPPNAME", "passfile": "PGPASSFILE", "service": "PGSERVICE",
        "target_session_attrs": "PGTARGETSESSIONATTRS"}


def psql_binary() -> str:
    found = shutil.which("psql")
    if found:
        return found
    import pgserver  # the embedded server's wheel ships the client too

    bundled = Path(pgserver.__file__).parent / "pginstall" / "bin" / "psql"
    if bundled.exists():
        return str(bundled)
    raise PyglueError("psql not found: install the PostgreSQL client (psql) or the pgserver wheel")


def psql_environment(dsn: str) -> dict[str, str]:
    """The environment for a psql child that connects to dsn, without PG* variables of ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    for key, value in conninfo_to_dict(dsn).items():
        if key not in _ENV:
            raise PyglueError(f"connection parameter {key!r} cannot be passed to psql")
        env[_ENV[key]] = str(value)
    return env


def _psql_error(done: subprocess.CompletedProcess, dsn: str) -> str:
    """psql's first error line without its 'psql:FILE:LINE: ERROR:' prefix, beside the script line."""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    found = next((re.match(r"psql:(?:.*/)?([^/:]+):(\d+): (?:ERROR|FATAL): +(.*)", line) for line in lines
                  if re.match(r"psql:.*: (?:ERROR|FATAL): ", line)), None)
    text = f"{found[3]} ({found[1]} line {found[2]})" if found else (lines[0] if lines else f"psql exited {done.returncode}")
    return dsns.scrub(text, dsn)


def batches(count: int, size: int) -> list[int]:
    return [min(size, count - done) for done in range(0, count, size)]


def seed(conn, dsn: str, kind: str, tenancy_id: uuid.UUID, count: int, *, end_at: str | None = None,
         batch: int | None = None, advance: Callable[[int], None] = lambda _n: None) -> int:
    """Add `count` mock users or events to a tenancy; returns how many were added.

    Users create the tenancy (project 'perf') when it is missing; events need the tenancy and
    mock users in it.
    """
    spec = SEEDS[kind]
    if kind == "events":
        if not conn.execute(queries.load("tenancy_exists"), {"tenancy_id": tenancy_id}).fetchone()["present"]:
            raise PyglueError(f"no tenancy {tenancy_id}: seed users first (pyglue seed users --tenant {tenancy_id})")
        if not conn.execute(queries.load("seed_mock_users_exist"), {"tenancy_id": tenancy_id}).fetchone()["present"]:
            raise PyglueError(f"tenancy {tenancy_id} has no mock users: run pyglue seed users --tenant {tenancy_id}")
    command = [psql_binary(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-v", f"tenancy={tenancy_id}"]
    if end_at is not None:
        command += ["-v", f"end_at={end_at}"]
    env = psql_environment(dsn)
    added = 0
    for size in batches(count, batch or spec.batch):
        done = subprocess.run(command + ["-v", f"{spec.size_variable}={size}", "-f", str(PERF / spec.script)],
                              env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if done.returncode != 0:
            raise PyglueError(f"seeding {kind} failed after {added} of {count}: {_psql_error(done, dsn)}")
        added += size
        advance(size)
    return added
