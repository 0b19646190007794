"""Telemetry: what a worker did, recorded in the database, and Prometheus metrics read back.

A worker counts its sequencer passes, the pages it applied per target and mapping and its
sync runs and errors in memory (Recorder; thread-safe, the sync threads add to it) and adds
them to its rows with pyglue.record_telemetry every FLUSH_INTERVAL_S at most (an idle one
every IDLE_FLUSH_INTERVAL_S), and once more when it stops. So the dashboard, `pyglue worker --metrics-port` and the dashboard's
/metrics all read the same numbers, from the database, and nothing but the worker's
id ties them to a process.

Collector turns those rows, pyglue.sync_status and the queue into Prometheus metrics on
each scrape (one short connection): counters per worker (one worker's own when it is the
worker's endpoint), gauges for queue depth, dead requests, oldest pending age, pending
rows and replication lag. Target names appear as labels; connection strings never do.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator

import psycopg
from psycopg.types.json import Jsonb

from pyglue import db, queries
from pyglue.errors import PyglueError

FLUSH_INTERVAL_S = 1.0  # with something to report: rows stamped, pages applied, syncs run
IDLE_FLUSH_INTERVAL_S = 15.0  # only empty passes: an idle worker writes its row this rarely

# Metric names (README "Prometheus metrics" lists them with their labels).
SYNC_ROWS = "pyglue_sync_rows"  # counters get _total from prometheus_client
SYNC_PAGES = "pyglue_sync_pages"
SYNC_RUNS = "pyglue_sync_runs"
SYNC_ERRORS = "pyglue_sync_errors"
SEQUENCER_PASSES = "pyglue_sequencer_passes"
SEQUENCER_ROWS = "pyglue_sequencer_rows"
SEQUENCER_SECONDS = "pyglue_sequencer_pass_seconds"
SEQUENCER_LAST_SECONDS = "pyglue_sequencer_last_pass_seconds"
QUEUE_DEPTH = "pyglue_queue_depth"
DEAD_REQUESTS = "pyglue_dead_requests"
OLDEST_PENDING = "pyglue_oldest_pending_seconds"
PENDING_ROWS = "pyglue_pending_rows"
LAG = "pyglue_replication_lag_seconds"
UP = "pyglue_database_up"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Recorder:
    """A worker's counts since its last flush."""

    def __init__(self, worker: str, log=lambda _line: None):
        self.worker, self.log = worker, log
        self._lock = threading.Lock()
        self._flushed_at = float("-inf")  # the first flush is never held back
        self._disabled = False
        self._reset()

    def _reset(self) -> None:
        self._passes = self._stamped = 0
        self._seconds = 0.0
        self._last_pass: tuple[dt.datetime, int, float] | None = None
        self._pages: dict[tuple[int, str], list] = {}  # (target id, mapping) -> [pages, rows, at]
        self._runs: dict[tuple[str, str], list] = {}  # (tenancy, target) -> [runs, errors, at, error_at]

    def sequencer_pass(self, rows: int, seconds: float) -> None:
        with self._lock:
            self._passes += 1
            self._stamped += rows
            self._seconds += seconds
            self._last_pass = (_now(), rows, seconds)

    def page_applied(self, target_id: int, mapping: str, rows: int) -> None:
        with self._lock:
            entry = self._pages.setdefault((target_id, mapping), [0, 0, None])
            entry[0] += 1
            entry[1] += rows
            entry[2] = _now()

    def target_run(self, tenancy_id, target: str, failed: bool) -> None:
        with self._lock:
            entry = self._runs.setdefault((str(tenancy_id), target), [0, 0, None, None])
            entry[0] += 1
            entry[2] = _now()
            if failed:
                entry[1] += 1
                entry[3] = entry[2]

    def flush(self, conn: psycopg.Connection, force: bool = False) -> None:
        """Write the counts in one call: at most every FLUSH_INTERVAL_S when there is work to
        report, every IDLE_FLUSH_INTERVAL_S when only empty passes ran (unless forced). A
        database without the telemetry migration is told once and never asked again."""
        if self._disabled:
            return
        with self._lock:
            idle = not (self._stamped or self._pages or self._runs)
        waited = time.monotonic() - self._flushed_at
        if not force and waited < (IDLE_FLUSH_INTERVAL_S if idle else FLUSH_INTERVAL_S):
            return
        with self._lock:
            passes, stamped, seconds, last = self._passes, self._stamped, self._seconds, self._last_pass
            pages = [{"target_id": t, "mapping": m, "pages": p, "rows": r, "at": at.isoformat()}
                     for (t, m), (p, r, at) in self._pages.items()]
            runs = [{"tenancy_id": t, "target": n, "runs": r, "errors": e, "at": at.isoformat(),
                     "error_at": error_at and error_at.isoformat()}
                    for (t, n), (r, e, at, error_at) in self._runs.items()]
            self._reset()
        self._flushed_at = time.monotonic()
        try:
            with conn.transaction():
                conn.execute("select pyglue.record_telemetry(%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                             (self.worker, passes, stamped, seconds, last and last[0], last and last[1],
                              last and last[2], Jsonb(pages), Jsonb(runs)))
        except psycopg.errors.UndefinedFunction:
            self._disabled = True
            self.log(f"worker {self.worker}: telemetry not recorded (run pyglue db migrate for 0021_telemetry)")


class Collector:
    """A prometheus_client collector reading telemetry, sync status and the queue on each scrape.
    worker: only that worker's counters (the worker's own endpoint); None: every worker's."""

    def __init__(self, dsn: str, worker: str | None = None):
        self.dsn, self.worker = dsn, worker

    def describe(self):
        return []  # metrics come from the database: no fixed set at registration time

    def collect(self) -> Iterator:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        up = GaugeMetricFamily(UP, "1 when the last scrape could read the pyglue database")
        try:
            with db.connect(self.dsn, autocommit=True, application_name="pyglue metrics") as conn:
                families = list(self._families(conn, CounterMetricFamily, GaugeMetricFamily))
        except (psycopg.Error, OSError, PyglueError):
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self, conn, counter, gauge) -> Iterator:
        only = {"worker": self.worker}
        rows = counter(SYNC_ROWS, "Rows applied to sync targets", labels=["worker", "tenancy", "target", "mapping"])
        pages = counter(SYNC_PAGES, "Pages applied to sync targets (one transaction each)",
                        labels=["worker", "tenancy", "target", "mapping"])
        for r in conn.execute(queries.load("dashboard_sync_telemetry"), only):
            labels = [r["worker"], str(r["tenancy_id"]), r["target_name"], r["mapping_name"]]
            rows.add_metric(labels, r["rows_applied"])
            pages.add_metric(labels, r["pages_applied"])
        runs = counter(SYNC_RUNS, "Syncs of a target run", labels=["worker", "tenancy", "target"])
        errors = counter(SYNC_ERRORS, "Syncs of a target that failed", labels=["worker", "tenancy", "target"])
        for r in conn.execute(queries.load("dashboard_target_telemetry"), only):
            labels = [r["worker"], str(r["tenancy_id"]), r["target_name"]]
            runs.add_metric(labels, r["runs"])
            errors.add_metric(labels, r["errors"])
        passes = counter(SEQUENCER_PASSES, "Sequencer passes run", labels=["worker"])
        stamped = counter(SEQUENCER_ROWS, "Rows stamped by sequencer passes", labels=["worker"])
        seconds = counter(SEQUENCER_SECONDS, "Seconds spent in sequencer passes", labels=["worker"])
        last = gauge(SEQUENCER_LAST_SECONDS, "Duration of the worker's latest sequencer pass", labels=["worker"])
        for r in conn.execute(queries.load("dashboard_workers"), only):
            passes.add_metric([r["worker"]], r["sequencer_passes"])
            stamped.add_metric([r["worker"]], r["rows_stamped"])
            seconds.add_metric([r["worker"]], r["pass_seconds"])
            if r["last_pass_seconds"] is not None:
                last.add_metric([r["worker"]], r["last_pass_seconds"])
        yield from (rows, pages, runs, errors, passes, stamped, seconds, last)

        depth = gauge(QUEUE_DEPTH, "Sync requests pending or claimed", labels=["tenancy"])
        dead = gauge(DEAD_REQUESTS, "Sync requests kept as dead after their last attempt", labels=["tenancy"])
        oldest = gauge(OLDEST_PENDING, "Age of the oldest pending sync request", labels=["tenancy"])
        for r in conn.execute(queries.load("dashboard_queue")):
            tenancy = str(r["tenancy_id"])
            depth.add_metric([tenancy], r["pending"] + r["claimed"])
            dead.add_metric([tenancy], r["dead"])
            oldest.add_metric([tenancy], r["oldest_pending_s"] or 0.0)
        pending = gauge(PENDING_ROWS, "Changed rows not yet applied to a target", labels=["tenancy", "target", "mapping"])
        lag = gauge(LAG, "Age of the oldest change not yet applied to a target (0 when caught up)",
                    labels=["tenancy", "target"])
        lags: dict[tuple[str, str], float] = {}
        for r in conn.execute("select * from pyglue.sync_status()"):
            key = (str(r["tenancy_id"]), r["target_name"])
            pending.add_metric([*key, r["mapping_name"]], r["pending_rows"])
            age = r["oldest_unapplied_age"]
            lags[key] = max(lags.get(key, 0.0), age.total_seconds() if age is not None else 0.0)
        for key, seconds_behind in lags.items():
            lag.add_metric(list(key), seconds_behind)
        yield from (depth, dead, oldest, pending, lag)


def registry(dsn: str, worker: str | None = None):
    """A registry holding only pyglue's collector (no process or platform metrics of the host)."""
    from prometheus_client import CollectorRegistry

    reg = CollectorRegistry(auto_describe=False)
    reg.register(Collector(dsn, worker))
    return reg


def serve(dsn: str, host: str, port: int, worker: str | None = None):
    """Serve /metrics over HTTP in a daemon thread (`pyglue worker --metrics-port`); returns
    the server (shutdown() and server_close() stop it)."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=host, registry=registry(dsn, worker))
    return server
