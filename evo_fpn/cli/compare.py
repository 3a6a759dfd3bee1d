"""Compare finished studies: ``python -m evo_fpn.compare STUDY... [--storage URL]``.

Prints one row per study (sampler, finished trials, best AP, best AP after the same number
of trials for every study, time), best first; "best" follows each study's direction. Studies
are only comparable when they measured the same thing, so studies with different objectives
or different fingerprints (proxy task or search space) are refused.

Studies of several objectives (``objectives = ["ap", COST]``) have no best AP to compare:
their rows give the **hypervolume** of their feasible COMPLETE trials instead (the area their
Pareto front dominates, bigger is better; Optuna's ``plot_hypervolume_history``), overall and
after the same number of trials. The reference point is printed with the table: AP 0 and
1.1 x the largest cost of any COMPLETE trial of the compared studies, the same for all of them.

Without ``--storage`` each study is read from its default place, ``studies/NAME.db``
(or ``$EVO_FPN_STORAGE``).
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from evo_fpn.cli.common import ArgumentParser, UsageError, guard
from evo_fpn.storage import rdb as st
from evo_fpn.study.analysis import FINISHED, best_so_far, objective_value, rank_key


@dataclass(frozen=True)
class StudyRow:
    """What the comparison table shows of one study."""

    name: str
    sampler: str
    fingerprint: str
    budget: int | None
    finished: int
    failed: int
    best_ap: float | None
    curve: tuple[float | None, ...]  # best AP after 1, 2, ... finished trials (completion order)
    seconds: float
    direction: StudyDirection = StudyDirection.MAXIMIZE
    objectives: tuple[str, ...] = ("ap",)
    study: optuna.Study | None = None  # kept for the hypervolume, which needs a shared reference point

    def best_after(self, n: int) -> float | None:
        return self.curve[n - 1] if 0 < n <= len(self.curve) else None


def study_objectives(study: optuna.Study) -> tuple[str, ...]:
    """What a study optimised: its metric names, else its recorded ``objectives``, else AP."""
    names = study.metric_names or study.user_attrs.get("config", {}).get("objectives") or ["ap"]
    return tuple(str(n) for n in names)


def reference_point(rows: Sequence[StudyRow]) -> list[float]:
    """The hypervolume's reference point, shared by ``rows``: 0 (or the lowest value, if below)
    for maximised objectives, 1.1 x the largest value for minimised ones, over their COMPLETE trials."""
    values = [t.values for r in rows if r.study is not None for t in r.study.get_trials(deepcopy=False)
              if t.state == TrialState.COMPLETE and t.values]  # fmt: skip
    directions = rows[0].study.directions if rows and rows[0].study is not None else []
    point = []
    for k, d in enumerate(directions):
        col = [float(v[k]) for v in values] or [0.0]
        point.append(min(0.0, min(col)) if d == StudyDirection.MAXIMIZE else 1.1 * max(col))
    return point


def hypervolume_curve(study: optuna.Study, point: Sequence[float]) -> tuple[float, ...]:
    """Hypervolume after 1, 2, ... finished trials (trial-number order), feasible COMPLETE
    trials only (Optuna's ``plot_hypervolume_history``, a public API, reads it off)."""
    from optuna.visualization import plot_hypervolume_history

    finished = sorted(t.number for t in study.get_trials(deepcopy=False) if t.state in FINISHED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trace = plot_hypervolume_history(study, reference_point=list(point)).data
    xs, ys = (list(trace[0].x), list(trace[0].y)) if trace else ([], [])
    curve, j, hv = [], 0, None
    for n in finished:
        while j < len(xs) and xs[j] <= n:
            hv, j = float(ys[j]), j + 1
        curve.append(hv)
    return tuple(curve)


def study_row(study: optuna.Study) -> StudyRow:
    trials = study.get_trials(deepcopy=False)
    finished = sorted((t for t in trials if t.state in FINISHED), key=_completed_at)
    direction = study.directions[0]  # AP's
    curve = [None if math.isnan(v) else v for v in best_so_far(map(objective_value, finished), direction).tolist()]
    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    ends = [t.datetime_complete for t in trials if t.datetime_complete is not None]
    seconds = (max(ends) - min(starts)).total_seconds() if starts and ends else 0.0
    attrs = study.user_attrs
    sampler = str(attrs.get("sampler", "?"))
    history = attrs.get("sampler_history")
    if isinstance(history, list) and len(history) > 1:
        sampler = "+".join(str(h) for h in history)
    return StudyRow(
        name=study.study_name,
        sampler=sampler,
        fingerprint=str(attrs.get("fingerprint", "")),
        budget=attrs.get("n_trials"),
        finished=len(finished),
        failed=sum(t.state == TrialState.FAIL for t in trials),
        best_ap=curve[-1] if curve else None,
        curve=tuple(curve),
        seconds=seconds,
        direction=direction,
        objectives=study_objectives(study),
        study=study,
    )


def _completed_at(t: FrozenTrial) -> tuple:
    return (t.datetime_complete or t.datetime_start, t.number)


def load_rows(names: Sequence[str], storage: str | None) -> list[StudyRow]:
    """Read each study (nothing is written); one-line errors for missing ones."""
    rows = []
    for name in names:
        url = st.resolve_url(storage, name)
        st.check_storage(url)
        path = st.sqlite_path(url)
        if path is not None and not path.exists():
            raise UsageError(f"no study {name!r}: {path} does not exist (run it first, or pass --storage URL)")
        if not st.study_exists(url, name):
            raise UsageError(f"no study {name!r} in {st.mask_url(url)}: check the name or --storage")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            study = optuna.load_study(study_name=name, storage=st.normalise_url(url))
        rows.append(study_row(study))
    return rows


def check_comparable(rows: Sequence[StudyRow]) -> None:
    kinds = {r.objectives for r in rows}
    if len(kinds) > 1:
        groups = ", ".join(f"{r.name}={','.join(r.objectives)}" for r in rows)
        raise UsageError(
            f"these studies optimised different objectives ({groups}): compare only studies with the same objectives"
        )
    missing = [r.name for r in rows if not r.fingerprint]
    if missing:
        raise UsageError(f"study {missing[0]!r} has no fingerprint (not made by evo_fpn.run): it cannot be compared")
    fps = {r.fingerprint for r in rows}
    if len(fps) > 1:
        groups = ", ".join(f"{r.name}={r.fingerprint}" for r in rows)
        raise UsageError(
            f"these studies measured different things (proxy task, search space or budgets differ: {groups}): "
            "compare only studies with the same fingerprint"
        )


def format_table(rows: Sequence[StudyRow]) -> str:
    if rows and len(rows[0].objectives) > 1 and all(r.study is not None for r in rows):
        return format_hypervolume_table(rows)
    at = min((r.finished for r in rows), default=0)
    head = ("study", "sampler", "trials", "failed", "best AP", f"best AP @{at}", "time")
    body = []
    for r in sorted(rows, key=lambda r: rank_key(r.best_after(at), r.direction)):
        trials = f"{r.finished}/{r.budget}" if r.budget else str(r.finished)
        body.append(
            (r.name, r.sampler, trials, str(r.failed), _ap(r.best_ap), _ap(r.best_after(at)), _duration(r.seconds))
        )
    table = [head, *body]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    fp = rows[0].fingerprint if rows else ""
    lines.append(f"fingerprint {fp}; 'best AP @{at}': best AP after the first {at} finished trials of each study")
    return "\n".join(lines)


def format_hypervolume_table(rows: Sequence[StudyRow]) -> str:
    """The multi-objective table: hypervolume overall and after the same number of trials."""
    point = reference_point(rows)
    curves = {r.name: hypervolume_curve(r.study, point) for r in rows}  # type: ignore[arg-type]
    at = min((r.finished for r in rows), default=0)

    def after(r: StudyRow, n: int) -> float | None:
        c = curves[r.name]
        return c[n - 1] if 0 < n <= len(c) else None

    head = ("study", "sampler", "trials", "failed", "hypervolume", f"hypervolume @{at}", "time")
    body = []
    for r in sorted(rows, key=lambda r: -(after(r, at) or 0.0)):
        trials = f"{r.finished}/{r.budget}" if r.budget else str(r.finished)
        final = curves[r.name][-1] if curves[r.name] else None
        body.append((r.name, r.sampler, trials, str(r.failed), _hv(final), _hv(after(r, at)), _duration(r.seconds)))
    table = [head, *body]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    names = rows[0].objectives
    ref = ", ".join(f"{n} {v:.4g}" for n, v in zip(names, point, strict=True))
    lines.append(
        f"objectives {', '.join(names)}; hypervolume of the feasible COMPLETE trials against the reference point "
        f"({ref}): AP 0 and 1.1 x the largest cost among these studies' trials; bigger is better"
    )
    lines.append(f"fingerprint {rows[0].fingerprint}; '@{at}': after the first {at} finished trials of each study")
    return "\n".join(lines)


def _hv(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def _ap(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def _duration(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


@guard
def main(argv: Sequence[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m evo_fpn.compare", description="Compare studies that measured the same thing.")
    p.add_argument("studies", nargs="+", metavar="STUDY")
    p.add_argument("--storage", help="storage URL holding all the studies (default: studies/NAME.db each)")
    args = p.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if len(set(args.studies)) != len(args.studies):
        raise UsageError("a study is named twice: name each study once")
    rows = load_rows(args.studies, args.storage)
    check_comparable(rows)
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
