"""Opening connections with errors that name the database but never the password."""

from __future__ import annotations

import psycopg
from psycopg.rows import dict_row

from pyglue import dsn as dsns
from pyglue.errors import PyglueError


def connect(dsn: str, *, autocommit: bool = False, application_name: str = "pyglue", row_factory=dict_row,
            connection_class: type[psycopg.Connection] = psycopg.Connection, **kwargs) -> psycopg.Connection:
    """A psycopg connection (dict rows by default); connection failures become one PyglueError line."""
    dsns.parse(dsn)
    try:
        return connection_class.connect(
            dsn, autocommit=autocommit, row_factory=row_factory, application_name=application_name, **kwargs
        )
    except psycopg.OperationalError as exc:
        raise connection_error(dsn, exc) from None


def connection_error(dsn: str, exc: BaseException) -> PyglueError:
    """'cannot connect to <db on host:port>: <reason>', never the DSN or its password."""
    return PyglueError(f"cannot connect to {dsns.describe(dsn)}: {dsns.scrub(_reason(exc), dsn)}")


def _reason(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # libpq repeats "connection to server ... failed:" before the reason; keep the reason.
    return lines[-1] if lines else type(exc).__name__
