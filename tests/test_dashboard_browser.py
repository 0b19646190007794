"""The dashboard in a real browser (issue 14): headless Chromium (Debian's package, driven by
Playwright; no browser download) against the app served by uvicorn on a free loopback port,
over a real source database, real target databases and a real Worker in a thread.
Screenshots go to test-artifacts/. Waits are on what the page shows, never on sleeps."""

from __future__ import annotations

import datetime as dt
import os
import socket
import threading
from pathlib import Path

import pytest
import uvicorn
from playwright.sync_api import Page, expect, sync_playwright

from pyglue import dashboard, paths
from pyglue.sync import mappings
from pyglue.sync.worker import Worker, WorkerOptions
from tests import factories as f
from tests.syncing import make_world, source_users, target_users
from tests.test_sync_worker import wait_for
from tests.test_telemetry import dead_request

CHROMIUM = os.environ.get("PYGLUE_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = paths.ROOT / "test-artifacts"
TOKEN = "browser-test-token-42"
WAIT_MS = 30_000

if not Path(CHROMIUM).exists():  # .ci/run installs it; a developer without it is told how
    pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (never 'playwright install')",
                pytrace=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """The dashboard app served by uvicorn in a thread on a free 127.0.0.1 port."""

    def __init__(self, app):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="off", access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_for(lambda: self.server.started, timeout=20, what="uvicorn started")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


class RunningWorker:
    def __init__(self, dsn: str, **options):
        self.worker = Worker(dsn, mappings.load_all(), WorkerOptions(sequencer_interval_s=0.05, **options))
        self.thread = threading.Thread(target=self.worker.run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.worker.stop.set()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive()


@pytest.fixture(scope="module")
def browser():
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(WAIT_MS)
    p = context.new_page()
    p.on("dialog", lambda dialog: dialog.accept())  # every switch and retry asks for confirmation
    yield p
    context.close()


@pytest.fixture
def world(fresh_db, connect, make_database):
    w = make_world(fresh_db, connect, make_database)
    w.add_target()
    w.sync()  # the target's first sync: its mappings now show in the status
    return w


@pytest.fixture
def served(world):
    s = Served(dashboard.create_app(world.dsn, TOKEN, refresh_s=0.3))
    yield s
    s.stop()


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def log_in(page: Page, served: Served) -> None:
    page.goto(served.url + "/login")
    page.fill("#token", TOKEN)
    page.click("#login")
    expect(page.locator("#logout")).to_be_visible()


def refreshes(page: Page) -> int:
    return int(page.locator("#updated").get_attribute("data-refreshes"))


def wait_refreshes(page: Page, n: int) -> None:
    """Wait until the page has fetched /api/status n more times."""
    start = refreshes(page)
    page.wait_for_function("(n) => Number(document.querySelector('#updated').dataset.refreshes) >= n",
                           arg=start + n)


def test_backlog_drops_to_zero_while_a_worker_runs(world, served, page):
    f.users_bulk(world.conn, world.tenancy, 3000)
    page.goto(served.url + "/")
    expect(page.locator("#backlog-total")).to_have_text("3,000")
    users_row = page.locator('#targets tr[data-target="main"][data-mapping="users"]')
    expect(users_row.locator(".pending")).to_have_text("3,000")
    page.evaluate("""() => { window.seenBacklog = [];
        new MutationObserver(() => window.seenBacklog.push(document.querySelector('#backlog-total').textContent))
          .observe(document.querySelector('#backlog-total'), {childList: true, characterData: true, subtree: true}); }""")
    shot(page, "sync-backlog-before")
    worker = RunningWorker(world.dsn, page_size=250)
    try:
        expect(page.locator("#backlog-total")).to_have_text("0", timeout=60_000)
        expect(users_row.locator(".pending")).to_have_text("0")
        row = page.locator(f'#workers tr[data-worker="{worker.worker.id}"]')
        expect(row.locator(".stamped")).to_have_text("3,000")
        shot(page, "sync-backlog-drained")
    finally:
        worker.stop()
    seen = [int(v.replace(",", "")) for v in page.evaluate("window.seenBacklog")]
    assert seen and seen[-1] == 0 and seen == sorted(seen, reverse=True), seen
    assert target_users(world) == source_users(world.conn, world.tenancy)


def test_the_sync_switch_stops_applying_and_resumes(world, served, page):
    log_in(page, served)
    switch = page.locator("#switch-sync")
    expect(switch).to_have_attribute("data-state", "on")
    worker = RunningWorker(world.dsn)
    try:
        switch.click()
        expect(switch).to_have_attribute("data-state", "off")
        fuse = world.conn.execute("select sync_enabled from pyglue.fusebox").fetchone()
        assert fuse == {"sync_enabled": False}
        f.users_bulk(world.conn, world.tenancy, 50)
        expect(page.locator("#backlog-total")).to_have_text("50")
        # the running worker sequences the new rows (the sequencer switch is on) but applies none
        wait_for(lambda: world.conn.execute("select count(*) as n from app.users where tenancy_id = %s"
                                            " and should_update_sequence_id", (world.tenancy,)).fetchone()["n"] == 0,
                 timeout=30, what="the new rows sequenced")
        wait_refreshes(page, 3)
        expect(page.locator("#backlog-total")).to_have_text("50")
        assert target_users(world) == set()
        shot(page, "sync-switch-off")

        switch.click()
        expect(switch).to_have_attribute("data-state", "on")
        expect(page.locator("#backlog-total")).to_have_text("0")
        shot(page, "sync-switch-on-again")
    finally:
        worker.stop()
    assert len(target_users(world)) == 50


def test_a_dead_request_shows_its_error_and_retry_requeues_it(world, served, page):
    other = f.tenancy(world.conn)
    dead = dead_request(world.conn, other, "target refused: relation \"users\" is locked <b>bold</b>")
    log_in(page, served)
    row = page.locator(f'#dead tr.dead-request[data-id="{dead}"]')
    expect(row.locator("td.error")).to_have_text("target refused: relation \"users\" is locked <b>bold</b>")
    shot(page, "dead-request")
    row.locator("button.retry").click()
    expect(row).to_have_count(0)
    expect(page.locator("#dead tr.none")).to_have_text("no dead requests")
    requests = world.conn.execute("select status, attempts from pyglue.outgoing_requests where tenancy_id = %s",
                                  (other,)).fetchall()
    assert requests == [{"status": "pending", "attempts": 0}]
    shot(page, "dead-request-retried")


def test_read_only_dashboard_disables_every_control(world, page):
    dead_request(world.conn, world.tenancy)
    s = Served(dashboard.create_app(world.dsn, None, refresh_s=0.3))
    try:
        page.goto(s.url + "/")
        expect(page.locator("#mode")).to_contain_text("read-only")
        for name in ("sequencer", "poller", "sync"):
            expect(page.locator(f"#switch-{name}")).to_be_disabled()
        expect(page.locator("#dead button.retry")).to_be_disabled()
        status = page.evaluate("""async () => (await fetch('/api/fusebox', {method: 'POST',
            headers: {'Content-Type': 'application/json'}, body: JSON.stringify({sync: 'off'})})).status""")
        assert status == 403
    finally:
        s.stop()
    assert world.conn.execute("select sync_enabled from pyglue.fusebox").fetchone() == {"sync_enabled": True}


def seed_metrics(conn, tenancy) -> dict:
    """31 days of sign-ups and activity with known values (relative to today, UTC)."""
    today = dt.datetime.now(dt.timezone.utc).date()
    days = [today - dt.timedelta(days=30 - i) for i in range(31)]
    midnight = {d: dt.datetime.combine(d, dt.time(0, 0, 1), tzinfo=dt.timezone.utc) for d in days}
    countries = ["DE", "FR", "US", "DE"]
    pool = [conn.execute("insert into app.users (tenancy_id, display_name, signed_up_at) values (%s, %s, %s)"
                         " returning id", (tenancy, f"old{k}", midnight[days[0]] - dt.timedelta(days=60))
                         ).fetchone()["id"] for k in range(4)]
    signups, active = {}, {}
    for i, d in enumerate(days):
        signups[d.isoformat()] = (i * 3) % 4
        f.users_bulk(conn, tenancy, signups[d.isoformat()], prefix=f"d{i}-")
        conn.execute("update app.users set signed_up_at = %s where tenancy_id = %s and display_name like %s",
                     (midnight[d], tenancy, f"d{i}-%"))
        active[d.isoformat()] = i % 5
        for k in range(i % 5):
            conn.execute("insert into app.events (tenancy_id, event_type, user_id, occurred_at, country_code)"
                         " values (%s, '$user-activity', %s, %s, %s)", (tenancy, pool[k], midnight[d], countries[k]))
    for k, uid in enumerate(pool):
        kind, provider = ("password", None) if k < 3 else ("oauth", "github")
        conn.execute("insert into app.auth_methods (tenancy_id, user_id, kind, provider) values (%s, %s, %s, %s)",
                     (tenancy, uid, kind, provider))
    return {"signups": signups, "active": active, "total": 4 + sum(signups.values())}


def test_the_metrics_page_draws_the_31_day_series_of_a_seeded_tenancy(world, served, page):
    tenancy = f.tenancy(world.conn, "charts")
    expected = seed_metrics(world.conn, tenancy)
    page.goto(f"{served.url}/tenancies/{tenancy}")
    bars = page.locator("#daily-users rect.bar")
    expect(bars).to_have_count(31)
    drawn = page.eval_on_selector_all("#daily-users rect.bar", "els => els.map(e => [e.dataset.date, +e.dataset.value])")
    assert dict(drawn) == expected["signups"] and len(drawn) == 31
    points = page.eval_on_selector_all("#daily-active-users circle.point",
                                       "els => els.map(e => [e.dataset.date, +e.dataset.value])")
    assert dict(points) == expected["active"]
    heights = page.eval_on_selector_all("#daily-users rect.bar", "els => els.map(e => +e.getAttribute('height'))")
    top = max(expected["signups"].values())
    assert [round(h / max(heights) * top) for h in heights] == list(expected["signups"].values())  # drawn to scale
    countries = page.eval_on_selector_all("#top-countries g.item", "els => els.map(e => [e.dataset.label, +e.dataset.value])")
    assert countries == [["DE", 2], ["FR", 1], ["US", 1]]
    methods = page.eval_on_selector_all("#login-methods g.item", "els => els.map(e => [e.dataset.label, +e.dataset.value])")
    assert sorted(methods) == [["github", 1], ["password", 3]]
    expect(page.locator('#overview [data-count="total_users"]')).to_have_text(f"{expected['total']:,}")
    shot(page, "metrics-page")
    assert page.request.get(f"{served.url}/api/metrics/{tenancy}").json()["daily_users"] == [
        {"date": d, "activity": n} for d, n in expected["signups"].items()]
