"""The hook through which a search space tells a sampler which choices are allowed.

Some spaces cannot be written as independent categoricals: NAS-FPN wants the two inputs of
a cell distinct and the output cells' levels a permutation. A space exposes that by
implementing :class:`ChoiceConstraints` (structurally, no inheritance needed); the samplers
of this package then sample and mutate only inside it. Without a hook every combination is
allowed and decisions are made in sorted-name order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class ChoiceConstraints(Protocol):
    """Which values each categorical decision may take, given the earlier decisions.

    ``decision_order(names)`` sorts parameter names into the order in which decisions are
    made. ``allowed_choices(name, decided)`` returns the allowed choices of categorical
    ``name`` given ``decided`` (values of decisions that come *before* ``name``), or ``None``
    when every choice is allowed. It must never return an empty sequence for a reachable
    state.
    """

    def decision_order(self, names: Iterable[str]) -> list[str]: ...

    def allowed_choices(self, name: str, decided: Mapping[str, Any]) -> Sequence[Any] | None: ...


def decision_order(constraints: ChoiceConstraints | None, names: Iterable[str]) -> list[str]:
    """Names in decision order: the hook's order, or sorted names without a hook."""
    names = list(names)
    if constraints is None:
        return sorted(names)
    ordered = list(constraints.decision_order(names))
    if sorted(ordered) != sorted(names):
        raise ValueError("constraints.decision_order must return a permutation of the names it is given")
    return ordered


def allowed_values(
    constraints: ChoiceConstraints | None, name: str, choices: Sequence[Any], decided: Mapping[str, Any]
) -> list[Any]:
    """The subset of ``choices`` (in their order) that the hook allows; all without a hook."""
    if constraints is None:
        return list(choices)
    allowed = constraints.allowed_choices(name, decided)
    if allowed is None:
        return list(choices)
    out = [c for c in choices if _contains(allowed, c)]
    if not out:
        raise ValueError(f"constraints allow no choice for {name!r} given the earlier decisions")
    return out


def _contains(values: Sequence[Any], x: Any) -> bool:
    # ``True == 1`` in Python; categorical choices compare by type as well, as Optuna does.
    return any(type(v) is type(x) and v == x for v in values)
