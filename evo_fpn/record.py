"""What a trial records: the user-attr names and types, and the one function that writes them.

Every layer that reads a trial (the runner's summary, compare, figures, the dashboards, the
tests) and the one layer that writes it (:class:`evo_fpn.study.objective.Objective`) use these
names, so a metric is spelled in one place. Objectives return plain metrics dicts and never
touch the trial.

The study's values come from the metrics too, through :func:`study_values`: a study has one
value per name in its ``value_names`` (its ``objectives``, ``("ap",)`` unless a study file says
otherwise), each with its natural direction (:data:`DIRECTIONS`); single-objective studies
store a float as before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

WORKER = "worker"  # host:pid of the process that ran the trial
SPEC = "spec"  # the architecture, as ArchSpec JSON
SPEC_HASH = "spec_hash"  # its canonical hash (equal for equal networks)
FAIL_REASON = "fail_reason"  # why a FAILED trial failed, one line
CACHED_FROM = "cached_from"  # number of the earlier trial whose metrics a duplicate re-used
AP_SEEDS = "ap_seeds"  # per-seed AP when a trial trains several seeds
OBJECTIVE = "objective"  # the objective's name (proxy, synthetic, ...)
INFEASIBLE = "infeasible"  # why a trial is over its cost budget, one line; such a trial is PRUNED, never trained
LATENCY_DEVICE = "latency_device"  # where latency_ms was measured (a property of the machine, not the network)
BACKBONE_BUILD = "backbone_build"  # digest of the frozen backbone whose cached features a trial trained on

AP_METRICS: tuple[str, ...] = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")
"""COCO AP breakdown, the first six entries of ``COCOeval.stats`` in order."""
AP_LABELS: dict[str, str] = {
    "ap": "AP", "ap50": "AP50", "ap75": "AP75", "ap_small": "APs", "ap_medium": "APm", "ap_large": "APl",
}  # fmt: skip
COST_METRICS: tuple[str, ...] = ("neck_params", "total_params", "neck_flops", "total_flops")
"""Parameters and per-image FLOPs, counted without training (every objective can have them)."""
LATENCY_METRICS: tuple[str, ...] = ("latency_ms", "latency_std_ms")
"""Measured forward latency of the whole detector at batch 1 (median and std over the timed runs)."""
TIMING_METRICS: tuple[str, ...] = ("train_seconds", "eval_seconds", "images_per_s", "threads")

REUSED: tuple[str, ...] = (*AP_METRICS, *COST_METRICS, *LATENCY_METRICS, LATENCY_DEVICE, BACKBONE_BUILD)
"""The metrics a duplicate architecture copies from the trial it re-uses."""

TYPES: dict[str, type] = {
    **dict.fromkeys(AP_METRICS, float),
    **dict.fromkeys(COST_METRICS, int),
    **dict.fromkeys(LATENCY_METRICS, float),
    LATENCY_DEVICE: str,
    BACKBONE_BUILD: str,
    "train_seconds": float,
    "eval_seconds": float,
    "images_per_s": float,
    "threads": int,
}
"""Metrics a trial records as user attrs, with their types (others in a metrics dict are not stored)."""

DIRECTIONS: dict[str, str] = {"ap": "maximize", **dict.fromkeys(COST_METRICS, "minimize"), "latency_ms": "minimize"}
"""The natural direction of every metric a study may optimise (its ``objectives``)."""
LABELS: dict[str, str] = {
    "ap": "AP", "neck_flops": "neck GFLOPs", "total_flops": "total GFLOPs", "neck_params": "neck M params",
    "total_params": "total M params", "latency_ms": "latency (ms)",
}  # fmt: skip
"""Axis labels of the objectives, in the units of :func:`display_value`."""
_UNIT = {"neck_flops": 1e9, "total_flops": 1e9, "neck_params": 1e6, "total_params": 1e6}


def display_value(name: str, value: float) -> float:
    """``value`` of objective ``name`` in the unit of its label (GFLOPs, M params, ms, AP)."""
    return float(value) / _UNIT.get(name, 1.0)


def user_attrs(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The typed user attrs of ``metrics``: the :data:`TYPES` keys it has, plus ``ap_seeds``.

    A ``None`` metric (an AP of an object size the validation set does not have) is not
    recorded: an absent attr says "not measured" to every reader, where 0.0 would say "failed".
    """
    attrs = {k: TYPES[k](metrics[k]) for k in TYPES if metrics.get(k) is not None}
    if AP_SEEDS in metrics:
        attrs[AP_SEEDS] = [float(v) for v in metrics[AP_SEEDS]]
    return attrs


def write_metrics(trial: Any, metrics: Mapping[str, Any], written: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Record ``metrics`` on ``trial`` (an ``optuna.Trial``) as typed user attrs; return them.

    ``written``: attrs this trial already has (what an earlier call returned); those with an
    equal value are not written again (each user attr is one commit on an RDB storage).
    """
    attrs = user_attrs(metrics)
    for key, value in attrs.items():
        if written is None or key not in written or written[key] != value or type(written[key]) is not type(value):
            trial.set_user_attr(key, value)
    return attrs


def directions(value_names: Sequence[str]) -> list[str]:
    """Optuna directions of a study whose values are ``value_names``."""
    unknown = [n for n in value_names if n not in DIRECTIONS]
    if unknown or not value_names:
        raise ValueError(f"cannot optimise {unknown or 'nothing'}: choose among {', '.join(DIRECTIONS)}")
    return [DIRECTIONS[n] for n in value_names]


def study_values(metrics: Mapping[str, Any], value_names: Sequence[str] = ("ap",)) -> float | list[float]:
    """The study's value(s) for ``metrics``: a float for one name (as Optuna's single-objective
    studies store it), a list in ``value_names`` order for several."""
    missing = [n for n in value_names if n not in metrics]
    if missing:
        raise KeyError(f"the objective returned no {', '.join(missing)} (it gave {', '.join(sorted(metrics))})")
    values = [float(metrics[n]) for n in value_names]
    return values[0] if len(values) == 1 else values


class Reporter(Protocol):
    """Where an objective sends intermediate values (an ``optuna.Trial`` is one); the pruner
    behind it decides. Multi-objective studies, which Optuna cannot prune, get :class:`NoReporter`."""

    def report(self, value: float, step: int) -> None: ...

    def should_prune(self) -> bool: ...


class NoReporter:
    """A reporter that keeps nothing and never prunes."""

    def report(self, value: float, step: int) -> None:
        pass

    def should_prune(self) -> bool:
        return False
