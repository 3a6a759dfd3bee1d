"""Cost budgets of a study: which architectures are feasible, decided before any training.

A study may cap the neck's FLOPs, the detector's parameters or its latency
(``max_neck_flops``, ``max_params``, ``max_latency_ms``). Costs are counted on the meta device
(milliseconds) and latency is measured in about a second, so the runner's objective checks a
trial's budget *before* training: a trial over budget is recorded with its costs and the
``infeasible`` user attr, and ends PRUNED without being trained. Samplers see budgets as
Optuna 5 has them: every trial gets one constraint per budget (``Trial.set_constraint(name,
cost - cap)``, > 0 violated), which Optuna's samplers (TPE, NSGA-II, GP), ``study.best_trials``
and ours read from the trial. (Optuna 5 deprecated the samplers' ``constraints_func`` for it.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

BUDGET_METRICS: dict[str, str] = {
    "max_neck_flops": "neck_flops",
    "max_params": "total_params",
    "max_latency_ms": "latency_ms",
}
"""Budget name -> the metric it caps (``max_params``: the whole detector's, as deployed)."""


@dataclass(frozen=True)
class Budgets:
    """The caps of one study (``None``: no cap)."""

    max_neck_flops: float | None = None
    max_params: float | None = None
    max_latency_ms: float | None = None

    def __post_init__(self) -> None:
        for name in BUDGET_METRICS:
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value <= 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")

    def active(self) -> dict[str, float]:
        """``{metric: cap}`` of the budgets that are set, in :data:`BUDGET_METRICS` order."""
        return {m: float(getattr(self, b)) for b, m in BUDGET_METRICS.items() if getattr(self, b) is not None}

    def __bool__(self) -> bool:
        return bool(self.active())

    def to_dict(self) -> dict[str, float]:
        """The budgets that are set, by budget name (for the record and the fingerprint)."""
        return {b: getattr(self, b) for b in BUDGET_METRICS if getattr(self, b) is not None}

    def violations(self, metrics: Mapping[str, Any]) -> list[float]:
        """One value per set budget: how far ``metrics`` exceed it (<= 0: within; a missing
        metric counts as within, as for a trial enqueued from elsewhere)."""
        return [float(metrics[m]) - cap if m in metrics else 0.0 for m, cap in self.active().items()]

    def constraints(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        """``{budget name: cost - cap}`` for ``Trial.set_constraint`` (:meth:`violations` by name)."""
        return dict(zip(self.to_dict(), self.violations(metrics), strict=True))

    def reasons(self, metrics: Mapping[str, Any]) -> list[str]:
        """``"neck_flops 1.2e+08 > max_neck_flops 1e+08"`` for each exceeded budget."""
        names = {m: b for b, m in BUDGET_METRICS.items()}
        return [
            f"{m} {float(metrics[m]):.4g} > {names[m]} {cap:.4g}"
            for m, cap in self.active().items()
            if m in metrics and float(metrics[m]) > cap
        ]
