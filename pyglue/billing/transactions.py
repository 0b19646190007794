"""The money-and-items history of a customer or tenancy (billing.transactions), walked page
by page for the CLI."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import psycopg

from pyglue import queries
from pyglue.billing.ledger import Customer

PAGE = 1000
COLUMNS = ("id", "at", "kind", "customer_type", "customer_id", "product_id", "product_version_id", "item_id",
           "quantity", "amount", "currency", "source_kind", "source_id")


def entries(conn: psycopg.Connection, tenancy_id, customer: Customer | None, since: dt.datetime | None,
            until: dt.datetime | None, page: int = PAGE) -> Iterator[dict]:
    """Every entry between since and until (now), newest first, a page of `page` rows per query."""
    params = {"tenancy_id": tenancy_id, "customer_type": customer and customer.type,
              "customer_id": customer and customer.id, "from": since, "to": until, "limit": page,
              "before_at": None, "before_id": None}
    while True:
        rows = conn.execute(queries.load("billing_transactions"), params).fetchall()
        yield from rows
        if len(rows) < page:
            return
        params |= {"before_at": rows[-1]["at"], "before_id": rows[-1]["id"]}
