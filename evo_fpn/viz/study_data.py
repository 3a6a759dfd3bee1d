"""One Optuna study read into plain rows, for the figures and pages of :mod:`evo_fpn.viz`.

:class:`StudyData` is a snapshot of one study taken with one storage read (through Optuna's
public ``Study`` API), so a page with many figures reads the storage once. Conventions:

* **AP** is the trial's ``ap`` user attr (COCO AP in [0, 1]) and, when that is missing, its
  first objective value.
* **Best** follows the study's direction (``study.directions[0]``, the objective AP is):
  highest for a maximised study, lowest for a minimised one (:mod:`evo_fpn.study.analysis`).
* **Cost** is the study's second objective (``objectives = ["ap", COST]``), else neck FLOPs.
* **Sampler groups** come from the study user attrs the runner records (``sampler``, or a
  ``config`` dict holding it); a study without them is grouped as ``"unknown"``.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import TrialState

from evo_fpn import record
from evo_fpn.arch.space import NasFpnSpace, SpaceConfig
from evo_fpn.arch.spec import ArchSpec, SpecError
from evo_fpn.samplers.evolution import parent_of
from evo_fpn.study.analysis import pareto_front, rank_key


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
        # deepcopy=False: the rows copy what they keep, and a long study has thousands of trials
        for t in study.get_trials(deepcopy=False):
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
        done = [(t, metric(t, self.cost_name)) for t in self.complete]
        done = [(t, c) for t, c in done if c is not None]
        cost_dir = StudyDirection.MINIMIZE
        on_front = pareto_front([(c, float(t.ap)) for t, c in done], (cost_dir, self.direction))  # type: ignore[arg-type]
        return sorted((done[i][0] for i in on_front), key=lambda t: (metric(t, self.cost_name), t.number))

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


def metric(t: TrialRow, name: str) -> float | None:
    """The trial's numeric user attr ``name`` (a cost such as ``neck_flops``); ``None`` when absent."""
    v = t.user_attrs.get(name)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def group_by_sampler(studies: Sequence[StudyData]) -> dict[str, list[StudyData]]:
    """The studies by sampler group, groups in name order (so colours are stable across pages)."""
    groups: dict[str, list[StudyData]] = defaultdict(list)
    for d in studies:
        groups[d.sampler].append(d)
    return dict(sorted(groups.items()))


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
