"""The budget loop: a study ends with exactly ``n_trials`` finished trials, however many
workers join.

The budget counts *finished* trials (COMPLETE or PRUNED) of the whole study, across all
workers. Each worker takes a lock (a PostgreSQL advisory lock, :class:`evo_fpn.storage.rdb.BudgetLock`),
fails stale trials, counts finished and running trials, and asks for a new trial only while
``finished + running < n_trials``; if only running trials stand between the study and its
budget it waits, because one of them may belong to a killed worker and will be retried.
(Optuna's ``MaxTrialsCallback`` would overshoot by up to one trial per extra worker.)

Optuna looks for stale trials (a killed worker's) only when a worker starts a trial, so a
killed worker's trial used to wait for the next trial boundary of a live worker: minutes
with real trials. :class:`StaleTrialWatch` checks on the heartbeat's schedule instead, so
a killed worker's trial is failed and re-queued within ``grace_period + heartbeat_interval``
(plus one check) of its last heartbeat.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from evo_fpn import compat
from evo_fpn.errors import UsageError
from evo_fpn.storage import rdb as st
from evo_fpn.study.analysis import FINISHED, best_value, objective_value
from evo_fpn.study.objective import Objective, requeue_interrupted
from evo_fpn.study.summary import Progress


def count_trials(study: optuna.Study) -> tuple[int, int, float | None]:
    """(finished, running, best value) of the whole study, read from the storage."""
    trials = study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
    finished = [t for t in trials if t.state in FINISHED]
    running = len(trials) - len(finished)
    return len(finished), running, best_value(map(objective_value, finished), study.directions[0])


def fail_stale_trials(study: optuna.Study) -> None:
    """Optuna's ``fail_stale_trials`` without its experimental warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


class StaleTrialWatch:
    """A daemon thread that fails (and, through the storage's callback, re-queues) stale
    trials every heartbeat interval, between this worker's trial boundaries."""

    def __init__(self, study: optuna.Study, interval: float | None = None) -> None:
        if interval is None:
            interval = compat.heartbeat_interval(study)
        self._study = study
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.checks = 0

    def start(self) -> StaleTrialWatch:
        if self.interval is not None:
            self._thread = threading.Thread(target=self._run, daemon=True, name="stale-trial-watch")
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                fail_stale_trials(self._study)
                self.checks += 1
            except Exception:  # the storage is unavailable: the main thread reports that
                pass

    def stop(self) -> None:
        self._stop.set()


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
    t0 = time.monotonic()
    watch = StaleTrialWatch(study).start()
    failures = 0
    try:
        while True:
            if timeout is not None and time.monotonic() - t0 >= timeout:
                return "timeout"
            last: FrozenTrial | None = None
            lock.acquire()
            try:
                fail_stale_trials(study)
                finished, running, best = count_trials(study)
                if finished >= n_trials:
                    progress.update(finished, running, best)
                    return "budget"
                wait = finished + running >= n_trials
                if not wait:
                    last = _optimize_one(study, objective, callbacks, progress)
            finally:
                lock.release()
            if wait:
                progress.update(finished, running, best, note="waiting for running trials")
                time.sleep(poll_s)
                continue
            if last is not None and last.state == TrialState.FAIL:
                failures += 1
                reason = last.user_attrs.get("fail_reason", "unknown reason")
                progress.write(f"trial {last.number} failed: {reason}")
                if failures >= max_consecutive_failures:
                    raise UsageError(
                        f"{failures} trials in a row failed (last: {reason}): "
                        "check the proxy settings (e.g. a lower learning rate) before resuming"
                    )
            else:
                failures = 0
                if last is not None and last.state == TrialState.PRUNED:
                    progress.write(f"trial {last.number} pruned")
            progress.update(*count_trials(study))
    finally:
        watch.stop()


def _optimize_one(
    study: optuna.Study,
    objective: Objective,
    callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]],
    progress: Progress,
) -> FrozenTrial | None:
    """One trial through ``study.optimize``: the trial it finished (``None``: it was failed as
    stale meanwhile). A Ctrl-C queues the interrupted trial again before it propagates."""
    seen: list[FrozenTrial] = []
    objective.current = None
    try:
        study.optimize(
            objective, n_trials=1, catch=objective.failures, callbacks=[lambda _, t: seen.append(t), *callbacks]
        )
    except KeyboardInterrupt:
        if objective.current is not None:
            requeue_interrupted(study, objective.current)
        raise
    except ValueError as exc:
        if not str(exc).startswith("Cannot tell a FAIL trial"):
            raise
        # Our heartbeats could not be written (the database was out of reach) for longer than the
        # grace period, so another worker failed this trial and queued its retry: our result is
        # dropped, never written twice.
        progress.write("this worker's trial was failed as stale while it ran (its retry is queued)")
    return seen[-1] if seen else None
