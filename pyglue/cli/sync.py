"""`pyglue targets …`, `pyglue sync --tenant`, `pyglue status`, `pyglue worker`."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import click

from pyglue import db
from pyglue.cli import FiniteFloatRange
from pyglue.errors import PyglueError
from pyglue.progress import Progress
from pyglue.sync import engine, mappings, targets, verify

TENANT = click.option("--tenant", "tenant", type=click.UUID, required=True, help="Tenancy id (uuid).")
MAPPINGS_DIR = click.option("--mappings-dir", "mappings_dirs", multiple=True,
                            type=click.Path(exists=True, file_okay=False, path_type=Path),
                            help="Extra folder of mapping templates (repeatable; also $PYGLUE_MAPPINGS_PATH).")


# Upper bounds keep every value a usage error here rather than a database error recorded as
# a target's failure (Postgres's statement_timeout is an int4 of milliseconds, a page limit an int8).
STATEMENT_TIMEOUT = click.option("--statement-timeout", type=click.IntRange(min=1, max=86_400_000), default=30000,
                                 show_default=True, help="Milliseconds a mapping's fetch of one page may run"
                                                         " (at most a day).")
PAGE_SIZE = click.option("--page-size", type=click.IntRange(min=1, max=1_000_000), default=5000, show_default=True,
                         help="Rows per page (at most 1,000,000); each page is one target transaction.")


@click.group("targets")
def targets_group() -> None:
    """Manage the external databases tenancies sync into."""


@targets_group.command("add")
@TENANT
@click.option("--name", required=True, help="Target name, unique within the tenancy.")
@click.option("--dsn", "target_dsn", required=True, help="Connection string of the target database.")
@click.pass_obj
def targets_add(obj, tenant: uuid.UUID, name: str, target_dsn: str) -> None:
    """Add a target and queue its first sync."""
    with db.connect(obj.dsn) as conn:
        target_id = targets.add(conn, tenant, name, target_dsn)
    click.echo(f"target {name} (id {target_id}) added for tenancy {tenant}")


@targets_group.command("list")
@click.option("--tenant", type=click.UUID, help="Only this tenancy's targets.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def targets_list(obj, tenant: uuid.UUID | None, as_json: bool) -> None:
    """List targets (connection strings are never printed)."""
    with db.connect(obj.dsn) as conn:
        if tenant is not None:
            targets.require_tenancy(conn, tenant)
        rows = targets.listing(conn, tenant)
    if as_json:
        click.echo(json.dumps(rows, default=str))
        return
    for r in rows:
        state = "enabled" if r["enabled"] else "disabled"
        error = f"  last error: {r['last_error']}" if r["last_error"] else ""
        click.echo(f"{r['tenancy_id']}  {r['name']:<16} {state:<8} {r['where']}{error}")


def _toggle(command_name: str, enabled: bool, doc: str):
    @targets_group.command(command_name, help=doc)
    @TENANT
    @click.option("--name", required=True, help="Target name.")
    @click.pass_obj
    def command(obj, tenant: uuid.UUID, name: str) -> None:
        with db.connect(obj.dsn) as conn:
            targets.require_tenancy(conn, tenant)
            targets.set_enabled(conn, tenant, name, enabled)
        click.echo(f"target {name} {'enabled' if enabled else 'disabled'}")

    return command


targets_enable = _toggle("enable", True, "Resume syncing into a target (clears its backoff).")
targets_disable = _toggle("disable", False, "Stop syncing into a target; changes wait, nothing is lost.")


@targets_group.command("remove")
@TENANT
@click.option("--name", required=True, help="Target name.")
@click.pass_obj
def targets_remove(obj, tenant: uuid.UUID, name: str) -> None:
    """Forget a target (its database keeps the data)."""
    with db.connect(obj.dsn) as conn:
        targets.require_tenancy(conn, tenant)
        targets.remove(conn, tenant, name)
    click.echo(f"target {name} removed")


@targets_group.command("verify")
@TENANT
@click.option("--repair", is_flag=True,
              help="Re-send the differing rows (upsert lost and stale, delete extra) under the sync lock.")
@click.option("--mapping", "mapping_names", multiple=True, help="Only these mappings (repeatable).")
@MAPPINGS_DIR
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def targets_verify(obj, tenant: uuid.UUID, repair: bool, mapping_names: tuple[str, ...],
                   mappings_dirs: tuple[Path, ...], as_json: bool) -> None:
    """Compare each enabled target's tables with what the mappings compute from the source:
    lost, stale and extra rows (changes not synced yet are pending, not differences).
    Exit 1 if a table differs (and --repair was not given) or a target failed."""
    chosen = mappings.select(mappings.load_all(list(mappings_dirs)), list(mapping_names))
    result = verify.verify_tenancy(obj.dsn, tenant, chosen, verify.VerifyOptions(repair=repair))
    if as_json:
        click.echo(json.dumps(result.as_dict()))
    else:
        for line in result.lines():
            click.echo(line)
    if problem := result.problem():
        raise PyglueError(problem)


@click.command("sync")
@TENANT
@click.option("--mapping", "mapping_names", multiple=True, help="Only these mappings (repeatable).")
@MAPPINGS_DIR
@PAGE_SIZE
@STATEMENT_TIMEOUT
@click.option("--lock-wait", type=FiniteFloatRange(min=0.1, max=3600), default=10.0, show_default=True,
              help="Seconds to wait for a target another sync is writing to before giving up on it.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def sync_cmd(obj, tenant: uuid.UUID, mapping_names: tuple[str, ...], mappings_dirs: tuple[Path, ...],
             page_size: int, statement_timeout: int, lock_wait: float, as_json: bool) -> None:
    """Sequence and sync one tenancy's targets until caught up; exit 1 if a target failed or was busy."""
    chosen = mappings.select(mappings.load_all(list(mappings_dirs)), list(mapping_names))
    with db.connect(obj.dsn) as conn:
        targets.require_tenancy(conn, tenant)
        backlog = targets.backlog(conn, tenant)
    with Progress(backlog, "syncing", enabled=not as_json) as progress:
        result = engine.sync_until_caught_up(obj.dsn, tenant, chosen,
                                             engine.Options(page_size=page_size, ignore_backoff=True,
                                                            statement_timeout_ms=statement_timeout,
                                                            lock_timeout_s=lock_wait,
                                                            on_rows=progress.advance))
    if as_json:
        click.echo(json.dumps({"tenancy_id": str(tenant), "sync_disabled": result.sync_disabled,
                               "targets": [t.__dict__ for t in result.targets]}))
    else:
        if not result.targets:
            click.echo(f"tenancy {tenant} has no enabled sync targets")
        for t in result.targets:
            click.echo(f"{t.name}: {t.rows} row(s) applied" + (f", FAILED: {t.error}" if t.error else "")
                       + (f", NOT SYNCED: busy, {t.skipped}" if t.busy else ""))
        if result.sync_disabled:
            click.echo("sync is off in the fusebox; nothing applied")
    if result.failed:
        first = result.failed[0]
        raise PyglueError(f"target {first.name!r} of tenancy {tenant} failed: {first.error}")
    if busy := [t for t in result.targets if t.busy]:
        raise PyglueError(f"target {busy[0].name!r} of tenancy {tenant} was busy for {lock_wait:g}s "
                          "(another sync holds it); not synced, try again")


@click.command("status")
@click.option("--tenant", type=click.UUID, help="Only this tenancy.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def status_cmd(obj, tenant: uuid.UUID | None, as_json: bool) -> None:
    """Per target and mapping: pending rows, cursor, lag (age of the oldest change not yet
    applied), whether it is failing (and the last error), queue health."""
    with db.connect(obj.dsn) as conn:
        if tenant is not None:
            targets.require_tenancy(conn, tenant)
        rows = targets.status(conn, tenant)
    if as_json:
        click.echo(json.dumps(rows, default=str))
        return
    if not rows:
        click.echo("no sync targets")
    for r in rows:
        line = (f"{r['tenancy_id']} {r['target_name']:<14} {r['mapping_name']:<22} pending {r['pending_rows']:>8}"
                f"  cursor {r['last_synced_sequence_id']:>10}  queue {r['queue_depth']} dead {r['dead_requests']}")
        if r["oldest_unapplied_age"] is not None:
            line += f"  lag {r['oldest_unapplied_age'].total_seconds():.1f}s"
        if r["failing"]:
            line += f"  FAILING since {r['last_error_at']:%Y-%m-%d %H:%M:%S%z}: {r['last_error']}"
        elif r["last_error"]:
            line += f"  (recovered; last error at {r['last_error_at']:%Y-%m-%d %H:%M:%S%z})"
        click.echo(line)


@click.command("worker")
@MAPPINGS_DIR
@click.option("--concurrency", type=click.IntRange(min=1, max=64), default=2, show_default=True,
              help="Tenancies synced at once by this process.")
@click.option("--lease", type=FiniteFloatRange(min=0.1, max=86400), default=60.0, show_default=True,
              help="Seconds a claim lasts without renewal (renewed every page; at most a day);"
                   " a killed worker's claims return after it.")
@click.option("--sequencer-interval", type=FiniteFloatRange(min=0.01, max=3600), default=0.1, show_default=True,
              help="Seconds between sequencer passes, unless one stamps a full batch (at most an hour).")
@PAGE_SIZE
@STATEMENT_TIMEOUT
@click.option("--until-idle", is_flag=True, help="Exit when the queue is empty and nothing is flagged.")
@click.option("--webhook-batch", type=click.IntRange(min=1, max=10000), default=500, show_default=True,
              help="Events per webhook POST.")
@click.option("--webhook-attempts", type=click.IntRange(min=1, max=1000), default=12, show_default=True,
              help="Failed attempts of one batch before the endpoint is parked.")
@click.option("--webhook-backoff", type=FiniteFloatRange(min=0.001, max=3600), default=1.0, show_default=True,
              help="Seconds before the first webhook retry; doubles per attempt, with jitter.")
@click.option("--webhook-max-backoff", type=FiniteFloatRange(min=0.001, max=86400), default=300.0,
              show_default=True, help="Longest wait between webhook retries (also caps Retry-After).")
@click.option("--webhook-timeout", type=FiniteFloatRange(min=0.1, max=600), default=10.0, show_default=True,
              help="Seconds to wait for a webhook response (connect: at most 5).")
@click.option("--metrics-port", type=click.IntRange(min=1, max=65535), default=None,
              help="Serve Prometheus metrics (this worker's counters, the queue, lag) on this port at /metrics.")
@click.option("--metrics-host", default="127.0.0.1", show_default=True, help="Address the metrics port binds.")
@click.pass_obj
def worker_cmd(obj, mappings_dirs: tuple[Path, ...], concurrency: int, lease: float, sequencer_interval: float,
               page_size: int, statement_timeout: int, until_idle: bool, webhook_batch: int, webhook_attempts: int,
               webhook_backoff: float, webhook_max_backoff: float, webhook_timeout: float,
               metrics_port: int | None, metrics_host: str) -> None:
    """Sequence changes, sync every tenancy's targets and deliver its webhooks until stopped
    (SIGTERM finishes the page or batch)."""
    import contextlib
    import signal

    from pyglue import capture
    from pyglue.sync.worker import Worker, WorkerOptions
    from pyglue.webhooks import delivery

    hooks = delivery.Options(batch_size=webhook_batch, max_attempts=webhook_attempts, base_delay_s=webhook_backoff,
                             max_delay_s=webhook_max_backoff, read_timeout_s=webhook_timeout,
                             connect_timeout_s=min(5.0, webhook_timeout), statement_timeout_ms=statement_timeout)

    # An unmigrated database fails here, as one line before "worker started" is logged; an
    # unreachable one is left to the worker, which waits for it (or with --until-idle says so).
    with contextlib.suppress(PyglueError), db.connect(obj.dsn) as conn:
        capture.fusebox(conn)
    worker = Worker(obj.dsn, mappings.load_all(list(mappings_dirs)),
                    WorkerOptions(concurrency=concurrency, lease_s=lease, sequencer_interval_s=sequencer_interval,
                                  page_size=page_size, statement_timeout_ms=statement_timeout, webhooks=hooks),
                    log=lambda line: click.echo(line, err=True))
    if metrics_port is not None:
        from pyglue import telemetry

        telemetry.serve(obj.dsn, metrics_host, metrics_port, worker=worker.id)
        click.echo(f"worker {worker.id}: metrics on http://{metrics_host}:{metrics_port}/metrics", err=True)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: worker.stop.set())
    worker.run(until_idle=until_idle)
