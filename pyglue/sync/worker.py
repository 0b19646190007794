"""`pyglue worker`: sequencer passes, claims from the request queue, syncs, forever.

One control connection LISTENs for pyglue_requests, runs sequencer passes (timed: a pass
that finds nothing costs a few index probes) and claims requests; a thread pool of
`concurrency` threads syncs the claimed tenancies, each with its own connections. Every
switch of the fusebox is read on every turn. On stop (SIGTERM/SIGINT) running syncs
finish their current page and hand their requests back; a worker killed outright loses
nothing either: its claims are free as soon as the server has closed its sessions (the
claim records the session that works on it), or when their lease expires, and another
worker resumes from each target's cursor.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import psycopg

from pyglue import capture, db, queries, telemetry
from pyglue import dsn as dsns
from pyglue.errors import PyglueError
from pyglue.sync import engine
from pyglue.sync.mappings import Mapping
from pyglue.sync.target import TargetSessions
from pyglue.webhooks import delivery

BUSY_RETRY_S = 1.0  # a target another run holds is tried again this soon
WEBHOOK_READ_RETRY_S = 5.0  # an endpoint whose events could not be read is tried again this soon


@dataclass
class WorkerOptions:
    concurrency: int = 2
    lease_s: float = 60.0
    sequencer_interval_s: float = 0.1
    sequencer_batch: int = 10000
    page_size: int = 5000
    statement_timeout_ms: int = 30000
    max_attempts: int = 8
    webhooks: delivery.Options = field(default_factory=delivery.Options)  # batch size, backoff, timeouts


class Worker:
    def __init__(self, dsn: str, mappings: list[Mapping], options: WorkerOptions | None = None,
                 log: Callable[[str], None] = lambda _line: None):
        self.dsn, self.mappings, self.options, self.log = dsn, mappings, options or WorkerOptions(), log
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.stop = threading.Event()
        self._local = threading.local()
        self._owned: list = []  # what the sync threads opened (_per_thread), closed when run() ends
        self.telemetry = telemetry.Recorder(self.id, log)

    def run(self, until_idle: bool = False) -> None:
        """Work until stop is set (or, with until_idle, until nothing is left to do).

        A lost database connection is retried with backoff (up to 30 s between tries);
        with until_idle it is an error instead.
        """
        delay = 1.0
        try:
            while not self.stop.is_set():
                try:
                    self._run_connected(until_idle)
                    return
                except (psycopg.OperationalError, PyglueError) as exc:
                    if until_idle:
                        raise
                    self.log(f"worker {self.id}: database unavailable ({' '.join(str(exc).split())[:200]});"
                             f" retrying in {delay:.0f}s")
                    self.stop.wait(delay)
                    delay = min(delay * 2, 30.0)
        finally:
            for owned in self._owned:
                owned.close()

    def _run_connected(self, until_idle: bool) -> None:
        opts = self.options
        in_flight: dict[Future, dict] = {}
        with db.connect(self.dsn, autocommit=True, application_name="pyglue worker") as control, \
                ThreadPoolExecutor(opts.concurrency, thread_name_prefix="pyglue-sync") as pool:
            engine.check_for_dead_client(control)
            control.execute("listen pyglue_requests")
            self.log(f"worker {self.id} started (concurrency {opts.concurrency})")
            next_pass = 0.0
            while not self.stop.is_set():
                fuse = capture.fusebox(control)
                # claims before the pass too: a new target's first sync (a snapshot, queued by
                # targets add) need not wait for a pass over a big backlog
                busy = self._claim_free(control, fuse, pool, in_flight)
                if fuse["sequencer_enabled"] and time.monotonic() >= next_pass:
                    started = time.monotonic()
                    # another worker's pass in progress: 0 at once, don't queue up behind it
                    stamped = capture.sequence_pass(control, opts.sequencer_batch, wait=False)
                    self.telemetry.sequencer_pass(stamped, time.monotonic() - started)
                    # A full batch leaves more: the next pass at once. After a partial one, the
                    # next waits for the interval, so a steady writer's changes are stamped an
                    # interval's worth per pass (a pass costs milliseconds however few rows it
                    # stamps; back to back, at 10k changes/s they took most of a core here).
                    again = stamped >= opts.sequencer_batch or (until_idle and stamped > 0)
                    next_pass = started if again else started + opts.sequencer_interval_s
                    busy |= again
                busy |= self._claim_free(control, fuse, pool, in_flight)
                self.telemetry.flush(control)
                if until_idle and not busy and not in_flight:
                    break
                if not busy:  # until the next pass is due, or a request is queued
                    wait_s = (next_pass - time.monotonic() if fuse["sequencer_enabled"]
                              else opts.sequencer_interval_s)
                    if wait_s > 0:
                        for _ in control.notifies(timeout=wait_s, stop_after=1):
                            pass
            self.log(f"worker {self.id} stopping: finishing {len(in_flight)} sync(s)")
        self._flush_telemetry()
        self.log(f"worker {self.id} stopped")

    def _flush_telemetry(self) -> None:
        """What the last syncs did, once they have finished (a database gone by now loses it)."""
        try:
            with db.connect(self.dsn, autocommit=True) as conn:
                self.telemetry.flush(conn, force=True)
        except (psycopg.Error, PyglueError) as exc:
            self.log(f"worker {self.id}: last telemetry not recorded: {dsns.error_line(exc, self.dsn)}")

    def _claim_free(self, control: psycopg.Connection, fuse: dict, pool: ThreadPoolExecutor,
                    in_flight: dict[Future, dict]) -> bool:
        """Settle finished syncs, then claim requests for the free slots; whether it claimed any."""
        for done in [f for f in in_flight if f.done()]:
            in_flight.pop(done)
            done.result()
        free = self.options.concurrency - len(in_flight)
        if not (fuse["poller_enabled"] and fuse["sync_enabled"] and free > 0):
            return False
        claimed = self._claim(control, free)
        for request in claimed:
            in_flight[pool.submit(self._handle, request)] = request
        return bool(claimed)

    def _claim(self, control: psycopg.Connection, limit: int) -> list[dict]:
        return control.execute("select id, tenancy_id from pyglue.claim_requests(%s, %s, make_interval(secs => %s))",
                               (self.id, limit, self.options.lease_s)).fetchall()

    def _per_thread(self, name: str, make: Callable[[], object]):
        """This sync thread's own `name` (made again once closed), closed when run() ends."""
        owned = getattr(self._local, name, None)
        if owned is None or getattr(owned, "closed", False):
            owned = make()
            setattr(self._local, name, owned)
            self._owned.append(owned)
        return owned

    def _source(self) -> psycopg.Connection:
        return self._per_thread("source", lambda: engine.source_connection(self.dsn))

    def _target_sessions(self) -> TargetSessions:
        return self._per_thread("targets", lambda: TargetSessions(engine.target_connection))

    def _http(self) -> delivery.Clients:
        return self._per_thread("http", lambda: delivery.Clients(self.options.webhooks))

    def _handle(self, request: dict) -> None:
        """Sync one claimed tenancy, deliver its webhooks, and settle its request: complete,
        release or fail."""
        request_id, tenancy = request["id"], request["tenancy_id"]
        try:
            source = self._source()
            options = engine.Options(page_size=self.options.page_size, stop=self.stop, source_dsn=self.dsn,
                                     statement_timeout_ms=self.options.statement_timeout_ms,
                                     # give up on a busy target well before the lease runs out
                                     lock_timeout_s=min(60.0, self.options.lease_s / 2),
                                     sessions=self._target_sessions(),
                                     on_page=lambda: self._renew(source, request_id),
                                     on_applied=lambda target_id, mapping, rows: self.telemetry.page_applied(
                                         target_id, mapping.name, rows))
            try:
                self._renew(source, request_id)  # the claim now lives and dies with this thread's session
            except engine.Stopped:
                return  # taken by another worker in the meantime: it is theirs
            result = engine.sync_tenancy(source, tenancy, self.mappings, options)
            hooks = None
            if not (result.stopped or result.sync_disabled):
                hooks = delivery.deliver_tenancy(
                    source, tenancy, self._http(),
                    replace(self.options.webhooks, stop=self.stop, on_batch=lambda: self._renew(source, request_id)),
                    self.log, self.mappings)
            with source.transaction():
                if result.stopped or result.sync_disabled or (hooks is not None and hooks.stopped):
                    released = source.execute("select pyglue.release_request(%s, %s) as ok",
                                              (request_id, self.id)).fetchone()["ok"]
                    if not released and not result.sync_disabled:  # lost to another worker: keep the work queued
                        source.execute("select pyglue.enqueue_sync(%s)", (tenancy,))
                    return
                source.execute("select pyglue.complete_request(%s, %s)", (request_id, self.id))  # wakes the workers
                busy = any(t.busy for t in result.targets)
                if result.failed or any(t.skipped for t in result.targets):
                    source.execute(queries.load("schedule_target_retry"),
                                   {"tenancy_id": tenancy, "busy_retry_s": BUSY_RETRY_S if busy else None})
                if hooks is not None:
                    self._schedule_webhooks(source, tenancy, hooks)
            for t in result.targets:
                if not t.skipped:
                    self.telemetry.target_run(tenancy, t.name, failed=bool(t.error))
                if t.rows or t.error or t.busy:
                    self.log(f"tenancy {tenancy} target {t.name}: {t.rows} row(s)"
                             + (f", error: {t.error}" if t.error else "")
                             + (f", skipped: {t.skipped}; retrying in {BUSY_RETRY_S:g}s" if t.busy else ""))
        except Exception as exc:  # the source itself failed: back off through the queue
            message = dsns.redact(" ".join(str(exc).split()))[:500]
            self.log(f"tenancy {tenancy}: sync failed: {message}")
            self._fail(request_id, message)

    @staticmethod
    def _schedule_webhooks(source: psycopg.Connection, tenancy: uuid.UUID, hooks: delivery.TenancyDelivery) -> None:
        """Queue the tenancy again for its webhooks: now when one has more than a round's
        batches, soon when one was busy or unreadable, and for the earliest end of a backoff
        (also of endpoints this round skipped: the request that ran may be the one that was
        queued for that backoff, pulled forward by new changes)."""
        again = [0.0 if e.more else BUSY_RETRY_S if e.busy else WEBHOOK_READ_RETRY_S
                 for e in hooks.endpoints if e.more or e.busy or e.read_failed]
        if again:
            source.execute("select pyglue.enqueue_sync(%s, make_interval(secs => %s))", (tenancy, min(again)))
        source.execute(queries.load("schedule_webhook_retry"), {"tenancy_id": tenancy})

    def _renew(self, source: psycopg.Connection, request_id: int) -> None:
        """Renew the lease (and make this session its holder) after a page; a lease lost to
        another worker stops this sync."""
        held = source.execute(
            f"select {engine.UNFLUSHED}, pyglue.extend_lease(%s, %s, make_interval(secs => %s)) as held",
            (request_id, self.id, self.options.lease_s)).fetchone()["held"]
        if not held:
            self.log(f"request {request_id}: lease lost to another worker; stopping this sync")
            raise engine.Stopped()

    def _fail(self, request_id: int, message: str) -> None:
        try:
            with db.connect(self.dsn, autocommit=True) as conn:
                conn.execute("select pyglue.fail_request(%s, %s, %s, p_worker => %s)",
                             (request_id, message, self.options.max_attempts, self.id))
        except Exception as exc:  # the lease will expire and the request come back
            self.log(f"could not record the failure of request {request_id}: {exc}")
