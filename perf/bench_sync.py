"""Tenant sync benchmark: a first sync of a big tenancy against a raw upsert, and change latency.

    .venv/bin/python -m perf.bench_sync [--users 1000000] [--skip-latency] [--latency-seconds 20]

Runs on the embedded server under .pyglue/bench, in a source database (pyglue_bench_sync,
migrated from sql/migrations) and three target databases on the same server, all dropped
and recreated at the start. Measurements, one run, one machine:

1. initial sync: seed one tenancy of --users users (perf/seed-sync-tenancy.sql: primary
   emails, phones, teams, memberships, all flagged), add the target `full`, time
   engine.sync_until_caught_up with every mapping end to end (sequencing the whole
   backlog, fetching, applying), check the target's row counts against the source's;
2. baseline: a raw copy of the same users into a fresh table of the users mapping's shape
   in another database: keyset-paginated SELECT as the owner, then INSERT … SELECT FROM
   unnest(arrays) ON CONFLICT (id) DO UPDATE, 5,000 rows per batch, one transaction each;
3. apply-only: add a third target `users-only` and sync it with the users mapping only.
   The backlog is sequenced already, so this is fetch + apply of the same rows the
   baseline copies: the fair comparison, goal >= 0.4 of the baseline;
4. latency (--skip-latency skips it): a Worker thread (sequencer_interval_s=0.05) follows
   the tenancy, whose target `full` is caught up, while a writer thread commits
   batches of 10 user renames every 10 ms (~1,000 changes/s, each user once, each with its
   own marker 'lat-<n>' as display name) and a poller reads the target every ~5 ms for the
   markers; latency is the writer's statement done (just before its commit) -> first read
   in the target, both on the servers' clock.

Each throughput measurement starts after VACUUM ANALYZE of the source tables and a
CHECKPOINT; autovacuum is off on the source tables (on in the targets, which the engine
creates during the measurement). Prints tables and rewrites the bench_sync block of
perf/RESULTS.md (text outside it, the sequencer's block included, is kept).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import random
import subprocess
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import click
import psycopg
from psycopg.conninfo import make_conninfo
from psycopg.rows import tuple_row
from psycopg.types.string import TextLoader

from perf.bench_sequencer import (BENCH_HOME, PERF, RESULTS, Line, Timing, format_table, machine_facts, psql_path,
                                  run, write_block)
from pyglue import capture, db, embedded, migrate, paths
from pyglue.sync import engine, mappings, targets
from pyglue.sync.target import TargetTables
from pyglue.sync.worker import Worker, WorkerOptions

SEED = PERF / "seed-sync-tenancy.sql"
SOURCE_DB = "pyglue_bench_sync"
TARGET_DBS = {"full": "pyglue_bench_sync_full", "users-only": "pyglue_bench_sync_users", "raw": "pyglue_bench_sync_raw"}
TENANCY = uuid.UUID(hashlib.md5(b"perf-sync-tenancy").hexdigest())  # the seed's md5('perf-sync-tenancy')::uuid
PAGE_SIZE = 5000  # pyglue's page and the baseline's batch
THROUGHPUT_GOAL = 0.4  # pyglue rows/s over raw upsert rows/s
LATENCY_GOALS_MS = {"p50": 200.0, "p99": 1000.0}
BATCH_CHANGES, BATCH_EVERY_S, POLL_EVERY_S = 10, 0.010, 0.005
BEGIN, END = "<!-- bench_sync:begin -->", "<!-- bench_sync:end -->"
HEADING = "## Tenant sync"

# source table -> target table of the default mappings
MAPPED = {("app", "users"): "users", ("app", "contact_channels"): "contact_channels", ("app", "teams"): "teams",
          ("app", "team_members"): "team_member_profiles"}


# --- set-up ---------------------------------------------------------------------------


def fresh_databases(server_dsn: str) -> tuple[str, dict[str, str]]:
    """Drop and create the source (migrated) and the target databases; their DSNs."""
    with db.connect(server_dsn, autocommit=True) as conn:
        for name in [SOURCE_DB, *TARGET_DBS.values()]:
            run(conn, "drop_database", database=name)
            run(conn, "create_database", database=name)
    source = make_conninfo(server_dsn, dbname=SOURCE_DB)
    migrate.migrate(source)
    return source, {role: make_conninfo(server_dsn, dbname=name) for role, name in TARGET_DBS.items()}


def seed(dsn: str, users: int) -> float:
    start = time.perf_counter()
    subprocess.run(
        [psql_path(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-v", f"users={users}", "-d", dsn, "-f", str(SEED)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def settle(conn: psycopg.Connection) -> None:
    """VACUUM ANALYZE the source tables, CHECKPOINT: the start of every throughput measurement."""
    for table in MAPPED:
        run(conn, "vacuum_analyze", table=table)
    run(conn, "checkpoint")


def source_counts(conn: psycopg.Connection) -> dict[str, int]:
    """Rows of the tenancy per target table."""
    return {target: run(conn, "tenancy_rows", {"tenancy_id": TENANCY}, table=src).fetchone()["n"]
            for src, target in MAPPED.items()}


def target_counts(dsn: str, tables: list[str]) -> dict[str, int]:
    with db.connect(dsn, autocommit=True) as conn:
        return {t: run(conn, "table_rows", table=("public", t)).fetchone()["n"] for t in tables}


def verify(expected: dict[str, int], dsn: str, what: str) -> None:
    found = target_counts(dsn, list(expected))
    if found != expected:
        raise click.ClickException(f"{what}: target rows {found} differ from the source's {expected}")


# --- where the time goes --------------------------------------------------------------


class PhaseClock:
    """Seconds and calls in the engine's phases, by wrapping its functions while watching.

    The engine looks these up at call time (module globals, a class attribute), so the
    wrappers see every call of a sync run; the benchmark's own process only.
    """

    PHASES = {"sequencing (capture.sequence_until_idle)": (capture, "sequence_until_idle"),
              "fetch (engine.fetch_page)": (engine, "fetch_page"),
              "apply (TargetTables.apply)": (TargetTables, "apply")}

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def _timed(self, phase: str, function):
        def timed_call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[phase] += time.perf_counter() - start
                self.calls[phase] += 1

        return timed_call

    @contextmanager
    def watching(self) -> Iterator[PhaseClock]:
        originals = {phase: getattr(owner, name) for phase, (owner, name) in self.PHASES.items()}
        for phase, (owner, name) in self.PHASES.items():
            setattr(owner, name, self._timed(phase, originals[phase]))
        try:
            yield self
        finally:
            for phase, (owner, name) in self.PHASES.items():
                setattr(owner, name, originals[phase])


@dataclass
class Phases:
    """A measurement's total time split into named parts (the rest is 'other')."""

    total: float
    parts: dict[str, tuple[float, int]] = field(default_factory=dict)  # name -> (seconds, calls)

    def rows(self) -> list[tuple[str, float, int | None]]:
        out = [(name, seconds, calls) for name, (seconds, calls) in self.parts.items()]
        out.append(("other", self.total - sum(s for _, s, _ in out), None))
        return out


# --- measurements ---------------------------------------------------------------------


def measure_pyglue_sync(dsn: str, chosen: list[mappings.Mapping], written: int) -> tuple[Timing, Phases, int]:
    """engine.sync_until_caught_up of TENANCY; the timing counts the rows the target ends up with (written).

    Also returns the rows fetched: more than written when a row was sequenced twice (the
    sequencer's stamp of a primary email channel flags its user again if the user was
    stamped first, which depends on where each table's scan is).
    """
    clock = PhaseClock()
    with clock.watching():
        start = time.perf_counter()
        result = engine.sync_until_caught_up(dsn, TENANCY, chosen, engine.Options(page_size=PAGE_SIZE, ignore_backoff=True))
        seconds = time.perf_counter() - start
    if result.failed or result.sync_disabled or result.stopped:
        raise click.ClickException(f"sync did not finish: {result}")
    parts = {phase: (clock.seconds[phase], clock.calls[phase]) for phase in PhaseClock.PHASES}
    pages = clock.calls["apply (TargetTables.apply)"]
    return Timing(written, seconds, pages), Phases(seconds, parts), result.rows


def json_as_text(conn: psycopg.Connection) -> psycopg.Connection:
    """jsonb arrives as its text, as in the engine's source connection: no parse and re-dump."""
    for name in ("json", "jsonb"):
        conn.adapters.register_loader(name, TextLoader)
    return conn


def measure_raw_copy(source_dsn: str, target_dsn: str, ddl: str) -> tuple[Timing, Phases]:
    """Keyset-paginated SELECT from the source, unnest upsert into the target, PAGE_SIZE per batch."""
    with db.connect(target_dsn, autocommit=True) as target:
        target.execute(ddl)  # the users mapping's table, untimed (the engine's CREATE TABLE is inside its timing: ms)
    with json_as_text(db.connect(source_dsn, autocommit=True, row_factory=tuple_row)) as source, \
            db.connect(target_dsn, autocommit=True) as target:
        read_s = write_s = 0.0
        rows = batches = reads = 0
        after = uuid.UUID(int=0)
        start = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            cur = run(source, "raw_users_page", {"tenancy_id": TENANCY, "after": after, "limit": PAGE_SIZE})
            names = [d.name for d in cur.description]
            page = cur.fetchall()
            t1 = time.perf_counter()
            read_s, reads = read_s + t1 - t0, reads + 1
            if not page:
                break
            run(target, "raw_users_upsert", dict(zip(names, map(list, zip(*page)))), table=("public", "users"))
            write_s += time.perf_counter() - t1
            rows, batches, after = rows + len(page), batches + 1, page[-1][0]
            if len(page) < PAGE_SIZE:
                break
        seconds = time.perf_counter() - start
    return Timing(rows, seconds, batches), Phases(seconds, {"read (keyset SELECT)": (read_s, reads),
                                                            "write (unnest upsert)": (write_s, batches)})


@dataclass
class Latency:
    committed: int
    seen: int
    seconds: float  # the writer's run
    samples_ms: list[float]

    def percentile(self, p: float) -> float:
        """Nearest rank."""
        ordered = sorted(self.samples_ms)
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]

    @property
    def summary(self) -> dict[str, float]:
        return {"p50": self.percentile(50), "p95": self.percentile(95), "p99": self.percentile(99),
                "max": max(self.samples_ms)}


class MarkerBoard:
    """Markers written to the source and waited for in the target, shared by writer and poller.
    Times are the servers' clocks (epoch seconds; the servers run on this machine), so a
    thread of the bench waiting for the interpreter lock cannot shift them: committed = the
    writer's statement done, just before its commit; seen = the poller's statement reading the
    row, after its snapshot. A change is seen only after its commit, so no latency is negative."""

    def __init__(self, per_batch: int | None = None) -> None:
        self.lock = threading.Lock()
        self.per_batch = per_batch  # markers of a batch the poller waits for, evenly spread (None: all)
        self.waiting: dict[uuid.UUID, str] = {}  # user id -> marker it should show
        self.committed: dict[str, float] = {}  # marker -> its statement done (source server's clock)
        self.seen: dict[str, float] = {}  # marker -> first read in the target (target server's clock)
        self.written: list[tuple[uuid.UUID, str]] = []  # every change, sampled or not

    def expect(self, ids: list[uuid.UUID], markers: list[str]) -> None:
        pairs = list(zip(ids, markers))
        sampled = pairs
        if self.per_batch is not None and len(pairs) > self.per_batch:  # the first, the last, and between
            step = (len(pairs) - 1) / (self.per_batch - 1)
            sampled = [pairs[round(i * step)] for i in range(self.per_batch)]
        with self.lock:
            self.written.extend(pairs)
            self.waiting.update(sampled)

    def clear(self) -> None:
        """Forget what was written and seen (after a warm-up)."""
        with self.lock:
            self.committed.clear()
            self.seen.clear()
            self.written.clear()

    def samples_ms(self) -> list[float]:
        """Latency of each waited-for marker seen."""
        with self.lock:
            return [(self.seen[m] - t) * 1000 for m, t in self.committed.items() if m in self.seen]

    def commit(self, markers: list[str], at: float) -> None:
        with self.lock:
            self.committed.update((m, at) for m in markers)

    def pending(self) -> list[uuid.UUID]:
        with self.lock:
            return list(self.waiting)

    def saw(self, rows: list[tuple[uuid.UUID, str, float]]) -> None:
        with self.lock:
            for user_id, name, at in rows:
                if self.waiting.get(user_id) == name:
                    del self.waiting[user_id]
                    self.seen[name] = at


def poll_target(target_dsn: str, board: MarkerBoard, stop: threading.Event,
                table: tuple[str, str] = ("public", "users"), column: str = "display_name") -> None:
    with db.connect(target_dsn, autocommit=True, row_factory=tuple_row, application_name="pyglue bench poller") as conn:
        while not stop.is_set():
            ids = board.pending()
            if ids:
                board.saw(run(conn, "target_markers", {"ids": ids}, table=table, column=column).fetchall())
            time.sleep(POLL_EVERY_S)


def write_changes(source_dsn: str, user_ids: list[uuid.UUID], board: MarkerBoard, seconds: float,
                  first_marker: int, batch_changes: int = BATCH_CHANGES,
                  every_s: float = BATCH_EVERY_S, column: str = "display_name", connections: int = 1,
                  marker_prefix: str = "lat") -> tuple[int, float]:
    """Batches of batch_changes markers ('<marker_prefix>-<n>') written into column, batch k due
    at start + k * every_s, each batch one commit; (changes, seconds). With several
    connections, each writes the next due batch as soon as its last one is done, as an
    application's connection pool would: one slow commit does not hold up the schedule, and a
    writer that falls behind catches up without more than one batch in flight per connection."""
    lock, taken, written = threading.Lock(), [0], [0]

    def next_batch() -> int | None:
        with lock:
            k = taken[0]
            if (k and time.perf_counter() - start >= seconds) or (k + 1) * batch_changes > len(user_ids):
                return None  # the first batch is always written (a warm-up is one batch)
            taken[0] += 1
            return k

    def write(conn: psycopg.Connection) -> None:
        while (k := next_batch()) is not None:
            delay = start + k * every_s - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            ids = user_ids[k * batch_changes:(k + 1) * batch_changes]
            markers = [f"{marker_prefix}-{first_marker + k * batch_changes + i}" for i in range(len(ids))]
            board.expect(ids, markers)
            done = run(conn, "mark_users", {"ids": ids, "markers": markers, "tenancy_id": TENANCY},
                       column=column).fetchone()
            board.commit(markers, done["at"])
            with lock:
                written[0] += len(ids)

    conns = [db.connect(source_dsn, autocommit=True, application_name="pyglue bench writer")
             for _ in range(connections)]
    try:
        start = time.perf_counter()
        with ThreadPoolExecutor(connections, thread_name_prefix="bench-writer") as pool:
            for future in [pool.submit(write, conn) for conn in conns]:
                future.result()
        return written[0], time.perf_counter() - start
    finally:
        for conn in conns:
            conn.close()


def wait_until(predicate, timeout_s: float, step_s: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step_s)
    return False


def measure_latency(source_dsn: str, target_dsn: str, seconds: float) -> tuple[Latency, list[str]]:
    """Worker + writer + poller threads; commit -> visible latency of each change."""
    with db.connect(source_dsn, autocommit=True) as conn:
        user_ids = [r["id"] for r in run(conn, "tenancy_user_ids", {"tenancy_id": TENANCY})]
    random.Random(20261127).shuffle(user_ids)  # each user changes at most once: no marker overwrites another
    warm_up, user_ids = user_ids[:BATCH_CHANGES], user_ids[BATCH_CHANGES:]
    log: list[str] = []
    worker = Worker(source_dsn, mappings.load_all(), WorkerOptions(sequencer_interval_s=0.05, page_size=PAGE_SIZE),
                    log=log.append)
    board, stop_polling = MarkerBoard(), threading.Event()
    worker_thread = threading.Thread(target=worker.run, name="bench-worker", daemon=True)
    poller = threading.Thread(target=poll_target, args=(target_dsn, board, stop_polling), name="bench-poller", daemon=True)
    worker_thread.start()
    poller.start()
    try:
        # warm-up: the queued requests of earlier steps are handled and one change goes through
        with db.connect(source_dsn, autocommit=True) as conn:
            if not wait_until(lambda: run(conn, "queued_requests").fetchone()["n"] == 0, 60):
                raise click.ClickException("the worker did not drain the request queue within 60 s")
        write_changes(source_dsn, warm_up, board, seconds, first_marker=0)  # one batch: the ids run out
        if not wait_until(lambda: not board.pending(), 60):
            raise click.ClickException(f"warm-up changes not seen in the target within 60 s; worker log: {log[-5:]}")
        board.clear()

        changes, writer_s = write_changes(source_dsn, user_ids, board, seconds, first_marker=BATCH_CHANGES)
        wait_until(lambda: not board.pending(), 60)
    finally:
        stop_polling.set()
        worker.stop.set()
        poller.join(10)
        worker_thread.join(60)
    samples = board.samples_ms()
    problems = [line for line in log if "error" in line or "failed" in line]
    return Latency(changes, len(samples), writer_s, samples), problems


# --- report ---------------------------------------------------------------------------


def report_lines(raw: Timing, apply_only: Timing, initial: Timing, users: int) -> list[Line]:
    initial_users = Timing(users, initial.seconds, initial.calls)
    return [
        Line(f"raw copy of users: keyset SELECT + unnest upsert, {PAGE_SIZE:,}/batch (batches: {raw.calls})", raw),
        Line(f"pyglue apply-only, users mapping (pages: {apply_only.calls})", apply_only, raw, THROUGHPUT_GOAL),
        Line(f"pyglue initial sync end to end, all rows (pages: {initial.calls})", initial, raw, THROUGHPUT_GOAL),
        Line("pyglue initial sync end to end, users only counted", initial_users, raw),
    ]


def phase_table(title: str, phases: Phases, markdown: bool) -> str:
    rows = [(name, f"{seconds:.2f}", f"{seconds / phases.total:.0%}", "" if calls is None else f"{calls:,}")
            for name, seconds, calls in phases.rows()]
    return small_table((title, "seconds", "share", "calls"), rows, markdown, aligns="lrrr")


def latency_table(latency: Latency, markdown: bool) -> str:
    rows = []
    for name, value in latency.summary.items():
        goal = LATENCY_GOALS_MS.get(name)
        verdict = f"<= {goal:,.0f} ms: {'met' if value <= goal else 'MISSED'}" if goal else ""
        rows.append((f"commit -> visible in target, {name}", f"{value:,.0f} ms", verdict))
    rows.append(("changes committed / seen in target", f"{latency.committed:,} / {latency.seen:,}", ""))
    rows.append(("writer rate achieved", f"{latency.committed / latency.seconds:,.0f} changes/s", ""))
    return small_table(("latency", "value", "goal"), rows, markdown, aligns="lrl")


def small_table(header: tuple[str, ...], rows: list[tuple[str, ...]], markdown: bool, aligns: str) -> str:
    if markdown:
        rule = "|" + "|".join("--:" if a == "r" else "---" for a in aligns) + "|"
        return "\n".join(["| " + " | ".join(header) + " |", rule, *("| " + " | ".join(r) + " |" for r in rows)])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def fmt(r):
        return "  ".join(c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(r, widths, aligns)).rstrip()

    return "\n".join(fmt(r) for r in [header, tuple("-" * w for w in widths), *rows])


def data_line(counts: dict[str, int], users: int) -> str:
    phones = counts["contact_channels"] - users
    return (f"one tenancy, {sum(counts.values()):,} rows: users {counts['users']:,}, contact_channels"
            f" {counts['contact_channels']:,} ({users:,} primary emails, {phones:,} phones), teams {counts['teams']:,},"
            f" team_member_profiles {counts['team_member_profiles']:,}; page size {PAGE_SIZE:,}")


def report(facts: dict[str, str], counts: dict[str, int], users: int, lines: list[Line], phases: dict[str, Phases],
           latency: Latency | None, markdown: bool, command: str) -> str:
    parts = []
    if markdown:
        now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        parts += [BEGIN, "<!-- generated by perf/bench_sync.py: edits between these markers are overwritten -->",
                  f"### Latest run: {now}", "", f"`{command}`", "",
                  *(f"- **{k}**: `{v}`" for k, v in facts.items()), f"- **data**: {data_line(counts, users)}", ""]
    parts += [format_table(lines, markdown), ""]
    for title, p in phases.items():
        parts += [phase_table(title, p, markdown), ""]
    if latency is not None:
        parts += [latency_table(latency, markdown), ""]
    if markdown:
        parts += [
            "Ratios are rows/s over the raw copy's users rows/s, measured in the same run. Goal: pyglue >= "
            f"{THROUGHPUT_GOAL:g} × raw, judged fairly on the apply-only line (same rows, same target shape; the "
            "backlog was sequenced by the initial sync) and shown for the end-to-end line too, which also sequences "
            "the whole backlog and writes four tables (its rows/s counts every row written; each target's row counts "
            "are checked against the source). The users-only line "
            "divides the same time by the users alone. Latency: a Worker (sequencer_interval_s=0.05) follows the "
            f"caught-up target `full` while a writer commits {BATCH_CHANGES} renames every {BATCH_EVERY_S * 1000:g} ms"
            f" and a poller reads the target every ~{POLL_EVERY_S * 1000:g} ms; goals p50 <= "
            f"{LATENCY_GOALS_MS['p50']:,.0f} ms, p99 <= {LATENCY_GOALS_MS['p99']:,.0f} ms.",
            END,
        ]
    return "\n".join(parts).rstrip("\n")


def write_results(block: str) -> None:
    """Replace the bench_sync block of RESULTS.md, or append it under its own heading."""
    write_block(BEGIN, END, block, HEADING)


# --- main -----------------------------------------------------------------------------


@click.command()
@click.option("--users", default=1_000_000, show_default=True,
              help="Users of the seeded tenancy (with their channels, teams, memberships).")
@click.option("--skip-latency", is_flag=True, help="Skip the change latency measurement.")
@click.option("--latency-seconds", default=20.0, show_default=True, help="How long the latency writer commits changes.")
def main(users: int, skip_latency: bool, latency_seconds: float) -> None:
    """Benchmark a tenancy's initial sync against a raw batched upsert, and commit-to-target latency."""
    server = embedded.start(BENCH_HOME)
    source_dsn, target_dsns = fresh_databases(server.dsn)
    click.echo(f"seeding {users:,} users into {SOURCE_DB} …", err=True)
    click.echo(f"  seeded in {seed(source_dsn, users):.1f} s", err=True)
    all_mappings = mappings.load_all()
    users_mapping = mappings.select(all_mappings, ["users"])
    with db.connect(source_dsn, autocommit=True, application_name="pyglue bench") as conn:
        counts = source_counts(conn)
        if counts["users"] != users:
            raise click.ClickException(f"seeded tenancy {TENANCY} has {counts['users']:,} users, expected {users:,}")
        for table in MAPPED:
            run(conn, "autovacuum_off", table=table)

        click.echo("1/4 initial sync, every mapping …", err=True)
        targets.add(conn, TENANCY, "full", target_dsns["full"])
        settle(conn)
        initial, initial_phases, fetched = measure_pyglue_sync(source_dsn, all_mappings, sum(counts.values()))
        verify(counts, target_dsns["full"], "initial sync")
        click.echo(f"  rows fetched {fetched:,}, in the target {initial.rows:,}", err=True)

        click.echo("2/4 raw copy of users …", err=True)
        settle(conn)
        raw, raw_phases = measure_raw_copy(source_dsn, target_dsns["raw"], users_mapping[0].ddl_sql)
        verify({"users": users}, target_dsns["raw"], "raw copy")

        click.echo("3/4 apply-only, users mapping …", err=True)
        targets.add(conn, TENANCY, "users-only", target_dsns["users-only"])
        settle(conn)
        apply_only, apply_phases, _ = measure_pyglue_sync(source_dsn, users_mapping, users)
        verify({"users": users}, target_dsns["users-only"], "apply-only sync")

        latency = None
        if not skip_latency:
            click.echo(f"4/4 latency, {latency_seconds:g} s …", err=True)
            # the worker follows every enabled target with every mapping: leave it `full` only
            targets.set_enabled(conn, TENANCY, "users-only", False)
            settle(conn)
            latency, problems = measure_latency(source_dsn, target_dsns["full"], latency_seconds)
            for line in problems:
                click.echo(f"  worker: {line}", err=True)
            if not latency.seen:
                raise click.ClickException("no change reached the target")
        facts = machine_facts(conn)
    facts["settings"] = facts["settings"].replace("autovacuum off on measured tables",
                                                  "autovacuum off on the source tables, on in the targets")

    lines = report_lines(raw, apply_only, initial, users)
    phases = {"initial sync: where the time went": initial_phases, "apply-only: where the time went": apply_phases,
              "raw copy: where the time went": raw_phases}
    command = f".venv/bin/python -m perf.bench_sync --users {users}" + (
        " --skip-latency" if skip_latency else f" --latency-seconds {latency_seconds:g}")
    click.echo(f"\n{data_line(counts, users)}; {facts['nproc']} CPUs, {facts['postgres'].split(' on ')[0]}\n")
    click.echo(report(facts, counts, users, lines, phases, latency, markdown=False, command=command))
    write_results(report(facts, counts, users, lines, phases, latency, markdown=True, command=command))
    click.echo(f"\nwrote {RESULTS.relative_to(paths.ROOT)}", err=True)


if __name__ == "__main__":
    main()
