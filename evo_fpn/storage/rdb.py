"""Where studies live: the storage operations the layers above use, whatever the backend.

* :func:`check_storage` validates a URL and connects once, turning driver errors into one
  line that names the fix. It writes nothing (a SQLite file is not created).
* :func:`open_storage` builds the storage with heartbeats and ``RetryHeartbeatStaleTrialCallback``,
  so a killed worker's trial is failed and retried, wrapped in
  :class:`~evo_fpn.storage.retry.RetryingStorage`, so that a worker waits out a database
  restart or ``too many clients`` instead of dying.
* :class:`~evo_fpn.storage.locks.BudgetLock` serialises "count finished trials, then ask"
  across workers, which is what makes the study budget exact.

Each is one call on the URL's backend (:mod:`evo_fpn.storage.backends`); URLs are read and
masked in :mod:`evo_fpn.storage.urls`. The names callers use are here too, so that
``from evo_fpn.storage import rdb as st`` is the one import they need.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import optuna

from evo_fpn.storage.backends import SqlBackend, backend_for, storage_waiter
from evo_fpn.storage.locks import BudgetLock
from evo_fpn.storage.retry import RetryingStorage
from evo_fpn.storage.sql import (
    CONNECT_TIMEOUT_S,
    ORPHAN_AFTER_S,
    POOL_KWARGS,
    explain_pg_error,
    lock_key,
    stale_trial_ids,
)
from evo_fpn.storage.urls import (
    DEFAULT_DIR,
    ENV_STORAGE,
    StorageError,
    default_url,
    is_grpc,
    is_sqlite,
    mask_url,
    normalise_url,
    parse_url,
    resolve_url,
    sqlite_path,
)

__all__ = [
    "CONNECT_TIMEOUT_S",
    "DEFAULT_DIR",
    "ENV_STORAGE",
    "ORPHAN_AFTER_S",
    "POOL_KWARGS",
    "BudgetLock",
    "StorageError",
    "check_storage",
    "default_url",
    "describe_url",
    "engine_kwargs",
    "explain_pg_error",
    "is_grpc",
    "is_sqlite",
    "lock_key",
    "mask_url",
    "normalise_url",
    "open_rdb",
    "open_storage",
    "parse_url",
    "reader",
    "resolve_url",
    "sqlite_path",
    "stale_trial_ids",
    "storage_waiter",
    "study_exists",
]


def check_storage(url: str) -> None:
    """Refuse unusable storages before anything is written (no SQLite file is created).

    PostgreSQL and storage servers: one real connection, so an unreachable server, a wrong
    password or a missing database is reported now, in one line, with its fix.
    """
    backend_for(url).check()


def open_storage(
    url: str,
    *,
    heartbeat_interval: int,
    grace_period: int,
    max_retry: int | None,
    engine_overrides: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> RetryingStorage:
    """The study's storage: heartbeats, retry of stale trials, and waiting out outages.

    Call only after :func:`check_storage` (this creates the SQLite file / the tables).
    ``grpc://`` URLs get the storage server's client (:class:`evo_fpn.storage.client.GrpcStorage`).
    """
    return backend_for(url).open(
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period,
        callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry),
        engine_overrides=engine_overrides,
        log=log,
    )


def open_rdb(url: str, **kwargs: Any) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage for a database URL (:meth:`~evo_fpn.storage.backends.SqlBackend.rdb`)."""
    backend = backend_for(url)
    if not isinstance(backend, SqlBackend):
        raise StorageError(f"{mask_url(url)} is a storage server, not a database: give sqlite:// or postgresql://")
    return backend.rdb(**kwargs)


def study_exists(url: str, study_name: str) -> bool:
    """Whether the storage holds ``study_name``, without creating anything."""
    return backend_for(url).study_exists(study_name)


@contextmanager
def reader(url: str) -> Iterator[optuna.storages.BaseStorage]:
    """A plain storage to read a study that exists, before the worker's own is opened: no
    heartbeats and no reserved connections (a PostgreSQL worker's set is opened once, by
    :func:`open_storage`); its connections are closed on exit."""
    with backend_for(url).reader() as storage:
        yield storage


def describe_url(url: str) -> str:
    """``PostgreSQL at host:port`` / ``the storage server at host:port``, for status lines."""
    return backend_for(url).what


def engine_kwargs(url: str) -> dict[str, Any]:
    """Engine settings of a database URL: small pools + pre-ping for PostgreSQL, a busy timeout for SQLite."""
    backend = backend_for(url)
    return backend.engine_kwargs() if isinstance(backend, SqlBackend) else {}
