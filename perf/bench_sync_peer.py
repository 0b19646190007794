"""Tenant sync beside its peer, Postgres's built-in logical replication (issue 13).

    .venv/bin/python -m perf.bench_sync_peer [--users 1000000] [--server embedded|debian|both]
        [--page-size 20000] [--churn-seconds 15] [--repeats 3] [--skip-churn]

On each server (the embedded one under .pyglue/bench, restarted once with the settings of
perf/debian_cluster.py; Debian PostgreSQL 15 as the cluster that module owns), in databases
it drops and recreates: a source (migrated) with one tenancy of --users users and their
contact channels (perf/seed-sync-tenancy.sql: a primary email each, a phone for every third)
plus a second tenancy of a tenth the size (perf/mock-users.sql) that the peer's row filter
and pyglue's tenancy both leave out. Measured, one run, same rows, same server:

1. pyglue end to end from a fresh backlog: a worker (sequencer and syncs side by side) on rows
   nobody stamped, with an empty target database: until the target holds both mappings (a
   first sync loads each from a snapshot), and until the worker is idle (backlog stamped);
2. the peer: a publication of app.users and app.contact_channels with the tenancy as row
   filter, a subscription in another database, timed until both tables' initial copies
   are done (pg_subscription_rel all 'r');
3. pyglue initial sync of the same, already sequenced rows into a second empty target: the
   fair comparison with 2 (goal >= 1.0 of the peer's rows/s; 1 has the goal >= 0.5);
4. steady state, unless --skip-churn (autovacuum on again, after a VACUUM): a writer commits
   changes of distinct users (a batch due every 10 ms, over two connections, so that one
   slow commit does not make it miss the asked rate) for --churn-seconds: renames at ~1,000
   and ~10,000 changes/s (display_name: the app's statement trigger also rewrites each
   user's search row in app.user_search, which caps the writer on this machine), and
   avatar changes at ~10,000/s (profile_image_url: no search row). Each run starts after a
   VACUUM of the source tables (the runs before it left dead rows, and an autovacuum of a
   million rows in the middle of a run takes a core of this machine). A poller reads the
   target every ~5 ms for four changes of each batch (the first, the last, two between)
   and at the end checks that every change arrived; latency = the writer's statement done
   (just before its commit) -> first read in the target, both on the servers' clock, p50
   and p99 of the sampled changes, for pyglue (a Worker in a process of its own, as
   `pyglue worker` runs; the subscription disabled) and for the peer (no worker), and the
   drain: the last change's commit -> its arrival. Each system runs --repeats times per
   line, alternating with the other, and the line shows the run of median p99 beside every
   run's p99 (one 15 s run here spreads 4x). Beside them, the rate the same writer reaches
   with nothing replicating: the machine's own limit. Every run writes markers of its own
   ('r<n>-<k>') into users drawn afresh, so no marker of an earlier run can pass for its own.

Row counts of every target are checked against the source. Writes the bench_sync_peer block
of perf/RESULTS.md.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing
import random
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import click
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import tuple_row

from perf import debian_cluster, logical_replication
from perf.bench_metrics import psql
from perf.bench_sequencer import BENCH_HOME, PERF, machine_facts, run, write_block
from perf.bench_sync import SEED, TENANCY, Latency, MarkerBoard, poll_target, wait_until, write_changes
from pyglue import capture, db, embedded, migrate
from pyglue.sync import engine, mappings, targets
from pyglue.sync.worker import Worker, WorkerOptions

DBS = {"source": "pyglue_peer_source", "e2e": "pyglue_peer_e2e", "initial": "pyglue_peer_initial",
       "peer": "pyglue_peer_lr"}
PEER = "pyglue_peer"
OTHER_TENANCY = uuid.UUID("00000000-0000-4000-8000-0000000000e7")
MAPPINGS = ["users", "contact_channels"]
TABLES = (("app", "users"), ("app", "contact_channels"))  # the source tables the mappings read
EVERY_S = 0.010
SAMPLED_PER_BATCH = 4  # changes of each batch whose latency is measured; all are checked at the end
# The writer's connections. One alone must finish each commit within EVERY_S; at 10k/s its
# 100-row commit takes 7-9 ms here, so whatever CPU the replication took made that writer miss
# the asked rate (and so hid a replication that fell behind): two keep the rate when they can.
WRITERS = 2
GOALS = {"initial": 1.0, "e2e": 0.5}
P99_GOAL_MS = 500.0
BEGIN, END = "<!-- bench_sync_peer:begin -->", "<!-- bench_sync_peer:end -->"
HEADING = "## Tenant sync beside logical replication"


@dataclass(frozen=True)
class Change:
    """A steady-state writer's change: a marker written into one column of app.users."""
    name: str
    column: str


RENAMES = Change("renames", "display_name")  # the app's search-row trigger rewrites app.user_search too
AVATARS = Change("avatar changes", "profile_image_url")  # no search row: the sync's own cost shows
STEADY = ((RENAMES, 1_000), (RENAMES, 10_000), (AVATARS, 10_000))


@dataclass
class Churn:
    change: Change
    rate: int
    system: str
    latency: Latency
    drain_s: float

    @property
    def reached(self) -> float:
        return self.latency.committed / self.latency.seconds


@dataclass
class ServerRun:
    label: str
    facts: dict
    users: int
    channels: int
    e2e_loaded_s: float = 0.0
    e2e_idle_s: float = 0.0
    peer_s: float = 0.0
    initial_s: float = 0.0
    churn: list[Churn] = field(default_factory=list)
    alone: dict[tuple[Change, int], float] = field(default_factory=dict)  # (change, rate asked) -> changes/s alone

    @property
    def rows(self) -> int:
        return self.users + self.channels


def embedded_server() -> str:
    """The bench's embedded server, restarted once with the Debian bench cluster's settings
    (perf/debian_cluster.py: wal_level=logical, 2GB of shared buffers: this VM's page cache
    does not keep the data files, so what shared_buffers misses is read from disk)."""
    server = embedded.start(BENCH_HOME)
    with db.connect(server.dsn, autocommit=True, row_factory=tuple_row) as conn:
        current = dict(conn.execute("select name, current_setting(name) from unnest(%s::text[]) as name",
                                    (list(debian_cluster.SETTINGS),)).fetchall())
        changed = {k: v for k, v in debian_cluster.SETTINGS.items() if current[k] != v}
        for name, value in changed.items():
            conn.execute(sql.SQL("alter system set {} = {}").format(sql.Identifier(name), sql.Literal(value)))
    if changed:
        # a restart with the options the server was started with (postmaster.opts)
        embedded.pg_ctl(server.data_dir, "-w", "-m", "fast", "restart")
    return server.dsn


def fresh_databases(server_dsn: str) -> dict[str, str]:
    dsns = {role: make_conninfo(server_dsn, dbname=name) for role, name in DBS.items()}
    with db.connect(server_dsn, autocommit=True) as conn:
        if conn.execute("select 1 from pg_database where datname = %s", (DBS["source"],)).fetchone():
            logical_replication.drop(dsns["source"], dsns["peer"], PEER)
        for name in DBS.values():
            run(conn, "drop_database", database=name)
            run(conn, "create_database", database=name)
    migrate.migrate(dsns["source"])
    migrate.migrate(dsns["peer"])  # the subscriber's tables: the source's columns
    return dsns


def settle(conn: psycopg.Connection) -> None:
    for table in (*TABLES, ("app", "user_search")):  # renames rewrite search rows too
        run(conn, "vacuum_analyze", table=table)
    run(conn, "checkpoint")


def counts(dsn: str, schema: str, tenancy_column: bool) -> dict[str, int]:
    with db.connect(dsn, autocommit=True, row_factory=tuple_row) as conn:
        where = " where tenancy_id = %s" if tenancy_column else ""
        return {t: conn.execute(f"select count(*) from {schema}.{t}{where}",
                                (TENANCY,) if tenancy_column else None).fetchone()[0]
                for t in ("users", "contact_channels")}


def check(expected: dict[str, int], found: dict[str, int], what: str) -> None:
    if found != expected:
        raise click.ClickException(f"{what}: target rows {found} differ from the source's {expected}")


def pyglue_sync(source_dsn: str, chosen, page_size: int) -> float:
    started = time.perf_counter()
    result = engine.sync_until_caught_up(source_dsn, TENANCY, chosen,
                                         engine.Options(page_size=page_size, ignore_backoff=True))
    if result.failed or result.sync_disabled or result.stopped:
        raise click.ClickException(f"sync did not finish: {result}")
    return time.perf_counter() - started


def worker_from_backlog(source_dsn: str, target_dsn: str, chosen, page_size: int) -> tuple[float, float]:
    """A worker (its sequencer beside its syncs, as in production) started on rows nobody has
    stamped: seconds until the target holds both tables (each first sync lands in one
    transaction, so a table with a row holds them all), and until the worker is idle (every
    row stamped, the pages after the snapshots applied)."""
    worker = Worker(source_dsn, chosen, WorkerOptions(sequencer_interval_s=0.05, sequencer_batch=50_000,
                                                      page_size=page_size))
    thread = threading.Thread(target=worker.run, kwargs={"until_idle": True}, daemon=True)
    started = time.perf_counter()
    thread.start()
    with db.connect(target_dsn, autocommit=True, row_factory=tuple_row) as target:
        def loaded() -> bool:
            try:
                return target.execute("select exists (select 1 from users) and exists (select 1 from contact_channels)"
                                      ).fetchone()[0]
            except psycopg.errors.UndefinedTable:
                return False
        if not wait_until(loaded, 3600, 0.05):
            raise click.ClickException("the target did not fill within an hour")
    loaded_s = time.perf_counter() - started
    thread.join(7200)
    if thread.is_alive():
        worker.stop.set()
        raise click.ClickException("the worker was not idle within two hours")
    return loaded_s, time.perf_counter() - started


def changes_per_commit(rate: int) -> int:
    """Changes per writer commit for rate changes/s, one commit every EVERY_S."""
    return max(1, round(rate * EVERY_S))


def churn(source_dsn: str, target_dsn: str, table: tuple[str, str], change: Change, user_ids: list[uuid.UUID],
          rate: int, seconds: float, worker: Callable[[], multiprocessing.Process] | None,
          marker_prefix: str) -> tuple[Latency, float]:
    """Writer of change at rate changes/s for seconds, poller on the target's table, and the
    worker (if any) in a process of its own, as in production: (latency, drain seconds)."""
    batch = changes_per_commit(rate)
    board, stop = MarkerBoard(per_batch=SAMPLED_PER_BATCH), threading.Event()
    poller = threading.Thread(target=poll_target, args=(target_dsn, board, stop, table, change.column), daemon=True)
    poller.start()
    process = worker() if worker is not None else None
    try:
        warm, user_ids = user_ids[:batch], user_ids[batch:]
        write_changes(source_dsn, warm, board, 0.001, first_marker=0, batch_changes=batch, column=change.column,
                      marker_prefix=marker_prefix)
        if not wait_until(lambda: not board.pending(), 120):
            raise click.ClickException(f"{table}: warm-up changes not seen within 120 s")
        board.clear()
        changes, writer_s = write_changes(source_dsn, user_ids, board, seconds, first_marker=batch,
                                          batch_changes=batch, every_s=EVERY_S, column=change.column,
                                          connections=WRITERS, marker_prefix=marker_prefix)
        wait_until(lambda: not board.pending(), 300)
        ended = max(board.committed.values())
        drain_s = max(board.seen.values(), default=ended) - ended
        lost = missing_changes(target_dsn, table, change.column, board.written)
        if lost:
            raise click.ClickException(f"{table}: {lost} of {changes} changes never arrived")
    finally:
        stop.set()
        if process is not None:
            process.terminate()  # SIGTERM: the worker finishes its page and stops
            process.join(60)
        poller.join(60)
    samples = board.samples_ms()
    return Latency(changes, len(samples), writer_s, samples), max(drain_s, 0.0)


def missing_changes(target_dsn: str, table: tuple[str, str], column: str, written: list[tuple[uuid.UUID, str]],
                    timeout_s: float = 60) -> int:
    """Of every change written (not only those the poller sampled), how many the target still
    lacks once timeout_s has passed (0 as soon as none is missing)."""
    ids, markers = [w[0] for w in written], [w[1] for w in written]
    with db.connect(target_dsn, autocommit=True) as conn:
        def count() -> int:
            return run(conn, "target_missing_markers", {"ids": ids, "markers": markers},
                       table=table, column=column).fetchone()["missing"]
        return 0 if wait_until(lambda: count() == 0, timeout_s, step_s=0.5) else count()


def writer_alone(source_dsn: str, change: Change, user_ids: list[uuid.UUID], marker_prefix: str, rate: int,
                 seconds: float) -> float:
    """The machine's capacity for the writer with nothing replicating: changes/s achieved."""
    changes, writer_s = write_changes(source_dsn, user_ids, MarkerBoard(), seconds, first_marker=0,
                                      batch_changes=changes_per_commit(rate), every_s=EVERY_S, column=change.column,
                                      connections=WRITERS, marker_prefix=marker_prefix)
    return changes / writer_s


def worker_process(source_dsn: str, chosen, page_size: int) -> Callable[[], multiprocessing.Process]:
    """Starts a Worker in a child process (so the writer and poller threads of the bench never
    share its interpreter lock), stopped by SIGTERM like `pyglue worker`."""
    def start() -> multiprocessing.Process:
        process = multiprocessing.get_context("spawn").Process(target=run_worker, args=(source_dsn, chosen, page_size),
                                                               name="bench-worker", daemon=True)
        process.start()
        return process
    return start


def run_worker(source_dsn: str, chosen, page_size: int) -> None:
    worker = Worker(source_dsn, chosen, WorkerOptions(sequencer_interval_s=0.05, page_size=page_size))
    signal.signal(signal.SIGTERM, lambda *_: worker.stop.set())
    worker.run()


def run_server(label: str, server_dsn: str, users: int, page_size: int, churn_seconds: float, repeats: int,
               skip_churn: bool) -> ServerRun:
    click.echo(f"[{label}] databases, seeding {users:,} users …", err=True)
    dsns = fresh_databases(server_dsn)
    if label == "Debian":
        debian_cluster.fetch_login(server_dsn)
    psql(dsns["source"], SEED, users=users)
    psql(dsns["source"], PERF / "mock-users.sql", users=max(users // 10, 10), tenancy=OTHER_TENANCY)
    chosen = mappings.select(mappings.load_all(), MAPPINGS)
    expected = counts(dsns["source"], "app", True)
    with db.connect(dsns["source"], autocommit=True, application_name="pyglue bench") as conn:
        facts = machine_facts(conn)
        for table in TABLES:
            run(conn, "autovacuum_off", table=table)
        out = ServerRun(label, facts, expected["users"], expected["contact_channels"])

        click.echo(f"[{label}] 1/4 pyglue end to end from a fresh backlog (a worker) …", err=True)
        targets.add(conn, TENANCY, "e2e", dsns["e2e"])
        settle(conn)
        out.e2e_loaded_s, out.e2e_idle_s = worker_from_backlog(dsns["source"], dsns["e2e"], chosen, page_size)
        check(expected, counts(dsns["e2e"], "public", False), "end to end")

        click.echo(f"[{label}] 2/4 logical replication initial copy …", err=True)
        settle(conn)
        logical_replication.publish(dsns["source"], PEER, TENANCY)
        out.peer_s = logical_replication.subscribe(dsns["source"], dsns["peer"], PEER)
        check(expected, counts(dsns["peer"], "app", True), "logical replication")

        click.echo(f"[{label}] 3/4 pyglue initial sync of sequenced rows …", err=True)
        targets.set_enabled(conn, TENANCY, "e2e", False)
        targets.add(conn, TENANCY, "initial", dsns["initial"])
        settle(conn)
        out.initial_s = pyglue_sync(dsns["source"], chosen, page_size)
        check(expected, counts(dsns["initial"], "public", False), "initial sync")

        if not skip_churn:
            user_ids = [r["id"] for r in run(conn, "tenancy_user_ids", {"tenancy_id": TENANCY})]
            numbers = iter(range(1, 10_000))
            for table in TABLES:
                run(conn, "autovacuum_on", table=table)  # the steady state runs as production does
            for change, rate in STEADY:
                need, what = int(rate * churn_seconds) + rate, f"{change.name} at {rate:,}/s"
                if need > len(user_ids):
                    raise click.ClickException(f"a steady-state run of {what} touches {need:,} distinct users; the"
                                               f" tenancy has {len(user_ids):,}: use more --users or fewer"
                                               " --churn-seconds")

                def draw() -> tuple[list[uuid.UUID], str]:
                    """The next run's users (distinct within it, drawn afresh) and marker prefix."""
                    n = next(numbers)
                    return random.Random(f"20261204 {n}").sample(user_ids, need), f"r{n}"

                logical_replication.set_enabled(dsns["peer"], PEER, False)
                click.echo(f"[{label}] 4/4 steady state, {what}: the writer alone …", err=True)
                settle(conn)
                out.alone[change, rate] = writer_alone(dsns["source"], change, *draw(), rate, churn_seconds)
                capture.sequence_until_idle(conn)  # its changes are not part of what follows
                for repeat in range(1, repeats + 1):
                    for system in ("pyglue", "logical replication"):
                        ids, prefix = draw()
                        settle(conn)  # each run from the same state: the dead rows of the one before vacuumed
                        click.echo(f"[{label}] 4/4 steady state, {what}: {system}, run {repeat} of {repeats} …",
                                   err=True)
                        if system == "pyglue":
                            logical_replication.set_enabled(dsns["peer"], PEER, False)
                            latency, drain = churn(dsns["source"], dsns["initial"], ("public", "users"), change, ids,
                                                   rate, churn_seconds,
                                                   worker_process(dsns["source"], chosen, page_size), prefix)
                        else:
                            logical_replication.set_enabled(dsns["peer"], PEER, True)
                            latency, drain = churn(dsns["source"], dsns["peer"], ("app", "users"), change, ids, rate,
                                                   churn_seconds, None, prefix)
                        out.churn.append(Churn(change, rate, system, latency, drain))
        logical_replication.drop(dsns["source"], dsns["peer"], PEER)
    return out


def ratio_line(measure: str, ours_s: float, peer_s: float, rows: int, goal: float) -> str:
    ratio = peer_s / ours_s
    return (f"| {measure} | {ours_s:.2f} s ({rows / ours_s:,.0f} rows/s) | {peer_s:.2f} s ({rows / peer_s:,.0f} rows/s)"
            f" | {ratio:.2f} | >= {goal:g} | {'met' if ratio >= goal else 'NOT met'} |")


def server_block(r: ServerRun) -> list[str]:
    lines = [f"#### {r.label}: {r.facts['postgres'].split(' on ')[0]}", "",
             f"- **settings**: `{r.facts['settings'].split(' (')[0]}`",
             f"- **data**: tenancy of {r.users:,} users + {r.channels:,} contact channels ({r.rows:,} rows),"
             f" and a second tenancy of {max(r.users // 10, 10):,} users that neither copies", "",
             "| measure | pyglue | logical replication | ratio (pyglue rows/s ÷ peer's) | goal | verdict |",
             "|---|--:|--:|--:|---|---|",
             ratio_line("initial sync of sequenced rows (users, contact_channels)", r.initial_s, r.peer_s, r.rows,
                        GOALS["initial"]),
             ratio_line("end to end from a fresh backlog: a worker until the target holds every row",
                        r.e2e_loaded_s, r.peer_s, r.rows, GOALS["e2e"]),
             f"| the same worker until idle: both tenancies' backlog stamped, the pages after the snapshots applied |"
             f" {r.e2e_idle_s:.2f} s | | | no goal | |",
             ""]
    if r.churn:
        lines += ["| steady state (the run of median p99) | achieved | p50 | p99 | p99 of each run | max |"
                  " drain after the writer stops | p99 goal |",
                  "|---|--:|--:|--:|--:|--:|--:|---|"]
        for (change, rate), reached in r.alone.items():
            lines.append(f"| the writer alone (nothing replicating), {change.name}, {rate:,}/s asked |"
                         f" {reached:,.0f}/s | | | | | | |")
        for key in dict.fromkeys((c.change, c.rate, c.system) for c in r.churn):
            runs = sorted((c for c in r.churn if (c.change, c.rate, c.system) == key),
                          key=lambda c: c.latency.summary["p99"])
            c = runs[(len(runs) - 1) // 2]  # the median run (the lower one of an even count)
            s = c.latency.summary
            goal = "" if c.system != "pyglue" else (
                f"<= {P99_GOAL_MS:g} ms: {'met' if s['p99'] <= P99_GOAL_MS else 'NOT met'}"
                + (f" at the {c.reached:,.0f}/s reached, not the {c.rate:,}/s asked" if c.reached < 0.95 * c.rate
                   else ""))
            each = ", ".join(f"{x.latency.summary['p99']:,.0f}" for x in runs)
            lines.append(f"| {c.system}, {c.change.name}, {c.rate:,}/s asked | {c.reached:,.0f}/s |"
                         f" {s['p50']:,.0f} ms | {s['p99']:,.0f} ms | {each} ms | {s['max']:,.0f} ms |"
                         f" {c.drain_s:.2f} s | {goal} |")
        lines.append("")
    return lines


@click.command()
@click.option("--users", default=1_000_000, show_default=True, help="Users of the synced tenancy.")
@click.option("--server", type=click.Choice(["embedded", "debian", "both"]), default="both", show_default=True)
@click.option("--page-size", default=20_000, show_default=True, help="pyglue's page size.")
@click.option("--churn-seconds", default=15.0, show_default=True, help="How long each steady-state writer runs.")
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(min=1),
              help="Steady-state runs of each system per line (the run of median p99 is reported).")
@click.option("--skip-churn", is_flag=True, help="Only the initial copies.")
def main(users: int, server: str, page_size: int, churn_seconds: float, repeats: int, skip_churn: bool) -> None:
    """pyglue's tenant sync beside logical replication: initial copy, end to end, steady state."""
    runs = []
    command = (f"`.venv/bin/python -m perf.bench_sync_peer --users {users} --server {server} --page-size {page_size}"
               + (" --skip-churn`" if skip_churn else f" --churn-seconds {churn_seconds:g} --repeats {repeats}`"))
    if server in ("embedded", "both"):
        runs.append(run_server("embedded", embedded_server(), users, page_size, churn_seconds, repeats, skip_churn))
        write_results(runs, command)  # kept even if the next server fails
    if server in ("debian", "both"):
        runs.append(run_server("Debian", debian_cluster.ensure(), users, page_size, churn_seconds, repeats,
                               skip_churn))
        write_results(runs, command)


def write_results(runs: list[ServerRun], command: str) -> None:
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    facts = runs[0].facts
    block = [BEGIN, "<!-- generated by perf/bench_sync_peer.py: edits between these markers are overwritten -->",
             f"### Latest run: {now}", "", command, "",
             *(f"- **{k}**: `{v}`" for k, v in facts.items() if k not in ("postgres", "settings")), ""]
    for r in runs:
        block += server_block(r)
    block += ["Each ratio is measured in one run on one server: the peer's initial copy of the same rows (a"
              " publication with the tenancy as row filter, a subscription in another database of the server,"
              " until both tables are ready) beside pyglue's. The end-to-end lines start from rows that were"
              " inserted and never sequenced: a worker's first sync loads each mapping from a snapshot (no stamp"
              " needed) while its sequencer stamps both tenancies' backlog, whose pages then change nothing."
              " The initial-sync line runs `pyglue sync` on rows already stamped. Steady state: each system runs"
              " --repeats times per line, alternating with the other; a line shows its run of median p99 and"
              " every run's p99. Markers written into distinct users in batches due every 10 ms over two writer"
              " connections, as renames (display_name, which the app's trigger also copies into each user's"
              " search row, app.user_search) and as avatar changes"
              " (profile_image_url, no search row); latency from the writer's statement done (just before its"
              " commit) to the poller's read of the row in the target, both on the servers' clock.", END]
    text = "\n".join(block)
    write_block(BEGIN, END, text, HEADING)
    print(text, flush=True)


if __name__ == "__main__":
    main()
