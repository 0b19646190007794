"""Chaos for tenant sync: churn, SIGKILLed workers, a target outage, then an exact comparison.

Used by tests/test_sync_chaos.py (small, in CI) and perf/soak_sync.py (bigger, results in
perf/RESULTS.md). One run:

- churn threads write to every tenancy: users with primary emails, renames, email edits,
  verifications, primary swaps and removals, deletes, delete + re-create of the same id in
  one transaction and in two, teams, memberships added, moved to another user (a key change)
  and removed; beside them, transactions that change an email and stay open for a while
  before they commit (or roll back);
- `workers` worker processes (`python -m pyglue worker`) run at once; one at a time is
  killed with SIGKILL at random moments and started again, until `kills` kills happened;
- one target database refuses connections for a while (its sessions are terminated
  mid-transaction) and comes back;
- then the churn stops, the workers drain the queue, and every target table is compared
  column by column with what the source holds (lost, stale, extra, duplicate rows).

The expected rows are computed here in plain SQL, not by the mapping templates, so the
comparison does not share code with what it checks.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import psycopg
from psycopg import sql
from psycopg.rows import tuple_row

from pyglue import paths

# Per target table: the source query (one tenancy, bound as %(t)s) and the target columns,
# both as text in the same order, the key first.
TABLES = {
    "users": (
        """select u.id::text, u.display_name, u.profile_image_url, pe.value,
                  coalesce(pe.is_verified, false)::text, u.signed_up_at::text, u.is_anonymous::text,
                  u.client_metadata::text, u.client_read_only_metadata::text, u.server_metadata::text
           from app.users u
           left join lateral (select e.value, e.is_verified from app.contact_channels e
                              where e.tenancy_id = u.tenancy_id and e.user_id = u.id
                                and e.type = 'email' and e.is_primary limit 1) pe on true
           where u.tenancy_id = %(t)s""",
        "id::text, display_name, profile_image_url, primary_email, primary_email_verified::text,"
        " signed_up_at::text, is_anonymous::text, client_metadata::text, client_read_only_metadata::text,"
        " server_metadata::text", 1),
    "contact_channels": (
        """select id::text, user_id::text, type, value, is_primary::text, is_verified::text,
                  used_for_auth::text, created_at::text
           from app.contact_channels where tenancy_id = %(t)s""",
        "id::text, user_id::text, type, value, is_primary::text, is_verified::text, used_for_auth::text,"
        " created_at::text", 1),
    "teams": (
        """select id::text, display_name, profile_image_url, created_at::text, client_metadata::text,
                  client_read_only_metadata::text, server_metadata::text
           from app.teams where tenancy_id = %(t)s""",
        "id::text, display_name, profile_image_url, created_at::text, client_metadata::text,"
        " client_read_only_metadata::text, server_metadata::text", 1),
    "team_member_profiles": (
        """select team_id::text, user_id::text, display_name, profile_image_url, created_at::text
           from app.team_members where tenancy_id = %(t)s""",
        "team_id::text, user_id::text, display_name, profile_image_url, created_at::text", 2),
}


@dataclass
class Report:
    operations: Counter = field(default_factory=Counter)
    kills: int = 0
    outages: int = 0
    drain_s: float = 0.0
    rows_compared: int = 0
    differences: dict = field(default_factory=dict)  # "target/table" -> {"lost": n, "stale": n, ...}

    @property
    def clean(self) -> bool:
        return not any(any(v.values()) for v in self.differences.values())


def connect(dsn: str, autocommit: bool = True) -> psycopg.Connection:
    conn = psycopg.connect(dsn, autocommit=autocommit, row_factory=tuple_row)
    conn.execute("set timezone = 'UTC'")
    if not autocommit:
        conn.commit()
    return conn


class Churn(threading.Thread):
    """Random writes to one tenancy until stopped; every operation is its own transaction."""

    def __init__(self, dsn: str, tenancy: uuid.UUID, seed: int, report: Report, stop: threading.Event,
                 long_transactions: bool = True):
        super().__init__(daemon=True)
        self.dsn, self.tenancy, self.rng, self.report, self.stop = dsn, tenancy, random.Random(seed), report, stop
        self.long_transactions = long_transactions
        self.errors: list[BaseException] = []
        self._n = 0

    def run(self) -> None:
        try:
            with connect(self.dsn, autocommit=False) as conn:
                while not self.stop.is_set():
                    self.step(conn)
                    time.sleep(self.rng.uniform(0, 0.004))
        except BaseException as exc:  # surfaced by the caller
            self.errors.append(exc)

    def step(self, conn: psycopg.Connection) -> None:
        ops = [("insert", 6), ("rename", 6), ("email_edit", 3), ("email_verify", 2), ("email_swap", 2),
               ("email_remove", 1), ("delete", 2), ("recreate_one", 3), ("recreate_two", 2), ("team", 1),
               ("member_add", 3), ("member_move", 2), ("member_remove", 1), ("team_rename", 1), ("team_delete", 1)]
        if self.long_transactions:
            ops.append(("long_email", 1))
        name = self.rng.choices([o for o, _ in ops], weights=[w for _, w in ops])[0]
        try:
            getattr(self, "op_" + name)(conn)
            conn.commit()
            self.report.operations[name] += 1
        except (psycopg.errors.UniqueViolation, psycopg.errors.ForeignKeyViolation,
                psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
            conn.rollback()  # raced with another writer of the same rows: fine, try something else
            self.report.operations["conflict"] += 1

    # -- helpers ---------------------------------------------------------------------------

    def _label(self, kind: str) -> str:
        self._n += 1
        return f"{kind}-{self.rng.randrange(10**6)}-{self._n}-é✓"

    def _some(self, conn, sql: str) -> tuple | None:
        return conn.execute(sql + " and tenancy_id = %s order by random() limit 1", (self.tenancy,)).fetchone()

    def _user(self, conn):
        row = self._some(conn, "select id from app.users where true")
        return row[0] if row else None

    def _new_user(self, conn, user_id=None):
        user_id = user_id or uuid.uuid4()
        conn.execute("insert into app.users (tenancy_id, id, display_name, client_metadata) values (%s, %s, %s, %s)",
                     (self.tenancy, user_id, self._label("user"), '{"n": %d, "s": "ü"}' % self._n))
        conn.execute("insert into app.contact_channels (tenancy_id, user_id, type, value, is_primary, is_verified)"
                     " values (%s, %s, 'email', %s, true, %s)",
                     (self.tenancy, user_id, self._label("mail") + "@example.com", self.rng.random() < 0.5))
        return user_id

    # -- operations ------------------------------------------------------------------------

    def op_insert(self, conn):
        self._new_user(conn)

    def op_rename(self, conn):
        if u := self._user(conn):
            conn.execute("update app.users set display_name = %s where id = %s", (self._label("renamed"), u))

    def op_email_edit(self, conn):
        conn.execute("update app.contact_channels set value = %s where id in (select id from app.contact_channels"
                     " where tenancy_id = %s and type = 'email' order by random() limit 1)",
                     (self._label("edit") + "@example.com", self.tenancy))

    def op_email_verify(self, conn):
        conn.execute("update app.contact_channels set is_verified = not is_verified where id in (select id from"
                     " app.contact_channels where tenancy_id = %s order by random() limit 1)", (self.tenancy,))

    def op_email_swap(self, conn):
        if u := self._user(conn):
            new = conn.execute("insert into app.contact_channels (tenancy_id, user_id, type, value)"
                               " values (%s, %s, 'email', %s) returning id",
                               (self.tenancy, u, self._label("swap") + "@example.com")).fetchone()[0]
            conn.execute("update app.contact_channels set is_primary = (id = %s) where user_id = %s and type = 'email'",
                         (new, u))

    def op_email_remove(self, conn):
        conn.execute("delete from app.contact_channels where id in (select id from app.contact_channels"
                     " where tenancy_id = %s order by random() limit 1)", (self.tenancy,))

    def op_delete(self, conn):
        if u := self._user(conn):
            conn.execute("delete from app.users where id = %s", (u,))

    def op_recreate_one(self, conn):
        if u := self._user(conn):
            conn.execute("delete from app.users where id = %s", (u,))
            self._new_user(conn, u)

    def op_recreate_two(self, conn):
        if u := self._user(conn):
            conn.execute("delete from app.users where id = %s", (u,))
            conn.commit()
            self._new_user(conn, u)

    def op_team(self, conn):
        conn.execute("insert into app.teams (tenancy_id, display_name) values (%s, %s)",
                     (self.tenancy, self._label("team")))

    def op_member_add(self, conn):
        team, u = self._some(conn, "select id from app.teams where true"), self._user(conn)
        if team and u:
            conn.execute("insert into app.team_members (tenancy_id, team_id, user_id, display_name)"
                         " values (%s, %s, %s, %s) on conflict do nothing", (self.tenancy, team[0], u, self._label("m")))

    def op_member_move(self, conn):
        member, u = self._some(conn, "select team_id, user_id from app.team_members where true"), self._user(conn)
        if member and u:
            conn.execute("update app.team_members set user_id = %s where team_id = %s and user_id = %s",
                         (u, member[0], member[1]))

    def op_member_remove(self, conn):
        if member := self._some(conn, "select team_id, user_id from app.team_members where true"):
            conn.execute("delete from app.team_members where team_id = %s and user_id = %s", member)

    def op_team_rename(self, conn):
        conn.execute("update app.teams set display_name = %s where id in (select id from app.teams"
                     " where tenancy_id = %s order by random() limit 1)", (self._label("team"), self.tenancy))

    def op_team_delete(self, conn):
        if self.rng.random() < 0.3:
            conn.execute("delete from app.teams where id in (select id from app.teams where tenancy_id = %s"
                         " order by random() limit 1)", (self.tenancy,))

    def op_long_email(self, conn):
        """An email change whose transaction stays open while passes and syncs run."""
        seed = self.rng.randrange(10**9)

        def hold():
            rng = random.Random(seed)
            try:
                with connect(self.dsn, autocommit=False) as long:
                    long.execute("update app.contact_channels set value = %s, is_verified = not is_verified"
                                 " where id in (select id from app.contact_channels where tenancy_id = %s"
                                 " and type = 'email' and is_primary order by random() limit 1)",
                                 (f"long-{seed}@example.com", self.tenancy))
                    self.stop.wait(rng.uniform(0.2, 1.5))
                    if rng.random() < 0.8:
                        long.commit()
                    else:
                        long.rollback()
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                pass

        thread = threading.Thread(target=hold, daemon=True)
        thread.start()
        self.holders = getattr(self, "holders", []) + [thread]


class Workers:
    """Worker processes, killed and restarted at will."""

    def __init__(self, dsn: str, count: int, args: tuple[str, ...] = ()):
        self.dsn, self.args = dsn, args
        self.processes = [self._start() for _ in range(count)]

    def _start(self) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "pyglue", "--dsn", self.dsn, "worker", *self.args],
                                cwd=paths.ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def kill_one(self, rng: random.Random) -> None:
        i = rng.randrange(len(self.processes))
        self.processes[i].send_signal(signal.SIGKILL)
        self.processes[i].wait()
        self.processes[i] = self._start()

    def stop(self) -> None:
        for p in self.processes:
            p.send_signal(signal.SIGTERM)
        for p in self.processes:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def outage(admin_dsn: str, dbname: str, seconds: float) -> None:
    """The target refuses connections and loses the ones it has, then comes back."""
    allow = sql.SQL("alter database {} with allow_connections {}")
    with connect(admin_dsn) as admin:
        admin.execute(allow.format(sql.Identifier(dbname), sql.SQL("false")))
        admin.execute("select pg_terminate_backend(pid) from pg_stat_activity where datname = %s", (dbname,))
        time.sleep(seconds)
        admin.execute(allow.format(sql.Identifier(dbname), sql.SQL("true")))


def caught_up(source: psycopg.Connection) -> bool:
    row = source.execute("""select (select coalesce(sum(pending), 0) from pyglue.pending_changes()),
                                   (select count(*) from pyglue.outgoing_requests where status <> 'dead'),
                                   (select coalesce(sum(pending_rows), 0) from pyglue.sync_status())""").fetchone()
    return row == (0, 0, 0)


def compare(source: psycopg.Connection, tenancy: uuid.UUID, target_dsn: str) -> tuple[dict, int]:
    """Per table: lost, stale, extra and duplicate rows of the target against the source."""
    result, compared = {}, 0
    with connect(target_dsn) as target:
        for table, (source_sql, target_columns, key_len) in TABLES.items():
            expected = {r[:key_len]: r for r in source.execute(source_sql, {"t": tenancy})}
            rows = target.execute(f"select {target_columns} from {table}").fetchall()
            actual = {r[:key_len]: r for r in rows}
            result[table] = {
                "lost": sum(1 for k in expected if k not in actual),
                "stale": sum(1 for k, r in expected.items() if k in actual and actual[k] != r),
                "extra": sum(1 for k in actual if k not in expected),
                "duplicate": len(rows) - len(actual),
            }
            compared += len(expected)
    return result, compared


def run(source_dsn: str, admin_dsn: str, targets: dict[uuid.UUID, dict[str, str]], *, kills: int,
        workers: int = 2, seed: int = 7, outage_target: tuple[str, str] | None = None, max_churn_s: float = 60,
        kill_interval: tuple[float, float] = (0.3, 0.9), drain_timeout_s: float = 90,
        worker_args: tuple[str, ...] = ("--lease", "5", "--page-size", "50", "--sequencer-interval", "0.05"),
        log=lambda _line: None) -> Report:
    """targets: tenancy -> {target name: target dbname}; the DSNs of the target databases come
    from admin_dsn. outage_target: (target name, dbname) of the one that goes down once."""
    from psycopg.conninfo import make_conninfo

    rng = random.Random(seed)
    report = Report()
    stop = threading.Event()
    churns = [Churn(source_dsn, t, seed + i, report, stop) for i, t in enumerate(targets)]
    for c in churns:
        c.start()
    pool = Workers(source_dsn, workers, worker_args)
    started = time.monotonic()
    try:
        while report.kills < kills and time.monotonic() - started < max_churn_s:
            time.sleep(rng.uniform(*kill_interval))
            pool.kill_one(rng)
            report.kills += 1
            if outage_target and report.kills == kills // 2:
                outage(admin_dsn, outage_target[1], 1.5)
                report.outages += 1
            log(f"kill {report.kills}: {sum(report.operations.values())} operations")
    finally:
        stop.set()
        for c in churns:
            c.join(timeout=30)
            for h in getattr(c, "holders", []):
                h.join(timeout=30)
    errors = [e for c in churns for e in c.errors]
    if errors:
        pool.stop()
        raise errors[0]
    drain_started = time.monotonic()
    try:
        with connect(source_dsn) as source:
            while not caught_up(source):
                if time.monotonic() - drain_started > drain_timeout_s:
                    break
                time.sleep(0.2)
    finally:
        report.drain_s = time.monotonic() - drain_started
        pool.stop()
    with connect(source_dsn) as source:
        for tenancy, named in targets.items():
            for name, dbname in named.items():
                diff, n = compare(source, tenancy, make_conninfo(admin_dsn, dbname=dbname))
                report.rows_compared += n
                for table, counts in diff.items():
                    report.differences[f"{name}/{table}"] = counts
    return report
