"""A PNG of a tenancy's dashboard metrics (`pyglue metrics --plot`): daily sign-ups and daily
active users over the 31 days of app.metrics, and the top countries. Drawn with matplotlib's
Agg backend (no display needed)."""

from __future__ import annotations

from pathlib import Path

TOP_COUNTRIES = 10


def write_png(m: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    days = [d["date"][5:] for d in m["daily_users"]]
    signups = [d["activity"] for d in m["daily_users"]]
    active = [d["activity"] for d in m["daily_active_users"]]
    countries = sorted(m["users_by_country"].items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_COUNTRIES]

    figure, (series, bars) = pyplot.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [2.2, 1]})
    try:
        figure.suptitle(title)
        # sign-ups are a few per day beside thousands active: each has its own axis
        signup_axis = series.twinx()
        signup_axis.bar(days, signups, color="tab:orange", alpha=0.5, label="sign-ups (right axis)")
        signup_axis.set_ylim(bottom=0)
        series.set_zorder(signup_axis.get_zorder() + 1)
        series.patch.set_visible(False)
        series.plot(days, active, marker="o", markersize=3, label="daily active users (left axis)")
        series.set_title("last 31 days (UTC)")
        series.set_xticks(range(0, len(days), 5), [days[i] for i in range(0, len(days), 5)])
        series.set_ylim(bottom=0)
        lines, labels = series.get_legend_handles_labels()
        bars_, bar_labels = signup_axis.get_legend_handles_labels()
        series.legend(lines + bars_, labels + bar_labels, loc="lower left")
        series.grid(axis="y", alpha=0.3)
        bars.barh([c for c, _ in reversed(countries)], [n for _, n in reversed(countries)], color="tab:green")
        bars.set_title(f"users by latest country (top {TOP_COUNTRIES})")
        bars.grid(axis="x", alpha=0.3)
        figure.tight_layout()
        figure.savefig(path, format="png", dpi=100)
    finally:
        pyplot.close(figure)
