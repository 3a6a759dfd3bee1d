"""Waiting out a storage that is briefly unavailable, instead of dying with a traceback.

A worker among hundreds meets ``too many clients``, a database that restarts, a network blip
or a storage server (:mod:`evo_fpn.storage.server`) that is restarted. Those errors are
*transient*: :func:`is_transient` recognises them (wrong passwords, missing databases and bad
data are not), and :class:`Waiter` retries with jittered exponential backoff (so that
hundreds of workers do not reconnect in step), printing one status line now and then, for
at most ``$EVO_FPN_STORAGE_WAIT`` seconds (default 600); then a one-line
:class:`~evo_fpn.storage.urls.StorageError`.

:class:`RetryingStorage` wraps an Optuna storage so that every call waits like that. A retried
write must not be written twice: parameter, attribute and heartbeat writes are upserts; a
``tell`` whose first attempt did land is recognised by its state and values
(:meth:`RetryingStorage.set_trial_state_values`). Failing a stale trial is never claimed on a
retry (another worker may have done it and queued the retry already).
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections.abc import Callable, Container, Sequence
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import FrozenTrial, TrialState

from evo_fpn.errors import UsageError

ENV_WAIT = "EVO_FPN_STORAGE_WAIT"
DEFAULT_WAIT_S = 600.0
STATUS_EVERY_S = 30.0
FIRST_DELAY_S = 0.5
MAX_DELAY_S = 15.0

_TRANSIENT_TEXT = (
    "too many clients",
    "remaining connection slots are reserved",
    "connection refused",
    "could not connect",
    "server closed the connection",
    "terminating connection",
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "the database system is not yet accepting connections",
    "cannot connect now",
    "timeout expired",
    "connection timeout",
    "consuming input failed",
    "connection is closed",
    "connection is lost",
    "connection already closed",
    "no connection to the server",
    "could not receive data",
    "could not send data",
    "connection reset",
    "broken pipe",
    "ssl connection has been closed",
    "queuepool limit",
    "deadlock detected",
    "could not serialize access",
)


class StorageUnavailable(UsageError):
    """The storage stayed unavailable for the whole wait; the message names it and the fix."""


def wait_seconds() -> float:
    """``$EVO_FPN_STORAGE_WAIT`` (seconds a worker waits for an unavailable storage)."""
    raw = os.environ.get(ENV_WAIT, "").strip()
    if not raw:
        return DEFAULT_WAIT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value < 0:
        raise UsageError(f"${ENV_WAIT}={raw!r} is not a number of seconds >= 0: e.g. {ENV_WAIT}=600")
    return value


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or any(e is seen for seen in out):
            continue
        out.append(e)
        todo += [e.__cause__, e.__context__, getattr(e, "orig", None)]
    return out


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` means "the storage is unavailable now", not "this request is wrong"."""
    for e in _chain(exc):
        code = getattr(e, "code", None)
        if callable(code) and type(e).__module__.startswith("grpc"):
            name = getattr(code(), "name", "")
            if name in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
                return True
            details = getattr(e, "details", lambda: "")() or ""
            if name == "UNKNOWN" and any(t in details.lower() for t in _TRANSIENT_TEXT):
                return True
        if getattr(e, "connection_invalidated", False):
            return True
        if isinstance(e, ConnectionError):
            return True
        text = str(e).lower()
        if any(t in text for t in _TRANSIENT_TEXT):
            return True
    return False


def describe(exc: BaseException) -> str:
    """The innermost message of ``exc``, on one short line."""
    chain = _chain(exc)
    for e in reversed(chain):
        details = getattr(e, "details", None)
        text = details() if callable(details) else str(e)
        text = " ".join(str(text or "").split())
        if text:
            return text[:160]
    return type(exc).__name__


class Waiter:
    """Backoff and status lines for one wait on ``what`` (e.g. ``PostgreSQL at db:5432``)."""

    def __init__(
        self,
        what: str,
        *,
        wait_s: float | None = None,
        log: Callable[[str], None] | None = None,
        fix: str = "check that it is running and reachable",
        scrub: Callable[[str], str] = lambda s: s,
    ) -> None:
        self.what = what
        self.wait_s = wait_seconds() if wait_s is None else wait_s
        self.log = log or _stderr
        self.fix = fix
        self.scrub = scrub
        self._t0: float | None = None
        self._delay = FIRST_DELAY_S
        self._last_status = -1e9
        self.retries = 0

    @property
    def waited(self) -> float:
        """Seconds since the first failure of this wait (0 when none)."""
        return 0.0 if self._t0 is None else time.monotonic() - self._t0

    def wait(self, exc: BaseException) -> None:
        """Sleep before the next attempt, or raise :class:`StorageUnavailable` when time is up."""
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = now
        waited = now - self._t0
        reason = self.scrub(describe(exc))
        left = self.wait_s - waited
        if left <= 0:
            raise StorageUnavailable(
                f"{self.what} unavailable for {waited:.0f} s ({reason}): {self.fix}; "
                f"a worker waits ${ENV_WAIT} seconds (now {self.wait_s:.0f})"
            ) from None
        delay = min(self._delay * random.uniform(0.5, 1.5), left)
        self._delay = min(self._delay * 2, MAX_DELAY_S)
        if now - self._last_status >= STATUS_EVERY_S:
            self._last_status = now
            self.log(
                f"waiting for {self.what} ({reason}): retry in {delay:.1f} s, giving up in {left:.0f} s "
                f"(pid {os.getpid()})"
            )
        self.retries += 1
        time.sleep(delay)

    def done(self) -> None:
        """Say once that the storage is back, if we waited."""
        if self._t0 is not None:
            self.log(f"{self.what} is back after {time.monotonic() - self._t0:.0f} s (pid {os.getpid()})")
            self._t0 = None
            self._delay = FIRST_DELAY_S
            self._last_status = -1e9


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def call_with_retry(fn: Callable[[], Any], waiter: Waiter) -> Any:
    """``fn()``, retried while it fails with a transient error (see :class:`Waiter`)."""
    while True:
        try:
            value = fn()
        except Exception as exc:
            if not is_transient(exc):
                raise
            waiter.wait(exc)
            continue
        waiter.done()
        return value


def _delegate(name: str) -> Callable[..., Any]:
    def method(self: RetryingStorage, *args: Any, **kwargs: Any) -> Any:
        return self._call(name, *args, **kwargs)

    method.__name__ = name
    method.__doc__ = f"``{name}`` of the wrapped storage, retried while the storage is unavailable."
    return method


class RetryingStorage(BaseStorage, BaseHeartbeat):
    """An Optuna storage whose calls wait out transient errors (see the module docstring).

    ``stale_trial_ids`` (optional) replaces the inner storage's stale-trial query; it is how
    trials left RUNNING without any heartbeat are found (see :func:`evo_fpn.storage.sql.stale_trial_ids`).
    """

    def __init__(
        self,
        inner: BaseStorage,
        *,
        what: str,
        heartbeat: BaseHeartbeat | None = None,
        stale_trial_ids: Callable[[int], list[int]] | None = None,
        wait_s: float | None = None,
        log: Callable[[str], None] | None = None,
        fix: str = "check that it is running and reachable",
        scrub: Callable[[str], str] = lambda s: s,
    ) -> None:
        self.inner = inner
        self._heartbeat = heartbeat if heartbeat is not None else (inner if isinstance(inner, BaseHeartbeat) else None)
        self._stale = stale_trial_ids
        self._waiter_args = {"wait_s": wait_s, "log": log, "fix": fix, "scrub": scrub}
        self.what = what

    def waiter(self) -> Waiter:
        return Waiter(self.what, **self._waiter_args)  # type: ignore[arg-type]

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        fn = getattr(self.inner, name)
        return call_with_retry(lambda: fn(*args, **kwargs), self.waiter())

    create_new_study = _delegate("create_new_study")
    delete_study = _delegate("delete_study")
    set_study_user_attr = _delegate("set_study_user_attr")
    set_study_system_attr = _delegate("set_study_system_attr")
    get_study_id_from_name = _delegate("get_study_id_from_name")
    get_study_name_from_id = _delegate("get_study_name_from_id")
    get_study_directions = _delegate("get_study_directions")
    get_study_user_attrs = _delegate("get_study_user_attrs")
    get_study_system_attrs = _delegate("get_study_system_attrs")
    get_all_studies = _delegate("get_all_studies")
    create_new_trial = _delegate("create_new_trial")
    set_trial_param = _delegate("set_trial_param")
    get_trial_id_from_study_id_trial_number = _delegate("get_trial_id_from_study_id_trial_number")
    get_trial_number_from_id = _delegate("get_trial_number_from_id")
    get_trial_param = _delegate("get_trial_param")
    set_trial_intermediate_value = _delegate("set_trial_intermediate_value")
    set_trial_user_attr = _delegate("set_trial_user_attr")
    set_trial_system_attr = _delegate("set_trial_system_attr")
    get_trial = _delegate("get_trial")
    get_n_trials = _delegate("get_n_trials")
    get_best_trial = _delegate("get_best_trial")
    get_trial_params = _delegate("get_trial_params")
    get_trial_user_attrs = _delegate("get_trial_user_attrs")
    get_trial_system_attrs = _delegate("get_trial_system_attrs")

    def get_all_trials(
        self, study_id: int, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        return self._call("get_all_trials", study_id, deepcopy=deepcopy, states=states)

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        """A retried ``tell`` whose first attempt landed returns ``True`` instead of raising."""
        waiter = self.waiter()
        retried = False
        while True:
            try:
                value = self.inner.set_trial_state_values(trial_id, state, values)
            except optuna.exceptions.UpdateFinishedTrialError:
                if retried and state in (TrialState.COMPLETE, TrialState.PRUNED):
                    stored = self.get_trial(trial_id)
                    if stored.state == state and list(stored.values or []) == list(values or []):
                        waiter.done()
                        return True
                raise
            except Exception as exc:
                if not is_transient(exc):
                    raise
                waiter.wait(exc)
                retried = True
                continue
            waiter.done()
            return value

    def remove_session(self) -> None:
        self.inner.remove_session()

    def check_trial_is_updatable(self, trial_id: int, trial_state: TrialState) -> None:
        self.inner.check_trial_is_updatable(trial_id, trial_state)

    # -- heartbeats ------------------------------------------------------------------------
    def record_heartbeat(self, trial_id: int) -> None:
        assert self._heartbeat is not None
        hb = self._heartbeat
        call_with_retry(lambda: hb.record_heartbeat(trial_id), self.waiter())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        assert self._heartbeat is not None
        query = self._stale or self._heartbeat._get_stale_trial_ids
        return call_with_retry(lambda: query(study_id), self.waiter())

    def get_heartbeat_interval(self) -> int | None:
        return None if self._heartbeat is None else self._heartbeat.get_heartbeat_interval()

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return None if self._heartbeat is None else self._heartbeat.get_heartbeat_stale_trial_callback()

    def __getattr__(self, name: str) -> Any:  # anything else the inner storage offers
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)
