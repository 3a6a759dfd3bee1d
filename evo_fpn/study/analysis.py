"""Best-so-far and Pareto helpers over a study's trials, aware of the study's directions.

Every view of a search (the runner's progress line and summary, ``compare``, the figures)
asks the same questions: which trial is best, what was the best value after each trial, and
which points no other point beats. They are answered here once, from the directions the
study was created with (``study.directions``), so that a minimised objective or a second one
needs no new code in those views. Pareto ranking is Optuna's own (private, so reached
through :mod:`evo_fpn.compat`).

Conventions: only COMPLETE trials have a value worth comparing. A pruned trial's value is an
early one (its last intermediate value) and a failed trial has none, so both count as "no
value" (``None``): best-so-far curves carry the previous best over them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from evo_fpn import compat

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
"""The states a study's budget counts: a pruned trial has finished too, only early."""


def objective_value(trial: FrozenTrial, objective: int = 0) -> float | None:
    """The trial's value of objective ``objective`` if it is COMPLETE and finite, else ``None``."""
    if trial.state != TrialState.COMPLETE or not trial.values or len(trial.values) <= objective:
        return None
    value = float(trial.values[objective])
    return value if math.isfinite(value) else None


def rank_key(value: float | None, direction: StudyDirection) -> float:
    """A sort key that puts the best value first for ``direction``, and ``None``/NaN last."""
    if value is None or math.isnan(value):
        return math.inf
    return -value if direction == StudyDirection.MAXIMIZE else value


def best_value(values: Iterable[float | None], direction: StudyDirection) -> float | None:
    """The best of ``values`` for ``direction`` (``None``/NaN skipped); ``None`` if there is none."""
    best: float | None = None
    for v in values:
        if rank_key(v, direction) < rank_key(best, direction):
            best = v
    return best


def best_so_far(values: Iterable[float | None], direction: StudyDirection) -> np.ndarray:
    """The running best of ``values`` in the order given: NaN until the first value, and a
    ``None``/NaN entry (a pruned, failed or missing trial) keeps the best before it."""
    arr = np.array([np.nan if v is None else float(v) for v in values], dtype=float)
    if not arr.size:
        return arr
    accumulate = np.fmax if direction == StudyDirection.MAXIMIZE else np.fmin
    return accumulate.accumulate(arr)


def best_trial(trials: Iterable[FrozenTrial], direction: StudyDirection, *, objective: int = 0) -> FrozenTrial | None:
    """The COMPLETE trial with the best value of ``objective``; a tie goes to the earliest trial."""
    scored = [(rank_key(v, direction), t.number, t) for t in trials if (v := objective_value(t, objective)) is not None]
    return min(scored, key=lambda s: s[:2])[2] if scored else None


def pareto_front(points: Sequence[Sequence[float]], directions: Sequence[StudyDirection]) -> list[int]:
    """Indices (in input order) of the points that no other point dominates.

    ``points[i][k]`` is point ``i``'s value of objective ``k``, better upwards or downwards as
    ``directions[k]`` says (e.g. ``(MINIMIZE, MAXIMIZE)`` for FLOPs and AP). Of several equal
    points only the first is returned, so a front drawn as a line has no repeated corner.
    """
    if not len(points):
        return []
    if any(len(p) != len(directions) for p in points):
        raise ValueError(f"every point needs one value per direction ({len(directions)})")
    loss = np.array(
        [[compat.normalize_value(float(v), d) for v, d in zip(p, directions, strict=True)] for p in points], dtype=float
    )
    on_front = compat.is_pareto_front(loss)
    out, seen = [], set()
    for i in np.flatnonzero(on_front):
        key = tuple(loss[i])
        if key not in seen:
            seen.add(key)
            out.append(int(i))
    return out
