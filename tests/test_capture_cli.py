"""`pyglue sequence`, `pyglue fusebox`, `pyglue purge-tombstones` against a real database."""

from __future__ import annotations

import json

from click.testing import CliRunner

from pyglue.cli import cli
from tests import factories as f


def invoke(dsn, *args):
    result = CliRunner().invoke(cli, ["--dsn", dsn, *args])
    return result


def test_sequence_runs_passes_until_idle(fresh_db, connect):
    c = connect(fresh_db, autocommit=True)
    t = f.tenancy(c)
    f.users_bulk(c, t, 250)
    result = invoke(fresh_db, "sequence", "--batch-size", "100", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"stamped": 250, "sequencer_enabled": True}
    assert invoke(fresh_db, "sequence").output.strip() == "0 change(s) sequenced"


def test_fusebox_flips_switches_and_sequence_reports_it(fresh_db, connect):
    c = connect(fresh_db, autocommit=True)
    f.user(c, f.tenancy(c))
    result = invoke(fresh_db, "fusebox", "--sequencer", "off", "--json")
    assert json.loads(result.output) == {"sequencer": False, "poller": True, "sync": True}
    assert invoke(fresh_db, "sequence").output.strip() == "0 change(s) sequenced (sequencer is off in the fusebox)"
    invoke(fresh_db, "fusebox", "--sequencer", "on")
    assert invoke(fresh_db, "sequence").output.strip() == "1 change(s) sequenced"
    assert "sequencer  on" in invoke(fresh_db, "fusebox").output


def test_fusebox_rejects_bad_value(fresh_db):
    result = invoke(fresh_db, "fusebox", "--sync", "maybe")
    assert result.exit_code == 2
    assert "'maybe'" in result.output


def test_purge_removes_only_old_stamped_tombstones(fresh_db, connect):
    c = connect(fresh_db, autocommit=True)
    t = f.tenancy(c)
    old, recent, unsequenced = f.user(c, t), f.user(c, t), f.user(c, t)
    c.execute("delete from app.users where id in (%s, %s)", (old, recent))
    f.sequence_all(c)
    c.execute("delete from app.users where id = %s", (unsequenced,))
    c.execute("update pyglue.deleted_rows set deleted_at = now() - interval '30 days'"
              " where primary_key->>'id' in (%s, %s)", (str(old), str(unsequenced)))
    result = invoke(fresh_db, "purge-tombstones", "--older-than", "7 days")
    assert result.output.strip() == "1 tombstone(s) purged"
    left = {r["k"] for r in c.execute("select primary_key->>'id' as k from pyglue.deleted_rows")}
    assert left == {str(recent), str(unsequenced)}
