"""`pyglue dashboard`: the admin dashboard (sync status, fusebox, dead requests, metrics charts)."""

from __future__ import annotations

import click

from pyglue import db
from pyglue.cli import FiniteFloatRange


def serve(dsn: str, host: str, port: int, token: str | None, metrics_ttl_s: float = 60.0,
          refresh_s: float = 2.0, log=lambda _line: None) -> None:
    """Serve the dashboard with uvicorn until interrupted."""
    import uvicorn

    from pyglue import dashboard

    app = dashboard.create_app(dsn, token, metrics_ttl_s=metrics_ttl_s, refresh_s=refresh_s,
                               allowed_hosts=dashboard.allowed_hosts_for(host, port))
    mode = "read-only (no token)" if not token else "changes need the token"
    log(f"dashboard on http://{'[' + host + ']' if ':' in host else host}:{port}/ ({mode})")
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


@click.command("dashboard")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind (loopback by default; 0.0.0.0 exposes it to the network).")
@click.option("--port", type=click.IntRange(min=1, max=65535), default=8765, show_default=True, help="Port to bind.")
@click.option("--auth-token", envvar="PYGLUE_DASHBOARD_TOKEN", default=None, metavar="TOKEN",
              help="Token every state change needs (also $PYGLUE_DASHBOARD_TOKEN); without it the dashboard is"
                   " read-only.")
@click.option("--metrics-ttl", type=FiniteFloatRange(min=1, max=86400), default=60.0, show_default=True,
              help="Seconds a tenancy's metrics are cached (app.metrics_cached).")
@click.option("--refresh", type=FiniteFloatRange(min=0.2, max=3600), default=2.0, show_default=True,
              help="Seconds between refreshes of the sync page.")
@click.pass_obj
def dashboard_cmd(obj, host: str, port: int, auth_token: str | None, metrics_ttl: float, refresh: float) -> None:
    """Serve the admin dashboard: sync status, fusebox switches, dead requests, metric charts, /metrics."""
    with db.connect(obj.dsn) as conn:  # an unreachable or unmigrated database fails here, as one line
        conn.execute("select 1 from pyglue.fusebox")
    serve(obj.dsn, host, port, auth_token or None, metrics_ttl, refresh, log=lambda line: click.echo(line, err=True))
