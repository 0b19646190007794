"""Item balances from Python: the balance at a time, and the timeline of one item history.

Everything is computed by the ledger's SQL (billing.item_quantity, billing._item_events,
billing._item_points); this module only shapes it for the CLI.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import psycopg

from pyglue import queries
from pyglue.errors import PyglueError

CUSTOMER_TYPES = ("user", "team", "custom")


@dataclass(frozen=True)
class Customer:
    type: str
    id: str

    @classmethod
    def parse(cls, text: str) -> Customer:
        """'team:ID' (or user:ID, custom:ID) → Customer; anything else is one clear error."""
        kind, sep, ident = text.partition(":")
        if not sep or kind not in CUSTOMER_TYPES or not ident:
            raise PyglueError(f"customer must be TYPE:ID with TYPE one of {', '.join(CUSTOMER_TYPES)}, got {text!r}")
        return cls(kind, ident)

    def __str__(self) -> str:
        return f"{self.type}:{self.id}"


def balance(conn: psycopg.Connection, tenancy_id, customer: Customer, item_id: str, at: dt.datetime) -> int:
    return conn.execute(queries.load("ledger_balance"), _params(tenancy_id, customer, item_id, at)).fetchone()["balance"]


def timeline(conn: psycopg.Connection, tenancy_id, customer: Customer, item_id: str, at: dt.datetime) -> list[dict]:
    """Every instant of the history up to `at`: the changes there (with their sources) and the
    balance, debt and lots (expiry → quantity left) after it."""
    return conn.execute(queries.load("ledger_timeline"), _params(tenancy_id, customer, item_id, at)).fetchall()


def _params(tenancy_id, customer: Customer, item_id: str, at: dt.datetime) -> dict:
    return {"tenancy_id": tenancy_id, "customer_type": customer.type, "customer_id": customer.id,
            "item_id": item_id, "at": at}
