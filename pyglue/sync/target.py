"""The target side: one tenancy's tables and cursors in an external Postgres database.

Everything here runs on a connection to the target. A page is applied in ONE transaction: a
COPY of the page's changes into a session temp table (the raw stage), the checks of their
sequence ids, the deletes and one INSERT … ON CONFLICT of the last change of each key, and
the cursor advance, guarded so a cursor that moved under us aborts the page.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
from psycopg import sql

from pyglue import paths, render
from pyglue.errors import PyglueError
from pyglue.sync.mappings import Mapping

METADATA = "_pyglue_sync_metadata"
CLAIM_KEY = 5273190445119269915  # = hashtextextended('pyglue.sync:claim', 0), the key earlier versions used
# Who holds an advisory lock of this database on a bigint key (split in two 32-bit halves).
LOCK_HOLDER = """select a.usename, l.pid from pg_locks l left join pg_stat_activity a on a.pid = l.pid
where l.locktype = 'advisory' and l.granted and l.objsubid = 1
  and l.database = (select d.oid from pg_database d where d.datname = current_database())
  and l.classid::bigint = (%(key)s::bigint >> 32) & 4294967295 and l.objid::bigint = %(key)s::bigint & 4294967295
limit 1"""
OWNER_ROW = ".tenancy"  # the metadata row that claims a target database for one tenancy (not a mapping name)


class TargetBusy(PyglueError):
    """Another sync of the same tenancy into the same target holds the lock."""


class TargetLockTaken(PyglueError):
    """A session of another role holds the target's sync lock: not a sync, a fault to report."""


@dataclass
class Page:
    """Rows fetched for one mapping, reduced to the last change of each key."""

    columns: list[str]  # target columns, in fetch order
    upserts: list[tuple]
    deletes: list[tuple]  # key tuples
    last_sequence_id: int
    fetched: int


class TargetTables:
    """One tenancy's view of one target database (a connection in autocommit mode)."""

    def __init__(self, conn: psycopg.Connection, tenancy_id: uuid.UUID, lock_key: int | None = None,
                 schema: str = "public"):
        self.conn, self.tenancy_id, self.lock_key, self.schema = conn, tenancy_id, lock_key, schema
        self._column_types: dict[str, dict[str, str]] = {}
        self._staged: dict[str, list[str]] = {}
        self._not_source: tuple | None = None  # the source session refuse_source last passed
        self._claimed = False  # ensure_metadata passed on this connection

    def lock(self, timeout_s: float) -> None:
        """Serialize runs for this tenancy and target: a session advisory lock, dropped with the
        connection, on the target's random key (pyglue.sync_targets.lock_key), so the target's
        other roles cannot guess it. One they took anyway (seen in pg_locks) is reported as a
        fault, not as a busy target."""
        if self.lock_key is None:
            raise ValueError("TargetTables.lock needs the target's lock_key")
        if self.conn.execute("select pg_try_advisory_lock(%s)", (self.lock_key,)).fetchone()[0]:
            return  # free: one round trip
        self._take("pg_advisory_lock", self.lock_key, timeout_s,
                   f"another sync of tenancy {self.tenancy_id} into this target is running")

    def unlock(self) -> None:
        """Release the lock that lock() took (every session advisory lock of this connection)."""
        self.conn.execute("select pg_advisory_unlock_all()")

    def _take(self, function: str, key: int, timeout_s: float, busy: str) -> None:
        """One advisory lock function on key, waiting at most timeout_s. In a savepoint (or its
        own transaction), so a timeout leaves the caller's transaction usable."""
        try:
            with self.conn.transaction():
                self.conn.execute("select set_config('lock_timeout', %s, true)", (f"{max(1, int(timeout_s * 1000))}ms",))
                self.conn.execute(sql.SQL("select {}(%s)").format(sql.Identifier(function)), (key,))
        except psycopg.errors.LockNotAvailable:
            holder = self.conn.execute(LOCK_HOLDER, {"key": key}).fetchone()
            if holder and holder[0] is not None and holder[0] != self.conn.info.user:
                raise TargetLockTaken(f"the target's sync lock is held by role {holder[0]!r} (pid {holder[1]}), "
                                      "not by a pyglue sync; end that session") from None
            raise TargetBusy(busy) from None

    def refuse_source(self, source_pid: int, source_started) -> None:
        """Refuse a target that is the source database itself: the source session is then a
        session of this very database. Checked once per source session on this connection."""
        if self._not_source == (source_pid, source_started):
            return
        same = self.conn.execute(
            "select exists (select 1 from pg_stat_activity a where a.pid = %s and a.datname = current_database()"
            " and (a.backend_start = %s or a.backend_start is null))", (source_pid, source_started)).fetchone()[0]
        if same:
            raise PyglueError("the target is the source database itself; refusing to sync into it")
        self._not_source = (source_pid, source_started)

    def ensure_metadata(self) -> None:
        """Create the cursor table once and claim the database for this tenancy; refuse a
        database another tenancy has claimed. Claims are serialized database-wide, so two
        tenancies' first syncs into one empty database cannot both pass the check. Once passed
        on this connection it holds for it: no other tenancy can claim the database after."""
        if self._claimed:
            return
        metadata = self._metadata()
        with self.conn.transaction():
            self._take("pg_advisory_xact_lock", CLAIM_KEY, 10, "another tenancy's first sync into this target is "
                       "claiming it")
            exists = self.conn.execute("select to_regclass(%s) is not null",
                                       (metadata.as_string(self.conn),)).fetchone()[0]
            if not exists:
                self.conn.execute(self._render_target("metadata.sql.j2"))
            other = self.conn.execute(sql.SQL("select tenancy_id from {} where tenancy_id <> %s limit 1").format(
                metadata), (self.tenancy_id,)).fetchone()
            if not other:
                self.conn.execute(sql.SQL("insert into {} (tenancy_id, mapping_name) values (%s, %s)"
                                          " on conflict do nothing").format(metadata), (self.tenancy_id, OWNER_ROW))
        if other:
            raise PyglueError(f"target already holds data of tenancy {other[0]}; refusing to sync tenancy "
                              f"{self.tenancy_id} into it (one target database per tenancy)")
        self._claimed = True

    def ensure_mapping(self, mapping: Mapping) -> int:
        """The mapping's cursor; on first sync, create its table (once) and a cursor row of 0."""
        cursor = self._cursor(mapping, lock=False)
        if cursor is not None:
            return cursor
        with self.conn.transaction():
            cursor = self._cursor(mapping, lock=False)
            if cursor is not None:
                return cursor
            table = self._table(mapping)
            present = self.conn.execute("select to_regclass(%s) is not null", (table.as_string(self.conn),)).fetchone()[0]
            if present and self._has_rows(mapping):
                raise PyglueError(f"target table {mapping.target_table} already holds rows pyglue did not write; "
                                  "refusing to sync into it")
            self.conn.execute(mapping.ddl_sql)
            # readable by the target's other roles, never writable by them
            self.conn.execute(sql.SQL("revoke all on {} from public").format(table))
            self.conn.execute(sql.SQL("grant select on {} to public").format(table))
            self.conn.execute(
                sql.SQL("insert into {} (tenancy_id, mapping_name) values (%s, %s)").format(self._metadata()),
                (self.tenancy_id, mapping.name))
            return 0

    def is_empty(self, mapping: Mapping) -> bool:
        with self.conn.transaction():
            return not self._has_rows(mapping)

    def cursor(self, mapping: Mapping) -> int:
        with self.conn.transaction():
            value = self._cursor(mapping, lock=False)
        if value is None:
            raise PyglueError(f"mapping {mapping.name} has no cursor in the target")
        return value

    def apply(self, mapping: Mapping, page: Page, expected_cursor: int) -> None:
        """Apply rows already reduced in Python (a repair, tests): deletes, upserts and the
        cursor advance in one transaction."""
        width, key_at = len(page.columns), [page.columns.index(k) for k in mapping.key_columns]

        def fill(copy) -> int:
            for key in page.deletes:
                row = [None] * width
                for i, value in zip(key_at, key):
                    row[i] = value
                copy.write_row((0, True, *row))
            for row in page.upserts:
                copy.write_row((0, False, *row))
            return len(page.deletes) + len(page.upserts)

        self._apply(mapping, page.columns, expected_cursor, fill, lambda _raw: page.last_sequence_id, self._apply_raw)

    def apply_stream(self, mapping: Mapping, columns: list[str], expected_cursor: int,
                     copy_to: Callable[[Callable[[memoryview], None]], int],
                     handed_out: Callable[[], int]) -> tuple[int, int] | None:
        """Apply a page of changes as the fetch streams them (COPY text rows of sequence_id,
        is_deleted, then columns): COPY into the raw stage, check the sequence ids there (after
        the cursor, strictly increasing in arrival order, none beyond the last id handed out),
        keep the last change of each key, delete, upsert and advance the cursor, all in one
        transaction. Returns (last sequence id, rows fetched), or None when nothing came."""
        def check(raw: sql.Composable) -> int:
            first, last, out_of_order, bad, after = self.conn.execute(sql.SQL(
                "select r.first, r.last, b.found, b.sequence_id, b.prev"
                " from (select min(sequence_id) as first, max(sequence_id) as last from {raw}) r"
                " left join lateral (select true as found, x.sequence_id, x.prev from (select sequence_id, pyglue_ord,"
                " lag(sequence_id) over (order by pyglue_ord) as prev from {raw}) x"
                " where x.sequence_id is null or x.sequence_id <= x.prev order by x.pyglue_ord limit 1) b on true"
            ).format(raw=raw)).fetchone()
            if out_of_order:
                raise PyglueError(f"mapping {mapping.name}: fetch must return rows in strictly increasing sequence_id "
                                  f"order, got {bad} after {after}")
            limit = handed_out()
            if first <= expected_cursor or last > limit:
                raise PyglueError(f"mapping {mapping.name}: fetch returned sequence ids outside ({expected_cursor}, "
                                  f"{limit}] ({first}..{last}); it must read rows after %(cursor)s only")
            return last

        return self._apply(mapping, columns, expected_cursor, lambda copy: copy_to(copy.write), check, self._apply_raw)

    def apply_snapshot(self, mapping: Mapping, columns: list[str], copy_to: Callable[[Callable[[memoryview], None]], int],
                       handed_out: Callable[[], int]) -> tuple[int, int] | None:
        """Load a snapshot of the tenancy's rows (COPY text rows of watermark, false, then columns)
        into the mapping's empty table and move its cursor from 0 to the watermark, in one
        transaction. Every row must carry the same watermark, at most the last id handed out, and
        no delete; the table must still be empty. Returns (watermark, rows), or None when the
        snapshot was empty."""
        def check(raw: sql.Composable) -> int:
            if self._has_rows(mapping):
                raise PyglueError(f"mapping {mapping.name}: target table {mapping.target_table} is not empty any more; "
                                  "snapshot not loaded")
            low, high, deletes = self.conn.execute(sql.SQL(
                "select min(sequence_id), max(sequence_id), bool_or(is_deleted) from {}").format(raw)).fetchone()
            limit = handed_out()
            if low is None or low != high or low < 0 or high > limit or deletes:
                raise PyglueError(f"mapping {mapping.name}: snapshot rows must carry one watermark in [0, {limit}] and "
                                  f"no delete, got {low}..{high}{' and deletes' if deletes else ''}")
            return high

        return self._apply(mapping, columns, 0, lambda copy: copy_to(copy.write), check, self._insert_raw)

    def _apply(self, mapping: Mapping, columns: list[str], expected_cursor: int, fill: Callable[..., int],
               check: Callable[[sql.Composable], int],
               apply_raw: Callable[[Mapping, list[str], sql.Composable], None]) -> tuple[int, int] | None:
        self._check_columns(mapping, columns, expected_cursor)
        try:
            with self.conn.transaction():
                # the last change per key is a sort of the page: in memory, not on disk
                current = self._cursor(mapping, lock=True, also="set_config('work_mem', '64MB', true)")
                if current != expected_cursor:
                    raise PyglueError(f"cursor of mapping {mapping.name} moved from {expected_cursor} to {current} "
                                      "during the page; page not applied")
                raw = self._raw_stage(mapping, columns)
                names = sql.SQL(", ").join(map(sql.Identifier, ["sequence_id", "is_deleted", *columns]))
                with self.conn.cursor().copy(sql.SQL("copy {} ({}) from stdin").format(raw, names)) as copy:
                    fetched = fill(copy)
                if not fetched:
                    return None
                last = check(raw)
                apply_raw(mapping, columns, raw)
                self.conn.execute(
                    sql.SQL("update {} set last_synced_sequence_id = %s, updated_at = now()"
                            " where tenancy_id = %s and mapping_name = %s").format(self._metadata()),
                    (last, self.tenancy_id, mapping.name))
                return last, fetched
        except psycopg.Error as exc:
            message = " ".join((exc.diag.message_primary or str(exc)).split())
            message = message.replace(f"pyglue_raw_{mapping.name}", mapping.target_table)
            raise PyglueError(f"mapping {mapping.name}: applying a page to target table {mapping.target_table} "
                              f"failed: {message}") from None

    def _check_columns(self, mapping: Mapping, columns: list[str], cursor: int) -> None:
        """Every column the fetch returns (keys included) must exist in the target table. A table
        that lacks one and never received a row was made by a faulty ddl.sql.j2: it is dropped
        with its cursor (after this transaction), so the next sync creates it again."""
        types = self._types(mapping)
        missing = [c for c in list(mapping.key_columns) + columns if c not in types]
        if not missing:
            return
        table = self._table(mapping)
        with self.conn.transaction():
            empty = not self._has_rows(mapping)
            if cursor == 0 and empty:
                self.conn.execute(sql.SQL("drop table {}").format(table))
                self.conn.execute(sql.SQL("delete from {} where tenancy_id = %s and mapping_name = %s").format(
                    self._metadata()), (self.tenancy_id, mapping.name))
                self._column_types.pop(mapping.name, None)
        hint = ("pyglue dropped the empty table: fix ddl.sql.j2 and sync again" if cursor == 0 and empty else
                f"fix ddl.sql.j2, then drop table {mapping.target_table} and delete its row from {METADATA} "
                "to sync it again from the start")
        raise PyglueError(f"mapping {mapping.name}: target table {mapping.target_table} has no column "
                          f"{missing[0]!r} that the fetch returns; {hint}")

    # -- helpers -------------------------------------------------------------------------

    def _cursor(self, mapping: Mapping, lock: bool, also: str | None = None) -> int | None:
        """The cursor row's value (locked for the transaction), and `also` evaluated beside it."""
        query = sql.SQL("select last_synced_sequence_id{} from {} where tenancy_id = %s and mapping_name = %s{}").format(
            sql.SQL(f", {also}" if also else ""), self._metadata(), sql.SQL(" for update" if lock else ""))
        row = self.conn.execute(query, (self.tenancy_id, mapping.name)).fetchone()
        return None if row is None else row[0]

    def _types(self, mapping: Mapping) -> dict[str, str]:
        if mapping.name not in self._column_types:
            rows = self.conn.execute(
                "select a.attname, format_type(a.atttypid, a.atttypmod) from pg_attribute a"
                " where a.attrelid = %s::regclass and a.attnum > 0 and not a.attisdropped",
                (self._table(mapping).as_string(self.conn),)).fetchall()
            self._column_types[mapping.name] = dict(rows)
        return self._column_types[mapping.name]

    def _has_rows(self, mapping: Mapping) -> bool:
        return self.conn.execute(sql.SQL("select exists (select 1 from {})").format(self._table(mapping))).fetchone()[0]

    def _metadata(self) -> sql.Composable:
        return sql.SQL("{}.{}").format(sql.Identifier(self.schema), sql.Identifier(METADATA))

    def _table(self, mapping: Mapping) -> sql.Composable:
        return sql.SQL("{}.{}").format(sql.Identifier(self.schema), sql.Identifier(mapping.target_table))

    def _raw_stage(self, mapping: Mapping, columns: list[str]) -> sql.Composable:
        """A session temp table for one page of changes: arrival order, sequence_id, is_deleted and
        the page's columns typed as in the target table (rows emptied at commit)."""
        name = sql.Identifier(f"pyglue_raw_{mapping.name}")
        if self._staged.get(mapping.name) != columns:
            types = self._types(mapping)
            self.conn.execute(sql.SQL("drop table if exists {}").format(name))
            self.conn.execute(sql.SQL(
                "create temp table {} (pyglue_ord bigint generated always as identity, sequence_id bigint,"
                " is_deleted boolean, {}) on commit delete rows").format(
                name, sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(types[c])) for c in columns)))
            self._staged[mapping.name] = list(columns)
        return name

    def _apply_raw(self, mapping: Mapping, columns: list[str], raw: sql.Composable) -> None:
        """The last change of each key in the raw stage: deletes, then one INSERT … ON CONFLICT."""
        keys = sql.SQL(", ").join(map(sql.Identifier, mapping.key_columns))
        names = sql.SQL(", ").join(map(sql.Identifier, columns))
        match = sql.SQL(" and ").join(sql.SQL("t.{c} = d.{c}").format(c=sql.Identifier(c)) for c in mapping.key_columns)
        values = [c for c in columns if c not in mapping.key_columns]
        assignments = sql.SQL(", ").join(sql.SQL("{c} = excluded.{c}").format(c=sql.Identifier(c)) for c in values)
        changed = sql.SQL("({}) is distinct from ({})").format(
            sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in values),
            sql.SQL(", ").join(sql.SQL("excluded.{}").format(sql.Identifier(c)) for c in values))
        conflict = (sql.SQL("do update set {} where {}").format(assignments, changed) if values
                    else sql.SQL("do nothing"))
        self.conn.execute(sql.SQL(
            "with last as materialized (select distinct on ({keys}) * from {raw} order by {keys}, sequence_id desc),"
            " gone as (delete from {table} t using last d where d.is_deleted and {match})"
            " insert into {table} as t ({names}) select {names} from last where not is_deleted"
            " on conflict ({keys}) {conflict}").format(
            keys=keys, raw=raw, table=self._table(mapping), match=match, names=names, conflict=conflict))

    def _insert_raw(self, mapping: Mapping, columns: list[str], raw: sql.Composable) -> None:
        """A snapshot in the raw stage into the empty table: one INSERT (a key twice fails it)."""
        names = sql.SQL(", ").join(map(sql.Identifier, columns))
        self.conn.execute(sql.SQL("insert into {table} ({names}) select {names} from {raw}").format(
            table=self._table(mapping), names=names, raw=raw))

    def _render_target(self, template: str) -> str:
        env = render.environment(paths.TEMPLATES / "target")
        return env.get_template(template).render(schema=self.schema)


class TargetSessions:
    """Target connections that one thread (a worker's sync thread) keeps from one round to the
    next, so a round skips the connection (a backend started on the target), the claim check
    of the database and the creation of its stage tables. A session is kept only after a
    round that ended cleanly and released the target's lock; an error closes it. At most
    `keep` are kept (the least recently used is closed first); one idle longer than idle_s is
    closed at the next borrow, and ended by the target itself if no borrow comes (its
    idle_session_timeout, PG 14+, set between rounds only), so a worker gone quiet holds no
    connection that would block a DROP DATABASE for long. One the target ended meanwhile is
    replaced before use. keep=0: a connection per round."""

    def __init__(self, connect: Callable[[str], psycopg.Connection], keep: int = 8, idle_s: float = 60.0):
        self.connect, self.keep, self.idle_s = connect, keep, idle_s
        self._kept: OrderedDict[tuple, tuple[TargetTables, float]] = OrderedDict()

    @contextmanager
    def borrow(self, target: dict, tenancy_id: uuid.UUID) -> Iterator[TargetTables]:
        """TargetTables on a connection to the target (its lock not taken yet); lock() it."""
        key = (target["id"], target["connection_string"], target["lock_key"], tenancy_id)
        tables = self._reuse(key)
        if tables is None:
            tables = TargetTables(self.connect(target["connection_string"]), tenancy_id, target["lock_key"])
        try:
            yield tables
        except BaseException:
            tables.conn.close()
            raise
        if self.keep > 0 and _released(tables, self.idle_s):
            self._kept[key] = (tables, time.monotonic())
            while len(self._kept) > self.keep:
                self._kept.popitem(last=False)[1][0].conn.close()
        else:
            tables.conn.close()

    def close(self) -> None:
        while self._kept:
            self._kept.popitem()[1][0].conn.close()

    def _reuse(self, key: tuple) -> TargetTables | None:
        now = time.monotonic()
        for stale in [k for k, (_, since) in self._kept.items() if now - since > self.idle_s]:
            self._kept.pop(stale)[0].conn.close()
        tables = self._kept.pop(key, (None, 0.0))[0]
        if tables is None:
            return None
        try:  # no idle timeout during a round: the target may wait long for a page
            tables.conn.execute(f"select {_IDLE_TIMEOUT}", ("0",))
        except psycopg.Error:  # ended by the target (idle, a restart): a new one
            tables.conn.close()
            return None
        return tables


# idle_session_timeout where the target has it (PG 14+)
_IDLE_TIMEOUT = ("case when current_setting('idle_session_timeout', true) is not null"
                 " then set_config('idle_session_timeout', %s, false) end")


def _released(tables: TargetTables, idle_s: float) -> bool:
    """Release the target's lock so the session can be kept, and have the target end it once
    idle for idle_s; False (to close it) when that fails."""
    if tables.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        return False
    try:
        tables.unlock()
        tables.conn.execute(f"select {_IDLE_TIMEOUT}", (f"{max(1, round(idle_s * 1000))}ms",))
    except psycopg.Error:
        return False
    return True
