"""The sync engine: for one tenancy, bring every enabled target up to date, mapping by mapping.

Per target: lock (tenancy, target) on the target, create the cursor table and mapping
tables once, then page through each mapping: the fetch of a page runs over the fetch login,
isolated by the database (pyglue.sync.fetch), and is copied out as COPY text into the
target's COPY; the target keeps the last change per key and applies it in one transaction
with the cursor. A target that fails is recorded (error,
backoff) and the others go on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg

from pyglue import capture, db, queries
from pyglue import dsn as dsns
from pyglue.errors import PyglueError
from pyglue.sync import fetch
from pyglue.sync.mappings import Mapping
from pyglue.sync.target import Page, TargetBusy, TargetSessions, TargetTables

@dataclass
class Options:
    page_size: int = 5000
    statement_timeout_ms: int = 30000
    lock_timeout_s: float = 60.0
    sequencer_batch: int = 50000  # rows per table per sequencer pass (large backlogs: fewer, bigger passes)
    ignore_backoff: bool = False  # `pyglue sync --tenant` tries every enabled target now
    max_pages: int = 100_000  # pages of one mapping in one round: a mapping that never catches up is stopped
    stop: threading.Event = field(default_factory=threading.Event)  # finish the page, then return
    on_rows: Callable[[int], None] = lambda _n: None
    on_page: Callable[[], None] = lambda: None  # e.g. renew a queue lease
    on_applied: Callable[[int, Mapping, int], None] = lambda _target_id, _mapping, _rows: None  # telemetry
    snapshot_timeout_ms: int = 3_600_000  # a first sync's snapshot is one statement over the whole tenancy
    source_dsn: str | None = None  # lets a first sync open connections of its own for its mappings
    parallel_mappings: int = 2  # mappings synced side by side in a first sync (with source_dsn)
    sessions: TargetSessions | None = None  # target connections kept between rounds (a worker thread's)


@dataclass
class TargetResult:
    name: str
    rows: int = 0
    error: str | None = None
    skipped: str | None = None
    busy: bool = False  # skipped because another run holds the target


@dataclass
class TenancyResult:
    tenancy_id: uuid.UUID
    targets: list[TargetResult] = field(default_factory=list)
    sync_disabled: bool = False
    stopped: bool = False

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.targets)

    @property
    def failed(self) -> list[TargetResult]:
        return [t for t in self.targets if t.error]


class SyncDisabled(Exception):
    """The fusebox's sync switch is off."""


class Stopped(Exception):
    """The caller asked to stop between pages."""


def source_connection(dsn: str) -> fetch.SourceConnection:
    """The engine's connection to the source, in autocommit mode: a statement on its own is a
    transaction of its own, one round trip. Mapping queries go over the fetch login's
    connection it opens beside it (pyglue.sync.fetch)."""
    conn = db.connect(dsn, autocommit=True, application_name="pyglue sync", connection_class=fetch.SourceConnection)
    conn.fetch_dsn = fetch.fetch_dsn(dsn)
    check_for_dead_client(conn)
    return conn


def target_connection(dsn: str) -> psycopg.Connection:
    """A target connection that cannot hang: connect and keepalive timeouts unless the DSN sets them,
    and statement and lock timeouts for the session."""
    given = dsns.parse(dsn)
    extra = {k: v for k, v in TARGET_CONNECT_DEFAULTS.items() if k not in given}
    conn = db.connect(dsn, autocommit=True, application_name="pyglue sync", row_factory=psycopg.rows.tuple_row,
                      **extra)
    conn.execute("select set_config('statement_timeout', '300s', false), set_config('lock_timeout', '60s', false)")
    check_for_dead_client(conn)
    return conn


def check_for_dead_client(conn: psycopg.Connection) -> None:
    """Have the server check every second that the client is still there while a statement
    runs, so the session of a killed worker ends (and its claim and locks with it) within a
    second instead of when the statement finishes."""
    with conn.transaction():
        conn.execute("select set_config('client_connection_check_interval', '1000', false)")

TARGET_CONNECT_DEFAULTS = {"connect_timeout": 10, "keepalives": 1, "keepalives_idle": 30,
                           "keepalives_interval": 10, "keepalives_count": 3}


def register_mappings(source: psycopg.Connection, mappings: list[Mapping]) -> None:
    """Tell the database each mapping's source table and install the re-flag triggers of the
    tables it reads beside it (both idempotent: no DDL when nothing changed). Once per session
    and mapping: a worker's rounds after its first skip it."""
    todo = [m for m in mappings if m not in getattr(source, "registered", ())]
    if not todo:
        return
    with source.transaction():
        for m in todo:
            source.execute("select pyglue.register_mapping(%s, %s::regclass)", (m.name, m.source_table))
            for dep in m.depends_on:
                source.execute("select pyglue.track_dependency(%s::regclass, %s::regclass, %s::name[], %s::name[],"
                               " %s::name[])", (dep.table, m.source_table, [c for c, _ in dep.columns],
                                                [s for _, s in dep.columns], list(dep.watch) or None))
    if isinstance(source, fetch.SourceConnection):
        source.registered |= frozenset(todo)


def enabled_targets(source: psycopg.Connection, tenancy_id: uuid.UUID) -> list[dict]:
    return source.execute(queries.load("enabled_targets"), {"tenancy_id": tenancy_id}).fetchall()


def sync_tenancy(source: psycopg.Connection, tenancy_id: uuid.UUID, mappings: list[Mapping],
                 options: Options | None = None) -> TenancyResult:
    """One round over every enabled target of the tenancy; never raises for a target's failure."""
    options = options or Options()
    result = TenancyResult(tenancy_id)
    register_mappings(source, mappings)
    for target in enabled_targets(source, tenancy_id):
        outcome = TargetResult(target["name"])
        result.targets.append(outcome)
        if target["backing_off"] and not options.ignore_backoff:
            outcome.skipped = "backing off after an error"
            continue
        try:
            outcome.rows = sync_target(source, tenancy_id, target, mappings, options)
        except TargetBusy as exc:  # another run holds this target: not the target's fault
            outcome.skipped, outcome.busy = str(exc), True
            continue
        except SyncDisabled:
            result.sync_disabled = True
            break
        except Stopped:
            result.stopped = True
            break
        except (PyglueError, psycopg.Error, OSError) as exc:
            outcome.error = dsns.error_line(exc, target["connection_string"])
            _record(source, target["id"], outcome.error)
            continue
        _record(source, target["id"], None)
    return result


def sync_target(source: psycopg.Connection, tenancy_id: uuid.UUID, target: dict, mappings: list[Mapping],
                options: Options) -> int:
    """All mappings of one target until each is caught up; returns rows applied.

    A first sync of two or more mappings (their cursors 0) runs them side by side, each over
    connections of its own (options.source_dsn, options.parallel_mappings), while this
    connection holds the target's lock; later rounds go mapping by mapping."""
    if options.stop.is_set():
        raise Stopped()
    me = source.execute("select a.pid, a.backend_start from pg_stat_get_activity(pg_backend_pid()) a").fetchone()
    sessions = options.sessions or TargetSessions(target_connection, keep=0)
    with sessions.borrow(target, tenancy_id) as tables:
        tables.refuse_source(me["pid"], me["backend_start"])
        tables.lock(options.lock_timeout_s)
        tables.ensure_metadata()
        mirrored = {r["mapping_name"]: r["last_synced_sequence_id"] for r in source.execute(
            "select mapping_name, last_synced_sequence_id from pyglue.sync_cursors where target_id = %s",
            (target["id"],))}
        cursors = {}
        for mapping in mappings:
            cursors[mapping.name] = tables.ensure_mapping(mapping)
            if mirrored.get(mapping.name) != cursors[mapping.name]:  # the mirror lags (a sync killed between the two writes)
                # the first is flushed: with no mirror the purge takes the target for one needing no tombstones
                _mirror_cursor(source, target["id"], mapping, cursors[mapping.name],
                               flush=mapping.name not in mirrored)
        fresh = sum(1 for c in cursors.values() if c == 0)
        if options.source_dsn and options.parallel_mappings > 1 and fresh > 1:
            return _sync_side_by_side(tenancy_id, target, mappings, cursors, options)
        never = threading.Event()
        return sum(_sync_mapping(source, tables, tenancy_id, target["id"], m, cursors[m.name], options, never)
                   for m in mappings)


def _sync_mapping(source: fetch.SourceConnection, tables: TargetTables, tenancy_id: uuid.UUID, target_id: int,
                  mapping: Mapping, cursor: int, options: Options, cancelled: threading.Event) -> int:
    """Pages of one mapping until it is caught up (or cancelled); rows applied. A first sync of
    a mapping with a snapshot template into its empty table loads the snapshot first."""
    applied = 0
    if cursor == 0 and mapping.snapshot_sql is not None and tables.is_empty(mapping):
        loaded = transfer_snapshot(source, tables, tenancy_id, mapping, options)
        if loaded is not None:
            cursor, applied = loaded
            _mirror_cursor(source, target_id, mapping, cursor)
            options.on_applied(target_id, mapping, applied)
            options.on_page()
    for _ in range(options.max_pages):
        if options.stop.is_set():
            raise Stopped()
        if cancelled.is_set():
            return applied
        moved = transfer_page(source, tables, tenancy_id, mapping, cursor, options)
        if moved is None:
            return applied
        cursor, fetched = moved
        _mirror_cursor(source, target_id, mapping, cursor)
        applied += fetched
        options.on_applied(target_id, mapping, fetched)
        options.on_rows(fetched)
        options.on_page()
        if fetched < options.page_size:
            return applied
    raise PyglueError(f"mapping {mapping.name} was not caught up after {options.max_pages} pages in one "
                      "round; stopped (does its fetch honour %(cursor)s?)")


def _sync_side_by_side(tenancy_id: uuid.UUID, target: dict, mappings: list[Mapping], cursors: dict[str, int],
                       options: Options) -> int:
    """The mappings in options.parallel_mappings threads, each with its own source, fetch and
    target connections (the caller's target connection keeps the lock). The first failure
    cancels the others after their current page and is raised; the callbacks are serialized."""
    cancelled, guard = threading.Event(), threading.Lock()

    def serialized(callback):
        def call(*args):
            with guard:
                callback(*args)
        return call

    opts = dataclasses.replace(options, on_rows=serialized(options.on_rows), on_page=serialized(options.on_page),
                               on_applied=serialized(options.on_applied))

    def one(mapping: Mapping) -> int:
        try:
            with source_connection(options.source_dsn) as source, \
                    target_connection(target["connection_string"]) as conn:
                tables = TargetTables(conn, tenancy_id, target["lock_key"])
                return _sync_mapping(source, tables, tenancy_id, target["id"], mapping, cursors[mapping.name], opts,
                                     cancelled)
        except BaseException:
            cancelled.set()
            raise

    with ThreadPoolExecutor(min(options.parallel_mappings, len(mappings)), thread_name_prefix="pyglue-mapping") as pool:
        futures = [pool.submit(one, m) for m in mappings]
    for future in futures:  # in mapping order: the first mapping's error is the one reported
        if future.exception() is not None:
            raise future.exception()
    return sum(f.result() for f in futures)


def transfer_page(source: fetch.SourceConnection, tables: TargetTables, tenancy_id: uuid.UUID, mapping: Mapping,
                  cursor: int, options: Options) -> tuple[int, int] | None:
    """Move the next page of a mapping after cursor from the source to the target: the fetch
    (under tenant isolation, over the fetch login) is copied out as COPY text straight into the
    target's COPY, no value parsed in Python; the target checks the page's sequence ids and
    applies it with the cursor in one transaction (TargetTables.apply_stream). Returns (new
    cursor, rows fetched), or None when caught up."""
    _check_fusebox(source)
    with fetch.stream_rows(source, tenancy_id, mapping.name, mapping.fetch_sql,
                           {"tenancy_id": tenancy_id, "cursor": cursor, "limit": options.page_size},
                           options.page_size, options.statement_timeout_ms) as rows:
        check_columns(mapping, rows.names)
        if rows.empty():  # caught up: the target is not touched
            return None
        return tables.apply_stream(mapping, rows.names[2:], cursor, rows.copy_to, lambda: _handed_out(source))


def transfer_snapshot(source: fetch.SourceConnection, tables: TargetTables, tenancy_id: uuid.UUID, mapping: Mapping,
                      options: Options) -> tuple[int, int] | None:
    """A target's first sync of a mapping: the tenancy's rows as they are now (the mapping's
    snapshot template, one statement under tenant isolation) copied into its empty table, and
    the cursor set to the watermark taken in the same statement (fetch.stream_snapshot), so
    the pages after it bring every change the snapshot lacks. Rows the sequencer has not
    stamped yet need no stamp first: when it stamps them, their ids are past the watermark
    and a later page brings them again, unchanged. Returns (watermark, rows) or None when the
    tenancy has no rows."""
    _check_fusebox(source)
    beat = _Heartbeat(options)
    with fetch.stream_snapshot(source, tenancy_id, mapping.name, mapping.snapshot_sql, mapping.source_table,
                               options.snapshot_timeout_ms) as rows:
        check_columns(mapping, rows.names)
        if rows.empty():  # the tenancy has no rows: the target is not touched
            return None
        loaded = tables.apply_snapshot(mapping, rows.names[2:], lambda write: rows.copy_to(beat.wrap(write)),
                                       lambda: _handed_out(source))
    beat.flush()
    return loaded


class _Heartbeat:
    """While a snapshot streams (one long transaction): progress (options.on_rows) and the
    lease renewal (options.on_page) about every second, not only when it is done."""

    EVERY_S = 1.0

    def __init__(self, options: Options):
        self.options, self.unreported, self.last = options, 0, time.monotonic()

    def wrap(self, write: Callable[[memoryview], None]) -> Callable[[memoryview], None]:
        def beating(data: memoryview) -> None:
            write(data)
            self.unreported += 1
            if time.monotonic() - self.last >= self.EVERY_S:
                self.flush()
                self.options.on_page()
        return beating

    def flush(self) -> None:
        if self.unreported:
            self.options.on_rows(self.unreported)
        self.unreported, self.last = 0, time.monotonic()


def _check_fusebox(source: psycopg.Connection) -> None:
    if not source.execute("select sync_enabled from pyglue.fusebox").fetchone()["sync_enabled"]:
        raise SyncDisabled()


def _handed_out(source: psycopg.Connection) -> int:
    """The last id the sequencer handed out: no page may hold a later one."""
    return source.execute("select last_value from pyglue.change_sequence").fetchone()["last_value"]


def fetch_page(source: fetch.SourceConnection, tenancy_id: uuid.UUID, mapping: Mapping, cursor: int,
               options: Options) -> Page | None:
    """The next page of a mapping after cursor as Python values, reduced to the last change
    of each key (pyglue targets verify reads the mapping's output this way); None when caught
    up. Checked like a streamed page: at most options.page_size rows, in strictly increasing
    sequence order, none beyond the last id the sequencer handed out."""
    _check_fusebox(source)
    names, rows = fetch.fetch_rows(source, tenancy_id, mapping.name, mapping.fetch_sql,
                                   {"tenancy_id": tenancy_id, "cursor": cursor, "limit": options.page_size},
                                   options.page_size, options.statement_timeout_ms)
    if not rows:
        return None
    page = reduce_page(mapping, names, rows)
    handed_out = _handed_out(source)
    if rows[0][0] <= cursor or page.last_sequence_id > handed_out:
        raise PyglueError(f"mapping {mapping.name}: fetch returned sequence ids outside ({cursor}, {handed_out}]"
                          f" ({rows[0][0]}..{page.last_sequence_id}); it must read rows after %(cursor)s only")
    return page


def check_columns(mapping: Mapping, names: list[str]) -> None:
    """A fetch returns sequence_id and is_deleted first, then columns that include the key."""
    if names[:2] != ["sequence_id", "is_deleted"]:
        raise PyglueError(f"mapping {mapping.name}: fetch must return sequence_id, is_deleted first, got {names[:2]}")
    missing = [k for k in mapping.key_columns if k not in names[2:]]
    if missing:
        raise PyglueError(f"mapping {mapping.name}: fetch does not return key column {missing[0]}")


def reduce_page(mapping: Mapping, names: list[str], rows: list[tuple]) -> Page:
    """Keep only the last change of each key (rows arrive in sequence order)."""
    check_columns(mapping, names)
    columns = names[2:]
    key_at = [columns.index(k) + 2 for k in mapping.key_columns]
    last: dict[tuple, tuple] = {}
    previous = None
    for row in rows:
        if row[0] is None or (previous is not None and row[0] <= previous):
            raise PyglueError(f"mapping {mapping.name}: fetch must return rows in strictly increasing sequence_id "
                              f"order, got {row[0]} after {previous}")
        previous = row[0]
        last[tuple(row[i] for i in key_at)] = row
    upserts = [row[2:] for row in last.values() if not row[1]]
    deletes = [key for key, row in last.items() if row[1]]
    return Page(columns, upserts, deletes, rows[-1][0], len(rows))


# Bookkeeping that a crash of the source server may lose without harm commits without
# waiting for its WAL to reach disk (on this 2-core machine a flushed commit cost ~3 ms under
# load): a cursor mirror that lags is mended at the next round and only holds the tombstone
# purge back; a lost result only dates the status; a lease or a fetch binding dies with the
# sessions anyway. The first mirror of a cursor, pages, stamps and the request queue are
# flushed as always.
UNFLUSHED = "set_config('synchronous_commit', 'off', true)"


def _mirror_cursor(source: psycopg.Connection, target_id: int, mapping: Mapping, cursor: int,
                   flush: bool = False) -> None:
    call = "pyglue.record_sync_cursor(%s, %s, %s)"
    source.execute(f"select {call}" if flush else f"select {UNFLUSHED}, {call}", (target_id, mapping.name, cursor))


def _record(source: psycopg.Connection, target_id: int, error: str | None) -> None:
    source.execute(f"select {UNFLUSHED}, pyglue.record_sync_result(%s, %s)", (target_id, error))


def sync_until_caught_up(dsn: str, tenancy_id: uuid.UUID, mappings: list[Mapping],
                         options: Options | None = None) -> TenancyResult:
    """`pyglue sync --tenant`: sequence, sync, repeat until a round moves nothing."""
    sessions = TargetSessions(target_connection)
    options = dataclasses.replace(options or Options(), source_dsn=dsn, sessions=sessions)
    total = TenancyResult(tenancy_id)
    with source_connection(dsn) as source, contextlib.closing(sessions):
        by_name: dict[str, TargetResult] = {}
        while True:
            capture.sequence_until_idle(source, options.sequencer_batch)
            round_ = sync_tenancy(source, tenancy_id, mappings, options)
            for t in round_.targets:
                seen = by_name.setdefault(t.name, TargetResult(t.name))
                seen.rows += t.rows
                seen.error, seen.skipped, seen.busy = t.error, t.skipped, t.busy
            total.sync_disabled, total.stopped = round_.sync_disabled, round_.stopped
            if round_.rows == 0 or round_.sync_disabled or round_.stopped or round_.failed:
                break
        total.targets = list(by_name.values())
    return total
