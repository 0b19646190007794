"""Webhook endpoints from Python: add (with the URL and its resolution checked), list,
remove, enable, disable, retry. The secret is returned by add only; nothing here shows it
again."""

from __future__ import annotations

import uuid

import psycopg

from pyglue import queries
from pyglue.errors import PyglueError
from pyglue.sync.engine import register_mappings
from pyglue.sync.mappings import Mapping
from pyglue.sync.targets import require_tenancy
from pyglue.webhooks import urls


def add(conn: psycopg.Connection, tenancy_id: uuid.UUID, name: str, url: str, tables: list[str] | None = None,
        secret: str | None = None, allow_private: bool = False, shaped_by: list[Mapping] | None = None,
        resolver: urls.Resolver = urls.resolve) -> tuple[int, str]:
    """Add an endpoint; returns (id, secret). The URL's host and every address it resolves to
    are checked first (urls.check), then the database checks the rest (pyglue.add_webhook).
    shaped_by: mappings whose rows replace the stored rows of their source tables in events."""
    require_tenancy(conn, tenancy_id)
    urls.check(url, allow_private, resolver)
    shaped_by = shaped_by or []
    for m in shaped_by:
        if tables and m.source_table not in tables:
            raise PyglueError(f"cannot shape webhook {name} rows with mapping {m.name}: its table {m.source_table}"
                              f" is not one the webhook receives ({', '.join(tables)})")
    try:
        with conn.transaction():
            if shaped_by:
                register_mappings(conn, shaped_by)
            row = conn.execute("select id, secret from pyglue.add_webhook(%s, %s, %s, %s, %s, %s, %s)",
                               (tenancy_id, name, url, tables or None, secret, allow_private,
                                [m.name for m in shaped_by] or None)).fetchone()
    except (psycopg.errors.UniqueViolation, psycopg.errors.InvalidParameterValue, psycopg.errors.UndefinedTable,
            psycopg.errors.ForeignKeyViolation) as exc:
        raise PyglueError(exc.diag.message_primary) from None
    return row["id"], row["secret"]


def listing(conn: psycopg.Connection, tenancy_id: uuid.UUID | None = None) -> list[dict]:
    with conn.transaction():
        return conn.execute(queries.load("list_webhooks"), {"tenancy_id": tenancy_id}).fetchall()


def _change(conn: psycopg.Connection, query: str, tenancy_id: uuid.UUID, name: str, *args) -> None:
    require_tenancy(conn, tenancy_id)
    with conn.transaction():
        found = conn.execute(query, (tenancy_id, name, *args)).fetchone()["ok"]
    if not found:
        raise PyglueError(f"no webhook {name!r} for tenancy {tenancy_id}")


def remove(conn: psycopg.Connection, tenancy_id: uuid.UUID, name: str) -> None:
    _change(conn, "select pyglue.remove_webhook(%s, %s) as ok", tenancy_id, name)


def set_enabled(conn: psycopg.Connection, tenancy_id: uuid.UUID, name: str, enabled: bool) -> None:
    _change(conn, "select pyglue.set_webhook_enabled(%s, %s, %s) as ok", tenancy_id, name, enabled)


def retry(conn: psycopg.Connection, tenancy_id: uuid.UUID, name: str) -> None:
    _change(conn, "select pyglue.retry_webhook(%s, %s) as ok", tenancy_id, name)
