"""The budget loop: a study ends with exactly ``n_trials`` finished trials, however many
workers join.

The budget counts *finished* trials (COMPLETE or PRUNED) of the whole study, across all
workers. Each worker takes a lock (a PostgreSQL advisory lock, :class:`evo_fpn.storage.BudgetLock`),
fails stale trials, counts finished and running trials, and asks for a new trial only while
``finished + running < n_trials``; if only running trials stand between the study and its
budget it waits, because one of them may belong to a killed worker and will be retried.
(Optuna's ``MaxTrialsCallback`` would overshoot by up to one trial per extra worker.)
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from evo_fpn import storage as st
from evo_fpn.analysis import FINISHED, best_value, objective_value
from evo_fpn.cli import UsageError
from evo_fpn.objective import Objective
from evo_fpn.summary import Progress


def count_trials(study: optuna.Study) -> tuple[int, int, float | None]:
    """(finished, running, best value) of the whole study, read from the storage."""
    trials = study._storage.get_all_trials(study._study_id, deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
    finished = [t for t in trials if t.state in FINISHED]
    running = len(trials) - len(finished)
    return len(finished), running, best_value(map(objective_value, finished), study.directions[0])


def run_worker(
    study: optuna.Study,
    *,
    objective: Objective,
    n_trials: int,
    lock: st.BudgetLock,
    timeout: float | None,
    callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]],
    progress: Progress,
    max_consecutive_failures: int,
    poll_s: float = 1.0,
) -> str:
    """Run trials until the study has ``n_trials`` finished ones; return why it stopped."""
    objective.on_start = lock.release
    failures = 0
    t0 = time.monotonic()
    seen: dict[str, Any] = {"last": None}

    def on_trial(study: optuna.Study, trial: FrozenTrial) -> None:
        seen["last"] = trial

    while True:
        if timeout is not None and time.monotonic() - t0 >= timeout:
            return "timeout"
        lock.acquire()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            finished, running, best = count_trials(study)
            if finished >= n_trials:
                progress.update(finished, running, best)
                return "budget"
            if finished + running >= n_trials:
                action = "wait"
            else:
                action = "run"
                seen["last"] = None
                study.optimize(objective, n_trials=1, catch=objective.failures, callbacks=[on_trial, *callbacks])
        finally:
            lock.release()
        if action == "wait":
            progress.update(finished, running, best, note="waiting for running trials")
            time.sleep(poll_s)
            continue
        last: FrozenTrial | None = seen["last"]
        if last is not None and last.state == TrialState.FAIL:
            failures += 1
            progress.write(f"trial {last.number} failed: {last.user_attrs.get('fail_reason', 'unknown reason')}")
            if failures >= max_consecutive_failures:
                raise UsageError(
                    f"{failures} trials in a row failed (last: {last.user_attrs.get('fail_reason', '?')}): "
                    "check the proxy settings (e.g. a lower learning rate) before resuming"
                )
        else:
            failures = 0
            if last is not None and last.state == TrialState.PRUNED:
                progress.write(f"trial {last.number} pruned")
        progress.update(*count_trials(study))
