"""The NAS-FPN search space as Optuna categoricals, and the way back from specs to params.

Every cell makes four decisions, each one an Optuna categorical with fixed choices per
param name (as Optuna's samplers require) and readable values::

    cell3.input_i = "cell1"    cell3.input_j = "P5"    cell3.level = "P4"    cell3.op = "sum"

Two constraints are not expressible as independent categoricals: a cell's inputs must be
distinct, and the output cells must produce a permutation of the levels. They are met in
two ways, so that no trial ever fails on them:

* **Repair on decode** (for samplers that know nothing of the constraints: random, TPE,
  NSGA-II): when ``input_j`` equals ``input_i``, the next candidate after it (cyclically,
  in the choice order) is used; when an output cell picks a level already produced by an
  earlier output cell, the next free level upwards (cyclically) is used. Decoding is a
  total function, so every point any sampler produces is a valid spec.
* **Native avoidance** (for our samplers): :class:`NasFpnSpace` implements the
  ``ChoiceConstraints`` hook (``decision_order`` and ``allowed_choices``), so a sampler that
  honours it never proposes a value that needs repair.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution

from evo_fpn.arch.spec import OPS, ArchSpec, Cell, SpecError

_FIELDS = ("input_i", "input_j", "level", "op")
_NAME = re.compile(r"^cell(\d+)\.(input_i|input_j|level|op)$")


@dataclass(frozen=True)
class SpaceConfig:
    """Shape of the search space: how many cells, which levels, which ops."""

    num_cells: int = 7
    num_intermediate: int = 2
    min_level: int = 3
    max_level: int = 7
    min_intermediate_level: int = 4
    ops: tuple[str, ...] = OPS

    def __post_init__(self) -> None:
        n_levels = self.max_level - self.min_level + 1
        if n_levels < 2:
            raise ValueError(f"space needs at least two levels, got P{self.min_level}..P{self.max_level}")
        if self.num_cells - self.num_intermediate != n_levels:
            raise ValueError(
                f"num_cells - num_intermediate must equal the number of levels ({n_levels}): one output cell "
                f"per level; got {self.num_cells} cells with {self.num_intermediate} intermediate"
            )
        if self.num_intermediate < 0:
            raise ValueError("num_intermediate must be >= 0")
        if self.num_intermediate and not self.min_level <= self.min_intermediate_level <= self.max_level:
            raise ValueError("min_intermediate_level must lie inside the level range")
        if not self.ops or any(op not in OPS for op in self.ops):
            raise ValueError(f"ops must be a non-empty subset of {OPS}, got {self.ops}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ops"] = list(self.ops)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SpaceConfig:
        data = dict(data)
        if "ops" in data:
            data["ops"] = tuple(data["ops"])
        return cls(**data)


class NasFpnSpace:
    """Maps Optuna params <-> :class:`ArchSpec` for one :class:`SpaceConfig`.

    Also the ``ChoiceConstraints`` hook for :mod:`evo_fpn.samplers`: pass
    ``constraints=space`` to a sampler so it only proposes valid combinations.
    """

    def __init__(self, config: SpaceConfig | None = None) -> None:
        self.config = config or SpaceConfig()
        c = self.config
        self._inputs = [f"P{lvl}" for lvl in range(c.min_level, c.max_level + 1)]
        self._out_levels = [f"P{lvl}" for lvl in range(c.min_level, c.max_level + 1)]
        self._inter_levels = [f"P{lvl}" for lvl in range(c.min_intermediate_level, c.max_level + 1)]
        self.distributions: dict[str, CategoricalDistribution] = {}
        for k in range(c.num_cells):
            pool = self.candidates(k)
            self.distributions[f"cell{k}.input_i"] = CategoricalDistribution(pool)
            self.distributions[f"cell{k}.input_j"] = CategoricalDistribution(pool)
            levels = self._inter_levels if self.is_intermediate(k) else self._out_levels
            self.distributions[f"cell{k}.level"] = CategoricalDistribution(levels)
            self.distributions[f"cell{k}.op"] = CategoricalDistribution(list(c.ops))

    # -- structure -----------------------------------------------------------------------
    def is_intermediate(self, k: int) -> bool:
        return k < self.config.num_intermediate

    def candidates(self, k: int) -> list[str]:
        """Names cell ``k`` may take as input: the pyramid inputs, then earlier cells."""
        return self._inputs + [f"cell{m}" for m in range(k)]

    def param_names(self) -> list[str]:
        """All decisions, in the order they are made."""
        return list(self.distributions)

    # -- ChoiceConstraints hook ----------------------------------------------------------
    def decision_order(self, names: Iterable[str]) -> list[str]:
        """Order ``names`` as decisions are made: cell by cell, inputs, level, op."""

        def key(name: str) -> tuple[int, int, str]:
            m = _NAME.match(name)
            if m is None:
                return (1 << 30, 0, name)
            return (int(m.group(1)), _FIELDS.index(m.group(2)), name)

        return sorted(names, key=key)

    def allowed_choices(self, name: str, decided: Mapping[str, Any]) -> Sequence[Any] | None:
        """Choices of ``name`` that keep the spec valid, given the earlier decisions.

        ``None`` means every choice is allowed. ``decided`` holds the values of decisions
        that come before ``name`` in :meth:`decision_order` (others are ignored).
        """
        m = _NAME.match(name)
        if m is None or name not in self.distributions:
            return None
        k, field = int(m.group(1)), m.group(2)
        choices = list(self.distributions[name].choices)
        if field == "input_j":
            taken = decided.get(f"cell{k}.input_i")
            return [x for x in choices if x != taken]
        if field == "level" and not self.is_intermediate(k):
            used = {decided.get(f"cell{m2}.level") for m2 in range(self.config.num_intermediate, k)}
            return [x for x in choices if x not in used]
        return None

    def sample(self, rng: random.Random) -> ArchSpec:
        """A random point of the space: every decision uniform, then repaired by :meth:`decode`."""
        return self.decode({name: rng.choice(d.choices) for name, d in self.distributions.items()})

    # -- params <-> spec -------------------------------------------------------------------
    def suggest(self, trial: optuna.Trial) -> ArchSpec:
        """Ask every decision of ``trial`` and decode the answer into a valid spec."""
        params = {name: trial.suggest_categorical(name, dist.choices) for name, dist in self.distributions.items()}
        return self.decode(params)

    def decode(self, params: Mapping[str, Any]) -> ArchSpec:
        """Params -> a valid spec, repairing the two constraints as the module doc says."""
        c = self.config
        missing = [n for n in self.distributions if n not in params]
        if missing:
            raise SpecError(f"params miss decisions: {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
        for name, dist in self.distributions.items():
            if params[name] not in dist.choices:
                raise SpecError(f"{name}={params[name]!r} is not one of {list(dist.choices)}")
        cells: list[Cell] = []
        used_levels: set[str] = set()
        for k in range(c.num_cells):
            pool = self.candidates(k)
            a = pool.index(params[f"cell{k}.input_i"])
            b = pool.index(params[f"cell{k}.input_j"])
            if a == b:
                b = (a + 1) % len(pool)
            level_name = params[f"cell{k}.level"]
            if not self.is_intermediate(k):
                levels = self._out_levels
                idx = levels.index(level_name)
                while levels[idx] in used_levels:
                    idx = (idx + 1) % len(levels)
                level_name = levels[idx]
                used_levels.add(level_name)
            cells.append(Cell(int(level_name[1:]), params[f"cell{k}.op"], (a, b), not self.is_intermediate(k)))
        spec = ArchSpec(tuple(cells), c.min_level, c.max_level, c.min_intermediate_level)
        return spec.validate()

    def encode(self, spec: ArchSpec) -> dict[str, str]:
        """Spec -> params that decode to exactly ``spec`` (for ``study.enqueue_trial``).

        The spec must have this space's layout: ``num_intermediate`` intermediate cells
        first, then one output cell per level.
        """
        c = self.config
        spec.validate()
        if (spec.min_level, spec.max_level) != (c.min_level, c.max_level):
            raise SpecError(
                f"spec covers P{spec.min_level}..P{spec.max_level}, the space P{c.min_level}..P{c.max_level}"
            )
        if len(spec.cells) != c.num_cells:
            raise SpecError(f"spec has {len(spec.cells)} cells, the space {c.num_cells}")
        params: dict[str, str] = {}
        for k, cell in enumerate(spec.cells):
            if cell.is_output == self.is_intermediate(k):
                raise SpecError(
                    f"cell{k}: the space expects {c.num_intermediate} intermediate cells first, then output cells"
                )
            if cell.op not in c.ops:
                raise SpecError(f"cell{k}: op {cell.op!r} is not in this space's ops {list(c.ops)}")
            pool = self.candidates(k)
            params[f"cell{k}.input_i"] = pool[cell.inputs[0]]
            params[f"cell{k}.input_j"] = pool[cell.inputs[1]]
            params[f"cell{k}.level"] = f"P{cell.level}"
            params[f"cell{k}.op"] = cell.op
        if self.decode(params) != spec:
            raise SpecError("spec cannot be expressed in this space (intermediate level range differs)")
        return params
