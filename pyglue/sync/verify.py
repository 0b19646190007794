"""`pyglue targets verify`: compare each target table with what its mapping computes from the source.

Per target and mapping, inside one REPEATABLE READ snapshot of the target:
  1. read the mapping's cursor C; the snapshot fixes C and the table's rows together;
  2. fold the mapping's whole output, paged from cursor 0 through the engine's isolated
     fetch (engine.fetch_page), into key -> last state (the row, or None when deleted);
  3. run the sequencer again and fetch what changed after C: those keys are pending (the
     next sync brings them), not differences. Reading them after step 2 also catches a row
     written while step 2 ran and not yet stamped: the sequencer gives it an id above C;
  4. stream the target table, every column cast to text, against the fold's values as
     text: lost (live in the fold, absent in the target), extra (in the target, deleted in
     or absent from the fold), stale candidates (present, some value's text differs);
  5. confirm the candidates the way the engine's upsert decides to write: COPY their source
     rows into a temp table of the target table's types and keep those IS DISTINCT FROM the
     target row. A value printed differently but stored equal (json key order, a numeric's
     scale) is then not reported, and so not "repaired" forever.
Safe without a lock: every change up to C is in the snapshot and the source is read after
it, so a key whose last change is at or below C must match.

With repair, the engine's per-(tenancy, target) advisory lock is held from before the
snapshot to after the last batch, so no sync moves rows or the cursor in between. The
differing keys are re-sent in key order, each batch ONE target transaction through
TargetTables.apply: deletes for extra rows, upserts with the source values for lost and stale
ones, and the cursor re-written unchanged (apply's guard still checks it did not move).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import psycopg
from psycopg import sql
from psycopg.rows import tuple_row

from pyglue import capture, queries
from pyglue import dsn as dsns
from pyglue.errors import PyglueError
from pyglue.sync import engine
from pyglue.sync.mappings import Mapping
from pyglue.sync.target import METADATA, Page, TargetTables

Key = tuple[str, ...]  # key column values as Postgres prints them (::text)


@dataclass
class VerifyOptions:
    repair: bool = False
    page_size: int = 10000  # rows per source fetch
    batch_size: int = 5000  # keys per repair transaction
    statement_timeout_ms: int = 30000
    lock_timeout_s: float = 60.0
    sequencer_batch: int = 50000
    examples: int = 20  # keys of each kind kept for the JSON report


@dataclass
class MappingCheck:
    mapping: str
    key_columns: tuple[str, ...]
    synced: bool = True  # False: the target has no cursor for it yet (everything pending)
    source_rows: int = 0
    pending: int = 0
    lost: list[Key] = field(default_factory=list)
    stale: list[Key] = field(default_factory=list)
    extra: list[Key] = field(default_factory=list)
    repaired: bool = False

    @property
    def differences(self) -> int:
        return len(self.lost) + len(self.stale) + len(self.extra)

    def counts(self) -> str:
        return f"{len(self.lost)} lost, {len(self.stale)} stale, {len(self.extra)} extra"

    def line(self, target: str) -> str:
        where = f"{target} {self.mapping}:"
        if not self.synced:
            return f"{where} not synced yet ({self.pending} pending)"
        tail = f"({self.source_rows} rows, {self.pending} pending)"
        if self.repaired:
            return f"{where} repaired {self.counts()} {tail}"
        if self.differences:
            return f"{where} {self.counts()} {tail}"
        return f"{where} ok {tail}"

    def as_dict(self, examples: int) -> dict:
        return {"mapping": self.mapping, "key_columns": list(self.key_columns), "synced": self.synced,
                "source_rows": self.source_rows, "pending": self.pending, "lost": len(self.lost),
                "stale": len(self.stale), "extra": len(self.extra), "repaired": self.repaired,
                "examples": {kind: [list(k) for k in getattr(self, kind)[:examples]]
                             for kind in ("lost", "stale", "extra")}}


@dataclass
class TargetCheck:
    name: str
    mappings: list[MappingCheck] = field(default_factory=list)
    error: str | None = None


@dataclass
class VerifyResult:
    tenancy_id: uuid.UUID
    options: VerifyOptions
    targets: list[TargetCheck] = field(default_factory=list)

    @property
    def failed(self) -> list[TargetCheck]:
        return [t for t in self.targets if t.error]

    @property
    def differing(self) -> list[MappingCheck]:
        return [m for t in self.targets for m in t.mappings if m.differences and not m.repaired]

    @property
    def repaired_rows(self) -> int:
        return sum(m.differences for t in self.targets for m in t.mappings if m.repaired)

    def lines(self) -> list[str]:
        """The report for people: one line per target and mapping (failed targets go to problem())."""
        if not self.targets:
            return [f"tenancy {self.tenancy_id} has no enabled sync targets"]
        out = [m.line(t.name) for t in self.targets for m in t.mappings]
        if self.options.repair:
            out.append(f"repaired {self.repaired_rows} row(s)" if self.repaired_rows else "nothing to repair")
        return out

    def problem(self) -> str | None:
        """One line when the command must exit non-zero: failed targets, or differences left."""
        parts = [f"target {t.name!r}: {t.error}" for t in self.failed]
        if self.differing:
            parts.append(f"{len(self.differing)} target table(s) of tenancy {self.tenancy_id} differ from the source"
                         " (rerun with --repair to re-send the rows)")
        return "; ".join(parts) or None

    def as_dict(self) -> dict:
        return {"tenancy_id": str(self.tenancy_id), "repair": self.options.repair,
                "targets": [{"name": t.name, "error": t.error,
                             "mappings": [m.as_dict(self.options.examples) for m in t.mappings]}
                            for t in self.targets]}


class _SourceStopped(PyglueError):
    """The source refuses fetches (fusebox): a stop for every target, not one target's failure."""


def verify_tenancy(dsn: str, tenancy_id: uuid.UUID, mappings: list[Mapping],
                   options: VerifyOptions | None = None) -> VerifyResult:
    """Verify (and with options.repair, repair) every enabled target of the tenancy; a target that
    fails is reported in its TargetCheck.error and the others go on."""
    options = options or VerifyOptions()
    result = VerifyResult(tenancy_id, options)
    with engine.source_connection(dsn) as source:
        with source.transaction():
            if not source.execute(queries.load("tenancy_exists"), {"tenancy_id": tenancy_id}).fetchone()["present"]:
                raise PyglueError(f"no tenancy {tenancy_id}")
        capture.sequence_until_idle(source, options.sequencer_batch)
        for target in engine.enabled_targets(source, tenancy_id):
            check = TargetCheck(target["name"])
            result.targets.append(check)
            try:
                verify_target(source, tenancy_id, target, mappings, options, check)
            except _SourceStopped:
                raise
            except (PyglueError, psycopg.Error, OSError) as exc:
                check.error = dsns.error_line(exc, target["connection_string"])
    return result


def verify_target(source: psycopg.Connection, tenancy_id: uuid.UUID, target: dict, mappings: list[Mapping],
                  options: VerifyOptions, check: TargetCheck) -> None:
    with engine.target_connection(target["connection_string"]) as conn:
        conn.execute(queries.load("verify_text_settings"))
        tables = TargetTables(conn, tenancy_id, target["lock_key"])
        if options.repair:
            tables.lock(options.lock_timeout_s)  # released when the connection closes
        for mapping in mappings:
            outcome = MappingCheck(mapping.name, mapping.key_columns)
            diff = compare_mapping(source, tables, mapping, options, outcome)
            check.mappings.append(outcome)  # only once compared: a failure is the target's error line
            if options.repair and outcome.differences:
                repair(tables, mapping, diff, outcome, options.batch_size)
                outcome.repaired = True


@dataclass
class _Diff:
    cursor: int
    columns: list[str]
    states: dict[Key, tuple | None]  # source rows as fetched, for the upserts


def compare_mapping(source: psycopg.Connection, tables: TargetTables, mapping: Mapping, options: VerifyOptions,
                    outcome: MappingCheck) -> _Diff | None:
    """Fill outcome with the mapping's differences in this target (steps 1-5 of the module doc)."""
    conn = tables.conn
    with conn.transaction(force_rollback=True):  # reads, and a temp table dropped with it
        conn.execute("set transaction isolation level repeatable read")
        cursor = _target_cursor(tables, mapping)
        columns, states = source_states(source, tables.tenancy_id, mapping, 0, options)
        outcome.source_rows = sum(row is not None for row in states.values())
        if cursor is None:
            outcome.synced, outcome.pending = False, len(states)
            return None
        capture.sequence_until_idle(source, options.sequencer_batch)
        pending = set(source_states(source, tables.tenancy_id, mapping, cursor, options)[1])
        outcome.pending = len(pending)
        columns = columns or list(mapping.key_columns)  # an empty output: only extra rows are possible
        candidates = _compare_rows(tables, mapping, columns, states, pending, outcome)
        outcome.stale = _confirm_stale(tables, mapping, columns, states, candidates)
    return _Diff(cursor, columns, states)


def source_states(source: psycopg.Connection, tenancy_id: uuid.UUID, mapping: Mapping, cursor: int,
                  options: VerifyOptions) -> tuple[list[str] | None, dict[Key, tuple | None]]:
    """The mapping's output after cursor, key -> last state (row, or None when deleted), and its
    columns (None when there was no row at all)."""
    fetch_options = engine.Options(page_size=options.page_size, statement_timeout_ms=options.statement_timeout_ms)
    columns: list[str] | None = None
    states: dict[Key, tuple | None] = {}
    while True:
        with source.transaction():
            # again before every page: the fetch resets the session after it
            source.execute(queries.load("verify_text_settings"))
        try:
            page = engine.fetch_page(source, tenancy_id, mapping, cursor, fetch_options)
        except engine.SyncDisabled:
            raise _SourceStopped("sync is off in the fusebox (pyglue fusebox --sync on); nothing verified") from None
        if page is None:
            break
        columns = page.columns
        key_at = [columns.index(k) for k in mapping.key_columns]
        for key in page.deletes:
            states[_text_row(key)] = None
        for row in page.upserts:
            states[_text_row(tuple(row[i] for i in key_at))] = row
        cursor = page.last_sequence_id
        if page.fetched < options.page_size:
            break
    return columns, states


def _target_cursor(tables: TargetTables, mapping: Mapping) -> int | None:
    """The mapping's cursor in the target; None when the target was never synced for it."""
    metadata = sql.SQL("{}.{}").format(sql.Identifier(tables.schema), sql.Identifier(METADATA))
    if tables.conn.execute("select to_regclass(%s)", (metadata.as_string(tables.conn),)).fetchone()[0] is None:
        return None
    try:
        return tables.cursor(mapping)
    except PyglueError:  # no cursor row for this tenancy and mapping
        return None


def _compare_rows(tables: TargetTables, mapping: Mapping, columns: list[str], states: dict[Key, tuple | None],
                  pending: set[Key], outcome: MappingCheck) -> list[Key]:
    """Stream the target table against the fold; fill lost and extra, return the stale candidates."""
    key_at = [columns.index(k) for k in mapping.key_columns]
    select = sql.SQL("select {} from {}").format(
        sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in columns), _table(tables, mapping))
    seen: set[Key] = set()
    candidates: list[Key] = []
    with tables.conn.cursor(name="pyglue_verify", row_factory=tuple_row) as cur:  # server-side, in the snapshot
        cur.itersize = 5000
        cur.execute(select)
        for row in cur:
            key = tuple(row[i] for i in key_at)
            seen.add(key)
            if key in pending:
                continue
            state = states.get(key)
            if state is None:
                outcome.extra.append(key)
            elif _text_row(state) != row:
                candidates.append(key)
    outcome.lost = sorted(k for k, row in states.items() if row is not None and k not in seen and k not in pending)
    outcome.extra.sort()
    return candidates


def _confirm_stale(tables: TargetTables, mapping: Mapping, columns: list[str], states: dict[Key, tuple | None],
                   candidates: list[Key]) -> list[Key]:
    """The candidates whose source row the engine's upsert would write: IS DISTINCT FROM the target
    row once converted to the target's types exactly as a sync converts it (COPY)."""
    values = [c for c in columns if c not in mapping.key_columns]
    if not candidates or not values:
        return []
    conn, stage, table = tables.conn, sql.Identifier("pyglue_verify_stage"), _table(tables, mapping)
    conn.execute(sql.SQL("create temp table {} (like {}) on commit drop").format(stage, table))
    with conn.cursor().copy(sql.SQL("copy {} ({}) from stdin").format(
            stage, sql.SQL(", ").join(map(sql.Identifier, columns)))) as copy:
        for key in candidates:
            copy.write_row(states[key])

    def cols(alias: str, names) -> sql.Composable:
        return sql.SQL(", ").join(sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(c)) for c in names)

    match = sql.SQL(" and ").join(sql.SQL("t.{c} = s.{c}").format(c=sql.Identifier(c)) for c in mapping.key_columns)
    keys_as_text = sql.SQL(", ").join(sql.SQL("s.{}::text").format(sql.Identifier(c)) for c in mapping.key_columns)
    rows = conn.execute(sql.SQL("select {keys} from {stage} s join {table} t on {match}"
                                " where ({t}) is distinct from ({s})").format(
        keys=keys_as_text, stage=stage, table=table, match=match, t=cols("t", values), s=cols("s", values))).fetchall()
    return sorted(tuple(r) for r in rows)


def repair(tables: TargetTables, mapping: Mapping, diff: _Diff, outcome: MappingCheck, batch_size: int) -> None:
    """Re-send the differing keys in key order, one target transaction per batch (caller holds the lock)."""
    work = sorted([(k, True) for k in outcome.lost + outcome.stale] + [(k, False) for k in outcome.extra])
    for start in range(0, len(work), batch_size):
        batch = work[start:start + batch_size]
        page = Page(diff.columns, upserts=[diff.states[k] for k, upsert in batch if upsert],
                    deletes=[k for k, upsert in batch if not upsert], last_sequence_id=diff.cursor, fetched=len(batch))
        tables.apply(mapping, page, diff.cursor)


def _table(tables: TargetTables, mapping: Mapping) -> sql.Composable:
    return sql.SQL("{}.{}").format(sql.Identifier(tables.schema), sql.Identifier(mapping.target_table))


def _text(value) -> str | None:
    """A fetched value as the target's ::text prints it (json, numeric and times arrive as text)."""
    if value is None or type(value) is str:  # most values: checked first, this runs per value
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "\\x" + bytes(value).hex()
    return str(value)


def _text_row(values: tuple) -> tuple[str | None, ...]:
    return tuple(map(_text, values))
