"""Every named query in pyglue/queries plans against a migrated database (EXPLAIN, nothing runs)."""

from __future__ import annotations

import datetime as dt
import re
import uuid

import pytest
from psycopg.types.json import Jsonb

from pyglue import queries

SAMPLES = {"tenancy_id": uuid.uuid4(), "project": "demo", "users": 10, "busy_retry_s": 1.0,
           "pid": 1, "backend_start": None, "xact": "1", "project_id": "internal", "product_id": "free",
           "ours": [1, 2], "customer_type": "team", "customer_id": "t", "item_id": "seats",
           "at": dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc), "keep_s": 86400.0, "base_delay_s": 5.0,
           "max_delay_s": 3600.0, "lease_s": 300.0, "limit": 10, "id": 1, "error": "e",
           "metadata": Jsonb({}), "rows": Jsonb([]), "read_at": None,
           "from": None, "to": None, "before_at": None, "before_id": None,
           "purchase_kind": "subscription", "purchase_id": uuid.uuid4(), "quantity": 1, "amount": 1, "currency": "USD",
           "include_anonymous": False, "refund_id": 1, "stripe_refund_id": "re_1", "subscription_id": uuid.uuid4(),
           "worker": None, "ttl_s": 60.0,
           "schemas": ["pyglue", "app", "billing"], "stamp": "12:00:00", "display_name": "Demo", "names": ["a"],
           "deleted": [uuid.uuid4()], "added": uuid.uuid4(), "content": Jsonb({}), "team_id": uuid.uuid4(),
           "projects": ["demo"]}
SAMPLES |= {"tables": ["app.users"], "ignore_backoff": False, "ids": [1, 2]}  # webhooks
NAMES = sorted(p.stem for p in queries.FOLDER.glob("*.sql"))


# queries that run in a sync target: planned against a table of the target's shape
TARGET_SIDE = {"demo_arrived": "create table public.users (id uuid primary key, display_name text)"}


@pytest.mark.parametrize("name", NAMES)
def test_named_query_plans(conn, name):
    text = queries.load(name)
    if name in TARGET_SIDE:
        conn.execute(TARGET_SIDE[name])  # rolled back with the test
    params = {p: SAMPLES[p] for p in re.findall(r"%\((\w+)\)s", text)}
    plan = conn.execute("explain " + text, params).fetchall()
    assert plan, name


def test_the_folder_has_the_queries_the_code_loads():
    assert {"demo_tenancy", "enabled_targets", "list_targets", "schedule_target_retry"} <= set(NAMES)
