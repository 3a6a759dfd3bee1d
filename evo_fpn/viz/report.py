"""The report of ``python -m evo_fpn.search``: the found neck against torchvision's FPN on your data.

``report.html`` is one self-contained file (plotly.js inlined, the architecture as an inline
SVG data URI) that opens offline; ``report.md`` has the same tables for a README or an issue.
Both are built from a :class:`ReportData`, plain values gathered by the command, so the page
needs no storage and no model to render.
"""

from __future__ import annotations

import html
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import plotly.graph_objects as go

from evo_fpn import record
from evo_fpn.arch.spec import ArchSpec
from evo_fpn.viz import figures
from evo_fpn.viz.pages import _CSS, svg_img
from evo_fpn.viz.study_data import StudyData

FOUND, FPN = "found", "torchvision_fpn"
LABELS = {FOUND: "found neck", FPN: "torchvision FPN"}


@dataclass
class ReportData:
    """Everything the report shows, as plain values."""

    name: str
    spec: ArchSpec
    runs: Mapping[str, Sequence[Mapping[str, Any]]]
    """Per architecture (``found``, ``torchvision_fpn``): its end-to-end runs' metrics, by seed."""
    costs: Mapping[str, Mapping[str, Any]]
    """Per architecture: neck and total params and FLOPs (:func:`evo_fpn.model.cost.detector_costs`)."""
    latency: Mapping[str, Mapping[str, Any]]
    """Per architecture: ``latency_ms``, ``latency_std_ms``, ``latency_device`` on this machine."""
    finalists: Sequence[Mapping[str, Any]]
    """Rows: ``trial``, ``origin``, ``ap`` (proxy), ``ap50``, ``neck_flops``, ``neck_params``, ``screen_ap``."""
    settings: Mapping[str, Any]
    command: str
    screen: StudyData | None = None
    notes: list[str] = field(default_factory=list)


def _mean(runs: Sequence[Mapping[str, Any]], key: str) -> float | None:
    values = [float(r[key]) for r in runs if isinstance(r.get(key), int | float)]
    return statistics.fmean(values) if values else None


def _std(runs: Sequence[Mapping[str, Any]], key: str) -> float | None:
    values = [float(r[key]) for r in runs if isinstance(r.get(key), int | float)]
    return statistics.stdev(values) if len(values) >= 2 else None


def _num(value: Any, fmt: str, scale: float = 1.0) -> str:
    return "–" if value is None else fmt.format(value / scale)


def comparison_rows(data: ReportData) -> list[tuple[str, str, str, str]]:
    """(metric, found, FPN, found - FPN) as display strings: the AP breakdown (mean over seeds,
    +- std), per-seed AP, costs and latency."""
    rows: list[tuple[str, str, str, str]] = []
    found, fpn = data.runs.get(FOUND, []), data.runs.get(FPN, [])
    for key in record.AP_METRICS:
        a, b = _mean(found, key), _mean(fpn, key)
        sa, sb = _std(found, key), _std(fpn, key)
        cell = lambda m, s: "–" if m is None else f"{m:.4f}" + (f" ± {s:.4f}" if s is not None else "")  # noqa: E731
        diff = f"{a - b:+.4f}" if a is not None and b is not None else "–"
        rows.append((record.AP_LABELS[key], cell(a, sa), cell(b, sb), diff))
    seeds = lambda runs: ", ".join(f"{r['seed']}: {float(r['ap']):.4f}" for r in runs) or "–"  # noqa: E731
    rows.append(("AP per seed", seeds(found), seeds(fpn), ""))
    for key, label, scale, fmt in (
        ("neck_flops", "neck MFLOPs / image", 1e6, "{:.1f}"),
        ("total_flops", "total GFLOPs / image", 1e9, "{:.3f}"),
        ("neck_params", "neck params", 1, "{:,.0f}"),
        ("total_params", "total params", 1, "{:,.0f}"),
    ):
        a, b = data.costs.get(FOUND, {}).get(key), data.costs.get(FPN, {}).get(key)
        ratio = f"x{a / b:.2f}" if a and b else ""
        rows.append((label, _num(a, fmt, scale), _num(b, fmt, scale), ratio))
    a, b = data.latency.get(FOUND, {}), data.latency.get(FPN, {})
    lat = lambda d: "–" if "latency_ms" not in d else f"{d['latency_ms']:.1f} ± {d.get('latency_std_ms', 0):.1f}"  # noqa: E731
    ratio = f"x{a['latency_ms'] / b['latency_ms']:.2f}" if a.get("latency_ms") and b.get("latency_ms") else ""
    device = a.get("latency_device") or b.get("latency_device") or "this machine"
    rows.append((f"latency ms, batch 1 ({device})", lat(a), lat(b), ratio))
    return rows


def finalist_rows(data: ReportData) -> list[tuple[str, ...]]:
    out = []
    for i, f in enumerate(data.finalists, 1):
        out.append(
            (
                str(i),
                f"#{f['trial']}",
                str(f.get("origin") or "–"),
                _num(f.get("ap"), "{:.4f}"),
                _num(f.get("ap50"), "{:.4f}"),
                _num(f.get("screen_ap"), "{:.4f}"),
                _num(f.get("neck_flops"), "{:.1f}", 1e6),
                _num(f.get("neck_params"), "{:,.0f}"),
                "winner" if f.get("winner") else "",
            )
        )
    return out


FINALIST_HEAD = (
    "rank", "trial", "from the screen", "proxy AP", "AP50", "supernet AP", "neck MFLOPs", "neck params", "",
)  # fmt: skip
COMPARE_HEAD = ("", "found neck", "torchvision FPN", "found vs FPN")


def headline(data: ReportData) -> str:
    a, b = _mean(data.runs.get(FOUND, []), "ap"), _mean(data.runs.get(FPN, []), "ap")
    n = min(len(data.runs.get(FOUND, [])), len(data.runs.get(FPN, [])))
    if a is None or b is None:
        return "The end-to-end comparison has not finished: rerun the command to complete it."
    verdict = "above" if a > b else "below" if a < b else "level with"
    return (
        f"On this data the found neck scored AP {a:.4f} against torchvision FPN's {b:.4f} ({a - b:+.4f}, "
        f"{verdict} FPN), trained end to end with the same recipe, mean of {n} seed(s)."
    )


def _settings_line(data: ReportData) -> str:
    return ", ".join(f"{k} {v}" for k, v in data.settings.items())


def report_md(data: ReportData) -> str:
    """The report's tables as Markdown."""
    lines = [f"# evo-fpn search {data.name}", "", headline(data), "", f"Settings: {_settings_line(data)}.", ""]
    lines += ["| " + " | ".join(COMPARE_HEAD) + " |", "|---|--:|--:|--:|"]
    lines += ["| " + " | ".join(row) + " |" for row in comparison_rows(data)]
    lines += ["", "## Finalists (stand-alone proxy)", ""]
    lines += ["| " + " | ".join(FINALIST_HEAD) + " |", "|--:|--:|---|--:|--:|--:|--:|--:|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in finalist_rows(data)]
    lines += ["", f"Reproduce: `{data.command}`", ""]
    lines += [f"Note: {n}" for n in data.notes]
    return "\n".join(lines).rstrip() + "\n"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table class='summary'><tr>{th}</tr>{body}</table>"


def seeds_figure(data: ReportData) -> go.Figure | None:
    """AP of each seed, found neck against FPN (the spread shows whether the gap is seed noise)."""
    if not any(data.runs.values()):
        return None
    fig = go.Figure()
    for i, arch in enumerate((FOUND, FPN)):
        runs = data.runs.get(arch, [])
        fig.add_trace(
            go.Bar(
                x=[f"seed {r['seed']}" for r in runs],
                y=[float(r["ap"]) for r in runs],
                name=LABELS[arch],
                marker_color=figures.PALETTE[i],
            )
        )
    top = max((float(r["ap"]) for runs in data.runs.values() for r in runs), default=0.0)
    fig.update_layout(title="End-to-end AP per seed", yaxis_title="AP", barmode="group", height=360)
    fig.update_yaxes(range=[0, 1.15 * top if top > 0 else 0.01])  # bars start at 0, or their lengths mislead
    return fig


def report_html(data: ReportData) -> str:
    """The whole report as one HTML file (plotly.js inlined once, so it works from file:// offline)."""
    figs = [f for f in (seeds_figure(data), _screen_figure(data)) if f is not None]
    divs = []
    for i, fig in enumerate(figs):
        divs.append(
            fig.to_html(
                full_html=False,
                include_plotlyjs=i == 0,  # True: the library itself, inline; the others reuse it
                div_id=f"fig{i}",
                default_height="380px",
                config={"displaylogo": False, "responsive": True},
            )
        )
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    notes = "".join(f"<p class='note'>{html.escape(n)}</p>" for n in data.notes)
    body = (
        f"<h1>evo-fpn search {html.escape(data.name)}</h1>"
        f"<p><b>{html.escape(headline(data))}</b></p>"
        f"<p class='note'>{html.escape(_settings_line(data))}; generated {stamp}</p>"
        "<h2>Found neck against torchvision FPN (end to end)</h2>"
        + _table(COMPARE_HEAD, comparison_rows(data))
        + notes
        + "<h2>The found neck</h2>"
        + f"<div class='arch-row'><figure class='arch-card'>{svg_img(data.spec, title='found neck')}"
        f"<figcaption>spec hash {html.escape(data.spec.canonical_hash())} (best.json)</figcaption></figure></div>"
        + "<h2>Curves</h2><div class='grid'>"
        + "".join(f"<div class='figure'>{d}</div>" for d in divs)
        + "</div><h2>Finalists: the best screened architectures trained stand-alone</h2>"
        + _table(FINALIST_HEAD, finalist_rows(data))
        + f"<h2>Reproduce</h2><pre>{html.escape(data.command)}</pre>"
    )
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>evo-fpn search {html.escape(data.name)}</title><style>{_CSS} pre {{ white-space: pre-wrap; }}"
        f"</style></head><body>{body}</body></html>\n"
    )


def _screen_figure(data: ReportData) -> go.Figure | None:
    if data.screen is None or not any(t.is_complete for t in data.screen.trials):
        return None
    fig = figures.best_so_far_figure([data.screen])
    fig.update_layout(title="Screen: best-so-far supernet AP vs trials", showlegend=False)
    return fig


__all__ = ["FOUND", "FPN", "ReportData", "comparison_rows", "finalist_rows", "headline", "report_html", "report_md"]
