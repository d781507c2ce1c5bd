#!/usr/bin/env python3
"""Draws the main panels of deploy/grafana/mixr.json as an SVG, from a live Prometheus.

    python3 deploy/grafana/plot_dashboard.py http://127.0.0.1:9090 mixr-dashboard.svg [--minutes 2]

Each panel's queries are read from the dashboard itself and run over the last minutes
through Prometheus's query_range API, so the picture shows what Grafana would. Standard
library only: it runs wherever Python 3 does (tests/tests/dashboards.rs runs it).
"""

import argparse
import html
import json
import math
import re
import time
import urllib.parse
import urllib.request
from pathlib import Path

# The panels that tell an operator the most at a glance, in the order they are drawn.
MAIN_PANELS = [
    "Check calls by result",
    "Report calls by result",
    "Call latency",
    "Denials by rule and handler",
    "Quota allocations by result",
    "Adapter latency",
    "Sidecar requests by reporter and code",
    "Sidecar request latency",
    "Check cache hit ratio",
]
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
W, H, COLS = 420, 250, 3
PLOT = (50, 34, 400, 170)  # left, top, right, bottom inside a chart
MAX_SERIES = 6


def query_range(prom, expr, start, end, step):
    q = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{prom}/api/v1/query_range?{q}", timeout=10) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body.get('error')}")
    return body["data"]["result"]


def legend(fmt, labels):
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt or "").strip() or str(labels)


def fmt_value(v, unit):
    if unit == "percentunit":
        return f"{v * 100:.0f}%"
    if unit == "s":
        return f"{v * 1000:.3g}ms" if v < 1 else f"{v:.3g}s"
    return f"{v:.3g}"


def chart(x0, y0, title, unit, series, start, end):
    out = [f'<g transform="translate({x0},{y0})">',
           f'<rect width="{W - 10}" height="{H - 10}" fill="#fff" stroke="#ccc"/>',
           f'<text x="10" y="20" font-size="13" font-weight="bold">{html.escape(title)}</text>']
    left, top, right, bottom = PLOT
    values = [v for _, pts in series for _, v in pts]
    if not values:
        out.append(f'<text x="{left}" y="{(top + bottom) // 2}" font-size="12" fill="#888">no data</text></g>')
        return out
    hi = max(values) or 1.0
    out.append(f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#999"/>')
    out.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="#999"/>')
    out.append(f'<text x="{left - 4}" y="{top + 4}" font-size="10" text-anchor="end">{fmt_value(hi, unit)}</text>')
    out.append(f'<text x="{left - 4}" y="{bottom}" font-size="10" text-anchor="end">0</text>')
    out.append(f'<text x="{right}" y="{bottom + 12}" font-size="10" text-anchor="end">now</text>')
    out.append(f'<text x="{left}" y="{bottom + 12}" font-size="10">-{round((end - start) / 60)}m</text>')
    for i, (name, pts) in enumerate(series):
        color = COLORS[i % len(COLORS)]
        xy = " ".join(
            f"{left + (t - start) / (end - start) * (right - left):.1f},{bottom - v / hi * (bottom - top):.1f}"
            for t, v in pts
        )
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{xy}"/>')
        ly = bottom + 26 + (i // 2) * 13
        lx = 10 + (i % 2) * 200
        out.append(f'<rect x="{lx}" y="{ly - 8}" width="8" height="8" fill="{color}"/>')
        out.append(f'<text x="{lx + 12}" y="{ly}" font-size="10">{html.escape(name[:34])}</text>')
    out.append("</g>")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("prometheus")
    ap.add_argument("output")
    ap.add_argument("--dashboard", default=str(Path(__file__).with_name("mixr.json")))
    ap.add_argument("--minutes", type=float, default=2.0)
    args = ap.parse_args()
    dashboard = json.loads(Path(args.dashboard).read_text())
    panels = {p["title"]: p for p in dashboard["panels"] if p.get("type") != "row"}
    end = time.time()
    start = end - args.minutes * 60
    step = max(1, round((end - start) / 120))
    rows = math.ceil(len(MAIN_PANELS) / COLS)
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{COLS * W}" height="{rows * H + 30}" '
           f'font-family="sans-serif"><rect width="100%" height="100%" fill="#f4f5f5"/>',
           f'<text x="10" y="20" font-size="15">{html.escape(dashboard["title"])} dashboard: '
           f'{time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(end))}, last {args.minutes:g} min</text>']
    for i, title in enumerate(MAIN_PANELS):
        panel = panels[title]
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        series = []
        for target in panel["targets"]:
            for s in query_range(args.prometheus, target["expr"], start, end, step):
                pts = [(float(t), float(v)) for t, v in s["values"] if not math.isnan(float(v))]
                # Counters that never moved (gRPC codes nobody got) only crowd the legend.
                if pts and max(v for _, v in pts) > 0:
                    series.append((legend(target.get("legendFormat"), s["metric"]), pts))
        series.sort(key=lambda s: -max(v for _, v in s[1]))
        svg += chart((i % COLS) * W + 5, (i // COLS) * H + 30, title, unit, series[:MAX_SERIES], start, end)
    svg.append("</svg>")
    Path(args.output).write_text("\n".join(svg) + "\n")


if __name__ == "__main__":
    main()
