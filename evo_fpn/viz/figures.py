"""Plotly figures of searches, built from Optuna studies.

Everything starts from :class:`StudyData`, a plain snapshot of one study (one storage read),
so a page with many figures reads the storage once. Conventions shared by all figures:

* **AP** is the trial's ``ap`` user attr (COCO AP in [0, 1]) and, when that is missing, its
  first objective value.
* **Best** follows the study's direction (``study.directions[0]``, the objective AP is):
  highest for a maximised study, lowest for a minimised one (:mod:`evo_fpn.study.analysis`).
* **Pruned trials are not in best-so-far curves nor in the Pareto front**: their value is an
  early AP (the last reported intermediate value), not comparable with a final AP. The AP vs
  cost figure shows them as grey crosses labelled "pruned (early AP)".
* **Cost** is the study's second objective (``objectives = ["ap", COST]``), else neck FLOPs.
  Trials over a budget were never trained and have no AP: the AP vs cost figure marks them
  along its bottom edge ("over budget"), with the budget as a dashed line.
* **Trial axis** is the trial number (creation order, all states); **time axis** is hours
  since the study's first trial started, at each trial's completion.
* **Sampler groups** come from the study user attrs the runner records (``sampler``, or a
  ``config`` dict holding it); a study without them is grouped as ``"unknown"``.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import optuna
import plotly.graph_objects as go
from optuna.study import StudyDirection
from optuna.trial import TrialState

from evo_fpn import record
from evo_fpn.arch.draw import spec_to_svg
from evo_fpn.arch.space import NasFpnSpace, SpaceConfig
from evo_fpn.arch.spec import ArchSpec, SpecError
from evo_fpn.limits import BUDGET_METRICS
from evo_fpn.samplers.evolution import mutation_of, parent_of
from evo_fpn.study.analysis import best_so_far, pareto_front, rank_key

# One colour per sampler group, stable across pages.
PALETTE = ("#4477AA", "#EE6677", "#228833", "#CCBB44", "#66CCEE", "#AA3377", "#BBBBBB", "#000000")
_LAYOUT = dict(template="plotly_white", margin=dict(l=60, r=20, t=50, b=50), height=420, title_font_size=15)


@dataclass(frozen=True)
class TrialRow:
    """The facts of one trial that the figures use."""

    number: int
    state: TrialState
    ap: float | None
    start: datetime | None
    complete: datetime | None
    user_attrs: Mapping[str, Any]
    params: Mapping[str, Any]

    @property
    def is_complete(self) -> bool:
        return self.state == TrialState.COMPLETE and self.ap is not None and math.isfinite(self.ap)


@dataclass
class StudyData:
    """A snapshot of one study: its trials (by number), directions, sampler group, seed and attrs."""

    name: str
    trials: list[TrialRow]
    sampler: str = "unknown"
    seed: int | None = None
    user_attrs: Mapping[str, Any] = field(default_factory=dict)
    directions: tuple[StudyDirection, ...] = (StudyDirection.MAXIMIZE,)
    value_names: tuple[str, ...] = ("ap",)
    _space: NasFpnSpace | None = field(default=None, repr=False)

    @classmethod
    def from_study(cls, study: optuna.Study) -> StudyData:
        rows = []
        for t in study._storage.get_all_trials(study._study_id, deepcopy=False):
            ap = t.user_attrs.get("ap")
            if not isinstance(ap, (int, float)) or isinstance(ap, bool):
                ap = t.values[0] if t.values else None
            rows.append(
                TrialRow(
                    number=t.number,
                    state=t.state,
                    ap=None if ap is None else float(ap),
                    start=t.datetime_start,
                    complete=t.datetime_complete,
                    user_attrs=dict(t.user_attrs),
                    params=dict(t.params),
                )
            )
        rows.sort(key=lambda r: r.number)
        attrs = dict(study.user_attrs)
        space = None
        space_cfg = _find(attrs, "space")
        if isinstance(space_cfg, Mapping):
            try:
                space = NasFpnSpace(SpaceConfig.from_dict(space_cfg))
            except (TypeError, ValueError):
                space = None
        names = study.metric_names or _find(attrs, "objectives") or ["ap"]
        if len(names) != len(study.directions):
            names = ["ap", *(f"value{i}" for i in range(1, len(study.directions)))]
        return cls(
            name=study.study_name,
            trials=rows,
            sampler=sampler_name(attrs),
            seed=_as_int(_find(attrs, "seed")),
            user_attrs=attrs,
            directions=tuple(study.directions),
            value_names=tuple(str(n) for n in names),
            _space=space,
        )

    # -- derived facts ----------------------------------------------------------------
    @property
    def direction(self) -> StudyDirection:
        """The direction of the AP objective (the study's first)."""
        return self.directions[0]

    @property
    def cost_name(self) -> str:
        """The cost that AP is drawn against: the second objective, else neck FLOPs."""
        return self.value_names[1] if len(self.value_names) > 1 else "neck_flops"

    @property
    def budgets(self) -> dict[str, float]:
        """The study's budgets (``max_neck_flops`` ...) as recorded with it."""
        value = _find(self.user_attrs, "budgets")
        return {str(k): float(v) for k, v in value.items()} if isinstance(value, Mapping) else {}

    def over_budget(self) -> list[TrialRow]:
        """Trials refused before training because they were over a budget."""
        return [t for t in self.trials if record.INFEASIBLE in t.user_attrs]

    def pareto(self) -> list[TrialRow]:
        """COMPLETE trials no other beats on AP and the cost, by increasing cost (one per point)."""
        done = [(t, _metric(t, self.cost_name)) for t in self.complete]
        done = [(t, c) for t, c in done if c is not None]
        cost_dir = StudyDirection.MINIMIZE
        on_front = pareto_front([(c, float(t.ap)) for t, c in done], (cost_dir, self.direction))  # type: ignore[arg-type]
        return sorted((done[i][0] for i in on_front), key=lambda t: (_metric(t, self.cost_name), t.number))

    @property
    def finished(self) -> list[TrialRow]:
        return [t for t in self.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]

    @property
    def complete(self) -> list[TrialRow]:
        return [t for t in self.trials if t.is_complete]

    def best(self, k: int = 1, *, distinct: bool = True) -> list[TrialRow]:
        """The ``k`` complete trials with the best AP (one per architecture if ``distinct``)."""
        out, seen = [], set()
        for t in sorted(self.complete, key=lambda r: (rank_key(r.ap, self.direction), r.number)):
            h = self.spec_hash(t)
            if distinct and h is not None and h in seen:
                continue
            seen.add(h)
            out.append(t)
            if len(out) == k:
                break
        return out

    def spec(self, t: TrialRow) -> ArchSpec | None:
        """The trial's architecture: its ``spec`` user attr, else its params decoded."""
        text = t.user_attrs.get(record.SPEC)
        if isinstance(text, str):
            try:
                return ArchSpec.from_json(text)
            except SpecError:
                pass
        if t.params:
            try:
                return (self._space or NasFpnSpace()).decode(t.params)
            except SpecError:
                return None
        return None

    def spec_hash(self, t: TrialRow) -> str | None:
        h = t.user_attrs.get(record.SPEC_HASH)
        if isinstance(h, str):
            return h
        spec = self.spec(t)
        return spec.canonical_hash() if spec is not None else None

    def start_time(self) -> datetime | None:
        starts = [t.start for t in self.trials if t.start is not None]
        return min(starts) if starts else None


def sampler_name(attrs: Mapping[str, Any]) -> str:
    """The sampler a study used, from its recorded user attrs; ``"unknown"`` when absent."""
    value = _find(attrs, "sampler")
    if isinstance(value, Mapping):
        value = value.get("name")
    return str(value) if isinstance(value, str) and value else "unknown"


def _find(attrs: Mapping[str, Any], key: str) -> Any:
    """``attrs[key]``, else ``attrs["config"][key]`` (also when the config is a JSON string)."""
    if key in attrs:
        return attrs[key]
    config = attrs.get("config")
    if isinstance(config, str):
        try:
            config = json.loads(config)
        except json.JSONDecodeError:
            config = None
    if isinstance(config, Mapping):
        if key in config:
            return config[key]
        sampler = config.get("sampler")
        if key == "seed" and isinstance(sampler, Mapping):
            return sampler.get("seed")
    return None


def _as_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


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
    return fig


def _time_unit(span_hours: float) -> tuple[str, float]:
    """A readable unit for a time axis spanning ``span_hours``: (name, factor from hours)."""
    if span_hours < 2 / 60:
        return "seconds", 3600.0
    if span_hours < 2:
        return "minutes", 60.0
    return "hours", 1.0


def group_by_sampler(studies: Sequence[StudyData]) -> dict[str, list[StudyData]]:
    groups: dict[str, list[StudyData]] = defaultdict(list)
    for d in studies:
        groups[d.sampler].append(d)
    return dict(sorted(groups.items()))


def _rgba(hex_colour: str, alpha: float) -> str:
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


# ---------------------------------------------------------------------------------------
# AP vs FLOPs
# ---------------------------------------------------------------------------------------
def _flops(t: TrialRow) -> float | None:
    return _metric(t, "neck_flops")


def _metric(t: TrialRow, name: str) -> float | None:
    v = t.user_attrs.get(name)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


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
    done = [(t, _metric(t, cost)) for t in data.complete]
    done = [(t, c) for t, c in done if c is not None]
    pruned = [(t, _metric(t, cost)) for t in data.trials if t.state == TrialState.PRUNED and t.ap is not None]
    pruned = [(t, c) for t, c in pruned if c is not None and record.INFEASIBLE not in t.user_attrs]
    over = [(t, _metric(t, cost)) for t in data.over_budget()]
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
    return fig


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
    return fig


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
        flops = _flops(t)
        caption = f"#{rank} · trial {t.number} · AP {t.ap:.4f}"
        if flops is not None:
            caption += f" · {flops / 1e9:.2f} neck GFLOPs"
        pic = svg_img(spec, f"trial {t.number}") if spec is not None else "<p>(no spec recorded)</p>"
        cards.append(
            f'<figure class="arch-card" data-trial="{t.number}">{pic}'
            f"<figcaption>{html.escape(caption)}<br><code>{html.escape(data.spec_hash(t) or '')}</code>"
            "</figcaption></figure>"
        )
    return '<div class="arch-row">' + "".join(cards) + "</div>"


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
        cost = record.display_value(data.cost_name, _metric(t, data.cost_name) or 0.0)
        caption = f"trial {t.number} · AP {t.ap:.4f} · {cost:.4g} {label}"
        pic = svg_img(spec, f"trial {t.number}") if spec is not None else "<p>(no spec recorded)</p>"
        cards.append(
            f'<figure class="arch-card" data-trial="{t.number}">{pic}'
            f"<figcaption>{html.escape(caption)}<br><code>{html.escape(data.spec_hash(t) or '')}</code>"
            "</figcaption></figure>"
        )
    return '<div class="arch-row pareto">' + "".join(cards) + "</div>"


def lineage(data: StudyData, number: int | None = None) -> list[TrialRow]:
    """The chain of parent links (the evolution ``lineage`` attr, or ``parent_trial`` in studies
    from earlier versions) ending in trial ``number`` (default: the best), oldest first."""
    by_number = {t.number: t for t in data.trials}
    if number is None:
        best = data.best(1)
        if not best:
            return []
        number = best[0].number
    chain: list[TrialRow] = []
    seen: set[int] = set()
    current: int | None = number
    while current is not None and current in by_number and current not in seen:
        seen.add(current)
        t = by_number[current]
        chain.append(t)
        current = parent_of(t.user_attrs)
    return chain[::-1]


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
    return fig


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
