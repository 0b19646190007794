"""Mapping queries, run so that the database isolates them whatever SQL they hold.

A mapping's fetch runs over its own login (`pyglue_fetch`, created by migration 0011, or
the one `PYGLUE_FETCH_DSN` names), never over the engine's main connection:

- the login's only privileges are those of `pyglue_mapping_reader` (SELECT on tracked
  tables and the tombstone log under row-level security); it is refused if it is a
  superuser, may bypass row-level security, create roles, owns a tracked table, or can read
  `pyglue.sync_targets` or the tenancy binding. A fetch that switches role or session
  authorization (`set_config('role', session_user, …)`) only reaches this same login;
- the tenancy it may read is bound by a row of `pyglue.fetch_sessions` (its pid, backend
  start and transaction id) that the main connection writes and commits before the fetch;
  the fetch can neither write nor read that table;
- the fetch transaction is read-only, has a statement timeout, and is ALWAYS rolled back:
  nothing it did survives (large objects, NOTIFY, sequence calls, temp tables); then the
  session is discarded (`DISCARD ALL`: session advisory locks, settings, prepared
  statements), so one mapping leaves nothing for the next;
- the query is declared as a server-side cursor, which Postgres accepts only for one
  SELECT, and at most limit + 1 rows are read whatever the query does; a sync then copies
  the same text out as COPY (...) TO STDOUT, unparsed (stream_rows).

Template validation (pyglue.sync.validate) refuses hostile SQL earlier, but none of the
above depends on it.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import tuple_row
from psycopg.types.string import TextLoader

from pyglue import db, queries
from pyglue import dsn as dsns
from pyglue.errors import PyglueError

FETCH_DSN_ENV = "PYGLUE_FETCH_DSN"
DEFAULT_LOGIN = "pyglue_fetch"

# Types whose values go through as Postgres wrote them: exact (jsonb text, numeric digits)
# and including values Python cannot hold ('infinity' timestamps, dates before year 1).
_AS_TEXT = ("json", "jsonb", "numeric", "timestamptz", "timestamp", "date", "time", "timetz", "interval")

# Errors whose message Postgres builds from the query text and the catalog, never from row
# values: kept in status. For every other error only its condition name and SQLSTATE are.
_MESSAGE_KEPT = {"42601", "42703", "42883", "42501", "42P10", "42803", "42804", "25006", "57014"}

# The fetch transaction's session (to bind it to the tenancy), its statement timeout, and text
# output any target reads the same way (COPY passes the server's text on unparsed).
_BEGIN = """select pg_backend_pid(), (select a.backend_start from pg_stat_get_activity(pg_backend_pid()) a),
       pg_current_xact_id()::text,
       set_config('statement_timeout', %s, true), set_config('datestyle', 'ISO, YMD', true),
       set_config('intervalstyle', 'postgres', true), set_config('extra_float_digits', '3', true),
       set_config('bytea_output', 'hex', true), set_config('timezone', 'UTC', true)"""

_SAFETY = """
select r.rolsuper or r.rolbypassrls or r.rolcreaterole or r.rolreplication as powerful,
       not pg_has_role(r.oid, 'pyglue_mapping_reader', 'USAGE') as not_reader,
       has_table_privilege(r.oid, 'pyglue.sync_targets', 'SELECT') as reads_targets,
       has_table_privilege(r.oid, 'pyglue.fetch_sessions', 'SELECT, INSERT, UPDATE') as binds,
       exists (select 1 from pyglue.tracked_tables t join pg_class c on c.oid = t.table_name
               where pg_has_role(r.oid, c.relowner, 'USAGE')) as owns
from pg_roles r where r.rolname = %(login)s
"""


def fetch_dsn(main_dsn: str, override: str | None = None) -> str:
    """The fetch login's DSN: the main DSN's server and database with user pyglue_fetch and no
    password, then whatever the override (PYGLUE_FETCH_DSN: a full DSN or just `user=…
    password=…`) sets."""
    params = {k: v for k, v in dsns.parse(main_dsn).items() if k not in ("user", "password", "passfile")}
    params["user"] = DEFAULT_LOGIN
    override = os.environ.get(FETCH_DSN_ENV) if override is None else override
    if override:
        params.update(dsns.parse(override))
    return make_conninfo("", **params)


class SourceConnection(psycopg.Connection):
    """The engine's main connection to the source database, with the fetch login's
    connection beside it (opened on first use, closed with it)."""

    _fetcher: psycopg.Connection | None = None
    fetch_dsn: str = ""
    registered: frozenset = frozenset()  # mappings registered over this session (engine.register_mappings)

    def fetcher(self) -> psycopg.Connection:
        if self._fetcher is None or self._fetcher.closed:
            self._fetcher = _connect_fetcher(self, self.fetch_dsn)
        return self._fetcher

    def close(self) -> None:
        if self._fetcher is not None:
            self._fetcher.close()
        super().close()


def _connect_fetcher(source: psycopg.Connection, dsn: str) -> psycopg.Connection:
    login = dsns.parse(dsn).get("user") or DEFAULT_LOGIN
    try:
        conn = db.connect(dsn, autocommit=True, application_name="pyglue fetch", row_factory=tuple_row)
    except PyglueError as exc:
        raise PyglueError(f"cannot connect as the fetch login {login!r}: {exc} (migrations create it; on a "
                          f"managed server create it and set {FETCH_DSN_ENV}, see README \"Isolation\")") from None
    login = conn.info.user
    with source.transaction():
        safety = source.execute(_SAFETY, {"login": login}).fetchone()
    problems = [why for why, bad in safety.items() if bad] if safety else ["no such role"]
    if problems:
        conn.close()
        raise PyglueError(f"refusing fetch login {login!r}: it must have no privileges beyond "
                          f"pyglue_mapping_reader ({', '.join(problems)})")
    for name in _AS_TEXT:
        conn.adapters.register_loader(name, TextLoader)
    conn.read_only = True  # every fetch transaction begins READ ONLY
    return conn


@contextmanager
def _fetch_session(source: psycopg.Connection, tenancy_id: uuid.UUID, mapping_name: str,
                   statement_timeout_ms: int) -> Iterator[psycopg.Connection]:
    """The fetch login's connection in a read-only transaction bound to the tenancy, with a
    statement timeout and fixed text settings. The transaction is rolled back and the session
    discarded afterwards, whatever happened inside."""
    fetcher = source.fetcher() if isinstance(source, SourceConnection) else _unsupported(source)
    try:
        with fetcher.transaction():
            with _fetch_errors(mapping_name):
                pid, started, xact = fetcher.execute(_BEGIN, (str(statement_timeout_ms),)).fetchone()[:3]
                source.execute(queries.load("open_fetch_session"),  # committed on its own (autocommit)
                               {"pid": pid, "backend_start": started, "xact": xact, "tenancy_id": tenancy_id})
            yield fetcher
            raise psycopg.Rollback()  # nothing a fetch does is kept
    finally:
        if not fetcher.closed:
            fetcher.execute("discard all")


@contextmanager
def _fetch_errors(mapping_name: str) -> Iterator[None]:
    try:
        yield
    except psycopg.Error as exc:
        raise PyglueError(f"mapping {mapping_name}: fetch failed: {describe_error(exc)}") from None


def _too_many(mapping_name: str, limit: int) -> PyglueError:
    return PyglueError(f"mapping {mapping_name}: fetch returned more than the {limit} rows asked for; "
                       "it must end with limit %(limit)s")


def fetch_rows(source: psycopg.Connection, tenancy_id: uuid.UUID, mapping_name: str, fetch_sql: str,
               params: dict, limit: int, statement_timeout_ms: int) -> tuple[list[str], list[tuple]]:
    """Run a mapping's fetch for one tenancy over the fetch login: column names and at most
    limit rows (more is an error), as Python values."""
    with _fetch_session(source, tenancy_id, mapping_name, statement_timeout_ms) as fetcher, \
            _fetch_errors(mapping_name):
        with fetcher.cursor(name="pyglue_fetch") as cur:
            cur.execute(fetch_sql, params)
            rows = cur.fetchmany(limit + 1)
            names = [d.name for d in cur.description]
    if len(rows) > limit:
        raise _too_many(mapping_name, limit)
    return names, rows


@dataclass
class RowStream:
    """A mapping's fetch, declared and described, ready to be copied out as COPY text rows."""

    fetcher: psycopg.Connection
    mapping_name: str
    statement: sql.Composable
    params: dict
    names: list[str]
    limit: int | None  # None: a snapshot, as many rows as the tenancy has
    _chunks: Iterator[memoryview] | None = None
    _first: memoryview | None = None

    def empty(self) -> bool:
        """Whether the fetch has no row: starts the COPY and reads its first row, which
        copy_to then writes first."""
        if self._chunks is None:
            self._chunks = self._copy_out()
            self._first = next(self._chunks, None)
        return self._first is None

    def copy_to(self, write: Callable[[memoryview], None]) -> int:
        """Stream the rows, each in COPY text format as the server wrote it, to write; the
        number of rows. No value is parsed here: the target's COPY reads them."""
        if self.empty():
            return 0
        rows = 0
        for data in itertools.chain([self._first], self._chunks):
            rows += 1
            if self.limit is not None and rows > self.limit:
                raise _too_many(self.mapping_name, self.limit)
            write(data)
        return rows

    def close(self) -> None:
        if self._chunks is not None:
            self._chunks.close()  # a COPY not read to its end is cancelled

    def _copy_out(self) -> Iterator[memoryview]:
        with _fetch_errors(self.mapping_name), self.fetcher.cursor().copy(self.statement, self.params) as copy:
            yield from copy


@contextmanager
def stream_rows(source: psycopg.Connection, tenancy_id: uuid.UUID, mapping_name: str, fetch_sql: str,
                params: dict, limit: int, statement_timeout_ms: int) -> Iterator[RowStream]:
    """A mapping's fetch for one tenancy over the fetch login, to be copied out by the caller
    inside the with block (RowStream.copy_to). The query is first declared as a server-side
    cursor with bound parameters, which the server accepts for exactly one SELECT; only then
    is the same text run as COPY (...) TO STDOUT with the parameters as literals. That COPY
    goes over the simple query protocol, where a second statement would run: the declare
    proves there is none, since the text parsed as one SELECT inside its own parentheses."""
    with _fetch_session(source, tenancy_id, mapping_name, statement_timeout_ms) as fetcher:
        with _fetch_errors(mapping_name), fetcher.cursor(name="pyglue_fetch") as cur:
            cur.execute(fetch_sql, params)
            names = [d.name for d in cur.description]
        statement = sql.SQL("copy (\n{}\n) to stdout").format(sql.SQL(fetch_sql))
        with closing(RowStream(fetcher, mapping_name, statement, params, names, limit)) as rows:
            yield rows


# A snapshot's rows with the watermark in front: the highest sequence id of the source
# table's rows that the same statement (so the same snapshot) sees. Every id up to it was
# handed out by a sequencer pass that committed before that snapshot (passes are
# serialized), so each change it numbers is in the rows; any change they lack is stamped
# later with a higher id. Row-level security limits both to the bound tenancy.
_SNAPSHOT = """copy (
select (select coalesce(max(w.sequence_id), 0) from {source} w) as sequence_id, false as is_deleted, s.*
from (
{snapshot}
) s
) to stdout"""


@contextmanager
def stream_snapshot(source: psycopg.Connection, tenancy_id: uuid.UUID, mapping_name: str, snapshot_sql: str,
                    source_table: str, statement_timeout_ms: int) -> Iterator[RowStream]:
    """A mapping's snapshot of one tenancy over the fetch login, to be copied out inside the
    with block: COPY text rows of (watermark, false, the snapshot's columns). As in
    stream_rows, the snapshot text is first declared as a cursor on its own, which proves it
    is one SELECT, so wrapping it in parentheses cannot change what the statement is."""
    with source.transaction():
        found = source.execute("select n.nspname, c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace"
                               " where c.oid = to_regclass(%s)", (source_table,)).fetchone()
    if found is None:
        raise PyglueError(f"mapping {mapping_name}: source table {source_table} does not exist")
    schema, table = found["nspname"], found["relname"]
    with _fetch_session(source, tenancy_id, mapping_name, statement_timeout_ms) as fetcher:
        params = {"tenancy_id": tenancy_id}
        with _fetch_errors(mapping_name), fetcher.cursor(name="pyglue_snapshot") as cur:
            cur.execute(snapshot_sql, params)
            names = ["sequence_id", "is_deleted", *(d.name for d in cur.description)]
        statement = sql.SQL(_SNAPSHOT).format(source=sql.Identifier(schema, table), snapshot=sql.SQL(snapshot_sql))
        with closing(RowStream(fetcher, mapping_name, statement, params, names, None)) as rows:
            yield rows


def describe_error(exc: psycopg.Error) -> str:
    """A fetch error for status and logs: the condition and SQLSTATE, and Postgres's message
    only when it cannot carry row values."""
    state = exc.sqlstate or "no SQLSTATE"
    condition = type(exc).__name__
    if exc.sqlstate in _MESSAGE_KEPT and exc.diag.message_primary:
        return f"{' '.join(exc.diag.message_primary.split())} ({condition}, SQLSTATE {state})"
    if isinstance(exc, psycopg.OperationalError) and not exc.sqlstate:
        return "the fetch connection was lost"
    return f"{condition} (SQLSTATE {state}; the message is not kept, it could hold row values)"


def _unsupported(conn: psycopg.Connection):
    raise TypeError(f"fetches need a connection from engine.source_connection(), not {type(conn).__name__}")
