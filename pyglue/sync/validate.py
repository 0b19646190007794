"""Mapping templates checked with Postgres's own grammar (pglast), by what they parse to.

This is defence in depth: the guarantee is the fetch's own login (no privileges beyond the
reader role) in a read-only transaction that is always rolled back. Validation refuses,
at load time and with one line naming the mapping, its template and the offending thing,
what no honest mapping needs, so a hostile one fails before it reaches a database.

The rules, applied to the parse tree (so `U&"set\\005fconfig"`, quoting and case do not
hide a name, and string concatenation cannot build a call because nothing evaluates text):

fetch.sql.j2, after jinja2, with psycopg's placeholders turned into `$n` exactly as psycopg
does (`%(tenancy_id)s`, `%(cursor)s`, `%(limit)s`; `%%` is a literal `%`; any other
placeholder is refused):
  - exactly one statement, a plain SELECT (also UNION/VALUES/TABLE): no SELECT INTO, no
    locking clause (FOR UPDATE/SHARE), no INSERT/UPDATE/DELETE/MERGE in a WITH clause;
  - no call of a denied function (below), also not in attribute notation: Postgres runs
    `(1::bigint).pg_advisory_lock` as `pg_advisory_lock(1)`, so a denied name is refused
    as any column or field name too;
  - no call of a function qualified with schema pyglue (its SECURITY DEFINER helpers are
    the sync machinery's, not a mapping's);
  - of schema pyglue's tables only pyglue.deleted_rows may be read, and sync_targets,
    fetch_sessions and outgoing_requests not even unqualified; no system catalog that holds
    credentials, large objects, statistics (most common values of every tenancy), other
    sessions' query texts or server files (pg_authid, pg_shadow, pg_user_mapping(s),
    pg_largeobject(_metadata), pg_statistic(_ext_data), pg_stats(_ext)(_exprs),
    pg_stat_activity, pg_stat_statements, pg_hba_file_rules, pg_ident_file_mappings,
    pg_file_settings).

ddl.sql.j2, after jinja2 (it runs on the target as the target's login):
  - only CREATE TABLE [IF NOT EXISTS] of exactly <schema>.<table> of this mapping (not
    temporary, no LIKE, INHERITS, PARTITION OF/BY or OF type), CREATE INDEX on that table,
    COMMENT ON that table or its columns; the CREATE TABLE must be there;
  - no relation other than that table anywhere (a foreign key may reference only itself);
  - defaults, generated columns, CHECK constraints and index expressions: the same denied
    functions as a fetch.

Denied functions, by name in any schema (pg_catalog is always on the search path, and a
look-alike elsewhere has no business in a mapping either), as exact names or prefixes:
role and setting changes (set_config), server administration (reload, log rotation,
backend signalling, WAL, replication slots and logical decoding, backup, statistics
reset and restore, other sessions' activity), dynamic SQL (query_to_xml and the other
*_to_xml* functions, ts_stat, ts_rewrite: they run SQL given as text), files (pg_read_file,
pg_ls_*, pg_stat_file, ...), large objects (lo_get, lo_from_bytea and every other lo_*
function, loread, lowrite), pg_notify, advisory locks, sequences (nextval, setval, currval,
lastval), transaction ids that assign one (txid_current, pg_current_xact_id), pg_sleep*,
and dblink*/postgres_fdw_*. Reading a setting (current_setting) stays allowed, as does
every other function: a call that is not listed is left to the database's privileges and
the read-only, rolled-back transaction.

Where a server could read the text otherwise than the grammar checked here, it is refused:
numbers unless plain decimal (Postgres 15 reads `0x1F` as `0 AS x1F`, `1_000` as `1 AS _000`),
and a backslash before a quote in a standard string (`'a\\'` ends there with
standard_conforming_strings on, as checked here, but not with it off), and a NUL character.

Tests that prove the database-side isolation holds without this (hostile SQL on purpose)
switch it off: `mappings.load(..., validate=False)`, or for `mappings.load_all` the
environment variable PYGLUE_UNSAFE_SKIP_TEMPLATE_VALIDATION=1. Both are for tests only.
"""

from __future__ import annotations

import re

from pglast import ast, parse_sql, visitors
from pglast.enums import LockClauseStrength, ObjectType
from pglast.parser import ParseError, scan

from pyglue.errors import PyglueError

FETCH_TEMPLATE = "fetch.sql.j2"
DDL_TEMPLATE = "ddl.sql.j2"
SNAPSHOT_TEMPLATE = "snapshot.sql.j2"
FETCH_PARAMETERS = ("tenancy_id", "cursor", "limit")

_DENIED_FUNCTIONS: tuple[tuple[str, frozenset[str], tuple[str, ...]], ...] = (
    # (why, exact names, name prefixes)
    ("a role and setting function", frozenset({"set_config"}), ()),
    ("a server administration function", frozenset({
        "pg_reload_conf", "pg_rotate_logfile", "pg_terminate_backend", "pg_cancel_backend",
        "pg_switch_wal", "pg_promote", "pg_start_backup", "pg_stop_backup", "pg_import_system_collations",
        "pg_stat_get_activity", "pg_stat_get_backend_activity",
    }), ("pg_stat_reset", "pg_log_", "pg_wal_", "pg_create_", "pg_drop_", "pg_copy_", "pg_replication_",
         "pg_logical_", "pg_backup_", "pg_sync_", "pg_clear_", "pg_restore_", "pg_set_", "pg_stat_statements",
         "binary_upgrade_")),
    ("a dynamic SQL function", frozenset({"ts_stat", "ts_rewrite"}),
     ("query_to_xml", "cursor_to_xml", "table_to_xml", "schema_to_xml", "database_to_xml")),
    ("a file function", frozenset({
        "pg_read_file", "pg_read_binary_file", "pg_stat_file", "pg_current_logfile", "pg_hba_file_rules",
        "pg_ident_file_mappings", "pg_show_all_file_settings",
    }), ("pg_ls_", "pg_file_")),
    ("a large-object function", frozenset({
        # every large-object function of Postgres 15 to 18, named (a prefix lo_ would catch columns too)
        "loread", "lowrite", "lo_close", "lo_creat", "lo_create", "lo_export", "lo_from_bytea", "lo_get",
        "lo_import", "lo_lseek", "lo_lseek64", "lo_open", "lo_put", "lo_tell", "lo_tell64", "lo_truncate",
        "lo_truncate64", "lo_unlink",
    }), ()),
    ("a notification function", frozenset({"pg_notify"}), ()),
    ("an advisory lock function", frozenset(), ("pg_advisory_", "pg_try_advisory_")),
    ("a sequence function", frozenset({"nextval", "setval", "currval", "lastval", "pg_sequence_last_value"}), ()),
    ("a function that assigns a transaction id", frozenset({"txid_current", "pg_current_xact_id"}), ()),
    ("a sleep function", frozenset(), ("pg_sleep",)),
    ("a remote connection function", frozenset(), ("dblink", "postgres_fdw_")),
)

# schema pyglue: what a fetch may read of it
_PYGLUE_READABLE = frozenset({"deleted_rows"})
# refused even without a schema, in case pyglue is on the search path
_PYGLUE_SECRET = frozenset({"sync_targets", "fetch_sessions", "outgoing_requests"})
_DENIED_CATALOGS = {
    "it holds credentials": ("pg_authid", "pg_shadow", "pg_user_mapping", "pg_user_mappings"),
    "it holds large objects": ("pg_largeobject", "pg_largeobject_metadata"),
    "its statistics hold values of every tenancy": (
        "pg_statistic", "pg_statistic_ext_data", "pg_stats", "pg_stats_ext", "pg_stats_ext_exprs"),
    "it shows other sessions' queries": ("pg_stat_activity", "pg_stat_statements"),
    "it reads server files": ("pg_hba_file_rules", "pg_ident_file_mappings", "pg_file_settings"),
}
_CATALOG_REASON = {name: why for why, names in _DENIED_CATALOGS.items() for name in names}

_LOCKING = {
    LockClauseStrength.LCS_FORKEYSHARE: "FOR KEY SHARE",
    LockClauseStrength.LCS_FORSHARE: "FOR SHARE",
    LockClauseStrength.LCS_FORNOKEYUPDATE: "FOR NO KEY UPDATE",
    LockClauseStrength.LCS_FORUPDATE: "FOR UPDATE",
}
_STATEMENT_NAMES = {
    "CreateStmt": "CREATE TABLE", "IndexStmt": "CREATE INDEX", "CommentStmt": "COMMENT",
    "CreateTableAsStmt": "CREATE TABLE AS", "ViewStmt": "CREATE VIEW", "VariableSetStmt": "SET",
    "VariableShowStmt": "SHOW", "DoStmt": "DO", "GrantRoleStmt": "GRANT", "CopyStmt": "COPY",
    "TransactionStmt": "a transaction statement",
}
# psycopg's own placeholder syntax (psycopg/_queries.py): '%' then '(name)' and a format,
# or any one character; '.' without DOTALL on purpose, as there
_PLACEHOLDER = re.compile(r"%(?:\(([^)]+)\)(.)|(.))")
_DECIMAL = re.compile(r"(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def denied_function(name: str) -> str | None:
    """Why a function of this name may not be called from a template, or None."""
    name = name.lower()
    for why, names, prefixes in _DENIED_FUNCTIONS:
        if name in names or name.startswith(prefixes):
            return why
    return None


def validate_fetch(sql_text: str, mapping_name: str, template: str = FETCH_TEMPLATE) -> None:
    """Refuse a rendered fetch (or snapshot) that is not one plain SELECT or uses what no mapping needs."""
    where = f"mapping {mapping_name}: {template}"
    statements = _parse(to_postgres_placeholders(sql_text, where), where)
    if len(statements) != 1:
        raise PyglueError(f"{where} must be a single SELECT statement, found {len(statements)} statements")
    statement = statements[0].stmt
    if not isinstance(statement, ast.SelectStmt):
        raise PyglueError(f"{where} must be a single SELECT statement, found {_statement_name(statement)}")
    _raise_first(where, _fetch_findings(statement))


def validate_ddl(sql_text: str, mapping_name: str, schema: str, table: str) -> None:
    """Refuse a rendered DDL that does more than create this mapping's table, its indexes and comments."""
    where = f"mapping {mapping_name}: {DDL_TEMPLATE}"
    own = f"{_qualified(schema, table)}"
    statements = _parse(sql_text, where)
    findings: list[tuple[int, str]] = []
    creates = False
    for raw in statements:
        statement = raw.stmt
        if isinstance(statement, ast.CreateStmt) and _is(statement.relation, schema, table):
            creates = True
            findings += _create_table_findings(statement, raw.stmt_location)
        elif isinstance(statement, ast.IndexStmt) and _is(statement.relation, schema, table):
            pass
        elif isinstance(statement, ast.CommentStmt) and _comments_on(statement, schema, table):
            pass
        else:
            findings.append((raw.stmt_location, f"may only create {own}, its indexes and comments on it;"
                                                 f" found {_statement_name(statement)}"))
    for node in _nodes(tuple(raw.stmt for raw in statements)):
        if isinstance(node, ast.RangeVar) and not _is(node, schema, table):
            findings.append((node.location, f"may not reference {_range_name(node)} (only {own})"))
        else:
            findings += _call_findings(node)
    _raise_first(where, findings)
    if not creates:
        raise PyglueError(f"{where} must create the table {own}")


def to_postgres_placeholders(sql_text: str, where: str = "template") -> str:
    """The text psycopg sends for a query with named placeholders: `%(name)s` becomes `$n`
    (numbered by first use), `%%` becomes `%`; what psycopg would refuse is refused here."""
    numbers: dict[str, int] = {}

    def replace(m: re.Match) -> str:
        name, fmt, other = m.groups()
        if other == "%":
            return "%"
        if name is None:
            raise PyglueError(f"{where} has a '%' that is no placeholder ({m.group(0)!r}): write '%%' for a"
                              f" percent sign, or one of {', '.join(f'%({p})s' for p in FETCH_PARAMETERS)}")
        if fmt not in "sbt":
            raise PyglueError(f"{where} has the placeholder {m.group(0)!r}: the format must be s, b or t")
        if name not in FETCH_PARAMETERS:
            raise PyglueError(f"{where} uses the unknown parameter %({name})s"
                              f" (known: {', '.join(FETCH_PARAMETERS)})")
        numbers.setdefault(name, len(numbers) + 1)
        return f"${numbers[name]}"

    return _PLACEHOLDER.sub(replace, sql_text)


def _parse(text: str, where: str) -> tuple:
    if "\x00" in text:
        # the parser reads a C string: it would stop there
        raise PyglueError(f"{where} may not contain a NUL character")
    try:
        statements = parse_sql(text)
        tokens = scan(text)
    except ParseError as exc:
        message, index = (exc.args + (None,))[:2]
        line = f" (line {text[:index].count(chr(10)) + 1})" if isinstance(index, int) else ""
        raise PyglueError(f"{where} is not valid SQL: {message}{line}") from None
    for token in tokens:
        if token.name in ("ICONST", "FCONST"):
            literal = text[token.start:token.end + 1]
            if not _DECIMAL.fullmatch(literal):
                raise PyglueError(f"{where} may not use the number {literal!r}: write it in plain decimal")
        elif token.name == "SCONST" and re.match(r"[nN]?'", text[token.start:]) and \
                "\\'" in text[token.start:token.end + 1]:
            raise PyglueError(f"{where} may not end a string with a backslash or put one before a quote"
                              f" ({text[token.start:token.end + 1][:40]}): use E'...' for escapes")
    if not statements:
        raise PyglueError(f"{where} is empty")
    return statements


def _fetch_findings(statement: ast.SelectStmt) -> list[tuple[int, str]]:
    findings: list[tuple[int, str]] = []
    for node in _nodes(statement):
        if isinstance(node, ast.SelectStmt):
            if node.intoClause is not None:
                findings.append((_location(node.intoClause.rel), "may not use SELECT INTO"))
            for clause in node.lockingClause or ():
                findings.append((-1, f"may not use {_LOCKING.get(clause.strength, 'a locking clause')}"
                                     " (a locking clause)"))
        elif isinstance(node, ast.CommonTableExpr) and not isinstance(node.ctequery, ast.SelectStmt):
            findings.append((_location(node), f"must be a plain SELECT: found {_statement_name(node.ctequery)}"
                                              f" in the WITH clause {node.ctename!r}"))
        elif type(node).__name__.endswith("Stmt") and not isinstance(node, ast.SelectStmt):
            findings.append((-1, f"must be a plain SELECT: found {_statement_name(node)}"))
        elif isinstance(node, ast.RangeVar):
            if why := _unreadable(node):
                findings.append((node.location, f"may not read {_range_name(node)} ({why})"))
        else:
            findings += _call_findings(node)
    return findings


def _call_findings(node) -> list[tuple[int, str]]:
    """Denied calls in one node: a function call, or a name that attribute notation turns
    into a call (`(x).f` and `t.f` mean `f(x)`, `f(t)` when there is no such column)."""
    if isinstance(node, ast.FuncCall):
        names = [s.sval for s in node.funcname]
        if len(names) > 1 and names[-2].lower() == "pyglue":
            return [(node.location, f"may not call {'.'.join(names)} (pyglue's own functions are not"
                                    " for mappings)")]
        if why := denied_function(names[-1]):
            return [(node.location, f"may not use {names[-1]!r} ({why})")]
    elif isinstance(node, ast.RangeTableSample):
        names = [s.sval for s in node.method]
        if why := denied_function(names[-1]):
            return [(node.location, f"may not use {names[-1]!r} ({why})")]
    elif isinstance(node, (ast.ColumnRef, ast.A_Indirection)):
        parts = node.fields if isinstance(node, ast.ColumnRef) else node.indirection
        for part in parts or ():
            if isinstance(part, ast.String) and (why := denied_function(part.sval)):
                return [(_location(node), f"may not use {part.sval!r} ({why}, here in attribute notation)")]
    return []


def _unreadable(node: ast.RangeVar) -> str | None:
    schema, name = node.schemaname, node.relname
    if (schema or "").lower() == "pyglue" and name not in _PYGLUE_READABLE:
        return "of pyglue's tables a mapping may read only pyglue.deleted_rows"
    if schema is None and name in _PYGLUE_SECRET:
        return "of pyglue's tables a mapping may read only pyglue.deleted_rows"
    if schema in (None, "pg_catalog") and name in _CATALOG_REASON:
        return _CATALOG_REASON[name]
    return None


def _create_table_findings(statement: ast.CreateStmt, location: int) -> list[tuple[int, str]]:
    findings = []
    if statement.relation.relpersistence == "t":
        findings.append((location, "may not create a temporary table"))
    if statement.partbound is not None:
        findings.append((location, "may not use PARTITION OF"))
    elif statement.inhRelations:
        findings.append((location, "may not use INHERITS"))
    if statement.partspec is not None:
        findings.append((location, "may not use PARTITION BY (the sync writes rows, not partitions)"))
    if statement.ofTypename is not None:
        findings.append((location, "may not use OF type"))
    for element in statement.tableElts or ():
        if isinstance(element, ast.TableLikeClause):
            findings.append((location, "may not use LIKE"))
    return findings


def _comments_on(statement: ast.CommentStmt, schema: str, table: str) -> bool:
    names = tuple(s.sval for s in statement.object) if isinstance(statement.object, tuple) else ()
    if statement.objtype == ObjectType.OBJECT_TABLE:
        return names == (schema, table)
    if statement.objtype == ObjectType.OBJECT_COLUMN:
        return len(names) == 3 and names[:2] == (schema, table)
    return False


def _is(relation: ast.RangeVar, schema: str, table: str) -> bool:
    return relation.catalogname is None and relation.schemaname == schema and relation.relname == table


def _nodes(tree) -> list:
    """Every node of a parse tree (breadth first)."""
    found = []

    class Collect(visitors.Visitor):
        def visit(self, ancestors, node):
            found.append(node)

    Collect()(tree)
    return found


def _raise_first(where: str, findings: list[tuple[int, str]]) -> None:
    """One line for the finding that comes first in the text (unknown positions last)."""
    if findings:
        _, message = min(findings, key=lambda f: (f[0] if f[0] >= 0 else float("inf")))
        raise PyglueError(f"{where} {message}")


def _statement_name(node) -> str:
    kind = type(node).__name__
    if kind == "GrantStmt":
        return "GRANT" if node.is_grant else "REVOKE"
    if kind == "CreateFunctionStmt":
        return "CREATE PROCEDURE" if node.is_procedure else "CREATE FUNCTION"
    if kind == "CreateStmt":
        return f"CREATE TABLE {_range_name(node.relation)}"
    if kind == "IndexStmt":
        return f"CREATE INDEX on {_range_name(node.relation)}"
    if kind == "CommentStmt":
        names = node.object if isinstance(node.object, tuple) else ()
        what = node.objtype.name.removeprefix("OBJECT_").replace("_", " ")
        return " ".join(["COMMENT ON", what, ".".join(getattr(n, "sval", "?") for n in names)]).strip()
    if kind in _STATEMENT_NAMES:
        return _STATEMENT_NAMES[kind]
    words = re.findall(r"[A-Z][a-z]*", kind.removesuffix("Stmt"))
    return " ".join(words).upper() or kind


def _range_name(node: ast.RangeVar) -> str:
    return ".".join(p for p in (node.catalogname, node.schemaname, node.relname) if p)


def _qualified(schema: str, table: str) -> str:
    return f"{schema}.{table}"


def _location(node) -> int:
    location = getattr(node, "location", None)
    return location if isinstance(location, int) else -1
