"""The three kinds of storage behind one interface, picked once from the URL (:func:`backend_for`).

* :class:`SqliteBackend`: a file, one process; the budget lock is the worker's own thread lock.
* :class:`PostgresBackend`: many workers on one server; the budget lock is an advisory lock.
* :class:`ServerBackend`: ``grpc://HOST:PORT``, an evo-fpn storage server
  (:mod:`evo_fpn.storage.server`) that holds the database connections for any number of
  workers; the budget lock is a lease the server grants.

Connections per direct PostgreSQL worker, measured (``benchmarks/bench_workers.py``, and one
worker sampled in ``pg_stat_activity``): exactly 3, opened together at start
(:meth:`PostgresBackend.reserve`): 2 pooled ones that its main, heartbeat and stale-check
threads share, and the budget lock's own. A server with the default ``max_connections = 100``
so runs 33 direct workers at a time; the others wait for a free set. Through the storage
server a worker holds none; the server holds its pool (``--pool-size``, default 8) + 1 for the locks.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol

import optuna
import sqlalchemy
from sqlalchemy.engine import URL

from evo_fpn.storage import client as storage_client
from evo_fpn.storage.retry import ENV_WAIT, RetryingStorage, StorageUnavailable, Waiter, call_with_retry
from evo_fpn.storage.sql import (
    CONNECT_TIMEOUT_S,
    POOL_KWARGS,
    SQLITE_BUSY_TIMEOUT_S,
    AdvisoryLock,
    explain_pg_error,
    has_study,
    lock_key,
    sqlite_pragmas,
    stale_trial_ids,
)
from evo_fpn.storage.urls import StorageError, mask_url, parse_url, scrub

Callback = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]
SCHEMA_LOCK = "\x00schema"
"""The lock name under which workers create Optuna's tables one at a time."""


class Mutex(Protocol):
    """What the budget lock needs from a backend: exclusion across processes."""

    def acquire(self) -> None: ...
    def release(self) -> None: ...
    def close(self) -> None: ...


class _NoMutex:
    """SQLite is one process: the budget lock's thread lock is all the exclusion there is."""

    def acquire(self) -> None:
        pass

    def release(self) -> None:
        pass

    def close(self) -> None:
        pass


class Backend(ABC):
    """One storage URL: how to check it, open it, read from it and lock a study's budget on it."""

    what: str
    """``PostgreSQL at host:port`` and the like, for status lines."""
    fix: str = "check that the server is up and has free connections (max_connections), or use a storage server"

    def __init__(self, *, url: str, parsed: URL) -> None:
        self.url = url
        self.parsed = parsed

    def waiter(self, log: Callable[[str], None] | None = None) -> Waiter:
        """The :class:`~evo_fpn.storage.retry.Waiter` for this storage: its name, fix and password scrubber."""
        # partials, not lambdas: a storage built with them pickles, as Optuna's storages do
        return Waiter(self.what, log=log, fix=self.fix, scrub=functools.partial(scrub, url=self.url))

    @abstractmethod
    def check(self) -> None:
        """Refuse an unusable storage before anything is written; write nothing."""

    @abstractmethod
    def open(
        self,
        *,
        heartbeat_interval: int,
        grace_period: int,
        callback: Callback,
        engine_overrides: dict[str, Any] | None,
        log: Callable[[str], None] | None,
    ) -> RetryingStorage:
        """A worker's storage: heartbeats, stale trials retried, outages waited out."""

    @abstractmethod
    def reader(self) -> AbstractContextManager[optuna.storages.BaseStorage]:
        """A plain storage to read a study that exists (no heartbeats, no reserved connections)."""

    @abstractmethod
    def study_exists(self, study_name: str) -> bool:
        """Whether the storage holds ``study_name``, without creating anything."""

    @abstractmethod
    def mutex(self, study_name: str, *, log: Callable[[str], None] | None = None) -> Mutex:
        """Exclusion across this storage's workers for ``study_name`` (the budget lock's cross-process part)."""

    def lock_engine(self) -> sqlalchemy.engine.Engine | None:
        """An engine for advisory locks where the database has them (PostgreSQL), else ``None``."""
        return None

    def close(self) -> None:
        """Let go of what this process holds for the URL outside its storages (a reserved connection)."""
        return None


class SqlBackend(Backend):
    """A database Optuna's ``RDBStorage`` opens directly: SQLite or PostgreSQL."""

    @abstractmethod
    def engine_kwargs(self) -> dict[str, Any]:
        """SQLAlchemy engine settings for Optuna's storage."""

    def explain(self, message: str) -> str:
        """One line naming the problem and the fix for a failed connection."""
        return f"cannot open {self.what}: {scrub(message, self.url)}"

    def reserve(self, rdb: optuna.storages.RDBStorage) -> None:
        """Open a worker's whole set of connections at once (PostgreSQL), or nothing."""

    def _prepare(self) -> None:
        """Make what the storage needs before it is opened."""

    def _opened(self, rdb: optuna.storages.RDBStorage) -> None:
        """Settle a freshly opened storage."""

    def rdb(
        self,
        *,
        heartbeat_interval: int | None = None,
        grace_period: int | None = None,
        callback: Callback | None = None,
        engine_overrides: dict[str, Any] | None = None,
        log: Callable[[str], None] | None = None,
        reserve: bool = False,
    ) -> optuna.storages.RDBStorage:
        """Optuna's RDB storage (tables created one worker at a time), waiting out outages.

        ``reserve``: open the worker's whole set of connections at once (:meth:`reserve`).
        """
        self._prepare()

        def build() -> optuna.storages.RDBStorage:
            # Workers starting together on a fresh database would race to create Optuna's tables
            # (PostgreSQL then raises UniqueViolation): create them one worker at a time.
            # Another program (optuna-dashboard, a plain load_study) may still race us: then the
            # tables exist on the next attempt.
            schema_lock = self.mutex(SCHEMA_LOCK, log=log)
            try:
                schema_lock.acquire()
                for attempt in range(3):
                    try:
                        rdb = optuna.storages.RDBStorage(
                            self.parsed.render_as_string(hide_password=False),
                            engine_kwargs={**self.engine_kwargs(), **(engine_overrides or {})},
                            heartbeat_interval=heartbeat_interval,
                            grace_period=grace_period,
                            heartbeat_stale_trial_callback=callback,
                        )
                        break
                    except sqlalchemy.exc.IntegrityError:
                        if attempt == 2:
                            raise
                        time.sleep(0.5)
            finally:
                schema_lock.release()
                schema_lock.close()
            if reserve:
                self.reserve(rdb)
            return rdb

        try:
            storage = call_with_retry(build, self.waiter(log))
        except sqlalchemy.exc.OperationalError as exc:
            raise StorageError(self.explain(str(exc.orig or exc))) from None
        except optuna.exceptions.StorageInternalError as exc:
            raise StorageError(self.explain(str(getattr(exc.__cause__, "orig", None) or exc))) from None
        self._opened(storage)
        return storage

    def open(
        self,
        *,
        heartbeat_interval: int,
        grace_period: int,
        callback: Callback,
        engine_overrides: dict[str, Any] | None,
        log: Callable[[str], None] | None,
    ) -> RetryingStorage:
        rdb = self.rdb(heartbeat_interval=heartbeat_interval, grace_period=grace_period, callback=callback,
                       engine_overrides=engine_overrides, log=log, reserve=True)  # fmt: skip
        w = self.waiter(log)
        return RetryingStorage(
            optuna.storages._CachedStorage(rdb),
            what=w.what,
            heartbeat=rdb,
            stale_trial_ids=functools.partial(stale_trial_ids, rdb, grace_period=grace_period),
            wait_s=w.wait_s,
            log=log,
            fix=w.fix,
            scrub=w.scrub,
        )

    @contextmanager
    def reader(self) -> Iterator[optuna.storages.BaseStorage]:
        rdb = self.rdb()
        try:
            yield rdb
        finally:
            rdb.engine.dispose()

    def study_exists(self, study_name: str) -> bool:
        engine = sqlalchemy.create_engine(
            self.parsed, poolclass=sqlalchemy.pool.NullPool, connect_args=self.engine_kwargs()["connect_args"]
        )
        try:
            return call_with_retry(lambda: has_study(engine, study_name), self.waiter())
        finally:
            engine.dispose()


class SqliteBackend(SqlBackend):
    """A SQLite file: one process (WAL, so optuna-dashboard may read while it writes)."""

    def __init__(self, *, url: str, parsed: URL) -> None:
        super().__init__(url=url, parsed=parsed)
        self.path = Path(str(parsed.database))
        self.what = f"SQLite {parsed.database}"

    def engine_kwargs(self) -> dict[str, Any]:
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}

    def check(self) -> None:
        path = self.path
        if path.exists() and not path.is_file():
            raise StorageError(f"SQLite storage {path} is not a file: choose another --storage path")
        parent = path.parent if str(path.parent) else Path(".")
        existing = next((p for p in [parent, *parent.parents] if p.exists()), Path("."))
        if not existing.is_dir() or not os.access(existing, os.W_OK):
            raise StorageError(f"cannot write the SQLite storage {path}: {existing} is not a writable folder")
        if path.exists():
            with open(path, "rb") as fh:
                head = fh.read(16)
            if head and head != b"SQLite format 3\x00":
                raise StorageError(f"{path} exists but is not a SQLite database: choose another --storage file")

    def _prepare(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _opened(self, rdb: optuna.storages.RDBStorage) -> None:
        sqlalchemy.event.listen(rdb.engine, "connect", sqlite_pragmas)
        rdb.engine.dispose()  # the connection made while opening had no pragmas

    def study_exists(self, study_name: str) -> bool:
        return self.path.exists() and super().study_exists(study_name)

    def mutex(self, study_name: str, *, log: Callable[[str], None] | None = None) -> Mutex:
        return _NoMutex()


class PostgresBackend(SqlBackend):
    """A PostgreSQL server (psycopg 3) shared by many workers."""

    def __init__(self, *, url: str, parsed: URL) -> None:
        super().__init__(url=url, parsed=parsed)
        self.what = f"PostgreSQL at {parsed.host or 'localhost'}:{parsed.port or 5432}"
        self._reserved: Any = None
        self._reserved_lock = threading.Lock()

    def engine_kwargs(self) -> dict[str, Any]:
        """Small pools + pre-ping (see :data:`~evo_fpn.storage.sql.POOL_KWARGS`)."""
        return {**POOL_KWARGS, "connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}}

    def lock_engine(self) -> sqlalchemy.engine.Engine:
        return sqlalchemy.create_engine(
            self.parsed, poolclass=sqlalchemy.pool.NullPool, connect_args={"connect_timeout": CONNECT_TIMEOUT_S}
        )

    def explain(self, message: str) -> str:
        return explain_pg_error(message, self.parsed)

    def check(self) -> None:
        """One real connection, so an unreachable server, a wrong password or a missing database
        is reported now, in one line, with its fix."""
        engine = self.lock_engine()

        def ping() -> None:
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text("SELECT 1"))

        waiter = self.waiter()
        try:
            call_with_retry(ping, waiter)
        except ImportError:
            raise StorageError("PostgreSQL needs psycopg 3: pip install 'evo-fpn[postgres]'") from None
        except sqlalchemy.exc.OperationalError as exc:
            raise StorageError(self.explain(str(exc.orig or exc))) from None
        except sqlalchemy.exc.SQLAlchemyError as exc:
            raise StorageError(f"cannot use {mask_url(self.url)}: {scrub(str(exc), self.url)}") from None
        except StorageUnavailable as exc:  # waited in vain: say what the last error means
            last = exc.__context__
            text = str(getattr(last, "orig", None) or last)
            raise StorageError(
                f"{self.explain(text)} (waited {waiter.waited:.0f} s; ${ENV_WAIT} sets how long)"
            ) from None
        finally:
            engine.dispose()

    def reserve(self, rdb: optuna.storages.RDBStorage) -> None:
        """Open the pool's connections and the budget lock's at once, or none: a worker that
        cannot have them all lets go of what it got and waits, so workers beyond the server's
        ``max_connections`` queue up instead of each holding some and waiting for more. The
        lock's connection waits here for this process's first :meth:`mutex`."""
        held = []
        lock_engine = self.lock_engine()
        try:
            for _ in range(int(POOL_KWARGS["pool_size"])):
                held.append(rdb.engine.connect())
            conn = lock_engine.connect()
        except Exception:
            rdb.engine.dispose()
            raise
        finally:
            for c in held:
                c.close()  # back to the pool, which keeps them
        with self._reserved_lock:
            self._reserved = conn

    def _take_reserved(self) -> Any:
        with self._reserved_lock:
            conn, self._reserved = self._reserved, None
        return conn

    def close(self) -> None:
        conn = self._take_reserved()
        if conn is not None:
            conn.close()

    def mutex(self, study_name: str, *, log: Callable[[str], None] | None = None) -> Mutex:
        return AdvisoryLock(
            self.lock_engine(), lock_key(study_name), waiter=lambda: self.waiter(log), reserved=self._take_reserved
        )


class ServerBackend(Backend):
    """An evo-fpn storage server (``grpc://HOST:PORT``): Optuna's gRPC proxy plus heartbeats and leases."""

    fix = "start it (python -m evo_fpn.storage_server --storage DATABASE_URL) or fix --storage"

    def __init__(self, *, url: str, parsed: URL) -> None:
        super().__init__(url=url, parsed=parsed)
        self.host, self.port = str(parsed.host), int(parsed.port or 0)
        self.what = f"the storage server at {self.host}:{self.port}"

    def check(self) -> None:
        storage_client.check_server(self.host, self.port, waiter=self.waiter())

    def open(
        self,
        *,
        heartbeat_interval: int,
        grace_period: int,
        callback: Callback,
        engine_overrides: dict[str, Any] | None,
        log: Callable[[str], None] | None,
    ) -> RetryingStorage:
        client = storage_client.GrpcStorage(
            host=self.host,
            port=self.port,
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            heartbeat_stale_trial_callback=callback,
        )
        w = self.waiter(log)
        return RetryingStorage(client, what=w.what, wait_s=w.wait_s, log=log, fix=w.fix, scrub=w.scrub)

    @contextmanager
    def reader(self) -> Iterator[optuna.storages.BaseStorage]:
        client = storage_client.GrpcStorage(host=self.host, port=self.port, heartbeat_interval=None, grace_period=None)
        try:
            yield client
        finally:
            client.close()

    def study_exists(self, study_name: str) -> bool:
        return call_with_retry(lambda: storage_client.study_exists(self.host, self.port, study_name), self.waiter())

    def mutex(self, study_name: str, *, log: Callable[[str], None] | None = None) -> Mutex:
        return storage_client.LeaseLock(self.host, self.port, study_name, waiter=self.waiter(log))


_KINDS: dict[str, type[Backend]] = {"sqlite": SqliteBackend, "postgresql": PostgresBackend, "grpc": ServerBackend}


@functools.cache
def backend_for(url: str) -> Backend:
    """The backend of ``url`` (checked by :func:`~evo_fpn.storage.urls.parse_url`).

    One per URL and process: a PostgreSQL worker's budget lock takes the connection its
    storage reserved (:meth:`PostgresBackend.reserve`) from the same backend.
    """
    parsed = parse_url(url)
    return _KINDS[parsed.get_backend_name()](url=url, parsed=parsed)


def storage_waiter(url: str, log: Callable[[str], None] | None = None) -> Waiter:
    """The :class:`~evo_fpn.storage.retry.Waiter` for ``url``: its name, fix and password scrubber."""
    return backend_for(url).waiter(log)
