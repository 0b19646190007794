"""The dashboard's HTTP surface (issue 14), in process through Starlette's TestClient against a
real database: the JSON endpoints, 403 on every state change without the token (and nothing
changed), the session cookie with its CSRF token, no password in any page, response or metric,
the host check, and the CLI command."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from pyglue import dashboard, paths
from pyglue.cli import cli
from pyglue.sync import targets
from tests import factories as f
from tests.syncing import make_world
from tests.test_telemetry import dead_request

TOKEN = "t0ken-for-tests-1234"
BASE = "http://127.0.0.1"


@pytest.fixture
def world(fresh_db, connect, make_database):
    w = make_world(fresh_db, connect, make_database)
    w.add_target()
    return w


def client(dsn: str, token: str | None = TOKEN, **options) -> TestClient:
    return TestClient(dashboard.create_app(dsn, token, **options), base_url=BASE)


def fusebox(conn) -> dict:
    return conn.execute("select sequencer_enabled, poller_enabled, sync_enabled from pyglue.fusebox").fetchone()


def logged_in(c: TestClient) -> str:
    """Log in through the form; returns the CSRF token the sync page carries."""
    response = c.post("/login", data={"token": TOKEN}, follow_redirects=False)
    assert response.status_code == 303 and "httponly" in response.headers["set-cookie"].lower()
    page = c.get("/").text
    return re.search(r'<meta name="csrf-token" content="([0-9a-f]+)">', page).group(1)


def test_status_reports_targets_queue_dead_requests_and_fusebox(world):
    world.sync()
    f.users_bulk(world.conn, world.tenancy, 7)
    dead = dead_request(world.conn, f.tenancy(world.conn), "it broke")
    with client(world.dsn) as c:
        body = c.get("/api/status").json()
    assert body["read_only"] is False and body["fusebox"] == {**body["fusebox"], "sequencer": True, "poller": True,
                                                             "sync": True}
    users = [t for t in body["targets"] if t["mapping_name"] == "users"]
    assert [(t["target_name"], t["pending_rows"]) for t in users] == [("main", 7)]
    assert body["backlog"] == 7
    assert [(r["id"], r["last_error"]) for r in body["dead_requests"]] == [(dead, "it broke")]
    assert body["database"].startswith("database ")


def test_fusebox_and_retry_with_the_bearer_token(world):
    dead = dead_request(world.conn, world.tenancy)
    with client(world.dsn) as c:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        r = c.post("/api/fusebox", json={"sync": "off", "poller": False}, headers=headers)
        assert r.status_code == 200 and r.json()["sync"] is False and r.json()["poller"] is False
        assert fusebox(world.conn) == {"sequencer_enabled": True, "poller_enabled": False, "sync_enabled": False}
        r = c.post("/api/fusebox", data={"sync": "on", "poller": "on"}, headers=headers)  # a form works too
        assert r.status_code == 200
        assert fusebox(world.conn) == {"sequencer_enabled": True, "poller_enabled": True, "sync_enabled": True}
        assert c.post("/api/fusebox", json={"sync": "maybe"}, headers=headers).status_code == 400
        assert c.post("/api/fusebox", json={}, headers=headers).status_code == 400

        r = c.post(f"/api/requests/{dead}/retry", headers=headers)
        assert r.status_code == 200
        assert world.conn.execute("select status from pyglue.outgoing_requests where tenancy_id = %s",
                                  (world.tenancy,)).fetchall() == [{"status": "pending"}]
        again = c.post(f"/api/requests/{r.json()['pending_request']}/retry", headers=headers)
        assert again.status_code == 409 and "not dead" in again.json()["error"]
        assert c.post("/api/requests/999999/retry", headers=headers).status_code == 404


def state(conn) -> list:
    return [fusebox(conn), conn.execute("select id, status from pyglue.outgoing_requests order by id").fetchall()]


@pytest.mark.parametrize("configured", [None, TOKEN], ids=["read-only", "token-configured"])
def test_without_the_token_every_state_change_is_403_and_nothing_changes(world, configured):
    dead = dead_request(world.conn, world.tenancy)
    before = state(world.conn)
    attempts = [("/api/fusebox", {"json": {"sync": "off", "sequencer": "off", "poller": "off"}}),
                ("/api/fusebox", {"data": {"sync": "off"}}),
                (f"/api/requests/{dead}/retry", {}),
                (f"/api/requests/{dead}/retry", {"json": {}}),
                ("/api/fusebox", {"content": b"{not json", "headers": {"Content-Type": "application/json"}})]
    with client(world.dsn, configured) as c:
        for path, body in attempts:
            for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"X-CSRF-Token": "0" * 64}):
                given = dict(body)
                r = c.post(path, headers={**given.pop("headers", {}), **headers}, **given)
                assert r.status_code == 403, (path, headers, r.text)
        assert c.post("/login", data={"token": "wrong"}).status_code == 403
        if configured is None:
            assert c.post("/login", data={"token": TOKEN}).status_code == 403
            assert "read-only" in c.get("/").text
    assert state(world.conn) == before


def test_the_session_cookie_needs_the_csrf_token_from_this_origin(world):
    dead = dead_request(world.conn, world.tenancy)
    with client(world.dsn) as c:
        csrf = logged_in(c)
        before = state(world.conn)
        assert c.post("/api/fusebox", json={"sync": "off"}).status_code == 403  # cookie alone
        assert c.post("/api/fusebox", json={"sync": "off"}, headers={"X-CSRF-Token": "f" * 64}).status_code == 403
        assert c.post("/api/fusebox", json={"sync": "off"},
                      headers={"X-CSRF-Token": csrf, "Origin": "http://evil.example"}).status_code == 403
        assert state(world.conn) == before
        r = c.post("/api/fusebox", json={"sync": "off"}, headers={"X-CSRF-Token": csrf, "Origin": BASE})
        assert r.status_code == 200 and fusebox(world.conn)["sync_enabled"] is False
        r = c.post(f"/api/requests/{dead}/retry", data={"csrf_token": csrf})
        assert r.status_code == 200
        c.post("/logout")
        assert c.post("/api/fusebox", json={"sync": "on"}, headers={"X-CSRF-Token": csrf}).status_code == 403


def test_no_password_in_any_page_response_or_metric(world):
    secret = "Zz9-dashboard-secret"
    targets.add(world.conn, world.tenancy, "down", f"postgresql://admin:{secret}@127.0.0.1:1/down")
    f.users_bulk(world.conn, world.tenancy, 3)
    world.sync()  # the down target fails and records its (scrubbed) error
    dead_request(world.conn, world.tenancy, f"connection to postgresql://admin:{secret}@127.0.0.1:1/down failed;"
                                            f" password={secret}")
    world.conn.execute("select pyglue.record_telemetry('w', 1, 1, 0.1)")
    with client(world.dsn) as c:
        csrf = logged_in(c)
        responses = [c.get(p) for p in ("/", "/login", "/api/status", f"/api/metrics/{world.tenancy}",
                                        f"/tenancies/{world.tenancy}", "/metrics", "/api/metrics/nope")]
        responses.append(c.post("/api/fusebox", json={"sync": "on"}, headers={"X-CSRF-Token": csrf}))
        responses.append(c.post("/api/requests/1/retry", headers={"X-CSRF-Token": csrf}))
    body = responses[2].json()
    assert any(t["target_name"] == "down" and t["failing"] for t in body["targets"])
    assert "***" in body["dead_requests"][0]["last_error"]
    for r in responses:
        assert secret not in r.text, r.url
        assert "127.0.0.1:1/down" not in r.text or "***" in r.text


def test_metrics_endpoint_parses_and_metrics_api_serves_app_metrics(world):
    with client(world.dsn, None) as c:
        text = c.get("/metrics").text
        families = {fam.name for fam in text_string_to_metric_families(text)}
        assert {"pyglue_database_up", "pyglue_sync_rows", "pyglue_queue_depth", "pyglue_replication_lag_seconds"} \
            <= families
        m = c.get(f"/api/metrics/{world.tenancy}").json()
        assert m["total_users"] == 0 and len(m["daily_users"]) == 31
        assert c.get("/api/metrics/00000000-0000-0000-0000-000000000000").status_code == 404
        assert c.get("/tenancies/not-a-uuid").status_code == 404


def test_another_host_name_is_refused(world):
    app = dashboard.create_app(world.dsn, TOKEN)
    with TestClient(app, base_url="http://attacker.example") as c:
        assert c.get("/api/status").status_code == 400
    assert dashboard.allowed_hosts_for("0.0.0.0", 8765) == ["*"]
    assert "10.1.2.3" in dashboard.allowed_hosts_for("10.1.2.3", 8765)


def test_cli_dashboard_refuses_an_unmigrated_database_in_one_line(make_database):
    empty = make_database()
    result = CliRunner().invoke(cli, ["--dsn", empty, "dashboard", "--port", "1"])
    assert result.exit_code != 0
    assert "pyglue db migrate" in str(result.exception)


def _get(url: str, **kwargs):
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(url, **kwargs), timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return None, ""


def test_pyglue_dashboard_and_worker_metrics_port_serve_from_the_command_line(world):
    import os
    import signal

    from tests.test_sync_worker import wait_for, worker_process
    from tests.test_telemetry import free_port, samples, value

    port, metrics_port = free_port(), free_port()
    env = dict(os.environ, PYGLUE_DASHBOARD_TOKEN=TOKEN)
    served = subprocess.Popen([sys.executable, "-m", "pyglue", "--dsn", world.dsn, "dashboard", "--port", str(port)],
                              cwd=paths.ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    worker = worker_process(world.dsn, "--metrics-port", str(metrics_port))
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _get(base + "/api/status")[0] == 200, timeout=30, what="the dashboard answering")
        assert _get(base + "/api/fusebox", data=b"sync=off", method="POST")[0] == 403
        code, body = _get(base + "/api/fusebox", data=b"sync=off", method="POST",
                          headers={"Authorization": f"Bearer {TOKEN}"})  # the token from the environment
        assert code == 200 and json.loads(body)["sync"] is False
        _get(base + "/api/fusebox", data=b"sync=on", method="POST", headers={"Authorization": f"Bearer {TOKEN}"})
        f.users_bulk(world.conn, world.tenancy, 25)

        def synced():  # at least: a first sync that snapshots the rows before they are stamped brings them twice
            code, text = _get(f"http://127.0.0.1:{metrics_port}/metrics")
            return code == 200 and (value(samples(text), "pyglue_sync_rows_total", mapping="users") or 0) >= 25
        wait_for(synced, timeout=60, what="the worker's metrics showing 25 rows synced")
        wait_for(lambda: len(world.rows("users")) == 25, timeout=60, what="the 25 users in the target")
    finally:
        for process in (worker, served):
            process.send_signal(signal.SIGTERM)
        worker.communicate(timeout=60)
        _, err = served.communicate(timeout=30)
    assert f"dashboard on http://127.0.0.1:{port}/ (changes need the token)" in err
