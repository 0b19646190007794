"""`pyglue webhooks …`: the secret is shown once, bad input is one line and a non-zero exit."""

from __future__ import annotations

import json

import pytest

from tests import factories as f
from tests.test_cli import run
from tests.test_cli_inputs import one_line

pytestmark = pytest.mark.slow


@pytest.fixture
def source(fresh_db, connect):
    conn = connect(fresh_db, autocommit=True)
    return fresh_db, conn, f.tenancy(conn)


def test_add_list_disable_enable_retry_remove(source):
    dsn, conn, tenancy = source
    done = run("--dsn", dsn, "webhooks", "add", "--tenant", str(tenancy), "--name", "crm",
               "--url", "http://127.0.0.1:9/hook", "--table", "app.users", "--allow-private")
    assert done.returncode == 0, done.stderr
    secret = conn.execute("select secret from pyglue.webhooks").fetchone()["secret"]
    assert f"signing secret (shown once, store it now): {secret}" in done.stdout
    given = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVoxMjM0NTY="
    done = run("--dsn", dsn, "webhooks", "add", "--tenant", str(tenancy), "--name", "erp", "--secret", given,
               "--url", "http://127.0.0.1:9/other", "--allow-private")
    assert done.returncode == 0 and given not in done.stdout + done.stderr
    listed = run("--dsn", dsn, "webhooks", "list")
    as_json = run("--dsn", dsn, "webhooks", "list", "--tenant", str(tenancy), "--json")
    for out in (listed, as_json):
        assert out.returncode == 0, out.stderr
        assert secret not in out.stdout and given not in out.stdout
    rows = json.loads(as_json.stdout)
    assert [(r["name"], r["state"], r["tables"]) for r in rows] == [("crm", "ok", ["app.users"]), ("erp", "ok", None)]
    assert "crm" in listed.stdout and "http://127.0.0.1:9/hook" in listed.stdout
    for command, state in (("disable", "disabled"), ("enable", "ok"), ("retry", "ok")):
        done = run("--dsn", dsn, "webhooks", command, "--tenant", str(tenancy), "--name", "crm")
        assert done.returncode == 0, done.stderr
        assert conn.execute("select state from pyglue.webhook_status() where name = 'crm'").fetchone()["state"] == state
    done = run("--dsn", dsn, "webhooks", "remove", "--tenant", str(tenancy), "--name", "crm")
    assert done.returncode == 0 and done.stdout.strip() == "webhook crm removed"
    assert [r["name"] for r in conn.execute("select name from pyglue.webhooks")] == ["erp"]


@pytest.mark.parametrize(("args", "message"), [
    (["--url", "ftp://example.com/x"], "error: invalid webhook URL 'ftp://example.com/x': only http:// and https://"),
    (["--url", "http://169.254.169.254/latest/meta-data"],
     "error: webhook URL host 169.254.169.254 resolves to 169.254.169.254: a loopback, private, link-local or"
     " metadata address is refused (--allow-private permits it)"),
    (["--url", "http://10.1.2.3/"], "error: webhook URL host 10.1.2.3 resolves to 10.1.2.3: a loopback"),
    (["--url", "http://[::1]:8080/"], "error: webhook URL host ::1 resolves to ::1: a loopback"),
    (["--url", "http://localhost:8080/"], "error: webhook URL host localhost resolves to"),
    (["--url", "http://127.0.0.1:9/", "--allow-private", "--table", "app.nope"],
     "error: cannot subscribe webhook w to app.nope: not a tracked table"),
    (["--url", "http://127.0.0.1:9/", "--allow-private", "--secret", "nope"], "error: invalid webhook secret"),
    (["--url", "http://127.0.0.1:9/", "--allow-private", "--mapping", "nope"], "error: unknown mapping 'nope'"),
])
def test_bad_input_is_one_line(source, args, message):
    dsn, conn, tenancy = source
    done = run("--dsn", dsn, "webhooks", "add", "--tenant", str(tenancy), "--name", "w", *args)
    assert done.returncode == 1
    assert one_line(done).startswith(message)
    assert conn.execute("select count(*) as n from pyglue.webhooks").fetchone()["n"] == 0


def test_unknown_tenancy_duplicate_name_and_unknown_webhook(source):
    dsn, conn, tenancy = source
    missing = "00000000-0000-0000-0000-000000000016"
    done = run("--dsn", dsn, "webhooks", "add", "--tenant", missing, "--name", "w", "--url", "https://example.com/")
    assert done.returncode == 1 and one_line(done) == f"error: no tenancy {missing}"
    add = ["--dsn", dsn, "webhooks", "add", "--tenant", str(tenancy), "--name", "w", "--url", "http://127.0.0.1:9/",
           "--allow-private"]
    assert run(*add).returncode == 0
    done = run(*add)
    assert done.returncode == 1 and one_line(done) == f"error: webhook w already exists for tenancy {tenancy}"
    for command in ("remove", "enable", "disable", "retry"):
        done = run("--dsn", dsn, "webhooks", command, "--tenant", str(tenancy), "--name", "nope")
        assert done.returncode == 1 and one_line(done) == f"error: no webhook 'nope' for tenancy {tenancy}"
    done = run("--dsn", dsn, "webhooks", "list", "--tenant", missing)
    assert done.returncode == 1 and one_line(done) == f"error: no tenancy {missing}"
    done = run("--dsn", dsn, "webhooks", "add", "--tenant", "not-a-uuid", "--name", "w", "--url", "https://x.example/")
    assert done.returncode == 2 and "not-a-uuid" in one_line(done)
