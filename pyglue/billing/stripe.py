"""Stripe through the official SDK: sync a tenancy's subscriptions, verify and handle webhook
events, deliver regen's metadata writes (billing.stripe_outbox) with retries and backoff.

The metadata contract (string values, as Stripe stores metadata):

=============================  =============================================================
key                            meaning
=============================  =============================================================
``pyglue_tenancy_id``          the tenancy (uuid) the subscription belongs to; on the
                               subscription or on its customer. Subscriptions that name
                               another tenancy, or none, are not this tenancy's and are left
                               alone.
``pyglue_customer_type``       ``user``, ``team`` or ``custom``; subscription or customer.
``pyglue_customer_id``         the user / team id (uuid) or custom id; subscription or customer.
``pyglue_product_id``          the billing.products id; on the subscription.
``pyglue_product_version_id``  optional, on the subscription: the version it is pinned to.
                               Without it a new subscription gets the product's current
                               version and an existing one keeps its own. pyglue writes it
                               when regen moves the subscription (billing.stripe_outbox).
=============================  =============================================================

A key on the subscription wins over the same key on its customer. The rest comes from
Stripe itself: status, quantity (the sum of the items' quantities), start, current period
(on the subscription, or on its first item as newer API versions put it),
cancel_at_period_end, ended_at / canceled_at.

Keys: ``api_key=`` when a caller passes one, else the tenancy's own key
(billing.set_stripe_api_key), else ``$PYGLUE_STRIPE_API_KEY``. ``$PYGLUE_STRIPE_API_BASE``
(or ``api_base=``) points the SDK elsewhere, e.g. at localstripe. Each call builds a
``stripe.StripeClient``; the global ``stripe.api_key`` is never set. A key never appears in
an error, a log line or an outbox row's last_error: Stripe's messages are scrubbed of it and
of anything shaped like a Stripe secret.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import psycopg
import stripe
from psycopg.types.json import Jsonb

from pyglue import db, queries
from pyglue import dsn as dsns
from pyglue.errors import PyglueError
from pyglue.sync.targets import require_tenancy

API_KEY_ENV = "PYGLUE_STRIPE_API_KEY"
API_BASE_ENV = "PYGLUE_STRIPE_API_BASE"
BATCH_SIZE = 1000
HTTP_TIMEOUT_S = 30

TENANCY_KEY = "pyglue_tenancy_id"
CUSTOMER_TYPE_KEY = "pyglue_customer_type"
CUSTOMER_ID_KEY = "pyglue_customer_id"
PRODUCT_KEY = "pyglue_product_id"
VERSION_KEY = "pyglue_product_version_id"

# secret and restricted keys, webhook secrets: never shown, whoever's they are
_SECRET_SHAPE = re.compile(r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9_]+|\b(?:sk|rk)_[A-Za-z0-9]{16,}|\bwhsec_[A-Za-z0-9_]+")


@dataclass
class SyncResult:
    tenancy_id: str
    customer: str | None
    read: int  # Stripe subscriptions of the tenancy that were read
    written: int  # rows of billing.subscriptions inserted or updated

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class DeliverResult:
    claimed: int = 0
    delivered: int = 0
    failed: int = 0
    superseded: int = 0  # regen replaced the metadata while the write was in flight; due again
    purged: int = 0  # delivered rows older than keep_delivered_s, deleted
    errors: list[str] = field(default_factory=list)

    def add(self, other: DeliverResult) -> None:
        self.claimed += other.claimed
        self.delivered += other.delivered
        self.failed += other.failed
        self.superseded += other.superseded
        self.purged += other.purged
        self.errors += other.errors

    def as_dict(self) -> dict:
        return asdict(self)


# --- clients and keys ----------------------------------------------------------------------


def api_key_for(conn: psycopg.Connection, tenancy_id: uuid.UUID | str, api_key: str | None = None) -> str:
    """The key to use for a tenancy: the one given, its own setting, else $PYGLUE_STRIPE_API_KEY."""
    if api_key:
        return api_key
    with conn.transaction():
        row = conn.execute(queries.load("stripe_api_key"), {"tenancy_id": tenancy_id}).fetchone()
    key = (row["api_key"] if row else None) or os.environ.get(API_KEY_ENV)
    if not key:
        raise PyglueError(f"no Stripe API key for tenancy {tenancy_id}: set ${API_KEY_ENV}"
                          " or store one with billing.set_stripe_api_key")
    return key


def client(api_key: str, api_base: str | None = None, max_network_retries: int = 1) -> stripe.StripeClient:
    """A StripeClient for one key; api_base (else $PYGLUE_STRIPE_API_BASE) overrides Stripe's URL."""
    base = api_base or os.environ.get(API_BASE_ENV)
    return stripe.StripeClient(
        api_key,
        base_addresses={"api": base} if base else None,
        max_network_retries=max_network_retries,
        http_client=stripe.new_default_http_client(timeout=HTTP_TIMEOUT_S),
    )


def scrub(text: str, *secrets: str | None) -> str:
    """Text with the given secrets and anything shaped like a Stripe secret replaced by ***."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return _SECRET_SHAPE.sub("***", text)


def error_line(exc: BaseException, *secrets: str | None) -> str:
    """A Stripe (or other) error as one line without keys: 'Stripe <kind> (HTTP n): message'."""
    if isinstance(exc, stripe.StripeError):
        message = exc.user_message or str(exc) or type(exc).__name__
        status = f" (HTTP {exc.http_status})" if exc.http_status else ""
        text = f"Stripe {type(exc).__name__}{status}: {message}"
    else:
        text = str(exc) or type(exc).__name__
    return scrub(" ".join(text.split()), *secrets)[:500]


@contextlib.contextmanager
def _connection(conn_or_dsn: psycopg.Connection | str | None) -> Iterator[psycopg.Connection]:
    """The caller's connection as it is (it decides when to commit), or one of our own on a
    DSN (default: the resolved pyglue DSN) in autocommit mode, closed afterwards."""
    if isinstance(conn_or_dsn, psycopg.Connection):
        yield conn_or_dsn
        return
    with db.connect(dsns.resolve(conn_or_dsn), autocommit=True) as conn:
        yield conn


def object_id(value: str | dict | None) -> str | None:
    """The id of a Stripe reference: an id already, or the object itself when expanded."""
    return value.get("id") if isinstance(value, dict) else value


def sql_error(exc: psycopg.Error) -> PyglueError | psycopg.Error:
    """A refusal of billing's functions (bad data, unknown tenancy) as one PyglueError line."""
    if exc.sqlstate and exc.sqlstate[:2] in ("22", "23", "P0") and exc.diag.message_primary:
        return PyglueError(exc.diag.message_primary)
    return exc


# --- sync ----------------------------------------------------------------------------------


def sync_tenancy(conn_or_dsn: psycopg.Connection | str | None, tenancy_id: uuid.UUID | str, *,
                 customer: str | None = None, api_key: str | None = None, api_base: str | None = None,
                 batch_size: int = BATCH_SIZE) -> SyncResult:
    """Pull the tenancy's Stripe subscriptions (all statuses, auto-paginated; only those of one
    Stripe customer with customer=) and upsert them by Stripe id, one transaction per batch
    (ended subscriptions first, so a plan switched in Stripe frees its line before the new
    one arrives). A re-sync of unchanged Stripe state writes nothing.

    Raises PyglueError (one line naming the value) for an unknown tenancy, a missing key,
    Stripe being unreachable or refusing the key, and subscriptions the database refuses
    (metadata naming an unknown product or version, a customer type other than the
    product's, missing metadata)."""
    tenancy = str(uuid.UUID(str(tenancy_id)))
    with _connection(conn_or_dsn) as conn:
        require_tenancy(conn, uuid.UUID(tenancy))
        key = api_key_for(conn, tenancy, api_key)
        with conn.transaction():
            read_at = conn.execute(queries.load("stripe_clock")).fetchone()["read_at"]
        try:
            rows = list(_tenancy_rows(client(key, api_base), tenancy, customer))
        except stripe.StripeError as exc:
            raise PyglueError(f"cannot read Stripe subscriptions of tenancy {tenancy}: {error_line(exc, key)}") from None
        rows.sort(key=lambda r: (r["status"] not in ("canceled", "incomplete_expired"), r["stripe_subscription_id"]))
        written = 0
        for start in range(0, len(rows), batch_size):
            try:
                with conn.transaction():
                    written += conn.execute(queries.load("stripe_upsert_subscriptions"), {
                        "tenancy_id": tenancy, "rows": Jsonb(rows[start:start + batch_size]), "read_at": read_at,
                    }).fetchone()["written"]
            except psycopg.Error as exc:
                raise sql_error(exc) from None
    return SyncResult(tenancy_id=tenancy, customer=customer, read=len(rows), written=written)


def _tenancy_rows(stripe_client: stripe.StripeClient, tenancy_id: str, customer: str | None) -> Iterator[dict]:
    params: dict = {"status": "all", "limit": 100, "expand": ["data.customer"]}
    if customer:
        params["customer"] = customer
    for subscription in stripe_client.v1.subscriptions.list(params=params).auto_paging_iter():
        row = subscription_row(subscription.to_dict(), tenancy_id)
        if row is not None:
            yield row


def subscription_row(sub: dict, tenancy_id: str) -> dict | None:
    """The billing.upsert_stripe_subscriptions row of a Stripe subscription (a plain dict, its
    customer expanded or an id), or None when the metadata names another tenancy or none."""
    customer = sub.get("customer")
    customer_meta = (customer.get("metadata") or {}) if isinstance(customer, dict) else {}
    meta = {**customer_meta, **(sub.get("metadata") or {})}
    if not _same_uuid(meta.get(TENANCY_KEY), tenancy_id):
        return None
    missing = [k for k in (CUSTOMER_TYPE_KEY, CUSTOMER_ID_KEY, PRODUCT_KEY) if not meta.get(k)]
    if missing:
        raise PyglueError(f"Stripe subscription {sub.get('id')} of tenancy {tenancy_id} has no "
                          f"{', '.join(missing)} in its (or its customer's) metadata")
    items = ((sub.get("items") or {}).get("data")) or []
    first = items[0] if items else {}
    quantity = sum(int(i.get("quantity") or 0) for i in items) if items else sub.get("quantity")
    return {
        "stripe_subscription_id": sub.get("id"),
        "customer_type": meta[CUSTOMER_TYPE_KEY],
        "customer_id": meta[CUSTOMER_ID_KEY],
        "product_id": meta[PRODUCT_KEY],
        "product_version_id": meta.get(VERSION_KEY) or None,
        "status": sub.get("status"),
        "quantity": quantity,
        "started_at": sub.get("start_date") or sub.get("created"),
        "current_period_start": sub.get("current_period_start") or first.get("current_period_start"),
        "current_period_end": sub.get("current_period_end") or first.get("current_period_end"),
        "cancel_at_period_end": bool(sub.get("cancel_at_period_end")),
        "ended_at": sub.get("ended_at"),
        "canceled_at": sub.get("canceled_at"),
    }


def _same_uuid(value: str | None, wanted: str) -> bool:
    try:
        return value is not None and uuid.UUID(value.strip()) == uuid.UUID(wanted)
    except ValueError:
        return False


# --- webhooks ------------------------------------------------------------------------------


def handle_event(payload: str | bytes, signature: str | None, secret: str | None, *,
                 conn_or_dsn: psycopg.Connection | str | None = None, api_key: str | None = None,
                 api_base: str | None = None, tolerance: int = 300) -> dict:
    """Verify a Stripe webhook (the raw body and its Stripe-Signature header) and, for a
    customer.subscription.* event, sync that customer's subscriptions from Stripe (the event
    says who changed; what changed is read back from Stripe, so events that arrive late or
    twice do no harm). Other events are verified and ignored.

    Returns {"event_id", "type", "handled", and when handled "tenancy_id", "customer",
    "read", "written"}. Raises PyglueError for a missing secret, a signature that does not
    verify, a payload that is not an event, or a subscription that names no tenancy."""
    if not secret:
        raise PyglueError("no Stripe webhook signing secret given")
    try:
        event = stripe.Webhook.construct_event(payload, signature, secret, tolerance=tolerance)
    except stripe.SignatureVerificationError:
        raise PyglueError("Stripe webhook signature does not verify (wrong secret, altered payload,"
                          f" or signed more than {tolerance}s ago)") from None
    except ValueError:
        raise PyglueError("Stripe webhook payload is not a JSON event") from None
    summary: dict = {"event_id": event.id, "type": event.type, "handled": False}
    if not event.type.startswith("customer.subscription."):
        return summary
    sub = event.data.object.to_dict()
    customer = sub.get("customer")
    customer_id = customer.get("id") if isinstance(customer, dict) else customer
    tenancy = (sub.get("metadata") or {}).get(TENANCY_KEY)
    with _connection(conn_or_dsn) as conn:
        if not tenancy and customer_id:
            tenancy = _customer_tenancy(customer_id, api_key or os.environ.get(API_KEY_ENV), api_base)
        if not tenancy:
            raise PyglueError(f"Stripe event {event.id}: subscription {sub.get('id')} and customer {customer_id}"
                              f" name no {TENANCY_KEY} in their metadata")
        try:
            tenancy = str(uuid.UUID(tenancy))
        except ValueError:
            raise PyglueError(f"Stripe event {event.id}: {TENANCY_KEY} {tenancy!r} is not a uuid") from None
        result = sync_tenancy(conn, tenancy, customer=customer_id, api_key=api_key, api_base=api_base)
    return summary | {"handled": True} | result.as_dict() | {"customer": customer_id}


def _customer_tenancy(customer_id: str, api_key: str | None, api_base: str | None) -> str | None:
    if not api_key:
        raise PyglueError(f"Stripe customer {customer_id}: the subscription names no {TENANCY_KEY}, and reading"
                          f" the customer's needs ${API_KEY_ENV}")
    try:
        found = client(api_key, api_base).v1.customers.retrieve(customer_id)
    except stripe.StripeError as exc:
        raise PyglueError(f"cannot read Stripe customer {customer_id}: {error_line(exc, api_key)}") from None
    return (found.to_dict().get("metadata") or {}).get(TENANCY_KEY)


# --- the outbox ----------------------------------------------------------------------------


def deliver_outbox(conn_or_dsn: psycopg.Connection | str | None = None, *, tenancy_id: uuid.UUID | str | None = None,
                   limit: int = 100, api_key: str | None = None, api_base: str | None = None,
                   lease_s: float = 300.0, base_delay_s: float = 5.0, max_delay_s: float = 3600.0,
                   keep_delivered_s: float = 86400.0) -> DeliverResult:
    """Deliver due outbox rows once: claim up to `limit` (committed, so another deliverer skips
    them), write each row's metadata into its Stripe subscription, mark it delivered, or
    record the error (without the key) and back off: least(max_delay_s, base_delay_s *
    2^(attempts-1)) with ±20% jitter. A row is never dropped. Each settlement is its own
    transaction, so a deliverer killed half-way leaves the rest to the lease. Rows delivered
    more than keep_delivered_s ago are deleted first."""
    result = DeliverResult()
    with _connection(conn_or_dsn) as conn:
        with conn.transaction():
            result.purged = conn.execute(queries.load("stripe_purge_outbox"),
                                         {"keep_s": keep_delivered_s}).fetchone()["purged"]
        with conn.transaction():
            rows = conn.execute(queries.load("stripe_claim_outbox"), {
                "limit": limit, "tenancy_id": str(tenancy_id) if tenancy_id else None, "lease_s": lease_s,
            }).fetchall()
        result.claimed = len(rows)
        keys: dict[str, str | PyglueError] = {}  # per tenancy: its key, or why it has none
        clients: dict[str, stripe.StripeClient] = {}
        for row in rows:
            tenancy = str(row["tenancy_id"])
            if tenancy not in keys:
                try:
                    keys[tenancy] = api_key_for(conn, tenancy, api_key)
                    # no SDK retries: the outbox's backoff is the retry
                    clients[tenancy] = client(keys[tenancy], api_base, max_network_retries=0)
                except PyglueError as exc:
                    keys[tenancy] = exc
            key = keys[tenancy]
            try:
                if isinstance(key, PyglueError):
                    raise key
                clients[tenancy].v1.subscriptions.update(row["stripe_subscription_id"],
                                                         params={"metadata": row["metadata"]})
            except (stripe.StripeError, PyglueError) as exc:
                line = error_line(exc, key if isinstance(key, str) else None)
                with conn.transaction():
                    conn.execute(queries.load("stripe_fail_outbox"), {
                        "tenancy_id": tenancy, "id": row["id"], "metadata": Jsonb(row["metadata"]), "error": line,
                        "base_delay_s": base_delay_s, "max_delay_s": max_delay_s,
                    })
                result.failed += 1
                result.errors.append(f"{row['stripe_subscription_id']}: {line}")
                continue
            with conn.transaction():
                delivered = conn.execute(queries.load("stripe_complete_outbox"), {
                    "tenancy_id": tenancy, "id": row["id"], "metadata": Jsonb(row["metadata"]),
                }).fetchone()["delivered"]
            if delivered:
                result.delivered += 1
            else:
                result.superseded += 1
    return result


def pending_outbox(conn: psycopg.Connection, tenancy_id: uuid.UUID | str | None = None) -> tuple[int, float | None]:
    """Undelivered outbox rows, and seconds until the next one is due (None when none is)."""
    with conn.transaction():
        row = conn.execute(queries.load("stripe_outbox_pending"),
                           {"tenancy_id": str(tenancy_id) if tenancy_id else None}).fetchone()
    return row["pending"], row["next_due_s"]


def deliver_until_done(conn_or_dsn: psycopg.Connection | str | None = None, *, wait_s: float = 0.0,
                       tenancy_id: uuid.UUID | str | None = None, sleep=time.sleep, **options) -> DeliverResult:
    """deliver_outbox until nothing is pending, or until wait_s seconds have passed (0: one
    round), sleeping until the next row is due in between."""
    total = DeliverResult()
    deadline = time.monotonic() + wait_s
    with _connection(conn_or_dsn) as conn:
        while True:
            total.add(deliver_outbox(conn, tenancy_id=tenancy_id, **options))
            pending, next_due_s = pending_outbox(conn, tenancy_id)
            left = deadline - time.monotonic()
            if pending == 0 or left <= 0:
                return total
            sleep(min(max(next_due_s or 0.0, 0.05), left))
