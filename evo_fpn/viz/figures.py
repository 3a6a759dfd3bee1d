"""Plotly figures of searches, drawn from :class:`~evo_fpn.viz.study_data.StudyData` snapshots.

What counts as AP, best, cost and a sampler group is set in :mod:`evo_fpn.viz.study_data`.
Conventions of the drawing:

* **Pruned trials are not in best-so-far curves nor in the Pareto front**: their value is an
  early AP (the last reported intermediate value), not comparable with a final AP. The AP vs
  cost figure shows them as grey crosses labelled "pruned (early AP)".
* Trials over a budget were never trained and have no AP: the AP vs cost figure marks them
  along its bottom edge ("over budget"), with the budget as a dashed line.
* **Trial axis** is the trial number (creation order, all states); **time axis** is hours
  since the study's first trial started, at each trial's completion.
* **Y axes fit the data**, a constant series included: plotly's own autorange draws a single
  value as a flat line in the middle of a +-1 axis, which reads as "nothing found".
"""

from __future__ import annotations

import html
import math
import numbers
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from optuna.study import StudyDirection
from optuna.trial import TrialState

from evo_fpn import record
from evo_fpn.limits import BUDGET_METRICS
from evo_fpn.samplers.evolution import mutation_of
from evo_fpn.study.analysis import best_so_far, pareto_front
from evo_fpn.viz.study_data import StudyData, group_by_sampler, lineage, metric

# One colour per sampler group, stable across pages.
PALETTE = ("#4477AA", "#EE6677", "#228833", "#CCBB44", "#66CCEE", "#AA3377", "#BBBBBB", "#000000")
_LAYOUT = dict(template="plotly_white", margin=dict(l=60, r=20, t=50, b=50), height=420, title_font_size=15)


# ---------------------------------------------------------------------------------------
# best-so-far curves
# ---------------------------------------------------------------------------------------
def best_so_far_by_trial(data: StudyData) -> tuple[np.ndarray, np.ndarray]:
    """``(trial numbers, best complete AP up to and including that trial)``; NaN before the first."""
    if not data.trials:
        return np.array([]), np.array([])
    n = data.trials[-1].number + 1
    ap: list[float | None] = [None] * n
    for t in data.complete:
        ap[t.number] = t.ap
    return np.arange(n), best_so_far(ap, data.direction)


def best_so_far_by_time(data: StudyData) -> tuple[np.ndarray, np.ndarray]:
    """``(hours since the study started, best complete AP)`` at each completion, in time order."""
    t0 = data.start_time()
    done = sorted((t for t in data.complete if t.complete is not None), key=lambda r: r.complete)  # type: ignore[arg-type,return-value]
    if t0 is None or not done:
        return np.array([]), np.array([])
    hours = np.array([(t.complete - t0).total_seconds() / 3600.0 for t in done])  # type: ignore[operator]
    return hours, best_so_far([t.ap for t in done], data.direction)


def _plain(values: np.ndarray) -> list[float | int | None]:
    """Plain JSON numbers (NaN -> null), not plotly's base64 typed arrays: readable in storage."""
    return [None if isinstance(v, float) and math.isnan(v) else v for v in values.tolist()]


def _step_at(xs: np.ndarray, ys: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Value of the right-continuous step function (xs, ys) at ``grid``; NaN before xs[0]."""
    idx = np.searchsorted(xs, grid, side="right") - 1
    out = np.where(idx >= 0, ys[np.clip(idx, 0, None)], np.nan)
    return out


def best_so_far_figure(studies: Sequence[StudyData], *, x: str = "trial", group: bool = False) -> go.Figure:
    """Best-so-far AP against trials (``x="trial"``) or wall-clock hours (``x="time"``).

    One line per study, or with ``group=True`` one line per sampler: the mean over its
    studies (seeds) with a band from the minimum to the maximum. A group's curve covers the
    range all of its studies have reached (the mean is taken over those that have).
    """
    if x not in ("trial", "time"):
        raise ValueError(f"x must be 'trial' or 'time', got {x!r}")
    curve = best_so_far_by_trial if x == "trial" else best_so_far_by_time
    unit, scale = "hours", 1.0
    if x == "time":
        span = max((float(c[0][-1]) for c in map(curve, studies) if len(c[0])), default=0.0)
        unit, scale = _time_unit(span)
        raw = curve
        curve = lambda d: (raw(d)[0] * scale, raw(d)[1])  # noqa: E731
    fig = go.Figure()
    if not group:
        for i, data in enumerate(studies):
            xs, ys = curve(data)
            fig.add_trace(
                go.Scatter(
                    x=_plain(xs),
                    y=_plain(ys),
                    mode="lines",
                    line=dict(shape="hv", color=PALETTE[i % len(PALETTE)]),
                    name=data.name,
                    hovertemplate=f"{html.escape(data.name)}<br>%{{x}}: best AP %{{y:.4f}}<extra></extra>",
                )
            )
    else:
        for i, (sampler, members) in enumerate(group_by_sampler(studies).items()):
            curves = [c for c in (curve(d) for d in members) if len(c[0])]
            if not curves:
                continue
            end = min(float(c[0][-1]) for c in curves)
            start = min(float(c[0][0]) for c in curves)
            grid = np.arange(0, int(end) + 1) if x == "trial" else np.linspace(start, end, 200)
            stack = np.vstack([_step_at(c[0], c[1], grid) for c in curves])
            with np.errstate(all="ignore"):
                valid = ~np.all(np.isnan(stack), axis=0)
                grid, stack = grid[valid], stack[:, valid]
                mean = np.nanmean(stack, axis=0)
                lo, hi = np.nanmin(stack, axis=0), np.nanmax(stack, axis=0)
            colour = PALETTE[i % len(PALETTE)]
            label = f"{sampler} (n={len(curves)})"
            fig.add_trace(
                go.Scatter(
                    x=_plain(np.concatenate([grid, grid[::-1]])),
                    y=_plain(np.concatenate([hi, lo[::-1]])),
                    fill="toself",
                    fillcolor=_rgba(colour, 0.18),
                    line=dict(width=0, shape="hv"),
                    hoverinfo="skip",
                    showlegend=False,
                    legendgroup=sampler,
                    name=f"{sampler} min-max",
                )
            )
            fig.add_trace(
                go.Scatter(
                    x=_plain(grid),
                    y=_plain(mean),
                    mode="lines",
                    line=dict(color=colour, shape="hv", width=2.5),
                    name=label,
                    legendgroup=sampler,
                    hovertemplate=f"{html.escape(label)}<br>%{{x}}: mean best AP %{{y:.4f}}<extra></extra>",
                )
            )
    xtitle = "trial number" if x == "trial" else f"wall-clock {unit} since the first trial started"
    what = "mean, min-max over seeds" if group else "pruned excluded"
    fig.update_layout(
        title=f"Best-so-far AP vs {'trials' if x == 'trial' else 'time'} ({what})",
        xaxis_title=xtitle,
        yaxis_title="best AP so far",
        **_LAYOUT,
    )
    return fit_y_axis(fig)


def _time_unit(span_hours: float) -> tuple[str, float]:
    """A readable unit for a time axis spanning ``span_hours``: (name, factor from hours)."""
    if span_hours < 2 / 60:
        return "seconds", 3600.0
    if span_hours < 2:
        return "minutes", 60.0
    return "hours", 1.0


def _rgba(hex_colour: str, alpha: float) -> str:
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def fit_y_axis(fig: go.Figure, *, pad: float = 0.06) -> go.Figure:
    """Set ``fig``'s y range to the finite y values of its traces, ``pad`` of their span each side.

    A constant series (one best AP over every trial) gets a margin of a tenth of its value, at
    least 0.01, so it is drawn mid-axis with its value on the ticks instead of plotly's +-1
    around it. A figure without y values keeps plotly's autorange.
    """
    ys = [float(v) for v in _y_values(fig.data)]
    if not ys:
        return fig
    lo, hi = min(ys), max(ys)
    margin = (hi - lo) * pad if hi > lo else max(abs(hi) * 0.1, 0.01)
    fig.update_yaxes(range=[lo - margin, hi + margin])
    return fig


def _y_values(traces: Iterable[Any]) -> Iterable[float]:
    for trace in traces:
        for v in trace.y if trace.y is not None else ():
            if isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v):
                yield v


# ---------------------------------------------------------------------------------------
# AP vs FLOPs
# ---------------------------------------------------------------------------------------
def ap_vs_flops_figure(data: StudyData) -> go.Figure | None:
    """AP against the study's cost (:attr:`StudyData.cost_name`: its second objective, else neck
    FLOPs), Pareto front marked; ``None`` when no trial recorded that cost."""
    return ap_vs_cost_figure(data, data.cost_name)


def ap_vs_cost_figure(data: StudyData, cost: str) -> go.Figure | None:
    """AP against ``cost`` per trial: COMPLETE trials, the Pareto front (less cost, better AP),
    pruned trials (early AP) and trials over a budget (never trained: no AP, marked along the
    bottom edge at their cost), with the budget on ``cost`` as a dashed line."""
    unit = lambda v: record.display_value(cost, v)  # noqa: E731
    label = record.LABELS.get(cost, cost)
    done = [(t, metric(t, cost)) for t in data.complete]
    done = [(t, c) for t, c in done if c is not None]
    pruned = [(t, metric(t, cost)) for t in data.trials if t.state == TrialState.PRUNED and t.ap is not None]
    pruned = [(t, c) for t, c in pruned if c is not None and record.INFEASIBLE not in t.user_attrs]
    over = [(t, metric(t, cost)) for t in data.over_budget()]
    over = [(t, c) for t, c in over if c is not None]
    if not done and not pruned and not over:
        return None
    fig = go.Figure()
    if pruned:
        fig.add_trace(
            go.Scatter(
                x=[unit(c) for _, c in pruned],
                y=[t.ap for t, _ in pruned],
                mode="markers",
                marker=dict(symbol="x", color="#BBBBBB", size=7),
                name="pruned (early AP)",
                text=[f"trial {t.number}" for t, _ in pruned],
                hovertemplate=f"%{{text}}<br>%{{x:.4g}} {label}<br>early AP %{{y:.4f}}<extra></extra>",
            )
        )
    if done:
        fig.add_trace(
            go.Scatter(
                x=[unit(c) for _, c in done],
                y=[t.ap for t, _ in done],
                mode="markers",
                marker=dict(color="#4477AA", size=8, opacity=0.75),
                name="complete",
                text=[f"trial {t.number}<br>{data.spec_hash(t) or ''}" for t, _ in done],
                hovertemplate=f"%{{text}}<br>%{{x:.4g}} {label}<br>AP %{{y:.4f}}<extra></extra>",
            )
        )
        points = [(c, float(t.ap)) for t, c in done]  # type: ignore[arg-type]  # complete: ap is a number
        on_front = pareto_front(points, (StudyDirection.MINIMIZE, data.direction))
        front = sorted((*points[i], done[i][0].number) for i in on_front)  # by cost, for the step line
        fig.add_trace(
            go.Scatter(
                x=[unit(p[0]) for p in front],
                y=[p[1] for p in front],
                mode="lines+markers",
                line=dict(shape="hv", color="#EE6677", width=2),
                marker=dict(size=11, color="#EE6677", line=dict(color="black", width=1)),
                name=f"Pareto front ({len(front)})",
                text=[f"trial {p[2]}" for p in front],
                hovertemplate=f"%{{text}}<br>%{{x:.4g}} {label}<br>AP %{{y:.4f}}<extra></extra>",
            )
        )
    if over:
        aps = [t.ap for t, _ in (*done, *pruned) if t.ap is not None]
        floor = (min(aps) - 0.05 * (max(aps) - min(aps) or 0.1)) if aps else 0.0
        fig.add_trace(
            go.Scatter(
                x=[unit(c) for _, c in over],
                y=[floor] * len(over),
                mode="markers",
                marker=dict(symbol="line-ns-open", color="#AA3377", size=14, line=dict(width=2)),
                name=f"over budget, never trained ({len(over)})",
                text=[f"trial {t.number}: {t.user_attrs[record.INFEASIBLE]}" for t, _ in over],
                hovertemplate=f"%{{text}}<br>%{{x:.4g}} {label}<br>no AP: not trained<extra></extra>",
            )
        )
    budget = next((v for b, v in data.budgets.items() if BUDGET_METRICS.get(b) == cost), None)
    if budget is not None:
        fig.add_vline(x=unit(budget), line=dict(color="#AA3377", dash="dash"), annotation_text="budget")
    fig.update_layout(
        title=f"AP vs {label}, Pareto front marked",
        xaxis_title=f"{label} per image (proxy image size)" if "flops" in cost else label,
        yaxis_title="AP",
        **_LAYOUT,
    )
    return fit_y_axis(fig)


# ---------------------------------------------------------------------------------------
# convergence
# ---------------------------------------------------------------------------------------
def unique_architectures_curve(data: StudyData) -> tuple[np.ndarray, np.ndarray]:
    """``(trial numbers, number of distinct canonical hashes among trials up to it)``."""
    xs, ys, seen = [], [], set()
    for t in data.trials:
        h = data.spec_hash(t)
        if h is not None:
            seen.add(h)
        xs.append(t.number)
        ys.append(len(seen))
    return np.array(xs), np.array(ys)


def unique_architectures_figure(studies: Sequence[StudyData]) -> go.Figure:
    """Distinct architectures sampled against trials (the paper's convergence view).

    A search that keeps proposing new architectures follows the diagonal; one that has
    converged flattens out.
    """
    fig = go.Figure()
    colours = {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(group_by_sampler(studies))}
    longest = 0
    for data in studies:
        xs, ys = unique_architectures_curve(data)
        longest = max(longest, len(xs))
        fig.add_trace(
            go.Scatter(
                x=_plain(xs + 1),
                y=_plain(ys),
                mode="lines",
                line=dict(color=colours[data.sampler]),
                name=f"{data.name} ({data.sampler})",
                hovertemplate="%{x} trials: %{y} unique<extra></extra>",
            )
        )
    if longest:
        fig.add_trace(
            go.Scatter(
                x=[1, longest],
                y=[1, longest],
                mode="lines",
                line=dict(color="#999", dash="dot"),
                name="all distinct",
                hoverinfo="skip",
            )
        )
    fig.update_layout(
        title="Unique architectures vs trials",
        xaxis_title="trials sampled",
        yaxis_title="unique architectures",
        **_LAYOUT,
    )
    return fit_y_axis(fig)


def _decision_key(name: str) -> tuple[int, str]:
    head, _, tail = name.partition(".")
    try:
        return (int(head.removeprefix("cell")), tail)
    except ValueError:
        return (1 << 30, name)


def decision_frequency_figure(data: StudyData, *, windows: int = 10) -> go.Figure | None:
    """How often each choice of each decision appears, per window of consecutive trials.

    One heatmap per decision (pick it in the drop-down; the first entry pools the op of
    every cell). Rows are choices, columns trial windows, colour the share of the window's
    trials that made that choice. ``None`` when no trial has params.
    """
    if windows < 1:
        raise ValueError("windows must be >= 1")
    rows = [t for t in data.trials if t.params]
    if not rows:
        return None
    n_win = min(windows, len(rows))
    bounds = np.linspace(0, len(rows), n_win + 1).round().astype(int)
    chunks = [rows[bounds[i] : bounds[i + 1]] for i in range(n_win)]
    labels = [f"{c[0].number}-{c[-1].number}" for c in chunks]
    names = sorted({k for t in rows for k in t.params}, key=_decision_key)
    views: list[tuple[str, list[list[Any]]]] = []
    ops = [k for k in names if k.endswith(".op")]
    if ops:
        views.append(("op (all cells)", [[t.params[k] for t in c for k in ops if k in t.params] for c in chunks]))
    for name in names:
        views.append((name, [[t.params[name] for t in c if name in t.params] for c in chunks]))
    fig = go.Figure()
    for i, (name, per_window) in enumerate(views):
        choices = sorted({str(v) for vals in per_window for v in vals}, key=_choice_key)
        z = []
        for choice in choices:
            z.append([Counter(map(str, vals))[choice] / len(vals) if vals else None for vals in per_window])
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=labels,
                y=choices,
                zmin=0,
                zmax=1,
                colorscale="Blues",
                colorbar=dict(title="share"),
                visible=i == 0,
                name=name,
                hovertemplate=f"{html.escape(name)} = %{{y}}<br>trials %{{x}}: %{{z:.0%}}<extra></extra>",
            )
        )
    buttons = [
        dict(
            label=name, method="update", args=[{"visible": [j == i for j in range(len(views))]}, {"yaxis.title": name}]
        )
        for i, (name, _) in enumerate(views)
    ]
    fig.update_layout(
        title="Decision frequencies over time",
        xaxis_title="trial numbers in window",
        yaxis_title=views[0][0],
        updatemenus=[dict(buttons=buttons, x=1.0, xanchor="right", y=1.16, yanchor="top", active=0)],
        **_LAYOUT,
    )
    fig.update_yaxes(type="category")
    fig.update_xaxes(type="category")
    return fig


def _choice_key(choice: str) -> tuple[int, int, str]:
    """Inputs P3..P7 first, then cells in order, then anything else alphabetically."""
    if choice.startswith("P") and choice[1:].isdigit():
        return (0, int(choice[1:]), choice)
    if choice.startswith("cell") and choice[4:].isdigit():
        return (1, int(choice[4:]), choice)
    return (2, 0, choice)


# ---------------------------------------------------------------------------------------
# lineage
# ---------------------------------------------------------------------------------------
def lineage_figure(data: StudyData) -> go.Figure | None:
    """AP along the ancestry of the best trial, each step labelled with its mutation.

    ``None`` when the best trial has no recorded parent (not an evolution study).
    """
    chain = lineage(data)
    if len(chain) < 2:
        return None
    xs = list(range(len(chain)))
    ys = [t.ap if t.is_complete else None for t in chain]
    text = [
        f"trial {t.number} ({t.state.name.lower()})<br>{html.escape(mutation_of(t.user_attrs, 'seed') or '')}"
        for t in chain
    ]
    fig = go.Figure(
        go.Scatter(
            x=xs,
            y=ys,
            mode="lines+markers",
            connectgaps=True,
            text=text,
            marker=dict(size=9, color="#228833"),
            line=dict(color="#228833"),
            name="lineage",
            hovertemplate="%{text}<br>AP %{y:.4f}<extra></extra>",
        )
    )
    fig.update_layout(
        title=f"Lineage of the best trial ({chain[-1].number}): {len(chain) - 1} mutations",
        xaxis_title="ancestors of the best trial, oldest first (trial numbers)",
        yaxis_title="AP",
        **_LAYOUT,
    )
    fig.update_xaxes(tickvals=xs, ticktext=[f"#{t.number}" for t in chain])
    return fit_y_axis(fig)
