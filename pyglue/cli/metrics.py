"""`pyglue metrics`: a tenancy's dashboard numbers (app.metrics) as a readable summary or JSON."""

from __future__ import annotations

import json
from pathlib import Path

import click

from pyglue import charts, db, queries
from pyglue.errors import PyglueError


def dashboard(conn, tenancy_id, include_anonymous: bool = False) -> dict:
    """app.metrics of one tenancy; an unknown tenancy is an error (app.metrics would say zeros)."""
    if not conn.execute(queries.load("tenancy_exists"), {"tenancy_id": tenancy_id}).fetchone()["present"]:
        raise PyglueError(f"no tenancy {tenancy_id}")
    return conn.execute(queries.load("metrics_dashboard"),
                        {"tenancy_id": tenancy_id, "include_anonymous": include_anonymous}).fetchone()["metrics"]


def summary(m: dict) -> str:
    """A few lines for people: totals, the last 7 days of both series, top countries and methods."""
    overview = m["auth_overview"]
    lines = [f"users {m['total_users']:,} (verified {overview['verified_users']:,}, unverified"
             f" {overview['unverified_users']:,}, anonymous {overview['anonymous_users']:,});"
             f" teams {overview['total_teams']:,}; monthly active {overview['mau']:,}",
             "day         sign-ups   active"]
    for signups, active in list(zip(m["daily_users"], m["daily_active_users"]))[-7:]:
        lines.append(f"{signups['date']}  {signups['activity']:>8,} {active['activity']:>8,}")
    countries = sorted(m["users_by_country"].items(), key=lambda kv: (-kv[1], kv[0]))[:5]
    lines.append("top countries: " + (", ".join(f"{c} {n:,}" for c, n in countries) or "none"))
    lines.append("login methods: " + (", ".join(f"{x['method']} {x['count']:,}" for x in m["login_methods"]) or "none"))
    return "\n".join(lines)


@click.command("metrics")
@click.option("--tenant", "tenant", type=click.UUID, required=True, help="Tenancy id (uuid).")
@click.option("--include-anonymous", is_flag=True, help="Count anonymous users too (MAU never counts them).")
@click.option("--json", "as_json", is_flag=True, help="Print the whole app.metrics object as JSON.")
@click.option("--plot", type=click.Path(dir_okay=False, writable=True, path_type=Path), default=None,
              help="Also write a PNG chart: daily sign-ups and active users over 31 days, top countries.")
@click.pass_obj
def metrics_cmd(obj, tenant, include_anonymous: bool, as_json: bool, plot: Path | None) -> None:
    """Show a tenancy's dashboard metrics: users, 31-day series, countries, login methods."""
    if plot is not None and plot.suffix.lower() != ".png":
        raise PyglueError(f"--plot {str(plot)!r}: the chart is a PNG, name the file *.png")
    with db.connect(obj.dsn, autocommit=True) as conn:
        m = dashboard(conn, tenant, include_anonymous)
    click.echo(json.dumps(m, indent=2) if as_json else summary(m))
    if plot is not None:
        try:
            charts.write_png(m, plot, f"tenancy {tenant}")
        except OSError as exc:
            raise PyglueError(f"cannot write the chart to {str(plot)!r}: {exc.strerror or exc}") from None
        if not as_json:
            click.echo(f"chart written to {plot}")
