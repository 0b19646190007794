"""Helpers for webhook tests: a source database with a tenancy, endpoints on local receivers,
a worker running in a thread."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psycopg

from pyglue.sync import mappings
from pyglue.sync.worker import Worker, WorkerOptions
from pyglue.webhooks import delivery, endpoints
from tests import factories as f
from tests.webhook_receiver import Receiver

FAST = delivery.Options(batch_size=100, base_delay_s=0.05, max_delay_s=0.5, max_attempts=12, read_timeout_s=5)


@dataclass
class Hooks:
    dsn: str
    conn: psycopg.Connection  # autocommit, dict rows
    tenancy: uuid.UUID
    secrets: dict[str, str] = field(default_factory=dict)
    logs: list[str] = field(default_factory=list)

    def add(self, name: str, receiver: Receiver, tenancy=None, tables=None, shaped_by=None) -> str:
        _, secret = endpoints.add(self.conn, tenancy or self.tenancy, name, receiver.url, tables, allow_private=True,
                                  shaped_by=shaped_by)
        self.secrets[name] = secret
        return secret

    def sequence(self) -> None:
        f.sequence_all(self.conn)

    def status(self, name: str) -> dict:
        return next(r for r in endpoints.listing(self.conn) if r["name"] == name)

    def deliveries(self, name: str) -> list[dict]:
        return self.conn.execute(
            "select d.* from pyglue.webhook_deliveries d join pyglue.webhooks w on w.id = d.webhook_id"
            " where w.name = %s order by d.id", (name,)).fetchall()

    def run_until_idle(self, options: delivery.Options = FAST) -> None:
        Worker(self.dsn, mappings.load_all(), WorkerOptions(webhooks=options), log=self.logs.append).run(
            until_idle=True)

    @contextmanager
    def worker(self, options: delivery.Options = FAST) -> Iterator[Worker]:
        worker = Worker(self.dsn, mappings.load_all(), WorkerOptions(sequencer_interval_s=0.02, webhooks=options),
                        log=self.logs.append)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        try:
            yield worker
        finally:
            worker.stop.set()
            thread.join(timeout=30)
        assert not thread.is_alive()


def make_hooks(fresh_db, connect) -> Hooks:
    conn = connect(fresh_db, autocommit=True)
    return Hooks(fresh_db, conn, f.tenancy(conn))


def wait_for(predicate, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.03)
    raise AssertionError(f"{what} not reached within {timeout}s")
