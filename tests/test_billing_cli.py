"""`pyglue billing backfill-free-plans` and `pyglue billing regen`: batches with a commit
each, JSON summaries, one-line errors, and a run killed mid-way then re-run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
from click.testing import CliRunner
from psycopg.types.json import Jsonb

from pyglue import paths
from pyglue.cli import cli
from tests import factories as f
from tests.sessions import wait_for

FREE = {"display_name": "Free", "customer_type": "team", "product_line": "plans",
        "prices": {"free": {"amounts": {"USD": "0"}, "interval": [1, "month"]}}}


def invoke(dsn, *args):
    return CliRunner().invoke(cli, ["--dsn", dsn, *args])


def upsert(conn, tenancy, body, product_id="free") -> str:
    return conn.execute("select billing.upsert_product(%s, %s, %s) as v",
                        (tenancy, product_id, Jsonb(body))).fetchone()["v"]


def teams(conn, tenancy, n) -> None:
    conn.execute("insert into app.teams (tenancy_id, display_name) select %s, 'team ' || g"
                 " from generate_series(1, %s) g", (tenancy, n))


def plans(conn, tenancy) -> list[tuple]:
    """(team, version, status, quantity, source) of every subscription, and each team once."""
    return conn.execute(
        "select customer_id, product_version_id, status, quantity, creation_source from billing.subscriptions"
        " where tenancy_id = %s order by customer_id", (tenancy,)).fetchall()


def expected_plans(conn, tenancy, version) -> list[tuple]:
    return [{"customer_id": str(r["id"]), "product_version_id": version, "status": "active", "quantity": 1,
             "creation_source": "api_grant"}
            for r in conn.execute("select id from app.teams where tenancy_id = %s order by id::text", (tenancy,))]


def test_backfill_commits_per_batch_and_reports_json(fresh_db, connect):
    c = connect(fresh_db, autocommit=True)
    t, other = f.tenancy(c, "internal"), f.tenancy(c, "acme")
    teams(c, t, 25)
    teams(c, other, 5)
    version = upsert(c, t, FREE)
    upsert(c, other, FREE)
    result = invoke(fresh_db, "billing", "backfill-free-plans", "--batch-size", "10", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert (summary["rows"], summary["batches"], summary["project_id"], summary["product_id"]) == (25, 3, "internal", "free")
    assert plans(c, t) == expected_plans(c, t, version)
    assert plans(c, other) == []
    again = invoke(fresh_db, "billing", "backfill-free-plans")
    assert again.exit_code == 0
    assert again.output.startswith("0 team(s) of project internal granted free in 0 batch(es)")


def test_regen_moves_in_batches_then_nothing(fresh_db, connect):
    c = connect(fresh_db, autocommit=True)
    t = f.tenancy(c, "internal")
    teams(c, t, 23)
    upsert(c, t, FREE)
    assert invoke(fresh_db, "billing", "backfill-free-plans").exit_code == 0
    latest = upsert(c, t, FREE | {"display_name": "Free, renamed"})
    result = invoke(fresh_db, "billing", "regen", "--batch-size", "5", "--json")
    assert result.exit_code == 0, result.output
    assert {k: v for k, v in json.loads(result.output).items() if k != "seconds"} == \
        {"project_id": "internal", "rows": 23, "batches": 5, "stripe_writes_pending": 0}
    assert {r["product_version_id"] for r in plans(c, t)} == {latest}
    again = invoke(fresh_db, "billing", "regen")
    assert again.output.startswith("0 subscription(s) of project internal moved to the latest version in 0 batch(es)")


@pytest.mark.parametrize("command", [["backfill-free-plans"], ["regen"]])
def test_unknown_project_is_one_line_and_exit_1(fresh_db, command):
    result = subprocess.run([sys.executable, "-m", "pyglue", "--dsn", fresh_db, "billing", *command,
                             "--project", "nope"], cwd=paths.ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr == "error: no project 'nope'\n"
    assert result.stdout == ""


def test_backfill_says_when_no_tenancy_has_the_product(fresh_db, connect):
    c = connect(fresh_db, autocommit=True)
    teams(c, f.tenancy(c, "internal"), 3)
    result = subprocess.run([sys.executable, "-m", "pyglue", "--dsn", fresh_db, "billing", "backfill-free-plans",
                             "--product", "gratis"], cwd=paths.ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert 'note: no tenancy of project internal has a product "gratis"; nothing to backfill' in result.stderr
    assert result.stdout.startswith("0 team(s) of project internal granted gratis")


def test_bad_batch_size_is_refused_before_connecting(fresh_db):
    result = invoke(fresh_db, "billing", "regen", "--batch-size", "0")
    assert result.exit_code == 2
    assert "0 is not in the range" in result.output


def _blocked_on_lock(watcher, application_name) -> bool:
    return watcher.execute("select count(*) as n from pg_stat_activity where application_name = %s"
                           " and wait_event_type = 'Lock'", (application_name,)).fetchone()["n"] == 1


@pytest.mark.slow
def test_backfill_killed_mid_run_then_rerun_equals_one_clean_run(fresh_db, connect):
    """A session holding an uncommitted grant for a team parks the CLI on it after some
    batches have committed; kill -9, release, re-run: every team has exactly its one plan."""
    c = connect(fresh_db, autocommit=True)
    t = f.tenancy(c, "internal")
    teams(c, t, 200)
    version = upsert(c, t, FREE)
    last_team = c.execute("select id from app.teams where tenancy_id = %s order by id desc limit 1",
                          (t,)).fetchone()["id"]
    blocker = connect(fresh_db)
    blocker.execute("insert into billing.subscriptions (tenancy_id, customer_type, customer_id, product_id,"
                    " product_version_id, product_line, is_add_on, stackable, status, quantity, started_at,"
                    " current_period_start, current_period_end, creation_source)"
                    " values (%s, 'team', %s, 'free', %s, 'plans', false, false, 'active', 1, now(), now(),"
                    " now() + interval '1 month', 'api_grant')", (t, str(last_team), version))
    victim = subprocess.Popen([sys.executable, "-m", "pyglue", "--dsn", fresh_db, "billing", "backfill-free-plans",
                               "--batch-size", "20"], cwd=paths.ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: _blocked_on_lock(c, "pyglue billing backfill"))
    committed = len(plans(c, t))
    assert committed == 180  # nine batches of 20 committed; the tenth waits on the last team
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    blocker.rollback()
    wait_for(lambda: not _blocked_on_lock(c, "pyglue billing backfill"))
    rerun = invoke(fresh_db, "billing", "backfill-free-plans", "--batch-size", "20", "--json")
    assert rerun.exit_code == 0, rerun.output
    assert json.loads(rerun.output)["rows"] == 20
    assert plans(c, t) == expected_plans(c, t, version)


@pytest.mark.slow
def test_regen_killed_mid_run_then_rerun_moves_each_subscription_once(fresh_db, connect):
    c = connect(fresh_db, autocommit=True)
    t = f.tenancy(c, "internal")
    teams(c, t, 100)
    upsert(c, t, FREE)
    assert invoke(fresh_db, "billing", "backfill-free-plans").exit_code == 0
    latest = upsert(c, t, FREE | {"display_name": "Free 2"})
    blocker = connect(fresh_db)
    # one subscription locked: the batch that reaches it waits (which batch that is, is up to the planner)
    blocker.execute("select 1 from billing.subscriptions where tenancy_id = %s order by id desc limit 1 for update",
                    (t,))
    victim = subprocess.Popen([sys.executable, "-m", "pyglue", "--dsn", fresh_db, "billing", "regen",
                               "--batch-size", "10"], cwd=paths.ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: _blocked_on_lock(c, "pyglue billing regen"))
    moved_before_kill = c.execute("select count(*) as n from billing.subscription_moves where tenancy_id = %s",
                                  (t,)).fetchone()["n"]
    assert moved_before_kill % 10 == 0 and moved_before_kill < 100  # whole batches only
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    blocker.rollback()
    wait_for(lambda: not _blocked_on_lock(c, "pyglue billing regen"))
    rerun = invoke(fresh_db, "billing", "regen", "--json")
    assert json.loads(rerun.output)["rows"] == 100 - moved_before_kill
    assert {r["product_version_id"] for r in plans(c, t)} == {latest}
    moves = c.execute("select subscription_id, count(*) as n from billing.subscription_moves where tenancy_id = %s"
                      " group by 1", (t,)).fetchall()
    assert len(moves) == 100 and {m["n"] for m in moves} == {1}


def test_db_init_migrates_backfills_and_regens_then_has_nothing_to_do(make_database, connect):
    """Each step idempotent: a second init does nothing."""
    target = make_database()
    first = invoke(target, "db", "init")
    assert first.exit_code == 0, first.output
    lines = first.output.splitlines()
    assert [line.split()[0] for line in lines] == ["migrate", "ledger", "backfill", "regen"]
    migrations = [m for m in paths.MIGRATIONS.glob("*.sql") if not m.name.endswith(".rollback.sql")]
    assert lines[0].endswith(f" {len(migrations)} migration(s) applied")
    c = connect(target, autocommit=True)
    t = f.tenancy(c, "internal")
    teams(c, t, 12)
    upsert(c, t, FREE)
    assert json.loads(invoke(target, "db", "init", "--json").output) == {"migrate": 0, "ledger": 0, "backfill": 12, "regen": 0}
    latest = upsert(c, t, FREE | {"display_name": "Free 2"})
    teams(c, t, 3)
    assert json.loads(invoke(target, "db", "init", "--json").output) == {"migrate": 0, "ledger": 0, "backfill": 3, "regen": 12}
    assert {r["product_version_id"] for r in plans(c, t)} == {latest}
    assert json.loads(invoke(target, "db", "init", "--json").output) == {"migrate": 0, "ledger": 0, "backfill": 0, "regen": 0}


def test_db_init_repairs_corrupted_ledger_state(fresh_db, connect):
    c = connect(fresh_db, autocommit=True)
    t = f.tenancy(c, "internal")
    c.execute("select billing.change_item_quantity(%s, 'custom', 'x', 'credits', 10)", (t,))
    c.execute("select billing.change_item_quantity(%s, 'custom', 'x', 'credits', -3)", (t,))
    c.execute("update billing.item_balance_chunks set balances = array_fill(99::bigint, array[cardinality(balances)])"
              " where tenancy_id = %s", (t,))
    result = invoke(fresh_db, "db", "init")
    assert result.exit_code == 0, result.output
    assert "ledger    0 item history(ies) refolded, 2 difference(s) repaired" in result.output.splitlines()
    assert c.execute("select count(*) as n from billing.verify_ledger()").fetchone()["n"] == 0
    assert c.execute("select billing.item_quantity(%s, 'custom', 'x', 'credits') as q", (t,)).fetchone()["q"] == 7


def test_regen_says_when_stripe_metadata_writes_are_queued(fresh_db, connect):
    c = connect(fresh_db, autocommit=True)
    t = f.tenancy(c, "internal")
    team = f.team(c, t)
    version = upsert(c, t, FREE)
    c.execute("insert into billing.subscriptions (tenancy_id, customer_type, customer_id, product_id,"
              " product_version_id, product_line, is_add_on, stackable, status, quantity, started_at,"
              " current_period_start, current_period_end, creation_source, stripe_subscription_id)"
              " values (%s, 'team', %s, 'free', %s, 'plans', false, false, 'active', 1, now(), now(),"
              " now() + interval '1 month', 'stripe', 'sub_cli_hint')", (t, str(team), version))
    upsert(c, t, FREE | {"display_name": "Free 2"})
    result = subprocess.run([sys.executable, "-m", "pyglue", "--dsn", fresh_db, "billing", "regen"],
                            cwd=paths.ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("1 subscription(s) of project internal moved to the latest version")
    assert result.stderr == "1 Stripe metadata write(s) queued: run pyglue billing stripe-deliver\n"
