"""Self-contained HTML pages of searches: one per study, and one comparing studies.

Each page is a single HTML file with plotly.js inlined, so it opens offline and can be
mailed or archived. The figures are :mod:`evo_fpn.viz.figures`; the architecture pictures
are inline SVG data URIs, so their ids stay private to each picture.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import plotly.graph_objects as go
import plotly.offline
from optuna.trial import TrialState

from evo_fpn import record
from evo_fpn.arch.draw import spec_to_svg
from evo_fpn.arch.spec import ArchSpec
from evo_fpn.samplers.evolution import mutation_of
from evo_fpn.study.analysis import rank_key
from evo_fpn.viz import figures
from evo_fpn.viz.study_data import StudyData, TrialRow, group_by_sampler, lineage, metric

_CSS = """
body { font-family: Helvetica, Arial, sans-serif; margin: 24px; color: #222; max-width: 1500px; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ddd; }
table.summary td, table.summary th, table.lineage td, table.lineage th {
  padding: 3px 10px; border-bottom: 1px solid #eee; text-align: left; vertical-align: middle; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(620px, 1fr)); gap: 12px; }
.arch-row { display: flex; flex-wrap: wrap; gap: 16px; }
.arch-card { margin: 0; border: 1px solid #ddd; border-radius: 6px; padding: 6px; background: #fff; }
.arch-card img { width: 560px; max-width: 100%; }
figcaption { font-size: 13px; text-align: center; }
.note { color: #666; font-size: 13px; }
"""


def _figure_div(fig: go.Figure | None, div_id: str, empty: str) -> str:
    if fig is None:
        return f'<div class="figure empty" id="{div_id}"><p class="note">{html.escape(empty)}</p></div>'
    body = fig.to_html(
        full_html=False,
        include_plotlyjs=False,
        div_id=div_id,
        default_height="420px",
        config={"responsive": True, "displaylogo": False},
    )
    return f'<div class="figure">{body}</div>'


def _page(title: str, body: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style>"
        # plotly.js inlined once: the page works offline and from file://
        f"<script type='text/javascript'>{plotly.offline.get_plotlyjs()}</script></head><body>"
        f"<h1>{html.escape(title)}</h1><p class='note'>generated {stamp} by python -m evo_fpn.dashboard</p>"
        f"{body}</body></html>\n"
    )


def _summary_rows(studies: Sequence[StudyData]) -> str:
    head = (
        "<tr><th>study</th><th>sampler</th><th>seed</th><th>complete</th><th>pruned</th><th>failed</th>"
        "<th>running</th><th>unique archs</th><th>best AP</th><th>best trial</th></tr>"
    )
    rows = []
    for d in studies:
        count = {s: sum(t.state == s for t in d.trials) for s in TrialState}
        best = d.best(1)
        _, uniq = figures.unique_architectures_curve(d)
        rows.append(
            "<tr>"
            f"<td>{html.escape(d.name)}</td><td>{html.escape(d.sampler)}</td>"
            f"<td>{'' if d.seed is None else d.seed}</td>"
            f"<td>{count[TrialState.COMPLETE]}</td><td>{count[TrialState.PRUNED]}</td><td>{count[TrialState.FAIL]}</td>"
            f"<td>{count[TrialState.RUNNING]}</td><td>{int(uniq[-1]) if len(uniq) else 0}</td>"
            f"<td>{f'{best[0].ap:.4f}' if best else '-'}</td><td>{best[0].number if best else '-'}</td>"
            "</tr>"
        )
    return f'<table class="summary">{head}{"".join(rows)}</table>'


def _objectives_note(data: StudyData) -> str:
    """What the study optimises and its budgets, one line (empty for a plain AP study)."""
    if len(data.value_names) == 1 and not data.budgets:
        return ""
    goals = ", ".join(f"{n} ({d.name.lower()})" for n, d in zip(data.value_names, data.directions, strict=True))
    caps = ", ".join(f"{b} = {v:.4g}" for b, v in data.budgets.items())
    over = len(data.over_budget())
    text = f"Objectives: {goals}." + (f" Budgets: {caps}; {over} trials were over them, never trained." if caps else "")
    return f"<p class='objectives'>{html.escape(text)}</p>"


def study_page(data: StudyData) -> str:
    """The HTML page of one study."""
    cost = record.LABELS.get(data.cost_name, data.cost_name)
    parts = [
        _summary_rows([data]),
        _objectives_note(data),
        "<p class='note'>Pruned trials carry an early AP (their last intermediate value): they are left out "
        "of best-so-far curves and of the Pareto front, and shown as grey crosses in AP vs cost. Trials over a "
        "budget were never trained: they have a cost but no AP, and are marked along the bottom edge.</p>",
        "<h2>Best so far</h2><div class='grid'>",
        _figure_div(figures.best_so_far_figure([data], x="trial"), "best-vs-trials", ""),
        _figure_div(figures.best_so_far_figure([data], x="time"), "best-vs-time", ""),
        "</div><h2>Cost and accuracy</h2><div class='grid'>",
        _figure_div(figures.ap_vs_flops_figure(data), "ap-vs-flops", f"No trial recorded {data.cost_name}."),
        f"</div><h2>Pareto front architectures (AP vs {html.escape(cost)}, cheapest first)</h2>",
        pareto_architectures_html(data),
        "<h2>Convergence</h2><div class='grid'>",
        _figure_div(figures.unique_architectures_figure([data]), "unique-archs", ""),
        _figure_div(figures.decision_frequency_figure(data), "decision-freq", "No trial has params."),
        "</div><h2>Best architectures</h2>",
        best_architectures_html(data, k=4),
    ]
    lineage_fig = figures.lineage_figure(data)
    if lineage_fig is not None:
        parts += [
            "<h2>Lineage of the best trial</h2>",
            _figure_div(lineage_fig, "lineage", ""),
            lineage_html(data),
        ]
    return _page(f"evo-fpn study {data.name}", "".join(parts))


def compare_page(studies: Sequence[StudyData]) -> str:
    """The HTML page overlaying several studies, grouped by sampler."""
    groups = group_by_sampler(studies)
    names = ", ".join(f"{s} ({len(m)})" for s, m in groups.items())
    parts = [
        f"<p>Samplers: {html.escape(names)}. Curves are the mean over a sampler's studies (seeds), "
        "bands span their minimum to maximum; a sampler's curve stops where its shortest study ends.</p>",
        _summary_rows(studies),
        "<h2>Best so far, grouped by sampler</h2><div class='grid'>",
        _figure_div(figures.best_so_far_figure(studies, x="trial", group=True), "group-best-vs-trials", ""),
        _figure_div(figures.best_so_far_figure(studies, x="time", group=True), "group-best-vs-time", ""),
        "</div><h2>Every study</h2><div class='grid'>",
        _figure_div(figures.best_so_far_figure(studies, x="trial"), "best-vs-trials", ""),
        _figure_div(figures.unique_architectures_figure(studies), "unique-archs", ""),
        "</div><h2>Best architecture of each sampler</h2><div class='arch-row'>",
    ]
    for sampler, members in groups.items():
        tops = [(d.best(1)[0], d) for d in members if d.best(1)]
        if not tops:
            continue
        t, d = min(tops, key=lambda td: (rank_key(td[0].ap, td[1].direction), td[0].number))
        spec = d.spec(t)
        if spec is None:
            continue
        caption = f"{sampler}: {d.name} trial {t.number}, AP {t.ap:.4f}"
        parts.append(
            f'<figure class="arch-card">{svg_img(spec, caption)}'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    parts.append("</div>")
    return _page("evo-fpn comparison: " + ", ".join(d.name for d in studies), "".join(parts))


def write_study_page(data: StudyData, out: Path) -> Path:
    """Write :func:`study_page` of ``data`` as ``out/NAME.html``; return its path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{_safe(data.name)}.html"
    path.write_text(study_page(data), encoding="utf-8")
    return path


def write_compare_page(studies: Sequence[StudyData], out: Path) -> Path:
    """Write :func:`compare_page` of ``studies`` as ``out/compare-NAMES.html``; return its path."""
    out.mkdir(parents=True, exist_ok=True)
    label = "-".join(_safe(d.name) for d in studies)
    if len(label) > 80:
        label = f"{len(studies)}-studies"
    path = out / f"compare-{label}.html"
    path.write_text(compare_page(studies), encoding="utf-8")
    return path


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "study"


# ---------------------------------------------------------------------------------------
# architectures and lineage
# ---------------------------------------------------------------------------------------
def svg_img(spec: ArchSpec, title: str = "", *, width: int | None = None) -> str:
    """An ``<img>`` tag holding the spec's SVG as a data URI (ids stay private to each picture)."""
    svg = spec_to_svg(spec, title=title)
    uri = "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")
    size = f' width="{width}"' if width else ""
    return f'<img class="arch" alt="{html.escape(title or "architecture")}"{size} src="{uri}">'


def best_architectures_html(data: StudyData, *, k: int = 4) -> str:
    """The ``k`` best distinct architectures side by side, each captioned with its AP."""
    best = data.best(k)
    if not best:
        return '<p class="empty">No complete trial yet.</p>'
    cards = []
    for rank, t in enumerate(best, 1):
        spec = data.spec(t)
        flops = metric(t, "neck_flops")
        caption = f"#{rank} · trial {t.number} · AP {t.ap:.4f}"
        if flops is not None:
            caption += f" · {flops / 1e9:.2f} neck GFLOPs"
        cards.append(_arch_card(data, t, spec, caption))
    return '<div class="arch-row">' + "".join(cards) + "</div>"


def _arch_card(data: StudyData, t: TrialRow, spec: ArchSpec | None, caption: str) -> str:
    """One trial's architecture picture with its caption and spec hash."""
    pic = svg_img(spec, f"trial {t.number}") if spec is not None else "<p>(no spec recorded)</p>"
    return (
        f'<figure class="arch-card" data-trial="{t.number}">{pic}'
        f"<figcaption>{html.escape(caption)}<br><code>{html.escape(data.spec_hash(t) or '')}</code>"
        "</figcaption></figure>"
    )


def pareto_architectures_html(data: StudyData, *, k: int = 6) -> str:
    """The architectures on the Pareto front of AP against the study's cost, cheapest first
    (at most ``k``, spread over the front), each captioned with its AP and cost."""
    front = data.pareto()
    if not front:
        return '<p class="empty">No complete trial with costs yet.</p>'
    if len(front) > k:
        front = [front[round(i * (len(front) - 1) / (k - 1))] for i in range(k)]
    label = record.LABELS.get(data.cost_name, data.cost_name)
    cards = []
    for t in front:
        spec = data.spec(t)
        cost = record.display_value(data.cost_name, metric(t, data.cost_name) or 0.0)
        caption = f"trial {t.number} · AP {t.ap:.4f} · {cost:.4g} {label}"
        cards.append(_arch_card(data, t, spec, caption))
    return '<div class="arch-row pareto">' + "".join(cards) + "</div>"


def lineage_html(data: StudyData, *, max_rows: int = 12) -> str:
    """The best trial's ancestry as a table: trial, AP, mutation, picture (newest last)."""
    chain = lineage(data)
    if len(chain) < 2:
        return ""
    shown = chain[-max_rows:]
    rows = []
    for t in shown:
        spec = data.spec(t)
        ap = f"{t.ap:.4f}" if t.is_complete else t.state.name.lower()
        pic = svg_img(spec, f"trial {t.number}", width=300) if spec is not None else ""
        mutation = html.escape(mutation_of(t.user_attrs, "(first of its line)") or "")
        rows.append(f"<tr><td>{t.number}</td><td>{ap}</td><td><code>{mutation}</code></td><td>{pic}</td></tr>")
    more = f"<p>{len(chain) - len(shown)} older ancestors not shown.</p>" if len(chain) > len(shown) else ""
    return (
        f'{more}<table class="lineage"><tr><th>trial</th><th>AP</th><th>mutation from parent</th>'
        f"<th>architecture</th></tr>{''.join(rows)}</table>"
    )
