"""pyglue.retry_request, pyglue.record_telemetry, the worker's telemetry, Prometheus metrics
(issue 14): exact rows and errors of the SQL functions; a worker that syncs moves the counters
read back by the collector, on the dashboard's registry and on the worker's own port."""

from __future__ import annotations

import socket
import threading
import urllib.request
import uuid

import psycopg
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from psycopg.types.json import Jsonb

from pyglue import telemetry
from pyglue.sync import mappings, targets
from pyglue.sync.worker import Worker, WorkerOptions
from tests import factories as f
from tests.syncing import make_world


def dead_request(conn, tenancy, error="boom") -> int:
    """A request of the tenancy made dead the way a worker does it: claimed, then failed at the last attempt."""
    conn.execute("select pyglue.enqueue_sync(%s)", (tenancy,))
    claimed = conn.execute("select id from pyglue.claim_requests('test-worker', 10, '1 minute')"
                           " where tenancy_id = %s", (tenancy,)).fetchone()["id"]
    status = conn.execute("select pyglue.fail_request(%s, %s, 1) as s", (claimed, error)).fetchone()["s"]
    assert status == "dead"
    return claimed


def samples(text: str) -> dict[tuple, float]:
    """(name, sorted labels) -> value for every sample of a Prometheus text exposition."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: dict, name: str, **labels) -> float | None:
    wanted = set(labels.items())
    matching = [v for (n, ls), v in found.items() if n == name and wanted <= set(ls)]
    return sum(matching) if matching else None


# -- pyglue.retry_request ------------------------------------------------------------------------

def test_retry_request_requeues_a_dead_request(conn):
    t = f.tenancy(conn)
    dead = dead_request(conn, t, "target down")
    pending = conn.execute("select pyglue.retry_request(%s) as id", (dead,)).fetchone()["id"]
    rows = conn.execute("select id, status, attempts, last_error from pyglue.outgoing_requests where tenancy_id = %s",
                        (t,)).fetchall()
    assert rows == [{"id": pending, "status": "pending", "attempts": 0, "last_error": None}]
    assert pending != dead


def test_retry_request_merges_with_a_pending_request(conn):
    t = f.tenancy(conn)
    dead = dead_request(conn, t)
    queued = conn.execute("select pyglue.enqueue_sync(%s) as id", (t,)).fetchone()["id"]
    assert conn.execute("select pyglue.retry_request(%s) as id", (dead,)).fetchone()["id"] == queued
    assert conn.execute("select count(*) as n from pyglue.outgoing_requests where tenancy_id = %s",
                        (t,)).fetchone()["n"] == 1


def test_retry_request_refuses_a_missing_or_live_request(conn):
    t = f.tenancy(conn)
    live = conn.execute("select pyglue.enqueue_sync(%s) as id", (t,)).fetchone()["id"]
    conn.execute("savepoint s")
    with pytest.raises(psycopg.errors.NoDataFound, match=rf"request {live} is pending, not dead") as exc:
        conn.execute("select pyglue.retry_request(%s)", (live,))
    assert exc.value.sqlstate == "P0002"
    conn.execute("rollback to savepoint s")
    with pytest.raises(psycopg.errors.NoDataFound, match=r"request -5 does not exist"):
        conn.execute("select pyglue.retry_request(-5)")


# -- pyglue.record_telemetry ---------------------------------------------------------------------

def test_record_telemetry_adds_up_and_keeps_the_latest_pass(conn):
    t = f.tenancy(conn)
    targets.add(conn, t, "main", "postgresql://u@127.0.0.1:1/x")
    main = conn.execute("select id from pyglue.sync_targets where tenancy_id = %s", (t,)).fetchone()["id"]
    pages = Jsonb([{"target_id": main, "mapping": "users", "pages": 2, "rows": 70, "at": "2030-01-01T00:00:00+00:00"},
                   {"target_id": -1, "mapping": "users", "pages": 1, "rows": 1, "at": "2030-01-01T00:00:00+00:00"}])
    runs = Jsonb([{"tenancy_id": str(t), "target": "main", "runs": 1, "errors": 1, "at": "2030-01-01T00:00:00+00:00",
                   "error_at": "2030-01-01T00:00:00+00:00"}])
    conn.execute("select pyglue.record_telemetry('w1', 3, 70, 0.5, '2030-01-01', 70, 0.25, %s, %s)", (pages, runs))
    conn.execute("select pyglue.record_telemetry('w1', 2, 0, 0.1, '2030-01-02', 0, 0.05, %s)", (pages,))
    conn.execute("select pyglue.record_telemetry('w1')")  # nothing happened: the last pass stays
    w = conn.execute("select sequencer_passes, rows_stamped, pass_seconds, last_pass_at::date::text as day,"
                     " last_pass_rows, last_pass_seconds from pyglue.worker_telemetry where worker = 'w1'").fetchone()
    assert w == {"sequencer_passes": 5, "rows_stamped": 70, "pass_seconds": pytest.approx(0.6), "day": "2030-01-02",
                 "last_pass_rows": 0, "last_pass_seconds": 0.05}
    s = conn.execute("select mapping_name, pages_applied, rows_applied from pyglue.sync_telemetry"
                     " where worker = 'w1'").fetchall()
    assert s == [{"mapping_name": "users", "pages_applied": 4, "rows_applied": 140}]  # the unknown target is ignored
    g = conn.execute("select runs, errors from pyglue.target_telemetry where worker = 'w1'").fetchall()
    assert g == [{"runs": 1, "errors": 1}]


def test_record_telemetry_needs_a_worker_name(conn):
    with pytest.raises(psycopg.errors.NullValueNotAllowed, match="worker must be named, got ''") as exc:
        conn.execute("select pyglue.record_telemetry('')")
    assert exc.value.sqlstate == "22004"


def test_telemetry_of_a_removed_target_goes_with_it(conn):
    t = f.tenancy(conn)
    main = targets.add(conn, t, "main", "postgresql://u@127.0.0.1:1/x")
    pages = Jsonb([{"target_id": main, "mapping": "users", "pages": 1, "rows": 1, "at": "2030-01-01T00:00:00+00:00"}])
    conn.execute("select pyglue.record_telemetry('w2', p_pages => %s)", (pages,))
    targets.remove(conn, t, "main")
    assert conn.execute("select count(*) as n from pyglue.sync_telemetry where worker = 'w2'").fetchone()["n"] == 0


# -- the worker and the collector ----------------------------------------------------------------

@pytest.fixture
def world(fresh_db, connect, make_database):
    w = make_world(fresh_db, connect, make_database)
    w.add_target()
    return w


def test_a_worker_records_what_it_did_and_the_counters_move(world):
    registry = telemetry.registry(world.dsn)
    before = samples(generate_latest(registry).decode())
    assert value(before, "pyglue_database_up") == 1
    assert value(before, "pyglue_sync_rows_total", mapping="users") is None
    f.user(world.conn, world.tenancy, "first")
    world.sync()  # the target's first sync (a snapshot): the rows after it go page by page
    f.users_bulk(world.conn, world.tenancy, 120)
    assert value(samples(generate_latest(registry).decode()), "pyglue_pending_rows", mapping="users") == 120

    worker = Worker(world.dsn, mappings.load_all(), WorkerOptions(page_size=50))
    worker.run(until_idle=True)

    after = samples(generate_latest(registry).decode())
    tenancy = str(world.tenancy)
    assert value(after, "pyglue_sync_rows_total", worker=worker.id, tenancy=tenancy, target="main",
                 mapping="users") == 120
    assert value(after, "pyglue_sync_pages_total", worker=worker.id, mapping="users") == 3  # 50 + 50 + 20
    assert value(after, "pyglue_sync_runs_total", worker=worker.id, target="main") >= 1
    assert value(after, "pyglue_sync_errors_total", worker=worker.id, target="main") == 0
    assert value(after, "pyglue_sequencer_rows_total", worker=worker.id) == 120
    assert value(after, "pyglue_sequencer_passes_total", worker=worker.id) >= 1
    assert value(after, "pyglue_sequencer_pass_seconds_total", worker=worker.id) > 0
    assert value(after, "pyglue_pending_rows", mapping="users") == 0
    assert value(after, "pyglue_replication_lag_seconds", tenancy=tenancy, target="main") == 0
    assert value(after, "pyglue_queue_depth", tenancy=tenancy) in (None, 0)
    row = world.conn.execute("select rows_stamped, last_pass_at is not null as passed from pyglue.worker_telemetry"
                             " where worker = %s", (worker.id,)).fetchone()
    assert row == {"rows_stamped": 120, "passed": True}


def test_errors_dead_requests_and_no_password_in_metrics(world):
    secret = "Zq8-metrics-secret"
    targets.add(world.conn, world.tenancy, "down", f"postgresql://u:{secret}@127.0.0.1:1/down")
    f.users_bulk(world.conn, world.tenancy, 5)
    worker = Worker(world.dsn, mappings.load_all(), WorkerOptions())
    worker.run(until_idle=True)
    other = f.tenancy(world.conn)
    dead_request(world.conn, other, f"could not reach postgresql://u:{secret}@127.0.0.1:1/down")
    text = generate_latest(telemetry.registry(world.dsn)).decode()
    assert secret not in text
    found = samples(text)
    assert value(found, "pyglue_sync_errors_total", worker=worker.id, target="down") == 1
    assert value(found, "pyglue_dead_requests", tenancy=str(other)) == 1
    assert value(found, "pyglue_replication_lag_seconds", target="down") > 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_worker_metrics_port_serves_its_own_counters(world):
    worker = Worker(world.dsn, mappings.load_all(), WorkerOptions(sequencer_interval_s=0.05))
    port = free_port()
    server = telemetry.serve(world.dsn, "127.0.0.1", port, worker=worker.id)
    world.conn.execute("select pyglue.record_telemetry('someone-else', 7, 7, 0.1)")
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        f.users_bulk(world.conn, world.tenancy, 10)

        def scrape() -> dict:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                return samples(r.read().decode())
        from tests.test_sync_worker import wait_for
        found = wait_for(lambda: (s := scrape()) and value(s, "pyglue_sync_rows_total", mapping="users") == 10 and s,
                         timeout=30, what="the worker's rows counter at 10")
        assert value(found, "pyglue_sequencer_passes_total", worker="someone-else") is None
        assert {dict(ls)["worker"] for (n, ls), _ in found.items() if n == "pyglue_sequencer_passes_total"} \
            == {worker.id}
    finally:
        worker.stop.set()
        thread.join(timeout=30)
        server.shutdown()
        server.server_close()
    assert not thread.is_alive()


def test_a_database_without_the_telemetry_migration_is_told_once(fresh_db, connect):
    conn = connect(fresh_db, autocommit=True)
    conn.execute("drop function pyglue.record_telemetry")
    lines = []
    recorder = telemetry.Recorder(f"w-{uuid.uuid4().hex[:6]}", lines.append)
    recorder.sequencer_pass(1, 0.01)
    recorder.flush(conn, force=True)
    recorder.flush(conn, force=True)
    assert len(lines) == 1 and "0021_telemetry" in lines[0]


def test_an_idle_worker_writes_its_row_rarely_a_busy_one_soon(conn):
    recorder = telemetry.Recorder("w-throttle")

    def passes() -> int:
        row = conn.execute("select sequencer_passes from pyglue.worker_telemetry where worker = 'w-throttle'").fetchone()
        return row["sequencer_passes"] if row else 0

    recorder.sequencer_pass(0, 0.001)
    recorder.flush(conn)  # the first flush is never held back
    recorder.sequencer_pass(0, 0.001)
    recorder.flush(conn)  # only an empty pass since: held back for IDLE_FLUSH_INTERVAL_S
    assert passes() == 1
    recorder._flushed_at -= telemetry.FLUSH_INTERVAL_S
    recorder.flush(conn)
    assert passes() == 1
    recorder.sequencer_pass(5, 0.001)  # work to report: written once FLUSH_INTERVAL_S has passed
    recorder.flush(conn)
    assert passes() == 3
    recorder.sequencer_pass(0, 0.001)
    recorder.flush(conn, force=True)
    assert passes() == 4
