"""Trial -> spec -> metrics -> objective value, with re-use of duplicate architectures.

:class:`Objective` is what ``study.optimize`` calls. It asks the search space for a spec,
records the spec and its canonical hash as user attrs, and either

* re-uses the metrics of an earlier COMPLETE trial of the same study with the same canonical
  hash (the study's fingerprint guarantees the same proxy task), marked ``cached_from``, or
* counts its costs (and measures its latency when the study needs it), refuses it without
  training when it is over a budget (:mod:`evo_fpn.limits`: PRUNED, ``infeasible`` user attr),
  or else hands the spec to the task (:class:`evo_fpn.proxy.ProxyTask`, :class:`SyntheticTask`,
  or any registered objective, :mod:`evo_fpn.objectives`), records the metrics it returns
  (:mod:`evo_fpn.record`) and returns the study's value(s) from them.

:class:`SyntheticTask` is a cheap, deterministic stand-in for the proxy task with the same
interface (``prepare``/``evaluate``, intermediate reports, pruning). It exists for
tests and benchmarks of the runner's mechanics (workers, kills, resume), where training
detectors would only add minutes; select it with ``--objective synthetic``.
"""

from __future__ import annotations

import hashlib
import math
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import optuna
from optuna.trial import TrialState

from evo_fpn import record
from evo_fpn.limits import Budgets
from evo_fpn.record import Reporter
from evo_fpn.space import NasFpnSpace
from evo_fpn.spec import ArchSpec


class SyntheticFailure(RuntimeError):
    """The synthetic task's stand-in for ``evo_fpn.errors.TrialFailed`` (no torch import needed)."""


METRIC_ATTRS: tuple[str, ...] = record.REUSED
"""User attrs copied from the earlier trial when a duplicate architecture is re-used."""


class Task(Protocol):
    """What an objective is: prepared once per worker, then ``evaluate(spec, reporter) -> metrics``.

    It returns metrics (at least the study's value names, e.g. ``ap``) and never writes to a
    trial; it reports intermediate values to ``reporter`` and raises ``optuna.TrialPruned``
    when ``reporter.should_prune()`` says so. A task may also have ``costs(spec) -> metrics``
    (parameters, FLOPs; counted without training), which the Objective records first, and
    ``latency(spec, *, warmup, runs) -> metrics`` (``latency_ms``, ``latency_device``), which it
    calls when the study optimises or caps latency."""

    def prepare(self) -> Any: ...

    def evaluate(self, spec: ArchSpec, reporter: Reporter | None = None) -> dict[str, Any]: ...


class TrialReporter:
    """The reporter the Objective hands a task: an Optuna trial's ``report``/``should_prune``,
    and a pruned trial keeps its last AP as the ``ap`` user attr (its value is an early one)."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial
        self.last: float | None = None

    def report(self, value: float, step: int) -> None:
        self.trial.report(value, step)
        self.last = float(value)

    def should_prune(self) -> bool:
        prune = self.trial.should_prune()
        if prune and self.last is not None:
            self.trial.set_user_attr("ap", self.last)
        return prune


def worker_id() -> str:
    """``host:pid`` of this process, written as the ``worker`` user attr."""
    return f"{socket.gethostname()}:{os.getpid()}"


class SyntheticTask:
    """A deterministic function of the architecture that behaves like a training run.

    The value rewards structure a real detector tends to like (attention merges, cells that
    build on other cells, work at fine levels) plus a fixed per-architecture offset from the
    canonical hash, so samplers have a landscape to climb and equal networks score equally.
    ``sleep`` seconds are spent over ``steps`` intermediate reports (pruners see them);
    ``fail_fraction`` of architectures (chosen by hash) raise :class:`SyntheticFailure`.

    Costs (``with_costs=True``, which the runner sets for cost-aware studies only, so a plain
    synthetic study never imports torch) are the no-compute counts of the RetinaNet in
    :data:`COST_MODEL`; its ``latency_ms`` is a deterministic stand-in, not a measurement: total
    FLOPs at 20 GFLOP/s plus 0.05 ms per cell (``latency_device`` says so).
    """

    SETTINGS = ("sleep", "steps", "noise", "fail_fraction")
    COST_MODEL: dict[str, Any] = {"backbone": "resnet10", "width": 64, "repeats": 1, "image_size": 128}
    """The proxy settings the synthetic costs are counted under (10 classes, as the digits)."""

    def __init__(
        self,
        *,
        sleep: float = 0.0,
        steps: int = 3,
        noise: float = 0.05,
        fail_fraction: float = 0.0,
        with_costs: bool = False,
    ) -> None:
        if not isinstance(sleep, int | float) or sleep < 0:
            raise ValueError(f"sleep must be >= 0 seconds, got {sleep!r}")
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        if not 0 <= noise <= 0.5:
            raise ValueError(f"noise must be in [0, 0.5], got {noise!r}")
        if not 0 <= fail_fraction < 1:
            raise ValueError(f"fail_fraction must be in [0, 1), got {fail_fraction!r}")
        self.sleep, self.steps, self.noise, self.fail_fraction = float(sleep), steps, float(noise), float(fail_fraction)
        self.with_costs = bool(with_costs)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], *, with_costs: bool = False) -> SyntheticTask:
        unknown = sorted(set(settings) - set(cls.SETTINGS))
        if unknown:
            raise ValueError(f"unknown [synthetic] setting {unknown[0]!r}; known: {', '.join(cls.SETTINGS)}")
        return cls(**dict(settings), with_costs=with_costs)

    def costs(self, spec: ArchSpec) -> dict[str, int]:
        """Counted costs under :data:`COST_MODEL` (``{}`` without ``with_costs``)."""
        if not self.with_costs:
            return {}
        from evo_fpn.cost import detector_costs
        from evo_fpn.proxy_config import ProxyConfig

        return detector_costs(ProxyConfig(**self.COST_MODEL), spec, num_classes=10)

    def latency(self, spec: ArchSpec, *, warmup: int = 0, runs: int = 1) -> dict[str, Any]:
        """The deterministic latency stand-in (see the class doc); ``warmup``/``runs`` are unused."""
        from evo_fpn.cost import detector_costs
        from evo_fpn.proxy_config import ProxyConfig

        flops = detector_costs(ProxyConfig(**self.COST_MODEL), spec, num_classes=10)["total_flops"]
        ms = 1e3 * flops / 20e9 + 0.05 * len(spec.cells)
        return {"latency_ms": ms, "latency_std_ms": 0.0, record.LATENCY_DEVICE: "synthetic (FLOPs model, not measured)"}

    def fingerprint(self) -> str:
        """What changes results (not ``sleep``)."""
        body = f"synthetic-v1|{self.steps}|{self.noise}|{self.fail_fraction}"
        return hashlib.sha256(body.encode()).hexdigest()[:16]

    def prepare(self) -> None:
        """Nothing to build; present for interface parity with the proxy task."""

    def score(self, spec: ArchSpec) -> float:
        h = spec.canonical_hash()
        n = len(spec.cells)
        n_in = spec.num_inputs
        attention = sum(c.op == "global_pool" for c in spec.cells) / n
        deep = sum(sum(x >= n_in for x in c.inputs) for c in spec.cells) / (2 * n)
        fine = sum(c.level <= spec.min_level + 1 for c in spec.cells) / n
        offset = int(h[:8], 16) / 0xFFFFFFFF - 0.5
        raw = 0.15 + 0.12 * attention + 0.15 * deep + 0.06 * fine + 2 * self.noise * offset
        return float(min(max(raw, 0.0), 1.0))

    def evaluate(self, spec: ArchSpec, reporter: Reporter | None = None) -> dict[str, Any]:
        h = spec.canonical_hash()
        if self.fail_fraction and int(h[8:16], 16) / 0xFFFFFFFF < self.fail_fraction:
            raise SyntheticFailure("synthetic failure (loss became NaN)")
        ap = self.score(spec)
        t0 = time.perf_counter()
        for step in range(self.steps):
            if self.sleep:
                time.sleep(self.sleep / self.steps)
            if reporter is not None:
                reporter.report(ap * math.sqrt((step + 1) / self.steps), step)
                if reporter.should_prune():
                    raise optuna.TrialPruned(f"pruned at step {step}")
        metrics: dict[str, Any] = {
            "ap": ap,
            "ap50": min(1.0, ap * 1.6),
            "ap75": ap * 0.9,
            "ap_small": ap * 0.5,
            "ap_medium": ap * 1.05,
            "ap_large": min(1.0, ap * 1.3),
            "train_seconds": time.perf_counter() - t0,
            "eval_seconds": 0.0,
        }
        return metrics


class Objective:
    """``study.optimize`` objective: suggest a spec, re-use a duplicate or evaluate it.

    ``failures``: exception types that fail only this trial (``evo_fpn.errors.TrialFailed``);
    their message becomes the ``fail_reason`` user attr, and the runner passes the same types
    to ``study.optimize(catch=...)`` so the worker goes on. ``on_start`` runs first thing in
    every trial (the runner releases its budget lock there, once the trial exists).
    ``artifact_store``: where the architecture picture is uploaded. ``value_names``: the
    metrics that are the study's values (:func:`evo_fpn.record.study_values`); with more than
    one, the task gets no reporter (Optuna cannot prune multi-objective trials). ``budgets``:
    caps checked before training (:mod:`evo_fpn.limits`). ``latency``: ``(warmup, runs)`` when
    every trial's latency is measured (``task.latency``), else ``None``.

    This is the one layer that writes a trial's record (:mod:`evo_fpn.record`).
    """

    def __init__(
        self,
        *,
        space: NasFpnSpace,
        task: Task,
        failures: tuple[type[BaseException], ...] = (),
        dedup: bool = True,
        artifact_store: Any | None = None,
        on_start: Callable[[], None] | None = None,
        value_names: tuple[str, ...] = ("ap",),
        objective_name: str | None = None,
        budgets: Budgets | None = None,
        latency: tuple[int, int] | None = None,
    ) -> None:
        if not isinstance(space, NasFpnSpace):
            raise TypeError("space must be a NasFpnSpace")
        if not isinstance(failures, tuple) or not all(isinstance(f, type) for f in failures):
            raise TypeError("failures must be a tuple of exception types")
        self.failures = failures
        self.space = space
        self.task = task
        self.dedup = dedup
        self.artifact_store = artifact_store
        self.on_start = on_start
        self.value_names = tuple(value_names)
        record.directions(self.value_names)  # unknown names fail here, not in the first trial
        self.objective_name = objective_name
        self.budgets = budgets or Budgets()
        needs_latency = "latency_ms" in self.value_names or "latency_ms" in self.budgets.active()
        if needs_latency and latency is None:
            raise ValueError("latency_ms is an objective or a budget: pass latency=(warmup, runs)")
        self.latency = latency
        self.worker = worker_id()

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        if self.on_start is not None:
            self.on_start()
        trial.set_user_attr(record.WORKER, self.worker)
        if self.objective_name is not None:
            trial.set_user_attr(record.OBJECTIVE, self.objective_name)
        if len(self.value_names) > 1 and trial.study.metric_names is None:
            trial.study.set_metric_names(list(self.value_names))  # optuna-dashboard's axis labels
        spec = self.space.suggest(trial)
        spec_hash = spec.canonical_hash()
        trial.set_user_attr(record.SPEC, spec.to_json())
        trial.set_user_attr(record.SPEC_HASH, spec_hash)
        if self.artifact_store is not None:
            from evo_fpn.report import attach_architecture

            attach_architecture(trial, spec, self.artifact_store)
        if self.dedup:
            earlier = find_duplicate(trial.study, spec_hash, trial.number)
            if earlier is not None:
                for name, value in earlier.constraints.items():
                    trial.set_constraint(name, value)
                return reuse(trial, earlier)
        reporter = TrialReporter(trial) if len(self.value_names) == 1 else record.NoReporter()
        try:
            measured: dict[str, Any] = {}
            costs = getattr(self.task, "costs", None)  # no-compute counts: a pruned trial has them too
            if costs is not None:
                measured.update(costs(spec))
            if self.latency is not None:
                warmup, runs = self.latency
                measured.update(self.task.latency(spec, warmup=warmup, runs=runs))  # type: ignore[attr-defined]
            written = record.write_metrics(trial, measured)  # before training: a pruned trial keeps its costs
            for name, value in self.budgets.constraints(measured).items():  # what samplers read (Optuna 5)
                trial.set_constraint(name, value)
            over = self.budgets.reasons(measured)
            if over:  # never trained: recorded with its costs, PRUNED (no value, no training time)
                trial.set_user_attr(record.INFEASIBLE, "; ".join(over))
                raise optuna.TrialPruned(f"over budget: {'; '.join(over)}")
            metrics = {**measured, **self.task.evaluate(spec, reporter)}
        except self.failures as exc:
            trial.set_user_attr(record.FAIL_REASON, str(exc) or type(exc).__name__)
            raise
        record.write_metrics(trial, metrics, written)  # the training's metrics; the costs are not written twice
        return record.study_values(metrics, self.value_names)


def find_duplicate(study: optuna.Study, spec_hash: str, number: int) -> optuna.trial.FrozenTrial | None:
    """The earliest COMPLETE, non-cached trial of ``study`` with this canonical hash."""
    done = study._get_trials(deepcopy=False, states=(TrialState.COMPLETE,), use_cache=True)
    for t in sorted(done, key=lambda t: t.number):
        attrs = t.user_attrs
        if t.number != number and attrs.get(record.SPEC_HASH) == spec_hash and record.CACHED_FROM not in attrs:
            return t
    return None


def reuse(trial: optuna.Trial, earlier: optuna.trial.FrozenTrial) -> float | list[float]:
    """Copy ``earlier``'s metrics and learning curve into ``trial``; return its value(s)."""
    for key in METRIC_ATTRS:
        if key in earlier.user_attrs:
            trial.set_user_attr(key, earlier.user_attrs[key])
    trial.set_user_attr(record.CACHED_FROM, earlier.number)
    if len(earlier.values) == 1:  # Optuna refuses intermediate values in multi-objective studies
        for step, value in sorted(earlier.intermediate_values.items()):
            trial.report(value, step)
        return float(earlier.values[0])
    return [float(v) for v in earlier.values]
