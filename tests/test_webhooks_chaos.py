"""A worker killed with SIGKILL in the middle of webhook deliveries (issue 16): after restarts
every event has arrived at least once, and the receiver, dropping copies by event id (the
idempotency key), has each exactly once and in order."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from pyglue import paths
from tests import factories as f
from tests.webhook_receiver import Receiver
from tests.webhooking import make_hooks, wait_for

pytestmark = pytest.mark.slow


def worker_process(dsn: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pyglue", "--dsn", dsn, "worker", "--sequencer-interval", "0.02",
                             "--webhook-batch", "5", "--webhook-backoff", "0.05", "--webhook-max-backoff", "0.5"],
                            cwd=paths.ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_sigkill_mid_delivery_gives_at_least_once_and_exactly_once_after_dedup(fresh_db, connect):
    hooks = make_hooks(fresh_db, connect)
    receiver = Receiver(delay_s=0.3).up()  # each answer takes 0.3 s: a kill lands while one is in flight
    try:
        secret = hooks.add("main", receiver)
        users = [f.user(hooks.conn, hooks.tenancy, f"u{i:02}") for i in range(40)]
        kills = 0
        for kill_at in (2, 5):
            worker = worker_process(fresh_db)
            try:
                wait_for(lambda: receiver.count() >= kill_at, timeout=60, what=f"{kill_at} requests received")
                worker.send_signal(signal.SIGKILL)  # the receiver holds the request: its answer never arrives
                kills += 1
            finally:
                worker.communicate(timeout=30)  # (closes its pipe)
            assert worker.returncode == -signal.SIGKILL
        more = [f.user(hooks.conn, hooks.tenancy, f"v{i:02}") for i in range(5)]  # changes while no worker ran
        hooks.sequence()  # (in one pass the tombstone below would be stamped before these inserts)
        hooks.conn.execute("delete from app.users where id = %s", (users[0],))
        worker = worker_process(fresh_db)
        try:
            wait_for(lambda: hooks.status("main")["pending_events"] == 0 and receiver.count() > 0
                     and not hooks.conn.execute("select 1 from pyglue.webhooks where pending_batch_end is not null"
                                                ).fetchone(), timeout=90, what="everything delivered")
        finally:
            worker.send_signal(signal.SIGTERM)
            _, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
        assert secret not in err
    finally:
        receiver.down()

    received = receiver.all_events()
    seen: dict[str, dict] = {}
    for event in received:  # the receiver's deduplication by idempotency key
        seen.setdefault(event["id"], event)
    unique = list(seen.values())
    expected = [("insert", str(u)) for u in users + more] + [("delete", str(users[0]))]
    assert [(e["type"], e["key"]["id"]) for e in unique] == expected
    assert [e["sequence_id"] for e in unique] == sorted(e["sequence_id"] for e in unique)
    assert len(unique) == 46
    # each kill cut off a batch the receiver had taken but not answered: it came again
    assert len(received) - len(unique) >= kills
    assert all(r.verifies_with(secret) for r in receiver.requests)
