"""Self-contained plotly pages of searches: one per study, and one comparing studies.

    python -m evo_fpn.dashboard --study NAME [--storage URL] [--out dashboards/out]
    python -m evo_fpn.dashboard --compare 'evo-*' 'rl-*' [--storage URL] [--out dashboards/out]

Each page is a single HTML file with plotly.js inlined, so it opens offline and can be
mailed or archived. Studies are read from ``--storage``, else ``$EVO_FPN_STORAGE``, else
each study's own ``studies/NAME.db`` (the runner's default). ``--study`` and ``--compare``
accept names and shell-style patterns; the comparison page groups the studies by the
sampler recorded with each study and draws the mean and the min-max band over seeds. See
:mod:`evo_fpn.viz.figures` for what each figure counts (pruned trials, for instance, are kept
out of best-so-far curves).
"""

from __future__ import annotations

import argparse
import fnmatch
import html
import os
import re
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import optuna
import plotly.graph_objects as go
import plotly.offline
from optuna.trial import TrialState

from evo_fpn.cli.common import ArgumentParser, UsageError, guard
from evo_fpn.storage.rdb import mask_url
from evo_fpn.study.analysis import rank_key
from evo_fpn.viz import figures
from evo_fpn.viz.figures import StudyData

DEFAULT_DIR = Path("studies")
"""Where the runner keeps one SQLite file per study (``studies/NAME.db``) by default."""
DEFAULT_OUT = "dashboards/out"

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
    cost = figures.record.LABELS.get(data.cost_name, data.cost_name)
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
        figures.pareto_architectures_html(data),
        "<h2>Convergence</h2><div class='grid'>",
        _figure_div(figures.unique_architectures_figure([data]), "unique-archs", ""),
        _figure_div(figures.decision_frequency_figure(data), "decision-freq", "No trial has params."),
        "</div><h2>Best architectures</h2>",
        figures.best_architectures_html(data, k=4),
    ]
    lineage_fig = figures.lineage_figure(data)
    if lineage_fig is not None:
        parts += [
            "<h2>Lineage of the best trial</h2>",
            _figure_div(lineage_fig, "lineage", ""),
            figures.lineage_html(data),
        ]
    return _page(f"evo-fpn study {data.name}", "".join(parts))


def compare_page(studies: Sequence[StudyData]) -> str:
    """The HTML page overlaying several studies, grouped by sampler."""
    groups = figures.group_by_sampler(studies)
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
            f'<figure class="arch-card">{figures.svg_img(spec, caption)}'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    parts.append("</div>")
    return _page("evo-fpn comparison: " + ", ".join(d.name for d in studies), "".join(parts))


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "study"


def _list_studies(storage: str) -> list[str]:
    try:
        return [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    except Exception as exc:  # bad URL, unreachable server, missing driver
        raise UsageError(f"cannot open storage {mask_url(storage)}: {str(exc).splitlines()[0]}") from None


def locate(storage: str | None, patterns: Sequence[str]) -> list[tuple[str, str]]:
    """``(study name, storage URL)`` of the studies matching ``patterns`` (names or globs).

    With a storage (``--storage`` or ``$EVO_FPN_STORAGE``) every study is looked up there;
    without one, each study lives in its own default file ``studies/NAME.db``, as the
    runner stores it, and patterns are matched against the studies in ``studies/*.db``.
    """
    if storage is not None:
        known = [(n, storage) for n in _list_studies(storage)]
        where = mask_url(storage)
    else:
        known = []
        for db in sorted(DEFAULT_DIR.glob("*.db")):
            known += [(n, f"sqlite:///{db}") for n in _list_studies(f"sqlite:///{db}")]
        where = f"{DEFAULT_DIR}/*.db (pass --storage URL for another storage)"
    out: list[tuple[str, str]] = []
    for pattern in patterns:
        hits = [k for k in known if fnmatch.fnmatchcase(k[0], pattern)]
        if not hits:
            names = [n for n, _ in known]
            raise UsageError(
                f"no study matches {pattern!r} in {where}; "
                f"known: {', '.join(names[:10]) or 'none'}{' ...' if len(names) > 10 else ''}"
            )
        out += [k for k in hits if k not in out]
    return out


def _load(name: str, storage: str) -> StudyData:
    return StudyData.from_study(optuna.load_study(study_name=name, storage=storage))


def write_pages(storage: str | None, study: Sequence[str], compare: Sequence[str], out: Path) -> list[Path]:
    """Write the study pages and (if any ``compare``) the comparison page; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    singles = locate(storage, study) if study else []
    for name, url in singles:
        path = out / f"{_safe(name)}.html"
        path.write_text(study_page(_load(name, url)), encoding="utf-8")
        written.append(path)
    if compare:
        located = [*singles, *[k for k in locate(storage, compare) if k not in singles]]
        datas = [_load(n, url) for n, url in located]
        label = "-".join(_safe(n) for n, _ in located)
        if len(label) > 80:
            label = f"{len(located)}-studies"
        path = out / f"compare-{label}.html"
        path.write_text(compare_page(datas), encoding="utf-8")
        written.append(path)
    return written


def _sqlite_file(storage: str) -> Path | None:
    """The database file of a SQLite URL (so a typo is not silently a new, empty database)."""
    from sqlalchemy.engine import make_url

    try:
        url = make_url(storage)
    except Exception:
        return None
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m evo_fpn.dashboard",
        description="Write self-contained plotly pages (HTML, plotly.js inlined) of evo-fpn studies.",
    )
    p.add_argument("--study", action="append", default=[], metavar="NAME", help="study to draw (repeatable; glob ok)")
    p.add_argument(
        "--compare", nargs="+", default=[], metavar="STUDY", help="also write one page overlaying these studies"
    )
    p.add_argument(
        "--storage",
        default=os.environ.get("EVO_FPN_STORAGE") or None,
        help="Optuna storage URL (default: $EVO_FPN_STORAGE, else each study's studies/NAME.db)",
    )
    p.add_argument("--out", default=DEFAULT_OUT, help=f"folder for the pages (default: {DEFAULT_OUT})")
    return p


@guard
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.study and not args.compare:
        raise UsageError("name a study with --study NAME, or studies to overlay with --compare STUDY ...")
    storage = args.storage
    db = _sqlite_file(storage) if storage is not None else None
    if db is not None and not db.exists():
        raise UsageError(f"no storage file {db}; run a search first or pass --storage URL")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for path in write_pages(storage, args.study, args.compare, Path(args.out)):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
