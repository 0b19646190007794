"""Webhook benchmark (issue 16): events/s delivered to a local receiver, and change ->
delivery latency at ~1,000 changes/s, each beside the sync path measured in the same run.

    .venv/bin/python -m perf.bench_webhooks [--users 20000] [--latency-seconds 15] [--batch 500]
                                            [--server-dsn DSN]

Runs on the embedded server under .pyglue/bench (or the superuser --server-dsn, e.g. the
Debian cluster), in a source database (pyglue_bench_webhooks, migrated) and a target
database, both dropped and recreated. The receiver is a separate process
(`python -m perf.bench_webhooks --receiver PORT`: http.server on 127.0.0.1) that parses
each POST, counts its events and notes when each latency marker first arrived.

1. seed one tenancy (perf/seed-sync-tenancy.sql) and sequence it all;
2. webhooks: an endpoint subscribed to app.users, its cursor rewound to 0, delivered by
   pyglue.webhooks.delivery.deliver_tenancy until caught up (batches of --batch, and of
   100); the receiver's count must equal the users;
3. sync baseline: a target with the users mapping synced until caught up (fetch + apply of
   the same rows);
4. latency: a Worker thread follows the tenancy while a writer commits 10 renames every
   10 ms (each user once, with its own marker); once with only the target enabled (the
   sync path: a poller reads the target every ~5 ms), once with only the endpoint (the
   receiver notes arrival). Latency is the writer's statement done (the source server's
   clock, just before the commit) -> seen (time.time() in the receiver: the same machine's
   clock).
Prints tables and rewrites the bench_webhooks block of perf/RESULTS.md.
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import click
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from perf import debian_cluster
from perf.bench_sequencer import BENCH_HOME, Line, Timing, format_table, machine_facts, psql_path, run, write_block
from perf.bench_sync import (BATCH_CHANGES, BATCH_EVERY_S, SEED, TENANCY, Latency, MarkerBoard, poll_target,
                             small_table, wait_until, write_changes)
from pyglue import capture, db, embedded, migrate, paths
from pyglue.sync import engine, mappings, targets
from pyglue.sync.worker import Worker, WorkerOptions
from pyglue.webhooks import delivery, endpoints

SOURCE_DB, TARGET_DB = "pyglue_bench_webhooks", "pyglue_bench_webhooks_target"
HOOK = "bench"
BEGIN, END = "<!-- bench_webhooks:begin -->", "<!-- bench_webhooks:end -->"
HEADING = "## Webhooks"


# --- the receiver process ---------------------------------------------------------------


def serve(port: int) -> None:
    """Count events; note the first arrival (time.time()) of each display name 'lat-…'."""
    stats = {"events": 0, "requests": 0, "markers": {}}
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall

        def do_POST(self):
            body = self.rfile.read(int(self.headers["content-length"]))
            at = time.time()
            events = json.loads(body)["data"]["events"]
            with lock:
                stats["events"] += len(events)
                stats["requests"] += 1
                for e in events:
                    name = (e["row"] or {}).get("display_name") or ""
                    if name.startswith("lat-"):
                        stats["markers"].setdefault(name, at)
            self._reply(b"ok")

        def do_GET(self):
            with lock:
                self._reply(json.dumps(stats).encode())
                if self.path == "/reset":
                    stats.update(events=0, requests=0, markers={})

        def _reply(self, data: bytes) -> None:
            self.send_response(200)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def receiver_stats(port: int, reset: bool = False) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/{'reset' if reset else 'stats'}", timeout=10) as r:
        return json.loads(r.read())


# --- set-up -----------------------------------------------------------------------------


def fresh_databases(server_dsn: str) -> tuple[str, str]:
    with db.connect(server_dsn, autocommit=True) as conn:
        for name in (SOURCE_DB, TARGET_DB):
            run(conn, "drop_database", database=name)
            run(conn, "create_database", database=name)
    source = make_conninfo(server_dsn, dbname=SOURCE_DB)
    migrate.migrate(source)
    return source, make_conninfo(server_dsn, dbname=TARGET_DB)


def seed(dsn: str, users: int) -> None:
    subprocess.run([psql_path(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-v", f"users={users}", "-d", dsn, "-f",
                    str(SEED)], check=True, stdout=subprocess.DEVNULL)


# --- measurements -----------------------------------------------------------------------


def measure_webhooks(source_dsn: str, port: int, users: int, batch: int) -> Timing:
    """Deliver the whole users backlog from cursor 0; the receiver must count every user."""
    options = delivery.Options(batch_size=batch, max_batches=10**7)
    with db.connect(source_dsn, autocommit=True) as conn:
        run(conn, "webhook_rewind", {"name": HOOK})
    receiver_stats(port, reset=True)
    clients = delivery.Clients(options)
    try:
        with engine.source_connection(source_dsn) as source:
            start = time.perf_counter()
            rounds = 0
            while True:
                result = delivery.deliver_tenancy(source, TENANCY, clients, options)
                rounds += 1
                bad = [e for e in result.endpoints if e.error]
                if bad:
                    raise click.ClickException(f"delivery failed: {bad[0].error}")
                if result.events == 0:
                    break
            seconds = time.perf_counter() - start
    finally:
        clients.close()
    got = receiver_stats(port)
    if got["events"] != users:
        raise click.ClickException(f"the receiver got {got['events']:,} events, expected {users:,}")
    return Timing(users, seconds, got["requests"])


def measure_sync(source_dsn: str, target_dsn: str, users: int) -> Timing:
    with db.connect(source_dsn, autocommit=True) as conn:
        targets.add(conn, TENANCY, "bench", target_dsn)
    chosen = mappings.select(mappings.load_all(), ["users"])
    start = time.perf_counter()
    result = engine.sync_until_caught_up(source_dsn, TENANCY, chosen, engine.Options(page_size=5000))
    seconds = time.perf_counter() - start
    if result.failed or result.rows != users:
        raise click.ClickException(f"sync applied {result.rows:,} rows, expected {users:,}: {result.failed}")
    return Timing(users, seconds)


def measure_latency(source_dsn: str, target_dsn: str, port: int, seconds: float, path: str, first_marker: int,
                    user_ids: list) -> Latency:
    """path 'sync': only the target enabled, seen = the poller; 'webhooks': only the endpoint, seen = the receiver."""
    with db.connect(source_dsn, autocommit=True) as conn:
        targets.set_enabled(conn, TENANCY, "bench", path == "sync")
        endpoints.set_enabled(conn, TENANCY, HOOK, path == "webhooks")
    log: list[str] = []
    hooks = delivery.Options(batch_size=500)
    worker = Worker(source_dsn, mappings.select(mappings.load_all(), ["users"]),
                    WorkerOptions(sequencer_interval_s=0.05, webhooks=hooks), log=log.append)
    board, stop = MarkerBoard(), threading.Event()
    worker_thread = threading.Thread(target=worker.run, daemon=True)
    poller = None
    if path == "sync":
        poller = threading.Thread(target=poll_target, args=(target_dsn, board, stop), daemon=True)
    worker_thread.start()
    if poller:
        poller.start()
    try:
        with db.connect(source_dsn, autocommit=True) as conn:
            def caught_up() -> bool:  # the changes of earlier steps are handled first
                if run(conn, "queued_requests").fetchone()["n"]:
                    return False
                where = run(conn, "webhook_cursor", {"name": HOOK}).fetchone()
                return path == "sync" or where["cursor"] >= where["handed_out"]

            if not wait_until(caught_up, 300):
                raise click.ClickException(f"the worker did not catch up within 300 s: {log[-3:]}")
        receiver_stats(port, reset=True)
        changes, writer_s = write_changes(source_dsn, user_ids, board, seconds, first_marker=first_marker)
        if path == "sync":
            wait_until(lambda: not board.pending(), 60)
            seen = board.seen
        else:
            wait_until(lambda: len(receiver_stats(port)["markers"]) >= changes, 60, step_s=0.2)
            seen = receiver_stats(port)["markers"]
    finally:
        stop.set()
        worker.stop.set()
        if poller:
            poller.join(10)
        worker_thread.join(60)
    samples = [(seen[m] - t) * 1000 for m, t in board.committed.items() if m in seen]
    return Latency(changes, len(samples), writer_s, samples)


# --- report -----------------------------------------------------------------------------


def report(facts: dict, users: int, lines: list[Line], latencies: dict[str, Latency], markdown: bool,
           command: str) -> str:
    parts = []
    if markdown:
        now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        parts += [BEGIN, "<!-- generated by perf/bench_webhooks.py: edits between these markers are overwritten -->",
                  f"### Latest run: {now}", "", f"`{command}`", "", *(f"- **{k}**: `{v}`" for k, v in facts.items()),
                  f"- **data**: one tenancy of {users:,} users (perf/seed-sync-tenancy.sql); the endpoint subscribes"
                  " to app.users, the sync baseline is the users mapping into a target database on the same server", ""]
    parts += [format_table(lines, markdown), ""]
    rows = []
    for path, lat in latencies.items():
        s = lat.summary
        rows.append((path, f"{s['p50']:,.0f}", f"{s['p95']:,.0f}", f"{s['p99']:,.0f}", f"{s['max']:,.0f}",
                     f"{lat.seen:,} / {lat.committed:,}", f"{lat.committed / lat.seconds:,.0f}/s"))
    if len(latencies) == 2:
        w, s = latencies["webhooks"].summary, latencies["sync"].summary
        rows.append(("ratio webhooks / sync", f"{w['p50'] / s['p50']:.2f}", f"{w['p95'] / s['p95']:.2f}",
                     f"{w['p99'] / s['p99']:.2f}", "", "", ""))
    header = ("latency, change committed -> seen", "p50 ms", "p95 ms", "p99 ms", "max ms", "seen / committed",
              "writer rate")
    parts += [small_table(header, rows, markdown, aligns="lrrrrrr"), ""]
    if markdown:
        parts += ["Throughput ratios are the webhook events/s over the users mapping's sync rows/s of the same rows in "
                  "the same run (a sync also compacts each page to the last change per key and writes one upsert; a "
                  f"webhook POSTs every event as JSON, signed). Latency: a Worker (sequencer_interval_s=0.05) while a "
                  f"writer commits {BATCH_CHANGES} renames every {BATCH_EVERY_S * 1000:g} ms; the webhook's time "
                  "includes the receiver parsing the batch.", END]
    return "\n".join(parts).rstrip("\n")


@click.command()
@click.option("--users", default=20_000, show_default=True, help="Users of the seeded tenancy.")
@click.option("--batch", default=500, show_default=True, help="Events per POST in the throughput run.")
@click.option("--latency-seconds", default=15.0, show_default=True, help="How long each latency writer runs.")
@click.option("--skip-latency", is_flag=True, help="Skip the latency measurements.")
@click.option("--server-dsn", default=None, help="Superuser DSN of the server to use (default: the embedded one).")
@click.option("--receiver", type=int, default=None, hidden=True, help="Run the receiver on this port (internal).")
def main(users: int, batch: int, latency_seconds: float, skip_latency: bool, server_dsn: str | None,
         receiver: int | None) -> None:
    """Benchmark webhook delivery against the sync path: throughput and latency."""
    if receiver is not None:
        serve(receiver)
        return
    given_server = bool(server_dsn)
    if given_server:
        debian_cluster.fetch_login(server_dsn)
    else:
        server_dsn = embedded.start(BENCH_HOME).dsn
    source_dsn, target_dsn = fresh_databases(server_dsn)
    click.echo(f"seeding {users:,} users …", err=True)
    seed(source_dsn, users)
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "perf.bench_webhooks", "--receiver", str(port)], cwd=paths.ROOT)
    try:
        wait_until(lambda: _up(port), 30)
        with db.connect(source_dsn, autocommit=True) as conn:
            capture.sequence_until_idle(conn, 50_000)
            endpoints.add(conn, TENANCY, HOOK, f"http://127.0.0.1:{port}/hook", ["app.users"], allow_private=True)
            user_ids = [r["id"] for r in run(conn, "tenancy_user_ids", {"tenancy_id": TENANCY})]
            facts = machine_facts(conn)
        facts["settings"] = facts["settings"].replace(" (pgserver defaults); autovacuum off on measured tables", "")
        click.echo(f"1/4 webhooks, batches of {batch} …", err=True)
        hooked = measure_webhooks(source_dsn, port, users, batch)
        click.echo("2/4 webhooks, batches of 100 …", err=True)
        small = measure_webhooks(source_dsn, port, users, 100)
        click.echo("3/4 sync of the same users …", err=True)
        synced = measure_sync(source_dsn, target_dsn, users)
        lines = [Line("sync: users mapping, fetch + apply (baseline)", synced),
                 Line(f"webhooks: events delivered, batches of {batch} ({hooked.calls:,} POSTs)", hooked, synced),
                 Line(f"webhooks: events delivered, batches of 100 ({small.calls:,} POSTs)", small, synced)]
        latencies = {}
        if not skip_latency:
            half = len(user_ids) // 2
            click.echo(f"4/4 latency, {latency_seconds:g} s each …", err=True)
            latencies["sync"] = measure_latency(source_dsn, target_dsn, port, latency_seconds, "sync", 1_000_000,
                                                user_ids[:half])
            latencies["webhooks"] = measure_latency(source_dsn, target_dsn, port, latency_seconds, "webhooks",
                                                    2_000_000, user_ids[half:])
    finally:
        process.terminate()
        process.wait(10)
    command = (f".venv/bin/python -m perf.bench_webhooks --users {users} --batch {batch}"
               + (" --skip-latency" if skip_latency else f" --latency-seconds {latency_seconds:g}")
               + (" --server-dsn '…'" if given_server else ""))
    click.echo(report(facts, users, lines, latencies, markdown=False, command=command))
    write_block(BEGIN, END, report(facts, users, lines, latencies, markdown=True, command=command), HEADING)
    click.echo("\nwrote perf/RESULTS.md", err=True)


def _up(port: int) -> bool:
    try:
        receiver_stats(port)
        return True
    except OSError:
        return False


def free_port() -> int:
    """A free loopback port (closed again before the receiver binds it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    main()
