"""Migrations: yoyo applies them; pyglue makes any number of concurrent runners safe.

`pyglue db migrate` takes a Postgres advisory lock (session level, so the server drops it
when a runner dies), then inserts yoyo's own lock row in a transaction it never commits.
Plain `yoyo apply` runners block on that row until we finish, and a killed pyglue runner
leaves neither lock behind: both vanish with its connection. Pending migrations are
computed only while both locks are held, so exactly one runner applies each migration.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo
from yoyo import get_backend, read_migrations

from pyglue import db, paths, queries
from pyglue import dsn as dsns
from pyglue.errors import PyglueError

LOCK_KEY = 0x7079676C7565  # "pyglue" in ASCII: the advisory lock key of migration runs
MIGRATION_NAME = re.compile(r"^(?P<number>\d{4})_(?P<slug>[a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class MigrationState:
    id: str
    applied: bool


def migrate(
    dsn: str,
    directory: Path = paths.MIGRATIONS,
    *,
    lock_timeout: float = 300.0,
    break_lock: bool = False,
    report: Callable[[str], None] = lambda _line: None,
) -> list[str]:
    """Apply every pending migration; returns the ids this runner applied (often none)."""
    def apply(backend, migrations) -> list[str]:
        pending = backend.to_apply(migrations)
        for migration in pending:
            report(f"applying {migration.id}")
            _run_step(backend.apply_one, migration)
        if pending:
            backend.run_post_apply(pending)
        return [m.id for m in pending]

    return _locked(dsn, directory, lock_timeout, break_lock, apply, report)


def rollback(
    dsn: str,
    to: str | None,
    directory: Path = paths.MIGRATIONS,
    *,
    lock_timeout: float = 300.0,
    report: Callable[[str], None] = lambda _line: None,
) -> list[str]:
    """Roll back the applied migrations after `to` (all of them when `to` is None), newest
    first; returns their ids. Each rollback runs in its own transaction."""
    known = [m.id for m in read_migrations(str(directory))]
    if to is not None and to not in known:
        raise PyglueError(f"unknown migration {to!r}")

    def undo(backend, migrations) -> list[str]:
        keep = set(known[: known.index(to) + 1]) if to is not None else set()
        done = []
        for migration in backend.to_rollback(migrations):
            if migration.id in keep:
                continue
            report(f"rolling back {migration.id}")
            _run_step(backend.rollback_one, migration)
            done.append(migration.id)
        return done

    return _locked(dsn, directory, lock_timeout, False, undo, report)


def _locked(dsn: str, directory: Path, lock_timeout: float, break_lock: bool, work,
            report: Callable[[str], None] = lambda _line: None) -> list[str]:
    """Run work(backend, migrations) under both locks (see the module docstring)."""
    migrations = read_migrations(str(directory))
    with db.connect(dsn, autocommit=True, application_name="pyglue migrate") as lock_conn:
        _take_advisory_lock(lock_conn, lock_timeout)
        backend = _backend(dsn)
        try:
            backend.ensure_internal_schema_updated()
            if break_lock:
                backend.break_lock()
            with lock_conn.transaction(force_rollback=True):
                _hold_yoyo_lock(lock_conn, backend, lock_timeout, report)
                return work(backend, migrations)
        finally:
            backend.connection.close()


def status(dsn: str, directory: Path = paths.MIGRATIONS) -> list[MigrationState]:
    """Every migration in the folder, in order, and whether the database has it."""
    migrations = read_migrations(str(directory))
    with db.connect(dsn, autocommit=True) as conn:
        rows = []
        if _yoyo_table_exists(conn):
            rows = conn.execute("select migration_id from _yoyo_migration").fetchall()
    applied = {row["migration_id"] for row in rows}
    return [MigrationState(m.id, m.id in applied) for m in migrations]


def check_names(directory: Path = paths.MIGRATIONS) -> list[str]:
    """Problems with migration file names: bad shape, gaps, duplicates, broken depends chain."""
    problems = []
    files = sorted(p for p in directory.glob("*.sql") if not p.name.endswith(".rollback.sql"))
    previous = None
    for expected, path in enumerate(files, start=1):
        match = MIGRATION_NAME.match(path.name)
        if not match:
            problems.append(f"{path.name}: name is not NNNN_slug.sql")
            continue
        if int(match["number"]) != expected:
            problems.append(f"{path.name}: expected number {expected:04d}")
        depends = re.search(r"^-- depends:(.*)$", path.read_text(), re.M)
        wanted = previous or ""
        got = depends[1].strip() if depends else ""
        if got != wanted:
            problems.append(f"{path.name}: depends on {got!r}, expected {wanted!r}")
        previous = path.stem
    for rollback in directory.glob("*.rollback.sql"):
        if not (directory / rollback.name.replace(".rollback.sql", ".sql")).exists():
            problems.append(f"{rollback.name}: no matching migration")
    return problems


def new_migration(slug: str, routines: list[Path], directory: Path = paths.MIGRATIONS) -> Path:
    """Write the next NNNN_slug.sql, copying the given routine files in (how a changed function ships)."""
    if not re.fullmatch(r"[a-z0-9_]+", slug):
        raise PyglueError(f"invalid migration slug {slug!r}: use lowercase letters, digits and _")
    existing = sorted(p.stem for p in directory.glob("[0-9][0-9][0-9][0-9]_*.sql") if not p.stem.endswith(".rollback"))
    number = len(existing) + 1
    path = directory / f"{number:04d}_{slug}.sql"
    parts = [f"-- {slug.replace('_', ' ')}: (say why)\n"]
    parts.append(f"-- depends: {existing[-1]}\n" if existing else "-- depends:\n")
    for routine in routines:
        if not routine.is_file():
            raise PyglueError(f"no such routine file: {routine}")
        rel = routine.resolve().relative_to(paths.ROOT) if routine.resolve().is_relative_to(paths.ROOT) else routine
        parts.append(f"\n-- copied from {rel}\n{routine.read_text()}")
    path.write_text("".join(parts))
    return path


def _take_advisory_lock(conn: psycopg.Connection, timeout: float) -> None:
    conn.execute("select set_config('lock_timeout', %s, false)", (f"{int(timeout * 1000)}ms",))
    try:
        conn.execute("select pg_advisory_lock(%s)", (LOCK_KEY,))
    except psycopg.errors.LockNotAvailable:
        raise PyglueError(f"another migration run held the migration lock for more than {timeout:g}s") from None
    conn.execute("reset lock_timeout")


def _hold_yoyo_lock(conn: psycopg.Connection, backend, timeout: float, report: Callable[[str], None]) -> None:
    """Insert yoyo's lock row without committing it; wait while a plain `yoyo apply` holds it.

    A row left by a killed `yoyo apply` is committed and stays until someone deletes it. It
    is provably stale when no session other than ours is connected to the database: a
    running `yoyo apply` keeps its connection open from before it takes the row until after
    it deletes it. Then it is deleted (committed on yoyo's own connection) with one line of
    report; otherwise we wait as for a live holder."""
    deadline = time.monotonic() + timeout
    ours = [conn.info.backend_pid, backend.connection.info.backend_pid]
    while True:
        try:
            with conn.transaction():
                conn.execute(
                    "insert into yoyo_lock (locked, ctime, pid) values (1, %s, %s)",
                    (dt.datetime.now(dt.timezone.utc).replace(tzinfo=None), os.getpid()),
                )
            return
        except psycopg.errors.UniqueViolation:
            holder = conn.execute("select pid, ctime from yoyo_lock").fetchone()
            if holder is None:  # released between our insert and this read
                continue
            if _no_other_sessions(conn, ours):
                backend.break_lock()
                report(f"removed a stale yoyo_lock row of process {holder['pid']} since "
                       f"{holder['ctime']:%Y-%m-%d %H:%M:%S} UTC (no other session is connected to the database)")
                continue
            if time.monotonic() > deadline:
                raise PyglueError(
                    f"yoyo_lock is held by process {holder['pid']} since {holder['ctime']:%Y-%m-%d %H:%M:%S} UTC; "
                    "if no `yoyo apply` is running, rerun with --break-lock"
                ) from None
            time.sleep(0.2)


def _no_other_sessions(conn: psycopg.Connection, ours: list[int]) -> bool:
    return conn.execute(queries.load("other_sessions_in_database"), {"ours": ours}).fetchone()["others"] == 0


def _backend(dsn: str):
    # A runner killed mid-statement leaves its backend running the migration, holding its
    # locks, until the server notices the client is gone; make it notice within a second.
    # (An explicit options= replaces $PGOPTIONS, so carry that over.)
    given = dsns.parse(dsn).get("options") or os.environ.get("PGOPTIONS", "")
    options = f"{given} -c client_connection_check_interval=1000".strip()
    try:
        return get_backend(dsns.to_yoyo_url(make_conninfo(dsn, options=options)))
    except psycopg.OperationalError as exc:
        raise db.connection_error(dsn, exc) from None


def _run_step(step, migration) -> None:
    try:
        # yoyo prints the result of every SELECT in a migration to stdout; keep our output ours.
        with contextlib.redirect_stdout(io.StringIO()):
            step(migration)
    except psycopg.Error as exc:
        message = (exc.diag.message_primary or str(exc)).strip()
        raise PyglueError(f"migration {migration.id} failed: {message}") from None


def _yoyo_table_exists(conn: psycopg.Connection) -> bool:
    row = conn.execute("select to_regclass('_yoyo_migration') is not null as present").fetchone()
    return row["present"]
