"""Pieces both samplers share: per-trial RNGs, random sampling, trial lookup, the completion-order log."""

from __future__ import annotations

import bisect
import datetime
import math
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from evo_fpn import compat
from evo_fpn.samplers.constraints import ChoiceConstraints, allowed_values, decision_order

_EPOCH = datetime.datetime.min


# Optuna keeps these helpers private (there is no public API for them); evo_fpn.compat holds
# them, so that our samplers sort and store exactly as Optuna's own samplers do.
def non_domination_ranks(loss: np.ndarray, penalties: Sequence[float]) -> list[int]:
    """Non-domination rank of each row of ``loss`` (all minimised; 0 = front), feasible rows
    (penalty <= 0) before infeasible ones: Optuna's constrained fast non-dominated sort."""
    pen = np.array([max(0.0, float(p)) for p in penalties], dtype=float)
    return [int(r) for r in compat.fast_non_domination_rank(loss, penalty=pen if pen.any() else None)]


def crowding_distances(members: Sequence[FrozenTrial]) -> dict[int, float]:
    """NSGA-II's crowding distance of each member (by trial number), as Optuna computes it."""
    return compat.crowding_distance(members)


def penalty(t: FrozenTrial) -> float:
    """Total violation of ``t``'s constraints (``Trial.set_constraint``, Optuna 5's convention:
    a value > 0 is violated): 0 for a feasible trial or one without constraints."""
    return float(sum(max(0.0, float(v)) for v in t.constraints.values()))


def new_base_seed() -> int:
    """A fresh 63-bit seed from OS entropy (for ``seed=None`` and ``reseed_rng``)."""
    return int(np.random.SeedSequence().entropy) & ((1 << 63) - 1)


def trial_rng(base_seed: int, number: int, salt: str = "") -> np.random.Generator:
    """The RNG of one trial: a pure function of (seed, trial number, purpose).

    Deriving randomness per trial instead of drawing from one stream is what makes a resumed
    study continue exactly as an uninterrupted one: a fresh process has no stream position
    to restore.
    """
    return np.random.default_rng(np.random.SeedSequence([base_seed, number, zlib.crc32(salt.encode())]))


def sample_uniform(dist: BaseDistribution, rng: np.random.Generator, choices: Sequence[Any] | None = None) -> Any:
    """One uniform draw from ``dist`` (``choices`` narrows a categorical)."""
    if isinstance(dist, CategoricalDistribution):
        pool = list(dist.choices) if choices is None else list(choices)
        return pool[int(rng.integers(len(pool)))]
    if isinstance(dist, IntDistribution):
        if dist.log:
            v = round(math.exp(rng.uniform(math.log(dist.low - 0.5), math.log(dist.high + 0.5))))
            return int(min(max(v, dist.low), dist.high))
        k = int(rng.integers(0, (dist.high - dist.low) // dist.step + 1))
        return int(dist.low + k * dist.step)
    if isinstance(dist, FloatDistribution):
        if dist.step is not None:
            n = int(round((dist.high - dist.low) / dist.step))
            return float(min(dist.low + int(rng.integers(0, n + 1)) * dist.step, dist.high))
        if dist.log:
            v = math.exp(rng.uniform(math.log(dist.low), math.log(dist.high)))
        else:
            v = rng.uniform(dist.low, dist.high)
        return float(min(max(v, dist.low), dist.high))
    raise ValueError(f"unsupported distribution {dist!r}")


def perturb(dist: BaseDistribution, value: Any, rng: np.random.Generator, scale: float) -> Any:
    """A nearby, different value of a numeric param: Gaussian step of ``scale`` x range.

    Works in log space for log distributions, reflects at the bounds, snaps to the step.
    Falls back to a uniform redraw when the step keeps landing on ``value``.
    """
    assert isinstance(dist, (IntDistribution, FloatDistribution))
    lo, hi, x = float(dist.low), float(dist.high), float(value)
    if dist.log:
        lo, hi, x = math.log(lo), math.log(hi), math.log(x)
    width = hi - lo
    for _ in range(8):
        y = x + rng.normal(0.0, scale * width)
        if width > 0:
            y = _reflect(y, lo, hi)
        v = math.exp(y) if dist.log else y
        v = _snap(dist, v)
        if v != value:
            return v
    for _ in range(8):
        v = sample_uniform(dist, rng)
        if v != value:
            return v
    return value


def _reflect(y: float, lo: float, hi: float) -> float:
    width = hi - lo
    z = (y - lo) % (2 * width)
    return lo + (z if z <= width else 2 * width - z)


def _snap(dist: BaseDistribution, v: float) -> Any:
    if isinstance(dist, IntDistribution):
        step = dist.step
        k = round((v - dist.low) / step)
        return int(min(max(dist.low + k * step, dist.low), dist.high - (dist.high - dist.low) % step))
    assert isinstance(dist, FloatDistribution)
    if dist.step is not None:
        k = round((v - dist.low) / dist.step)
        v = dist.low + k * dist.step
    return float(min(max(v, dist.low), dist.high))


def sample_joint_random(
    space: Mapping[str, BaseDistribution],
    order: Sequence[str],
    constraints: ChoiceConstraints | None,
    rng: np.random.Generator,
    fixed: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Uniform random params over ``space``, decision by decision, inside the constraints."""
    out: dict[str, Any] = {}
    decided: dict[str, Any] = dict(fixed or {})
    for name in order:
        dist = space[name]
        choices = None
        if isinstance(dist, CategoricalDistribution):
            choices = allowed_values(constraints, name, dist.choices, decided)
        value = sample_uniform(dist, rng, choices)
        out[name] = value
        decided[name] = value
    return out


def ordered_space(
    space: Mapping[str, BaseDistribution], constraints: ChoiceConstraints | None
) -> tuple[list[str], dict[str, BaseDistribution]]:
    names = decision_order(constraints, [n for n, d in space.items() if not d.single()])
    return names, {n: space[n] for n in names}


class TrialIndex:
    """A study's trials by number.

    ``study._get_trials`` is usually dense (trial ``n`` at position ``n``), but a filtered
    view (HyperbandPruner's bracket study) is not. :meth:`get` answers ``None`` for a number
    that is not there (a lookup that may miss); ``index[n]`` raises ``KeyError`` (a trial the
    caller saw finished before: missing means the caches and the storage disagree, which must
    not pass silently as another trial or ``None``).
    """

    def __init__(self, trials: Sequence[FrozenTrial]) -> None:
        self._trials = trials
        self._by_number: dict[int, FrozenTrial] | None = None
        if trials and trials[-1].number != len(trials) - 1:  # not indexable by position
            self._by_number = {t.number: t for t in trials}
        self.end = len(trials) if self._by_number is None else max(self._by_number) + 1
        """One past the highest trial number."""

    def get(self, number: int) -> FrozenTrial | None:
        if self._by_number is not None:
            return self._by_number.get(number)
        return self._trials[number] if 0 <= number < len(self._trials) else None

    def __getitem__(self, number: int) -> FrozenTrial:
        t = self.get(number)
        if t is None:
            raise KeyError(f"trial {number} is not in the study's trials")
        return t


def completion_key(t: FrozenTrial) -> tuple[datetime.datetime, int]:
    """Completion order: ``datetime_complete`` (the finishing worker's clock), then number."""
    return (t.datetime_complete or t.datetime_start or _EPOCH, t.number)


class CompletionLog:
    """Incremental, in-process view of a study's finished trials in completion order.

    Finished trials never change, so each call only looks at trials it has not seen
    finished yet (new ones and the ones that were unfinished last time): O(new +
    running) per trial instead of O(all). ``states`` are the finished states kept in the
    order; other finished states (e.g. FAIL) are seen and dropped.
    """

    def __init__(self, states: Sequence[TrialState]) -> None:
        self.states = tuple(states)
        self.reset(None)

    def reset(self, study_key: Any) -> None:
        self.study_key = study_key
        self.seen_upto = 0  # trials with number < seen_upto were looked at
        self.unfinished: set[int] = set()  # numbers < seen_upto not finished when last seen
        self.order: list[tuple[datetime.datetime, int]] = []

    def update(
        self, study_key: Any, trials: Sequence[FrozenTrial]
    ) -> tuple[list[tuple[int, FrozenTrial]], list[FrozenTrial]]:
        """Take in newly finished trials.

        Returns ``(kept, other)``: (position in ``order``, trial) for each new trial in a kept
        state, and the new finished trials in other states. Positions are the insertion
        points at the time of insertion, in insertion order, so the smallest one tells how
        much of the previous order stayed unchanged.
        """
        if study_key != self.study_key:
            self.reset(study_key)
        index = TrialIndex(trials)
        get, top = index.get, index.end
        fresh: list[FrozenTrial] = []
        for n in sorted(self.unfinished):
            t = get(n)
            if t is not None and t.state.is_finished():
                self.unfinished.discard(n)
                fresh.append(t)
        for n in range(self.seen_upto, top):
            t = get(n)
            if t is None:
                continue
            if t.state.is_finished():
                fresh.append(t)
            else:
                self.unfinished.add(n)
        self.seen_upto = max(self.seen_upto, top)
        kept: list[tuple[int, FrozenTrial]] = []
        other: list[FrozenTrial] = []
        for t in sorted(fresh, key=completion_key):
            if t.state in self.states:
                key = completion_key(t)
                pos = bisect.bisect(self.order, key)
                self.order.insert(pos, key)
                kept.append((pos, t))
            else:
                other.append(t)
        return kept, other


def study_key(study: Any) -> tuple[Any, ...]:
    """Identity of the trial set a sampler sees (HyperbandPruner shows one bracket at a time)."""
    return compat.study_key(study)


def last_report(t: FrozenTrial) -> tuple[int, float] | None:
    """``(step, value)`` of a trial's last intermediate report (``None`` without one).

    The step belongs with the value: values reported at different steps are not comparable.
    """
    if not t.intermediate_values:
        return None
    step = max(t.intermediate_values)
    return step, t.intermediate_values[step]
