"""Test harness: one real Postgres server per session, a migrated template database, clones.

The server is the embedded one (under .pyglue/test) unless PYGLUE_TEST_DSN names a superuser
DSN of another server. Migrations run once into a template database; a test gets either a
connection on a shared clone inside a transaction that is rolled back (`conn`) or a fresh
clone of its own (`fresh_db`) when it commits or needs several connections.
"""

from __future__ import annotations

import getpass
import itertools
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row
from pytest_postgresql.janitor import DatabaseJanitor

from pyglue import embedded, migrate, paths

TEST_HOME = paths.ROOT / ".pyglue" / "test"
_names = itertools.count()


@dataclass(frozen=True)
class Server:
    """A Postgres server the tests may create and drop databases on."""

    dsn: str  # superuser DSN of the maintenance database

    @property
    def params(self) -> dict:
        return conninfo_to_dict(self.dsn)

    def dsn_for(self, dbname: str) -> str:
        return make_conninfo(self.dsn, dbname=dbname)

    def janitor(self, dbname: str, template: str | None = None, as_template: bool = False) -> DatabaseJanitor:
        p = self.params
        return DatabaseJanitor(
            user=p.get("user") or getpass.getuser(),
            host=p.get("host") or "localhost",
            port=p.get("port") or 5432,
            password=p.get("password"),
            dbname=dbname,
            template_dbname=template,
            maintenance_dbname=p.get("dbname") or "postgres",
            as_template=as_template,
        )

    @contextmanager
    def clone(self, template: str, kind: str) -> Iterator[str]:
        """DSN of a new database cloned from template (named after kind), dropped afterwards."""
        name = unique_name(kind)
        with self.janitor(name, template=template):
            yield self.dsn_for(name)

    def version(self) -> int:
        with psycopg.connect(self.dsn) as c:
            return c.info.server_version // 10000


def unique_name(kind: str) -> str:
    return f"pyglue_{kind}_{os.getpid()}_{next(_names)}"


@pytest.fixture(scope="session")
def server() -> Server:
    if os.environ.get("PYGLUE_TEST_DSN"):
        return Server(os.environ["PYGLUE_TEST_DSN"])
    return Server(embedded.start(TEST_HOME).dsn)


@pytest.fixture(scope="session")
def template_db(server: Server) -> Iterator[str]:
    """Name of a database built once from the migrations; clones start from it."""
    name = unique_name("template")
    with server.janitor(name, as_template=True):
        migrate.migrate(server.dsn_for(name))
        _fetch_login_for(server)
        yield name


def _fetch_login_for(server: Server) -> None:
    """The fetch login needs a way in. The embedded server trusts local connections; another
    server (Debian's: peer on the socket, scram-sha-256 on 127.0.0.1) gets a random password
    for pyglue_fetch and PYGLUE_FETCH_DSN pointing at it over TCP, unless one is given."""
    if not os.environ.get("PYGLUE_TEST_DSN") or os.environ.get("PYGLUE_FETCH_DSN"):
        return
    password = secrets.token_hex(16)
    with psycopg.connect(server.dsn, autocommit=True) as c:
        c.execute(sql.SQL("alter role pyglue_fetch password {}").format(sql.Literal(password)))
    host = server.params.get("host") or "127.0.0.1"
    os.environ["PYGLUE_FETCH_DSN"] = make_conninfo(
        "", host="127.0.0.1" if host.startswith("/") else host, port=server.params.get("port") or "5432",
        user="pyglue_fetch", password=password)


@pytest.fixture(scope="session")
def shared_db(server: Server, template_db: str) -> Iterator[str]:
    with server.clone(template_db, "shared") as dsn:
        yield dsn


@pytest.fixture
def conn(shared_db: str) -> Iterator[psycopg.Connection]:
    """A connection to a migrated database; everything it does is rolled back. Before the
    rollback, the item ledger's derived state must still agree with its inputs (issue 10:
    verify_ledger() is empty after any test), whatever the test did to billing state."""
    with psycopg.connect(shared_db, row_factory=dict_row) as connection:
        yield connection
        if connection.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS:
            connection.execute("reset role")  # a test may have taken a role that cannot read billing
            differences = connection.execute("select * from billing.verify_ledger() limit 3").fetchall()
            connection.rollback()
            assert differences == [], f"the test left ledger state that verify_ledger() rejects: {differences}"
        connection.rollback()


@pytest.fixture
def fresh_db(server: Server, template_db: str) -> Iterator[str]:
    """DSN of a migrated database of this test's own, dropped afterwards."""
    with server.clone(template_db, "test") as dsn:
        yield dsn


@pytest.fixture
def make_database(server: Server) -> Iterator:
    """Factory of empty throwaway databases (sync targets, migration tests); returns DSNs."""
    janitors = []

    def make() -> str:
        janitor = server.janitor(unique_name("extra"))
        janitor.init()
        janitors.append(janitor)
        return server.dsn_for(janitor.dbname)

    yield make
    for janitor in janitors:
        janitor.drop()


@pytest.fixture
def connect():
    """Open extra dict-row connections that are closed after the test."""
    opened = []

    def open_(dsn: str, autocommit: bool = False) -> psycopg.Connection:
        c = psycopg.connect(dsn, row_factory=dict_row, autocommit=autocommit)
        opened.append(c)
        return c

    yield open_
    for c in opened:
        c.close()
