"""Spending over time as inline SVG, drawn on the server (no script, no chart library).

A step line: the dataset's spent epsilon (all charges so far composed) after each charge, against
time, with the budget as a dashed line. Colours and strokes come from the page's stylesheet (CSS
classes), so the page's Content-Security-Policy needs no inline style.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from html import escape

__all__ = ["spending_svg"]

_W, _H = 720, 260
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 16, 16, 40


def spending_svg(points: Sequence[tuple[str, float]], *, budget: float, label: str) -> str:
    """An SVG step chart of ``points`` ((ISO time, spent epsilon), in time order) under ``budget``.

    ``label`` names the chart for screen readers (escaped). With no point, the chart says so.
    """
    title = f"<title>{escape(label)}</title>"
    head = f'<svg class="chart" viewBox="0 0 {_W} {_H}" role="img" xmlns="http://www.w3.org/2000/svg">'
    if not points:
        text = f'<text class="empty" x="{_W / 2}" y="{_H / 2}" text-anchor="middle">no charge yet</text>'
        return f"{head}{title}{text}</svg>"
    times = [datetime.fromisoformat(t).timestamp() for t, _ in points]
    t0, t1 = times[0], max(times[-1], times[0] + 1.0)
    top = max(budget, max(e for _, e in points)) * 1.05 or 1.0

    def x(t: float) -> float:
        return _LEFT + (t - t0) / (t1 - t0) * (_W - _LEFT - _RIGHT)

    def y(e: float) -> float:
        return _H - _BOTTOM - e / top * (_H - _TOP - _BOTTOM)

    path = [(x(t0), y(0.0))]
    for t, (_, e) in zip(times, points, strict=True):
        path += [(x(t), path[-1][1]), (x(t), y(e))]
    line = " ".join(f"{a:.1f},{b:.1f}" for a, b in path)
    parts = [head, title, *_axes(top, points[0][0], points[-1][0], y)]
    parts.append(
        f'<line class="budget" x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{y(budget):.1f}" y2="{y(budget):.1f}"/>'
    )
    parts.append(
        f'<text class="budget-label" x="{_W - _RIGHT}" y="{y(budget) - 4:.1f}" text-anchor="end">'
        f"budget {budget:g}</text>"
    )
    parts.append(f'<polyline class="spent" points="{line}"/>')
    parts += [
        f'<circle class="dot" cx="{x(t):.1f}" cy="{y(e):.1f}" r="2.5"/>'
        for t, (_, e) in zip(times, points, strict=True)
    ]
    parts.append("</svg>")
    return "".join(parts)


def _axes(top: float, first: str, last: str, y: Callable[[float], float]) -> list[str]:
    """Axes, five epsilon ticks, and the first and last charge's dates."""
    out = [
        f'<line class="axis" x1="{_LEFT}" x2="{_LEFT}" y1="{_TOP}" y2="{_H - _BOTTOM}"/>',
        f'<line class="axis" x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{_H - _BOTTOM}" y2="{_H - _BOTTOM}"/>',
    ]
    for i in range(6):
        e = top / 1.05 * i / 5
        out.append(
            f'<text class="tick" x="{_LEFT - 6}" y="{y(e) + 4:.1f}" text-anchor="end">{e:.3g}</text>'
            f'<line class="grid" x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{y(e):.1f}" y2="{y(e):.1f}"/>'
        )
    base = _H - _BOTTOM + 18
    out.append(f'<text class="tick" x="{_LEFT}" y="{base}">{escape(first[:16].replace("T", " "))}</text>')
    out.append(
        f'<text class="tick" x="{_W - _RIGHT}" y="{base}" text-anchor="end">'
        f"{escape(last[:16].replace('T', ' '))} UTC</text>"
    )
    out.append(f'<text class="tick" x="14" y="{_TOP + 8}">ε</text>')
    return out
