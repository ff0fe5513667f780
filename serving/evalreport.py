"""`reelvec eval --compare A B --report DIR`: one self-contained HTML page (inline SVG plots, no scripts, no
network fetches) with the metric table, the intervals of B − A, per-query outcomes and the ablations."""

from __future__ import annotations

from html import escape
from pathlib import Path

from serving.evalcompare import PRIMARY, Comparison
from serving.evalstats import LABELS, METRICS

_CSS = (
    "body{font:14px system-ui,sans-serif;margin:2rem;max-width:960px;color:#222}"
    "table{border-collapse:collapse;margin:1rem 0}td,th{border-bottom:1px solid #ddd;padding:4px 10px;"
    "text-align:right}td:first-child,th:first-child{text-align:left}.win{color:#1a7f37}.loss{color:#cf222e}"
    "svg text{font:12px system-ui,sans-serif}"
)


def _svg(width: int, height: int, body: list[str], label: str) -> str:
    return f'<svg role="img" aria-label="{escape(label)}" width="{width}" height="{height}">{"".join(body)}</svg>'


def interval_plot(c: Comparison) -> str:
    """Forest plot: per metric, B − A (dot) and its bootstrap interval (line) around a zero line."""
    lo = min([i.low for i in c.intervals] + [-0.05])
    hi = max([i.high for i in c.intervals] + [0.05])
    w, left, row = 640, 110, 28

    def x(v: float) -> float:
        return left + (v - lo) / (hi - lo) * (w - left - 20)

    body = [f'<line x1="{x(0):.1f}" y1="0" x2="{x(0):.1f}" y2="{row * len(c.intervals)}" stroke="#888"/>']
    for n, i in enumerate(c.intervals):
        y = row * n + row / 2
        color = "#cf222e" if i.high < 0 else "#1a7f37" if i.low > 0 else "#555"
        body += [
            f'<text x="4" y="{y + 4:.1f}">{LABELS[i.metric]}</text>',
            f'<line x1="{x(i.low):.1f}" y1="{y:.1f}" x2="{x(i.high):.1f}" y2="{y:.1f}" stroke="{color}" '
            'stroke-width="3"/>',
            f'<circle cx="{x(i.diff):.1f}" cy="{y:.1f}" r="5" fill="{color}"/>',
        ]
    body.append(f'<text x="{x(0) - 4:.1f}" y="{row * len(c.intervals) + 14}">0</text>')
    body.append(f'<text x="{x(lo):.1f}" y="{row * len(c.intervals) + 14}">{lo:+.2f}</text>')
    body.append(f'<text x="{x(hi) - 30:.1f}" y="{row * len(c.intervals) + 14}">{hi:+.2f}</text>')
    return _svg(w, row * len(c.intervals) + 20, body, "B minus A per metric with confidence intervals")


def per_query_plot(c: Comparison) -> str:
    """Bars of B − A on the primary metric, one per query, sorted."""
    diffs = sorted(q["b"][PRIMARY] - q["a"][PRIMARY] for q in c.per_query)
    w, h = 640, 160
    bw = max(1.0, (w - 20) / max(len(diffs), 1))
    mid = h / 2
    body = [f'<line x1="10" y1="{mid}" x2="{w - 10}" y2="{mid}" stroke="#888"/>']
    body += ['<text x="12" y="12">B better ↑</text>', f'<text x="12" y="{h - 4}">B worse ↓</text>']
    for n, d in enumerate(diffs):
        bar = abs(d) * (mid - 6)
        y = mid - bar if d > 0 else mid
        color = "#1a7f37" if d > 0 else "#cf222e"
        body.append(f'<rect x="{10 + n * bw:.1f}" y="{y:.1f}" width="{max(bw - 1, 1):.1f}" height="{bar:.1f}" '
                    f'fill="{color}"/>')  # fmt: skip
    return _svg(w, h, body, f"per-query change in {LABELS[PRIMARY]}, sorted")


def ablation_plot(c: Comparison) -> str:
    """Grouped bars of the primary metric: each version fused as is, and without each modality."""
    groups = [("all", {"a": c.a.metrics[PRIMARY], "b": c.b.metrics[PRIMARY]})]
    groups += [(f"−{m}", {s: v[PRIMARY] for s, v in sides.items()}) for m, sides in c.ablations.items()]
    w, h, gw = 640, 180, 600 / max(len(groups), 1)
    body = ['<text x="20" y="12" fill="#8c959f">■ A</text>', '<text x="60" y="12" fill="#0969da">■ B</text>']
    for n, (name, vals) in enumerate(groups):
        for s, (side, color) in enumerate((("a", "#8c959f"), ("b", "#0969da"))):
            if side in vals:
                bar = vals[side] * (h - 40)
                x0 = 20 + n * gw + s * gw * 0.4
                body.append(f'<rect x="{x0:.1f}" y="{h - 20 - bar:.1f}" width="{gw * 0.38:.1f}" height="{bar:.1f}" '
                            f'fill="{color}"/>')  # fmt: skip
        body.append(f'<text x="{20 + n * gw:.1f}" y="{h - 4}">{escape(name)}</text>')
    return _svg(w, h, body, f"{LABELS[PRIMARY]} with and without each modality (grey A, blue B)")


def _metric_rows(c: Comparison) -> str:
    pct = f"{c.confidence:.0%}"
    head = f"<tr><th>metric</th><th>A</th><th>B</th><th>B − A</th><th>{pct} CI</th><th>wins / losses / ties</th></tr>"
    rows = [
        f"<tr><td>{LABELS[i.metric]}</td><td>{i.a:.3f}</td><td>{i.b:.3f}</td><td>{i.diff:+.3f}</td>"
        f"<td>[{i.low:+.3f}, {i.high:+.3f}]</td><td>{i.wins} / {i.losses} / {i.ties}</td></tr>"
        for i in c.intervals
    ]
    return f"<table>{head}{''.join(rows)}</table>"


def _query_rows(c: Comparison) -> str:
    head = f"<tr><th>query</th><th>{LABELS[PRIMARY]} A</th><th>B</th><th>outcome</th></tr>"
    rows = [
        f"<tr><td>{escape(q['query'])}</td><td>{q['a'][PRIMARY]:.3f}</td><td>{q['b'][PRIMARY]:.3f}</td>"
        f'<td class="{q["outcome"]}">{q["outcome"]}</td></tr>'
        for q in sorted(c.per_query, key=lambda q: q["b"][PRIMARY] - q["a"][PRIMARY])
    ]
    return f"<table>{head}{''.join(rows)}</table>"


def _ablation_rows(c: Comparison) -> str:
    head = "<tr><th>fused without</th>" + "".join(f"<th>{LABELS[m]} A</th><th>B</th>" for m in METRICS) + "</tr>"
    rows = []
    for m, sides in c.ablations.items():
        cells = "".join(
            f"<td>{sides['a'][k]:.3f}</td><td>{sides['b'][k]:.3f}</td>"
            if "a" in sides and "b" in sides
            else "<td>-</td><td>-</td>"
            for k in METRICS
        )
        rows.append(f"<tr><td>{escape(m)}</td>{cells}</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def write_report(c: Comparison, folder: Path) -> Path:
    """Write `folder/index.html` (created if needed) and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    o = c.outcomes()
    title = f"reelvec eval: {escape(c.b.version)} (B) vs {escape(c.a.version)} (A)"
    parts = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>",
        f"<meta name='viewport' content='width=device-width'><style>{_CSS}</style></head><body><h1>{title}</h1>",
        f"<p>{len(c.per_query)} queries; paired bootstrap over queries, {c.samples} resamples, seed {c.seed}. "
        f"Per query by {LABELS[PRIMARY]}: <span class='win'>{o['win']} wins</span>, "
        f"<span class='loss'>{o['loss']} losses</span>, {o['tie']} ties.</p>",
        *[f"<p><em>{escape(n)}</em></p>" for n in c.notes],
        "<h2>Metrics</h2>",
        _metric_rows(c),
        interval_plot(c),
        f"<h2>Per query ({LABELS[PRIMARY]}, B − A)</h2>",
        per_query_plot(c),
        _query_rows(c),
        "<h2>Ablations: fused without each modality</h2>",
        ablation_plot(c),
        _ablation_rows(c),
        "</body></html>",
    ]
    path = folder / "index.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
