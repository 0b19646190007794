"""Server-rendered SVG charts for the dashboard's metrics page: no script, no library.

Every mark carries its data (data-date / data-label and data-value) and a <title> tooltip,
so a person hovering and a test reading the DOM see the same numbers the chart draws.
"""

from __future__ import annotations

from markupsafe import Markup, escape

WIDTH, HEIGHT = 760, 220
LEFT, RIGHT, TOP, BOTTOM = 44, 12, 16, 28


def _scale_max(values: list[int | float]) -> float:
    top = max(values, default=0)
    return float(top) if top > 0 else 1.0


def _frame(chart_id: str, title: str, body: list[str], width: int = WIDTH, height: int = HEIGHT) -> Markup:
    return Markup(
        f'<svg id="{escape(chart_id)}" class="chart" role="img" aria-label="{escape(title)}"'
        f' viewBox="0 0 {width} {height}" width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">'
        f'<title>{escape(title)}</title>' + "".join(body) + "</svg>")


def _axes(top_value: float, plot_w: float, plot_h: float) -> list[str]:
    x0, y0 = LEFT, TOP + plot_h
    label = f"{top_value:,.0f}"
    return [f'<line class="axis" x1="{x0}" y1="{TOP}" x2="{x0}" y2="{y0}"/>',
            f'<line class="axis" x1="{x0}" y1="{y0}" x2="{x0 + plot_w}" y2="{y0}"/>',
            f'<text class="tick" x="{x0 - 4}" y="{TOP + 4}" text-anchor="end">{label}</text>',
            f'<text class="tick" x="{x0 - 4}" y="{y0}" text-anchor="end">0</text>',
            f'<line class="grid" x1="{x0}" y1="{TOP}" x2="{x0 + plot_w}" y2="{TOP}"/>']


def _date_ticks(days: list[str], step: float, plot_h: float) -> list[str]:
    marks = []
    for i in range(0, len(days), 5):
        x = LEFT + step * (i + 0.5)
        marks.append(f'<text class="tick" x="{x:.1f}" y="{TOP + plot_h + 16}" text-anchor="middle">'
                     f'{escape(days[i][5:])}</text>')
    return marks


def day_bars(chart_id: str, title: str, series: list[dict]) -> Markup:
    """A bar per day of an app.metrics day series ([{"date", "activity"}])."""
    days = [d["date"] for d in series]
    values = [d["activity"] for d in series]
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    top = _scale_max(values)
    step = plot_w / max(len(values), 1)
    body = _axes(top, plot_w, plot_h)
    for i, (day, value) in enumerate(zip(days, values)):
        h = plot_h * value / top
        body.append(f'<rect class="bar" data-date="{escape(day)}" data-value="{value}"'
                    f' x="{LEFT + step * i + step * 0.12:.1f}" y="{TOP + plot_h - h:.1f}"'
                    f' width="{step * 0.76:.1f}" height="{h:.1f}"><title>{escape(day)}: {value:,}</title></rect>')
    body += _date_ticks(days, step, plot_h)
    return _frame(chart_id, title, body)


def day_line(chart_id: str, title: str, series: list[dict]) -> Markup:
    """A line with a point per day of an app.metrics day series."""
    days = [d["date"] for d in series]
    values = [d["activity"] for d in series]
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    top = _scale_max(values)
    step = plot_w / max(len(values), 1)
    points = [(LEFT + step * (i + 0.5), TOP + plot_h - plot_h * v / top) for i, v in enumerate(values)]
    body = _axes(top, plot_w, plot_h)
    if points:
        body.append('<polyline class="line" fill="none" points="'
                    + " ".join(f"{x:.1f},{y:.1f}" for x, y in points) + '"/>')
    for (x, y), day, value in zip(points, days, values):
        body.append(f'<circle class="point" data-date="{escape(day)}" data-value="{value}" cx="{x:.1f}" cy="{y:.1f}"'
                    f' r="3"><title>{escape(day)}: {value:,}</title></circle>')
    body += _date_ticks(days, step, plot_h)
    return _frame(chart_id, title, body)


def label_bars(chart_id: str, title: str, items: list[tuple[str, int]], width: int = 370) -> Markup:
    """Horizontal bars, one per (label, value), in the order given."""
    row, label_w = 22, 90
    height = TOP + row * max(len(items), 1) + 8
    top = _scale_max([v for _, v in items])
    plot_w = width - label_w - 60
    body = []
    if not items:
        body.append(f'<text class="empty" x="{label_w}" y="{TOP + 14}">no data</text>')
    for i, (label, value) in enumerate(items):
        y = TOP + row * i
        w = plot_w * value / top
        body.append(f'<g class="item" data-label="{escape(label)}" data-value="{value}">'
                    f'<text class="label" x="{label_w - 6}" y="{y + 15}" text-anchor="end">{escape(label)}</text>'
                    f'<rect class="bar" x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row - 6}">'
                    f'<title>{escape(label)}: {value:,}</title></rect>'
                    f'<text class="value" x="{label_w + w + 4:.1f}" y="{y + 15}">{value:,}</text></g>')
    return _frame(chart_id, title, body, width, height)
