"""The storage server: one process holds the database connections for any number of workers.

    python -m evo_fpn.storage_server --storage postgresql+psycopg://evo@dbhost/evo_fpn --host 0.0.0.0 --port 13000
    python -m evo_fpn.run --study default --storage grpc://serverhost:13000     # on every worker

It is Optuna's gRPC storage proxy (``optuna.storages._grpc``, the servicer behind
``run_grpc_proxy_server``) plus what evo-fpn's workers need from a database and Optuna's proxy
does not carry, as extra RPCs on the same port (JSON messages, no generated code):

* **heartbeats** (Optuna's ``GrpcStorageProxy`` is not a ``BaseHeartbeat``): a worker's
  heartbeat is written to the same ``trial_heartbeats`` table, with the database's clock, and
  stale trials are found by the same rule as for direct workers
  (:func:`evo_fpn.storage.sql.stale_trial_ids`), so a killed worker's trial is failed and retried;
* **the budget lock**: a worker without a database connection cannot take a PostgreSQL
  advisory lock, so the server grants leases: renewed by the holder every ``ttl / 3``, expired
  ``ttl`` seconds after a killed holder's last renewal. While a lease is held the server holds
  the study's advisory lock (:func:`evo_fpn.storage.sql.lock_key`) on its own connection, so
  workers on the database directly, or on another server, are excluded too.

Database connections: ``--pool-size`` (default 8) + 1 for the locks, whatever the number of
workers. The server waits out database restarts like a worker does
(:mod:`evo_fpn.storage.retry`); workers wait out a restart of the server. The command line is
:mod:`evo_fpn.cli.storage_server`; the workers' side is :mod:`evo_fpn.storage.client`.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import optuna

from evo_fpn.compat import grpc_servicer
from evo_fpn.errors import UsageError
from evo_fpn.storage.backends import SqlBackend, backend_for
from evo_fpn.storage.client import SERVICE, decode, encode, import_grpc
from evo_fpn.storage.retry import RetryingStorage, Waiter, call_with_retry, describe, is_transient
from evo_fpn.storage.sql import lock_key, stale_trial_ids
from evo_fpn.storage.urls import mask_url

DEFAULT_PORT = 13000
DEFAULT_POOL = 8
LOCK_WAIT_S = 5.0
"""Longest a Lock call waits in the server before answering "not yet" (the worker asks again)."""
FREE_THREADS = 16
"""Server threads never taken by waiting Lock calls, so that storage calls (the holder's) go on."""


@dataclass
class _Lease:
    token: str
    expires: float


class Leases:
    """Budget-lock leases by study name, backed by PostgreSQL advisory locks when there is one."""

    def __init__(self, url: str, *, log: Callable[[str], None], max_waiting: int = 4) -> None:
        self._log = log
        self._cond = threading.Condition()
        self._held: dict[str, _Lease] = {}
        self._pg_held: set[str] = set()
        self._engine = backend_for(url).lock_engine()  # None: SQLite has no advisory locks
        self._conn: Any = None
        self._url = url
        # Waiting Lock calls occupy server threads: at most this many wait at once, the others
        # are answered "not yet" at once and ask again.
        self.waiting = threading.BoundedSemaphore(max(1, max_waiting))

    def _pg(self, sql: str, name: str) -> bool:
        import sqlalchemy

        assert self._engine is not None
        if self._conn is None or self._conn.closed or self._conn.invalidated:
            self._conn = None
            self._pg_held.clear()  # a new session holds no advisory lock
            self._conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            return bool(self._conn.execute(sqlalchemy.text(sql), {"k": lock_key(name)}).scalar())
        except sqlalchemy.exc.SQLAlchemyError:
            try:
                self._conn.close()
            except Exception:  # already broken
                pass
            self._conn = None
            self._pg_held.clear()
            raise

    def acquire(self, name: str, token: str, ttl: float, wait_s: float) -> bool:
        """Grant ``name`` to ``token`` (free, expired or already ``token``'s), waiting up to ``wait_s``."""
        deadline = time.monotonic() + wait_s
        with self._cond:
            while True:
                now = time.monotonic()
                cur = self._held.get(name)
                if cur is not None and cur.token != token and cur.expires > now:
                    if now >= deadline:
                        return False
                    self._cond.wait(min(deadline, cur.expires) - now)
                    continue
                if cur is not None and cur.token != token:
                    self._log(f"budget lease of study {name!r} expired (its worker is gone): granted to another")
                if self._engine is not None and name not in self._pg_held:
                    if not self._pg("SELECT pg_try_advisory_lock(:k)", name):  # a direct worker holds it
                        if now >= deadline:
                            return False
                        self._cond.wait(min(0.05, deadline - now))
                        continue
                    self._pg_held.add(name)
                self._held[name] = _Lease(token, now + ttl)
                return True

    def renew(self, name: str, token: str, ttl: float) -> bool:
        with self._cond:
            cur = self._held.get(name)
            if cur is None or cur.token != token:
                return False
            cur.expires = time.monotonic() + ttl
            return True

    def release(self, name: str, token: str) -> None:
        with self._cond:
            cur = self._held.get(name)
            if cur is None or cur.token != token:
                return
            del self._held[name]
            if name in self._pg_held:
                self._pg_held.discard(name)
                try:
                    self._pg("SELECT pg_advisory_unlock(:k)", name)
                except Exception as exc:  # the connection died, and the lock with it
                    if not is_transient(exc):
                        raise
            self._cond.notify()  # one waiter takes it; waking them all would cost a burst of CPU

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._engine is not None:
            self._engine.dispose()


class _Handlers:
    """The extra RPCs: ping, heartbeats, stale trials, budget-lock leases."""

    def __init__(self, url: str, rdb: optuna.storages.RDBStorage, leases: Leases, waiter: Callable[[], Waiter]) -> None:
        self._rdb = rdb
        self._leases = leases
        self._waiter = waiter
        self._info = {"storage": mask_url(url), "pool_size": rdb.engine.pool.size(), "pid": os.getpid()}

    def ping(self, req: dict, ctx: Any) -> dict:
        return self._info

    def record_heartbeat(self, req: dict, ctx: Any) -> dict:
        call_with_retry(lambda: self._rdb.record_heartbeat(int(req["trial_id"])), self._waiter())
        return {}

    def stale_trial_ids(self, req: dict, ctx: Any) -> dict:
        ids = call_with_retry(
            lambda: stale_trial_ids(self._rdb, int(req["study_id"]), float(req["grace_period"])),
            self._waiter(),
        )
        return {"trial_ids": ids}

    def lock(self, req: dict, ctx: Any) -> dict:
        grpc = import_grpc()
        if not self._leases.waiting.acquire(blocking=False):
            return {"granted": False}
        try:
            granted = self._leases.acquire(req["name"], req["token"], float(req["ttl"]), LOCK_WAIT_S)
        except Exception as exc:
            if is_transient(exc):
                ctx.abort(grpc.StatusCode.UNAVAILABLE, f"database unavailable for the budget lock: {describe(exc)}")
            raise
        finally:
            self._leases.waiting.release()
        return {"granted": granted}

    def renew(self, req: dict, ctx: Any) -> dict:
        return {"held": self._leases.renew(req["name"], req["token"], float(req["ttl"]))}

    def unlock(self, req: dict, ctx: Any) -> dict:
        self._leases.release(req["name"], req["token"])
        return {}

    def generic_handler(self) -> Any:
        grpc = import_grpc()

        def unary(fn: Callable[[dict, Any], dict]) -> Any:
            return grpc.unary_unary_rpc_method_handler(fn, request_deserializer=decode, response_serializer=encode)

        methods = {
            "Ping": self.ping,
            "RecordHeartbeat": self.record_heartbeat,
            "StaleTrialIds": self.stale_trial_ids,
            "Lock": self.lock,
            "Renew": self.renew,
            "Unlock": self.unlock,
        }
        return grpc.method_handlers_generic_handler(SERVICE, {k: unary(v) for k, v in methods.items()})


@dataclass
class Server:
    """A running storage server (``stop()`` it)."""

    grpc_server: Any
    leases: Leases
    rdb: optuna.storages.RDBStorage
    host: str
    port: int

    def stop(self, grace: float | None = 5.0) -> None:
        self.grpc_server.stop(grace).wait()
        self.leases.close()
        self.rdb.engine.dispose()


def serve(
    url: str,
    *,
    host: str = "localhost",
    port: int = DEFAULT_PORT,
    pool_size: int = DEFAULT_POOL,
    threads: int | None = None,
    log: Callable[[str], None] | None = None,
) -> Server:
    """Start a storage server for the database ``url`` (checked first) on ``host:port``."""
    proxy_service, api_pb2_grpc = grpc_servicer()
    grpc = import_grpc()
    log = log or _stderr
    backend = backend_for(url)
    if not isinstance(backend, SqlBackend):
        raise UsageError("--storage must be the database (sqlite:// or postgresql+psycopg://), not another server")
    if pool_size < 1:
        raise UsageError(f"--pool-size must be >= 1, got {pool_size}")
    backend.check()
    # Server threads wait for a pooled connection instead of failing (pool_timeout).
    rdb = backend.rdb(engine_overrides={"pool_size": pool_size, "max_overflow": 0, "pool_timeout": 3600}, log=log)
    w = backend.waiter(log)
    store = RetryingStorage(optuna.storages._CachedStorage(rdb), what=w.what, log=log, fix=w.fix, scrub=w.scrub)
    # Waiting Lock calls sleep on a condition (no CPU): let most threads wait, so that workers
    # seldom poll, and keep FREE_THREADS for storage calls.
    n_threads = threads or max(256, 4 * pool_size + FREE_THREADS)
    leases = Leases(url, log=log, max_waiting=n_threads - FREE_THREADS)
    handlers = _Handlers(url, rdb, leases, lambda: backend.waiter(log))
    server = grpc.server(
        ThreadPoolExecutor(max_workers=n_threads, thread_name_prefix="storage-server"),
        options=[("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)],
    )
    api_pb2_grpc.add_StorageServiceServicer_to_server(proxy_service(store), server)
    server.add_generic_rpc_handlers((handlers.generic_handler(),))
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:
        bound = 0
    if not bound:
        rdb.engine.dispose()
        raise UsageError(
            f"cannot listen on {host}:{port} (in use, or not an address of this machine): choose --port / --host"
        )
    server.start()
    return Server(server, leases, rdb, host, bound)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
