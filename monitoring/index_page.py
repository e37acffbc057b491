"""The drift index of a dataset: each check's score over time as a picture, then every
report, newest first.

One small chart per check, grouped by the modality or label it watches: a modality's
embedding check, gate weight, missing rate, its raw fields and its alignments with the
others; a label's predicted classes and how often the modalities disagree on it. Each
chart draws the score of every report (oldest left) against its threshold, red where
it drifted. Plain inline SVG: the page needs no script and no network.
"""

from __future__ import annotations

import html
from collections import defaultdict
from typing import Any

from dualmedia import modalities

WIDTH, HEIGHT, PAD = 250, 96, 6
DRIFT_COLOUR, OK_COLOUR, SKIP_COLOUR = "#c0392b", "#27ae60", "#b9770e"


def check_groups(check: str) -> list[str]:
    """What a check watches: the modalities (or the label) its chart is shown under."""
    kind, _, subject = check.partition(":")
    if kind in ("prediction", "disagreement"):
        return [f"label {subject}"]
    if kind == "alignment":
        return subject.split("/")
    if kind == "column":
        owner = [m.name for m in modalities.specs() if subject in m.monitored]
        return owner or ["raw fields"]
    return [subject]


def _group_order(group: str) -> tuple[int, str]:
    known = modalities.names()
    return (known.index(group), group) if group in known else (len(known), group)


def trend_chart(check: str, points: list[dict[str, Any]]) -> str:
    """An SVG of one check's score per report (oldest first) and its threshold."""
    scores = [p["score"] for p in points]
    thresholds = [p["threshold"] for p in points if p["threshold"] is not None]
    low = min([0.0, *scores, *thresholds])
    high = max([*scores, *thresholds, 1e-6]) * 1.1
    if check.startswith("embedding:"):  # an AUC: 0.5 is "indistinguishable"
        low = min(0.4, *scores)

    def x(i: int) -> float:
        return PAD + (WIDTH - 2 * PAD) * (i / max(len(points) - 1, 1))

    def y(v: float) -> float:
        return HEIGHT - PAD - (HEIGHT - 2 * PAD) * (v - low) / max(high - low, 1e-9)

    parts = [
        f"<svg width='{WIDTH}' height='{HEIGHT}' viewBox='0 0 {WIDTH} {HEIGHT}' role='img' "
        f"aria-label='{html.escape(check)} over time'>",
        f"<rect x='0' y='0' width='{WIDTH}' height='{HEIGHT}' fill='#fafafa' stroke='#ddd'/>",
    ]
    line = [(x(i), y(p["threshold"])) for i, p in enumerate(points) if p["threshold"] is not None]
    if line:
        coords = " ".join(f"{a:.1f},{b:.1f}" for a, b in line)
        if len(line) == 1:
            coords = f"{PAD},{line[0][1]:.1f} {WIDTH - PAD},{line[0][1]:.1f}"
        parts.append(
            f"<polyline class='threshold' points='{coords}' fill='none' stroke='#888' "
            "stroke-dasharray='4 3'/>"
        )
    if len(points) > 1:
        coords = " ".join(f"{x(i):.1f},{y(p['score']):.1f}" for i, p in enumerate(points))
        parts.append(
            f"<polyline points='{coords}' fill='none' stroke='#2c6fbb' stroke-width='1.5'/>"
        )
    for i, p in enumerate(points):
        colour = DRIFT_COLOUR if p["drifted"] else OK_COLOUR
        threshold = "-" if p["threshold"] is None else f"{p['threshold']:.4g}"
        parts.append(
            f"<circle class='point' cx='{x(i):.1f}' cy='{y(p['score']):.1f}' r='3.5' "
            f"fill='{colour}'><title>{html.escape(p['time'])}: {p['score']:.4g} "
            f"(threshold {threshold})</title></circle>"
        )
    parts.append("</svg>")
    latest = points[-1]
    state = "drifted" if latest["drifted"] else "ok"
    colour = DRIFT_COLOUR if latest["drifted"] else OK_COLOUR
    return (
        f"<figure class='trend' data-check='{html.escape(check)}' data-points='{len(points)}'>"
        f"<figcaption><b>{html.escape(check)}</b> <span style='color:{colour}'>{state}</span>"
        f"<br><small>latest {latest['score']:.4g}"
        + ("" if latest["threshold"] is None else f", threshold {latest['threshold']:.4g}")
        + "</small></figcaption>"
        + "".join(parts)
        + "</figure>"
    )


def trends(entries: list[dict[str, Any]]) -> str:
    """Every check's chart, grouped; entries are the reports' verdicts, any order."""
    series: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in sorted(entries, key=lambda e: e["time"]):
        for r in e.get("results", []):
            series[r["name"]].append({"time": e["time"], **r})
    groups: dict[str, list[str]] = defaultdict(list)
    for check in series:
        for group in check_groups(check):
            groups[group].append(check)
    sections = []
    for group in sorted(groups, key=_group_order):
        charts = "".join(trend_chart(c, series[c]) for c in sorted(groups[group]))
        sections.append(
            f"<section class='group' data-group='{html.escape(group)}'>"
            f"<h3>{html.escape(group)}</h3><div class='charts'>{charts}</div></section>"
        )
    return "".join(sections)


def _skipped_note(entry: dict[str, Any]) -> str:
    skipped = entry.get("skipped") or []  # reports written before this field have none
    if not skipped:
        return ""
    return f"<br><span style='color:{SKIP_COLOUR}'>{html.escape('; '.join(skipped))}</span>"


def index_page(dataset: str, entries: list[dict[str, Any]]) -> str:
    """The page: trends first, then the reports newest first (entries: verdict.json)."""
    newest_first = sorted(entries, key=lambda e: e["time"], reverse=True)
    rows = []
    for e in newest_first:
        colour = DRIFT_COLOUR if e["verdict"] == "drift" else OK_COLOUR
        rows.append(
            "<tr>"
            f"<td>{html.escape(e['time'])}</td>"
            f"<td style='color:{colour};font-weight:bold'>{html.escape(e['verdict'])}</td>"
            f"<td>{html.escape(e['window'])}</td>"
            f"<td>v{html.escape(str(e['model_version']))}</td>"
            f"<td>{html.escape('; '.join(e['reasons']) or '-')}{_skipped_note(e)}</td>"
            f"<td><a href='reports/{e['time']}/report.html'>report</a></td>"
            "</tr>"
        )
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>Drift reports: {html.escape(dataset)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:4px 10px;"
        "border-bottom:1px solid #ddd;text-align:left}.charts{display:flex;flex-wrap:wrap;"
        "gap:10px}figure.trend{margin:0;padding:4px;border:1px solid #eee}"
        "figcaption{font-size:13px;margin-bottom:2px}h3{margin:1em 0 .3em}</style></head><body>"
        f"<h1>Drift reports: {html.escape(dataset)}</h1>"
        f"<h2>Trends</h2><p>Each check's score per report, oldest left; the dashed line is its "
        f"threshold, red points drifted.</p><div id='trends'>{trends(entries)}</div>"
        f"<h2>Reports</h2><p>{len(entries)} reports, newest first.</p><table id='reports'>"
        "<tr><th>time (UTC)</th><th>verdict</th><th>window</th><th>model</th>"
        "<th>why</th><th></th></tr>" + "".join(rows) + "</table></body></html>"
    )
