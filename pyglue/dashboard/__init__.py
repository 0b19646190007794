"""`pyglue dashboard`: sync status, fusebox, dead requests and metric charts in the browser.

A small Starlette app over the SQL functions, which stay the only source of truth:
pyglue.sync_status, the queue, pyglue.fusebox / pyglue.set_fusebox, pyglue.retry_request,
app.metrics_cached and the workers' telemetry rows. Pages are jinja2; charts are SVG drawn
here (pyglue.dashboard.svg); the sync page refreshes itself by polling GET /api/status.

Safe by default:
- Reads are open to whoever reaches the port, which is loopback unless told otherwise; a
  request naming another host is refused (DNS rebinding), unless bound to all addresses.
- Every state change is a POST and needs the token: `Authorization: Bearer <token>`
  (scripts; a header no other site can make a browser send), or the session cookie the
  login form sets (HttpOnly, SameSite=Strict) together with the CSRF token the page carries
  (X-CSRF-Token header or csrf_token field), from a page of this origin. Without a
  configured token every state change is refused with 403: the dashboard is read-only.
- Connection strings are never shown; every error text is passed through dsn.redact.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import hmac
import json
import uuid
from urllib.parse import parse_qs, urlsplit

import jinja2
import psycopg
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from pyglue import capture, db, paths, queries, telemetry
from pyglue import dsn as dsns
from pyglue.dashboard import svg
from pyglue.sync import targets

COOKIE = "pyglue_dashboard"
SWITCHES = {"sequencer": "sequencer", "poller": "poller", "sync": "sync"}
ON, OFF = {"on", "true", "1", "yes"}, {"off", "false", "0", "no"}
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]
TOP_COUNTRIES = 10
DEAD_LIMIT = 100


class Forbidden(Exception):
    pass


class BadRequest(Exception):
    pass


class Auth:
    """The token, the session cookie derived from it, and the CSRF token derived from it.
    Changing the token invalidates both."""

    def __init__(self, token: str | None):
        self.token = token or None

    @property
    def read_only(self) -> bool:
        return self.token is None

    def _derive(self, purpose: str) -> str:
        return hmac.new(self.token.encode(), f"pyglue dashboard {purpose}".encode(), hashlib.sha256).hexdigest()

    @property
    def session(self) -> str:
        return self._derive("session")

    @property
    def csrf(self) -> str:
        return self._derive("csrf")

    def token_matches(self, given: str | None) -> bool:
        return self.token is not None and given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def logged_in(self, request: Request) -> bool:
        cookie = request.cookies.get(COOKIE)
        return self.token is not None and cookie is not None and hmac.compare_digest(cookie, self.session)

    def check_change(self, request: Request, fields: dict) -> None:
        """Raise Forbidden unless this POST may change state."""
        if self.read_only:
            raise Forbidden("the dashboard is read-only: no --auth-token / PYGLUE_DASHBOARD_TOKEN configured")
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            if self.token_matches(header[7:].strip()):
                return
            raise Forbidden("wrong token")
        if not self.logged_in(request):
            raise Forbidden("a state change needs the token (Authorization: Bearer …, or log in)")
        if not _same_origin(request):
            raise Forbidden("cross-origin request refused")
        given = request.headers.get("x-csrf-token") or fields.get("csrf_token") or ""
        if not hmac.compare_digest(given.encode(), self.csrf.encode()):
            raise Forbidden("missing or wrong CSRF token")


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.headers.get("host", "")


def jsonable(value):
    """Rows as JSON: times as ISO text, intervals as seconds, uuids as text, errors redacted."""
    if isinstance(value, dict):
        return {k: (dsns.redact(v) if isinstance(v, str) and "error" in k else jsonable(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, decimal.Decimal):
        return float(value)
    return value


def status(conn: psycopg.Connection) -> dict:
    """Everything the sync page shows, read from the SQL functions and tables."""
    fuse = capture.fusebox(conn)
    rows = targets.status(conn)
    return jsonable({
        "fusebox": {"sequencer": fuse["sequencer_enabled"], "poller": fuse["poller_enabled"],
                    "sync": fuse["sync_enabled"], "updated_at": fuse["updated_at"]},
        "backlog": sum(r["pending_rows"] for r in rows),
        "targets": rows,
        "queue": conn.execute(queries.load("dashboard_queue")).fetchall(),
        "dead_requests": conn.execute(queries.load("dashboard_dead_requests"), {"limit": DEAD_LIMIT}).fetchall(),
        "workers": conn.execute(queries.load("dashboard_workers"), {"worker": None}).fetchall(),
        "sync_telemetry": conn.execute(queries.load("dashboard_sync_telemetry"), {"worker": None}).fetchall(),
        "target_telemetry": conn.execute(queries.load("dashboard_target_telemetry"), {"worker": None}).fetchall(),
        "generated_at": dt.datetime.now(dt.timezone.utc),
    })


def _switch_value(name: str, raw) -> bool | None:
    if raw is None or raw == "":
        return None
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ON:
        return True
    if text in OFF:
        return False
    raise BadRequest(f"{name} must be on or off, got {str(raw)[:20]!r}")


async def _fields(request: Request) -> dict:
    """POST fields from a JSON object or a urlencoded form (no multipart parser needed)."""
    body = await request.body()
    if not body:
        return {}
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        try:
            fields = json.loads(body)
        except ValueError:
            raise BadRequest("the body is not JSON") from None
        if not isinstance(fields, dict):
            raise BadRequest("the JSON body must be an object")
        return fields
    if kind in ("application/x-www-form-urlencoded", ""):
        return {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
    raise BadRequest(f"unsupported content type {kind[:40]!r}")


def _tenancy(request: Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.path_params["tenancy"])
    except ValueError:
        raise LookupError(f"no tenancy {request.path_params['tenancy'][:40]!r}") from None


def create_app(dsn: str, token: str | None = None, *, metrics_ttl_s: float = 60.0, refresh_s: float = 2.0,
               allowed_hosts: list[str] | None = None) -> Starlette:
    """The dashboard over one database. allowed_hosts: Host header values accepted
    (default: loopback names; ["*"] when bound to every address)."""
    auth = Auth(token)
    where = dsns.describe(dsn)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(paths.DASHBOARD_TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined)

    def connect() -> psycopg.Connection:
        return db.connect(dsn, autocommit=True, application_name="pyglue dashboard")

    def page(name: str, request: Request, status_code: int = 200, **context) -> HTMLResponse:
        logged_in = auth.logged_in(request)
        html = env.get_template(name).render(where=where, read_only=auth.read_only, logged_in=logged_in,
                                             csrf=auth.csrf if logged_in else None, refresh_ms=int(refresh_s * 1000),
                                             **context)
        return HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)

    def tenancies(conn) -> list[dict]:
        return jsonable(conn.execute(queries.load("dashboard_tenancies"), {"limit": 200}).fetchall())

    def metrics_of(conn, tenancy: uuid.UUID) -> dict:
        if not conn.execute(queries.load("tenancy_exists"), {"tenancy_id": tenancy}).fetchone()["present"]:
            raise LookupError(f"no tenancy {tenancy}")
        return conn.execute(queries.load("metrics_cached"), {"tenancy_id": tenancy, "include_anonymous": False,
                                                              "ttl_s": metrics_ttl_s}).fetchone()["metrics"]

    # -- pages ---------------------------------------------------------------------------------

    async def index(request: Request) -> Response:
        def read():
            with connect() as conn:
                return status(conn), tenancies(conn)
        initial, known = await run_in_threadpool(read)
        return page("sync.html", request, initial=script_json(initial), tenancies=known)

    async def tenancy_page(request: Request) -> Response:
        try:
            tenancy = _tenancy(request)

            def read():
                with connect() as conn:
                    return metrics_of(conn, tenancy)
            m = await run_in_threadpool(read)
        except LookupError as exc:
            return page("error.html", request, status_code=404, message=str(exc))
        countries = sorted(m["users_by_country"].items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_COUNTRIES]
        methods = [(x["method"], x["count"]) for x in m["login_methods"]]
        charts = {
            "signups": svg.day_bars("daily-users", "Daily sign-ups, last 31 days (UTC)", m["daily_users"]),
            "active": svg.day_line("daily-active-users", "Daily active users, last 31 days (UTC)",
                                   m["daily_active_users"]),
            "countries": svg.label_bars("top-countries", f"Users by latest country (top {TOP_COUNTRIES})", countries),
            "methods": svg.label_bars("login-methods", "Login methods", methods),
        }
        return page("tenancy.html", request, tenancy=str(tenancy), m=m, charts=charts)

    async def login_form(request: Request) -> Response:
        return page("login.html", request, message=None)

    async def login(request: Request) -> Response:
        try:
            fields = await _fields(request)
        except BadRequest as exc:
            return page("login.html", request, status_code=400, message=str(exc))
        if auth.read_only:
            return page("login.html", request, status_code=403,
                        message="read-only: no token is configured, so there is nothing to log in to")
        if not _same_origin(request) or not auth.token_matches(str(fields.get("token", ""))):
            return page("login.html", request, status_code=403, message="wrong token")
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, auth.session, httponly=True, samesite="strict", path="/")
        return response

    async def logout(request: Request) -> Response:
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    # -- JSON ----------------------------------------------------------------------------------

    async def api_status(request: Request) -> Response:
        def read():
            with connect() as conn:
                return status(conn)
        body = await run_in_threadpool(read)
        body["read_only"], body["database"] = auth.read_only, where
        return JSONResponse(body, headers=SECURITY_HEADERS)

    async def api_metrics(request: Request) -> Response:
        try:
            tenancy = _tenancy(request)

            def read():
                with connect() as conn:
                    return metrics_of(conn, tenancy)
            return JSONResponse(await run_in_threadpool(read), headers=SECURITY_HEADERS)
        except LookupError as exc:
            return _error(404, str(exc))

    async def change_fields(request: Request) -> dict:
        """The POST's fields once it may change state: Forbidden before any complaint about the body."""
        try:
            fields, problem = await _fields(request), None
        except BadRequest as exc:
            fields, problem = {}, exc
        auth.check_change(request, fields)
        if problem is not None:
            raise problem
        return fields

    async def api_fusebox(request: Request) -> Response:
        try:
            fields = await change_fields(request)
            wanted = {name: _switch_value(name, fields.get(name)) for name in SWITCHES}
            if all(v is None for v in wanted.values()):
                raise BadRequest("name at least one of sequencer, poller, sync (on or off)")
        except Forbidden as exc:
            return _error(403, str(exc))
        except BadRequest as exc:
            return _error(400, str(exc))

        def change():
            with connect() as conn:
                row = capture.set_fusebox(conn, **wanted)
            return {"sequencer": row["sequencer_enabled"], "poller": row["poller_enabled"],
                    "sync": row["sync_enabled"], "updated_at": row["updated_at"]}
        return JSONResponse(jsonable(await run_in_threadpool(change)), headers=SECURITY_HEADERS)

    async def api_retry(request: Request) -> Response:
        try:
            await change_fields(request)
        except Forbidden as exc:
            return _error(403, str(exc))
        except BadRequest as exc:
            return _error(400, str(exc))
        request_id = request.path_params["id"]

        def change():
            with connect() as conn, conn.transaction():
                return conn.execute("select pyglue.retry_request(%s) as id", (request_id,)).fetchone()["id"]
        try:
            pending = await run_in_threadpool(change)
        except psycopg.errors.NoDataFound as exc:  # P0002: not there, or not dead
            return _error(409 if "not dead" in (exc.diag.message_primary or "") else 404, dsns.error_line(exc))
        return JSONResponse({"retried": request_id, "pending_request": pending}, headers=SECURITY_HEADERS)

    async def prometheus(request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        text = await run_in_threadpool(generate_latest, registry)
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    registry = telemetry.registry(dsn)
    routes = [
        Route("/", index),
        Route("/tenancies/{tenancy}", tenancy_page),
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/api/status", api_status),
        Route("/api/metrics/{tenancy}", api_metrics),
        Route("/api/fusebox", api_fusebox, methods=["POST"]),
        Route("/api/requests/{id:int}/retry", api_retry, methods=["POST"]),
        Route("/metrics", prometheus),
    ]
    hosts = allowed_hosts or LOOPBACK_HOSTS
    return Starlette(routes=routes, middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts)])


SECURITY_HEADERS = {"X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
                    "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline';"
                                               " style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
                    "Cache-Control": "no-store"}


def _error(code: int, message: str) -> JSONResponse:
    return JSONResponse({"error": dsns.redact(message)}, status_code=code, headers=SECURITY_HEADERS)


def script_json(value):
    """JSON to embed in a <script type="application/json"> (nothing in it can close the tag)."""
    from markupsafe import Markup

    return Markup(json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


def allowed_hosts_for(host: str, port: int) -> list[str]:
    """Host headers to accept when serving on host: loopback names, the host itself; any
    when bound to every address (the operator chose to expose it)."""
    if host in ("0.0.0.0", "::", ""):
        return ["*"]
    return sorted(set(LOOPBACK_HOSTS + [host, f"[{host}]" if ":" in host else host]))
