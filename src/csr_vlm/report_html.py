"""report.html: one self-contained page per run directory, written by `csr report` beside report.md.

Everything is inside the one file, so it opens offline in any browser, from anywhere: the styles and the
script (csr_vlm/report_page/), the run's data as JSON (report_data.page_data), the report's plots as embedded
PNGs (report_*.png, written by report.py just before) and the pair histograms as inline SVG. The test images
are embedded as small JPEG thumbnails rather than linked: a run directory holds no images of its own (its
files name them by absolute paths on the machine that ran it), so links would break as soon as the report is
copied, mailed or opened on another machine; at 112 px a thumbnail costs ~2-4 KB, 1,000 of them a few MB.
"""

from __future__ import annotations

import base64
import json
import os
import re
from importlib import resources
from pathlib import Path

from .report_data import page_data

FIGURES = (("report_metrics.png", "Hallucination metrics per round"),
           ("report_r_i.png", "Image relevance (R_I) of chosen vs rejected answers"),
           ("report_margin.png", "Reward margin of the preference pairs"),
           ("report_train.png", "DPO training"))
"""The plots report.py draws, embedded in the overview when they exist."""


def _asset(name: str) -> str:
    return resources.files("csr_vlm").joinpath(f"report_page/{name}").read_text(encoding="utf-8")


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def figures_html(run_dir: Path) -> str:
    """<figure>s with the report's PNGs as data: URIs (those that exist)."""
    parts = []
    for name, title in FIGURES:
        path = run_dir / name
        if path.is_file():
            data = base64.b64encode(path.read_bytes()).decode()
            parts.append(f'<figure><figcaption>{_escape(title)}</figcaption>'
                         f'<img alt="{_escape(title)}" src="data:image/png;base64,{data}"></figure>')
    return "\n".join(parts)


HISTOGRAM_SIZE = (420, 190)
"""Width and height of a histogram's SVG, in pixels."""


def histogram_svg(series: list[tuple[str, str, list[float]]], title: str, xlabel: str, bins: int = 20,
                  marker: float | None = None, marker_label: str = "") -> str:
    """A histogram as inline SVG: series of (label, colour, values) over shared bins, overlaid; a dashed line at
    `marker` (tau). Empty string when there are no values."""
    width, height = HISTOGRAM_SIZE
    values = [v for _, _, vs in series for v in vs if isinstance(v, (int, float))]
    if not values:
        return ""
    ends = values + ([marker] if marker is not None else [])
    lo, hi = min(ends), max(ends)
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    step = (hi - lo) / bins
    counts = []
    for _, _, vs in series:
        c = [0] * bins
        for v in vs:
            if isinstance(v, (int, float)):
                c[min(bins - 1, int((v - lo) / step))] += 1
        counts.append(c)
    top = max(max(c) for c in counts) or 1
    left, right, up, down = 34, 22, 36, 34
    pw, ph = width - left - right, height - up - down
    bar = max(pw / bins - 1, 1)

    def x(v: float) -> float:
        return left + (v - lo) / (hi - lo) * pw

    def text(at_x: float, at_y: float, body: str, size: int = 10, extra: str = "") -> str:
        return f'<text x="{at_x:.1f}" y="{at_y:.1f}" font-size="{size}"{extra}>{_escape(body)}</text>'

    middle = ' text-anchor="middle"'
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
            f'aria-label="{_escape(title)}"><title>{_escape(title)}</title>')
    out = [head, text(width / 2, 15, title, 13, middle)]
    for (label, colour, _), c in zip(series, counts):
        for i, n in enumerate(c):
            if n:
                h = n / top * ph
                tip = f"{label}: {n} in [{lo + i * step:.2f}, {lo + (i + 1) * step:.2f})"
                out.append(f'<rect x="{x(lo + i * step):.1f}" y="{up + ph - h:.1f}" width="{bar:.1f}" '
                           f'height="{h:.1f}" fill="{colour}" fill-opacity="0.55">'
                           f'<title>{_escape(tip)}</title></rect>')
    out.append(f'<line x1="{left}" y1="{up + ph}" x2="{left + pw}" y2="{up + ph}" stroke="#555"/>')
    out += [text(x(v), up + ph + 13, f"{v:.2f}", 10, middle) for v in (lo, (lo + hi) / 2, hi)]
    out += [text(left + pw / 2, height - 4, xlabel, 11, middle), text(4, up + 8, str(top))]
    if marker is not None:
        out.append(f'<line x1="{x(marker):.1f}" y1="{up}" x2="{x(marker):.1f}" y2="{up + ph}" stroke="#222" '
                   'stroke-dasharray="4 3"/>')
        out.append(text(x(marker) + 3, up + 10, marker_label))
    for i, (label, colour, vs) in enumerate(series):  # the legend: one line under the title
        out.append(text(left + 4 + 120 * i, 29, f"\u25a0 {label} ({len(vs)})", 11, f' fill="{colour}"'))
    return "".join(out) + "</svg>"


def round_histograms(rnd: dict) -> str:
    """The histograms of one round's pairs: the reward margin, and R_I of the chosen and the rejected answers'
    sentences against tau (the sentences are what the reward compares with tau; the answers' mean R_I when the
    candidates' sentences are missing)."""
    pairs = [p for p in rnd["pairs"] if not p.get("anc")]  # an anchor compares nothing
    margin = histogram_svg([("pairs", "#2f6fdd", [p["m"] for p in pairs if p.get("m") is not None])],
                           f"Reward margin, round {rnd['round']}", "reward(chosen) - reward(rejected)")
    sentences = {side: [s[2] for p in pairs for s in p[side].get("s", []) if s[0] and s[2] is not None]
                 for side in "cr"}  # s[0] == "": the answer's stop, scored neutral (R_I = tau)
    if sentences["c"] or sentences["r"]:
        chosen, rejected, what = sentences["c"], sentences["r"], "R_I of each sentence"
    else:
        chosen = [p["cri"] for p in pairs if p.get("cri") is not None]
        rejected = [p["rri"] for p in pairs if p.get("rri") is not None]
        what = "R_I (mean over the answer's sentences)"
    r_i = histogram_svg([("chosen", "#1e7b34", chosen), ("rejected", "#b3261e", rejected)],
                        f"R_I of chosen and rejected answers, round {rnd['round']}", what, marker=rnd.get("tau"),
                        marker_label="tau")
    return margin + r_i


def render(data: dict, figures: str = "") -> str:
    """The page: template + styles + script + data (JSON in a script tag, '</' escaped so it cannot end it)."""
    for rnd in data.get("pairs", []):
        rnd["hist"] = round_histograms(rnd)
    blob = json.dumps(data, separators=(",", ":"), ensure_ascii=False).replace("</", "<\\/").replace("<!--", "<\\!--")
    values = {"CSS": _asset("page.css"), "JS": _asset("page.js"), "FIGURES": figures,
              "TITLE": _escape(str(data.get("run", ""))), "DATA": blob}
    # one pass, so a token inside the data or a script is never replaced in turn
    return re.sub(r"__(CSS|JS|FIGURES|TITLE|DATA)__", lambda m: values[m.group(1)], _asset("page.html"))


def write_html(run_dir: str | Path, synonyms: str | None = None, thumbs: bool = True) -> Path:
    """Write run_dir/report.html (atomically) and return its path; a broken run directory gives a page that says
    what is missing."""
    run_dir = Path(run_dir)
    html = render(page_data(run_dir, synonyms, thumbs), figures_html(run_dir))
    out = run_dir / "report.html"
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(html, encoding="utf-8")
    os.replace(tmp, out)
    return out
