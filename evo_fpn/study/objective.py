"""Trial -> spec -> metrics -> objective value, with re-use of duplicate architectures.

:class:`Objective` is what ``study.optimize`` calls. It asks the search space for a spec,
records the spec and its canonical hash as user attrs, and either

* re-uses the metrics of an earlier COMPLETE trial of the same study with the same canonical
  hash (the study's fingerprint guarantees the same proxy task), marked ``cached_from``; an
  earlier trial still RUNNING with that hash (another worker's) is waited for first, so one
  architecture is never trained twice side by side; or
* counts its costs (and measures its latency when the study needs it), refuses it without
  training when it is over a budget (:mod:`evo_fpn.limits`: PRUNED, ``infeasible`` user attr),
  or else hands the spec to the task (:class:`evo_fpn.tasks.proxy.ProxyTask`,
  :class:`~evo_fpn.tasks.synthetic.SyntheticTask`, or any registered objective,
  :mod:`evo_fpn.study.registry`), records the metrics it returns (:mod:`evo_fpn.record`) and
  returns the study's value(s) from them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import TrialState

from evo_fpn import compat, record
from evo_fpn.arch.space import NasFpnSpace
from evo_fpn.limits import Budgets
from evo_fpn.tasks.base import Task, worker_id

INTERRUPTED = "interrupted (Ctrl-C): queued again with the same architecture"
"""The ``fail_reason`` of a trial stopped by Ctrl-C; its retry evaluates the same parameters."""

METRIC_ATTRS: tuple[str, ...] = record.REUSED
"""User attrs copied from the earlier trial when a duplicate architecture is re-used."""


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


class Objective:
    """``study.optimize`` objective: suggest a spec, re-use a duplicate or evaluate it.

    ``failures``: exception types that fail only this trial (``evo_fpn.errors.TrialFailed``);
    their message becomes the ``fail_reason`` user attr, and the runner passes the same types
    to ``study.optimize(catch=...)`` so the worker goes on. ``on_start`` runs once the
    trial's architecture and hash are written (the runner releases its budget lock there, so
    the next worker's sampler and duplicate check see them).
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
        self.current: int | None = None  # the number of the trial this worker is evaluating

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        self.current = trial.number
        try:
            return self._evaluate(trial)
        except KeyboardInterrupt:
            trial.set_user_attr(record.FAIL_REASON, INTERRUPTED)
            raise

    def _evaluate(self, trial: optuna.Trial) -> float | list[float]:
        trial.set_user_attr(record.WORKER, self.worker)
        if self.objective_name is not None:
            trial.set_user_attr(record.OBJECTIVE, self.objective_name)
        if len(self.value_names) > 1 and trial.study.metric_names is None:
            trial.study.set_metric_names(list(self.value_names))  # optuna-dashboard's axis labels
        spec = self.space.suggest(trial)
        spec_hash = spec.canonical_hash()
        trial.set_user_attr(record.SPEC, spec.to_json())
        trial.set_user_attr(record.SPEC_HASH, spec_hash)
        # Still under the runner's lock: the next worker's sampler and duplicate check see this
        # trial's params and hash, so two workers never train one architecture side by side.
        running = find_running_duplicate(trial.study, spec_hash, trial.number) if self.dedup else None
        if self.on_start is not None:
            self.on_start()
        if self.artifact_store is not None:
            from evo_fpn.study.artifacts import attach_architecture

            attach_architecture(trial, spec, self.artifact_store)
        if self.dedup:
            if running is not None:
                wait_until_finished(trial.study, running)
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


def requeue_interrupted(study: optuna.Study, number: int) -> bool:
    """Queue trial ``number`` again with the same parameters after a Ctrl-C, as Optuna's
    heartbeat retry queues a killed worker's trial (same ``failed_trial``/``retry_history``
    system attrs), so the next run evaluates that architecture; return whether it queued one
    (not when the trial finished before the interrupt)."""
    trial = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    if trial is None or trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.WAITING):
        return False
    if trial.state == TrialState.RUNNING:  # interrupted before Optuna's own tell
        study.tell(number, state=TrialState.FAIL)
    if trial.user_attrs.get(record.FAIL_REASON) != INTERRUPTED:
        compat.set_trial_user_attr(study, trial, record.FAIL_REASON, INTERRUPTED)
    system_attrs = {**trial.system_attrs, "failed_trial": trial.system_attrs.get("failed_trial", number)}
    system_attrs["retry_history"] = [*trial.system_attrs.get("retry_history", []), number]
    study.add_trial(
        optuna.create_trial(
            state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
            system_attrs=system_attrs,
        )
    )  # fmt: skip
    return True


def find_duplicate(study: optuna.Study, spec_hash: str, number: int) -> optuna.trial.FrozenTrial | None:
    """The earliest COMPLETE, non-cached trial of ``study`` with this canonical hash."""
    done = compat.trials(study, states=(TrialState.COMPLETE,), use_cache=True)
    for t in sorted(done, key=lambda t: t.number):
        attrs = t.user_attrs
        if t.number != number and attrs.get(record.SPEC_HASH) == spec_hash and record.CACHED_FROM not in attrs:
            return t
    return None


def find_running_duplicate(study: optuna.Study, spec_hash: str, number: int) -> int | None:
    """The number of an earlier RUNNING trial training the same architecture (read fresh)."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    same = [t.number for t in running if t.number < number and t.user_attrs.get(record.SPEC_HASH) == spec_hash]
    return min(same, default=None)


DUPLICATE_POLL_S = 2.0
"""How often a trial waiting for a running duplicate looks at it again."""


def wait_until_finished(study: optuna.Study, number: int) -> None:
    """Wait while trial ``number`` runs (a killed worker's trial is failed by the stale-trial
    check, so this ends): then its metrics are re-used, or, if it failed, this trial trains."""
    while True:
        trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
        if trial.state != TrialState.RUNNING:
            return
        time.sleep(DUPLICATE_POLL_S)


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
