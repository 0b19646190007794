"""Delivering a tenancy's changes to its webhook endpoints (the worker calls it after sync).

Per endpoint, batch by batch, from its cursor in pyglue.webhooks:
1. read the next events (after the cursor; when a failed batch is being retried, exactly
   that batch again) over the fetch login, under tenant isolation (pyglue.sync.fetch);
2. in ONE source transaction: lock the endpoint's row (SKIP LOCKED: a delivery elsewhere
   holds it, so leave it), POST the batch, record the attempt with
   pyglue.record_webhook_delivery, which moves the cursor only on a 2xx; commit.
A worker killed mid-POST leaves the cursor where it was, so the batch is sent again (at
least once); every event carries a stable id (its idempotency key: `evt_<sequence id>`)
by which the receiver drops the copies. Nothing later is sent for an endpoint while a
batch of it is retried, so per key (and overall) the order is the feed's. An endpoint
that backs off or is parked is skipped; other endpoints, targets and tenancies go on.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import functools
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import psycopg
import psycopg.sql

from pyglue import paths, queries, render
from pyglue.errors import PyglueError
from pyglue.sync import fetch
from pyglue.sync.engine import Stopped  # the caller asked to stop (or lost its lease) between batches
from pyglue.sync.mappings import Mapping
from pyglue.webhooks import signing, urls

_NO_END = 2**63 - 1
EXCERPT_BYTES = 1000
USER_AGENT = "pyglue-webhooks/1"


@dataclass
class Options:
    batch_size: int = 500
    max_attempts: int = 12  # attempts of one batch before the endpoint is parked
    base_delay_s: float = 1.0  # backoff: base * 2^(attempt-1) with jitter, capped
    max_delay_s: float = 300.0
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 10.0
    max_batches: int = 200  # per endpoint per round; then the tenancy is queued again
    statement_timeout_ms: int = 30000
    ignore_backoff: bool = False
    stop: threading.Event = field(default_factory=threading.Event)
    on_batch: Callable[[], None] = lambda: None  # e.g. renew a queue lease


@dataclass
class EndpointResult:
    name: str
    events: int = 0
    batches: int = 0
    outcome: str | None = None  # 'retrying' or 'parked' when the last attempt failed
    error: str | None = None
    more: bool = False  # stopped after max_batches with events left
    busy: bool = False  # another delivery held the endpoint
    read_failed: bool = False  # its events could not be read (error says why)


@dataclass
class TenancyDelivery:
    tenancy_id: uuid.UUID
    endpoints: list[EndpointResult] = field(default_factory=list)
    stopped: bool = False

    @property
    def events(self) -> int:
        return sum(e.events for e in self.endpoints)


class Clients:
    """Two HTTP clients: one that connects only to public addresses (urls.GuardedBackend),
    one for endpoints added with allow_private. No proxies from the environment, no
    redirects followed (a 3xx parks the endpoint like a 4xx)."""

    def __init__(self, options: Options, resolver: urls.Resolver = urls.resolve):
        timeout = httpx.Timeout(options.read_timeout_s, connect=options.connect_timeout_s)
        self.public = httpx.Client(timeout=timeout, trust_env=False, follow_redirects=False)
        # httpx has no public hook for the socket layer: give its httpcore pool our backend
        # (httpx < 1 is pinned in setup.cfg; tests/test_webhooks_urls.py proves it is used)
        self.public._transport._pool._network_backend = urls.GuardedBackend(resolver)
        self.private = httpx.Client(timeout=timeout, trust_env=False, follow_redirects=False)

    def for_endpoint(self, hook: dict) -> httpx.Client:
        return self.private if hook["allow_private"] else self.public

    def close(self) -> None:
        self.public.close()
        self.private.close()


def deliver_tenancy(source: fetch.SourceConnection, tenancy_id: uuid.UUID, clients: Clients,
                    options: Options | None = None, log: Callable[[str], None] = lambda _l: None,
                    known: list[Mapping] = ()) -> TenancyDelivery:
    """One round over the tenancy's due endpoints; never raises for an endpoint's failure.
    known: the mappings an endpoint may name to shape its rows (the worker's)."""
    options = options or Options()
    result = TenancyDelivery(tenancy_id)
    with source.transaction():
        hooks = source.execute(queries.load("due_webhooks"),
                               {"tenancy_id": tenancy_id, "ignore_backoff": options.ignore_backoff}).fetchall()
    for hook in hooks:
        outcome = EndpointResult(hook["name"])
        result.endpoints.append(outcome)
        try:
            deliver_endpoint(source, tenancy_id, hook, clients, options, outcome, known)
        except Stopped:
            result.stopped = True
            break
        except (PyglueError, psycopg.Error, OSError) as exc:  # reading the events failed: the tenancy is queued again
            if source.closed or source.broken:
                raise
            outcome.error, outcome.read_failed = " ".join(str(exc).split())[:500], True
        line = _describe(hook, outcome)
        if line:
            log(f"tenancy {tenancy_id} {line}")
    return result


def deliver_endpoint(source: fetch.SourceConnection, tenancy_id: uuid.UUID, hook: dict, clients: Clients,
                     options: Options, outcome: EndpointResult, known: list[Mapping] = ()) -> None:
    cursor, until = hook["last_delivered_sequence_id"], hook["pending_batch_end"]
    tables = _tables(source, hook["tables"])
    shapes = _shapes(hook, known)
    for _ in range(options.max_batches):
        if options.stop.is_set():
            raise Stopped()
        events = fetch_events(source, tenancy_id, hook["name"], tables, cursor, until, options, shapes)
        if not events and until is not None:  # the retried batch's rows changed since (sequenced again, later)
            until = None
            continue
        if not events:
            return
        batch_end = events[-1]["sequence_id"]
        body = payload(tenancy_id, hook["name"], events)
        message_id = f"msg_{hook['id']}_{cursor}_{batch_end}"
        with source.transaction():
            held = source.execute(queries.load("lock_webhook"), {"id": hook["id"]}).fetchone()
            if held is None or not held["enabled"] or held["parked"]:
                outcome.busy = held is None
                return
            if held["last_delivered_sequence_id"] != cursor:  # another delivery moved it: start from there
                cursor, until = held["last_delivered_sequence_id"], None
                continue
            status, response, error, retry_after_s, took_ms = post(clients.for_endpoint(hook), hook, message_id,
                                                                   body)
            recorded = source.execute(
                "select pyglue.record_webhook_delivery(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) as outcome",
                (hook["id"], cursor, batch_end, len(events), status, error, response, took_ms, retry_after_s,
                 options.max_attempts, options.base_delay_s, options.max_delay_s)).fetchone()["outcome"]
        if recorded != "delivered":
            outcome.outcome = recorded
            outcome.error = f"HTTP {status}" if status is not None else error
            if status is not None and response:
                outcome.error += f": {' '.join(response.split())[:200]}"
            return
        outcome.events += len(events)
        outcome.batches += 1
        options.on_batch()
        if len(events) < options.batch_size and until is None:  # caught up (a retried batch may be short)
            return
        cursor, until = batch_end, None
    outcome.more = True


def _shapes(hook: dict, known: list[Mapping]) -> dict[str, Mapping]:
    """Source table -> the mapping that shapes its rows for this endpoint."""
    by_name = {m.name: m for m in known}
    missing = [n for n in hook["mappings"] or [] if n not in by_name]
    if missing:
        raise PyglueError(f"webhook {hook['name']}: mapping {missing[0]!r} is not among the worker's mappings"
                          f" ({', '.join(sorted(by_name)) or 'none'})")
    return {by_name[n].source_table: by_name[n] for n in hook["mappings"] or []}


def _tables(source: psycopg.Connection, names: list[str] | None) -> list[dict]:
    with source.transaction():
        return source.execute(queries.load("webhook_tables"), {"tables": names}).fetchall()


@functools.cache
def _template():
    return render.environment(paths.TEMPLATES / "webhooks").get_template("events.sql.j2")


def fetch_events(source: fetch.SourceConnection, tenancy_id: uuid.UUID, name: str, tables: list[dict], cursor: int,
                 until: int | None, options: Options, shapes: dict[str, Mapping] | None = None) -> list[dict]:
    """The endpoint's next events after cursor (and up to until), read under tenant isolation;
    the rows of a table in shapes are that mapping's rows (matched by sequence id)."""
    if not tables:
        return []
    sql = _template().render(tables=tables)
    params = {"tenancy_id": tenancy_id, "cursor": cursor, "until": _NO_END if until is None else until,
              "limit": options.batch_size}
    params.update({f"table_{i}": t["name"] for i, t in enumerate(tables)})
    _, rows = fetch.fetch_rows(source, tenancy_id, f"webhook {name}", sql, params, options.batch_size,
                               options.statement_timeout_ms)
    if not rows:
        return []
    keys = {t["name"]: t["key_columns"] for t in tables}
    with source.transaction():
        stamped = {r["id"]: r["stamped_at"] for r in source.execute(
            queries.load("sequenced_at"), {"ids": [r[0] for r in rows if not r[1]]})}
    events = []
    for sequence_id, is_deleted, table, first_stamp, row_json, deleted_at in rows:
        row = json.loads(row_json)
        if is_deleted:
            kind, occurred = "delete", dt.datetime.fromisoformat(deleted_at)
        else:
            kind = "insert" if first_stamp is not None and first_stamp > cursor else "update"
            occurred = stamped.get(sequence_id)
        events.append({"id": f"evt_{sequence_id}", "type": kind, "table": table,
                       "key": {k: row.get(k) for k in keys[table]}, "row": row, "sequence_id": sequence_id,
                       "occurred_at": occurred.isoformat() if occurred else None})
    for table, mapping in (shapes or {}).items():
        _shape(source, tenancy_id, mapping, [e for e in events if e["table"] == table and e["type"] != "delete"],
               cursor, options)
    return events


_SHAPED = psycopg.sql.SQL("select m.sequence_id, to_jsonb(m) - 'sequence_id' - 'is_deleted' as row from ({}) m")


def _shape(source: fetch.SourceConnection, tenancy_id: uuid.UUID, mapping: Mapping, events: list[dict], cursor: int,
           options: Options) -> None:
    """Replace the rows of these events by the mapping's rows of the same sequence ids: its fetch
    (validated, run over the fetch login like a sync page) from the same cursor returns them,
    since the batch holds at most batch_size of its source table's changes."""
    if not events:
        return
    _, rows = fetch.fetch_rows(source, tenancy_id, mapping.name, _SHAPED.format(psycopg.sql.SQL(mapping.fetch_sql)),
                               {"tenancy_id": tenancy_id, "cursor": cursor, "limit": options.batch_size},
                               options.batch_size, options.statement_timeout_ms)
    shaped = {sequence_id: row for sequence_id, row in rows}
    for event in events:
        if event["sequence_id"] not in shaped:
            raise PyglueError(f"mapping {mapping.name} returned no row for sequence id {event['sequence_id']} of"
                              f" {mapping.source_table}: its fetch must return the source rows' sequence ids")
        event["row"], event["mapping"] = json.loads(shaped[event["sequence_id"]]), mapping.name


def payload(tenancy_id: uuid.UUID, name: str, events: list[dict]) -> bytes:
    return json.dumps({"type": "pyglue.changes", "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(),
                       "data": {"tenancy_id": str(tenancy_id), "webhook": name, "events": events}},
                      separators=(",", ":"), ensure_ascii=False).encode()


def post(client: httpx.Client, hook: dict, message_id: str, body: bytes):
    """Send one batch: (status or None, response excerpt, error, Retry-After seconds, ms taken).
    Never raises for the network; the error names the host, not the URL's secrets."""
    headers = signing.headers(hook["secret"], message_id, int(time.time()), body)
    headers.update({"content-type": "application/json", "user-agent": USER_AGENT})
    started = time.monotonic()
    try:
        with client.stream("POST", hook["url"], content=body, headers=headers) as response:
            excerpt = b""
            for chunk in response.iter_bytes():
                excerpt += chunk
                if len(excerpt) >= EXCERPT_BYTES:
                    break
            text = excerpt[:EXCERPT_BYTES].decode("utf-8", "replace").replace("\x00", "")
            return (response.status_code, text, None, retry_after(response.headers.get("retry-after")),
                    _ms(started))
    except httpx.HTTPError as exc:
        kind = type(exc).__name__
        reason = " ".join(str(exc).split())[:300] or kind
        return None, None, f"{kind}: {reason} ({urls.describe(hook['url'])})", None, _ms(started)


def retry_after(value: str | None) -> float | None:
    """Seconds a Retry-After header asks for (delta-seconds or an HTTP date), else None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return max(0.0, (when - dt.datetime.now(dt.timezone.utc)).total_seconds())


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _describe(hook: dict, outcome: EndpointResult) -> str | None:
    if not (outcome.events or outcome.error or outcome.busy):
        return None
    line = f"webhook {hook['name']}: {outcome.events} event(s) in {outcome.batches} batch(es)"
    if outcome.outcome:
        line += f", {outcome.outcome}: {outcome.error}"
    elif outcome.error:
        line += f", error: {outcome.error}"
    if outcome.busy:
        line += ", skipped: another delivery holds it"
    return line
