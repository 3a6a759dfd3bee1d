"""The SQL side shared by the SQLite and PostgreSQL backends and the storage server.

Connection settings, the advisory lock that makes the study budget exact across workers, the
stale-trial rule, and one-line explanations of failed PostgreSQL connections.
"""

from __future__ import annotations

import datetime
import hashlib
import re
from collections.abc import Callable
from typing import Any

import optuna
import sqlalchemy
from optuna.trial import TrialState
from sqlalchemy.engine import URL

from evo_fpn.storage.retry import Waiter, call_with_retry
from evo_fpn.storage.urls import scrub

POOL_KWARGS: dict[str, Any] = {
    "pool_size": 2,
    "max_overflow": 0,
    "pool_timeout": 120,
    "pool_pre_ping": True,
    "pool_recycle": 3600,
}
"""Per direct worker a fixed set: the main, heartbeat and stale-check threads share 2 pooled
connections (a thread waits for one instead of opening more), and the budget lock has its own.
A fixed set is what lets workers beyond ``max_connections`` wait instead of deadlocking (see
:meth:`evo_fpn.storage.backends.PostgresBackend.reserve`). Many workers: use the storage server instead."""
CONNECT_TIMEOUT_S = 10
SQLITE_BUSY_TIMEOUT_S = 60
ORPHAN_AFTER_S = 120
"""A RUNNING trial without any heartbeat this long after its start beyond the grace period is
stale too (its worker died between ``ask`` and its first heartbeat, or its ``ask`` was retried)."""


def lock_key(name: str) -> int:
    """The 64-bit advisory-lock key of a study name (the same in workers and the storage server)."""
    return int.from_bytes(hashlib.sha256(f"evo_fpn:{name}".encode()).digest()[:8], "big", signed=True)


class AdvisoryLock:
    """A PostgreSQL session-level advisory lock on a connection of its own: a SIGKILLed
    worker's lock dies with its connection. A lost connection is waited out on ``acquire``;
    on ``release`` it needs nothing (the server dropped the lock with it)."""

    def __init__(
        self,
        engine: sqlalchemy.engine.Engine,
        key: int,
        *,
        waiter: Callable[[], Waiter],
        reserved: Callable[[], Any] = lambda: None,
    ) -> None:
        self._engine = engine
        self._key = key
        self._waiter = waiter
        self._reserved = reserved
        self._conn: Any = None

    def _lock(self) -> None:
        if self._conn is None or self._conn.closed or self._conn.invalidated:
            self._conn = None
            conn = self._reserved() or self._engine.connect()
            self._conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        try:
            self._conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self._key})
        except sqlalchemy.exc.SQLAlchemyError:
            self._drop_conn()
            raise

    def _drop_conn(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # already broken
                pass
        self._conn = None

    def acquire(self) -> None:
        call_with_retry(self._lock, self._waiter())

    def release(self) -> None:
        if self._conn is None:
            return
        try:
            self._conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})
        except sqlalchemy.exc.SQLAlchemyError:
            self._drop_conn()  # the connection died, and the server dropped the lock with it

    def close(self) -> None:
        self._drop_conn()
        self._engine.dispose()


def stale_trial_ids(rdb: optuna.storages.RDBStorage, study_id: int, grace_period: float) -> list[int]:
    """RUNNING trials whose heartbeat is older than ``grace_period`` (Optuna's rule), and those
    that never had one :data:`ORPHAN_AFTER_S` seconds past the grace period after their start
    (Optuna skips them, and one would then hold a budget slot for ever)."""
    from optuna.storages._rdb import models

    session = rdb.scoped_session()
    try:
        now = session.execute(sqlalchemy.func.now()).scalar()
        assert now is not None
        now = now.replace(tzinfo=None)
        running = (
            session.query(models.TrialModel)
            .options(sqlalchemy.orm.selectinload(models.TrialModel.heartbeats))
            .filter(models.TrialModel.state == TrialState.RUNNING, models.TrialModel.study_id == study_id)
            .all()
        )
        grace = datetime.timedelta(seconds=grace_period)
        orphan = datetime.timedelta(seconds=grace_period + ORPHAN_AFTER_S)
        local_now = datetime.datetime.now()  # datetime_start is the writer's local time
        out = []
        for t in running:
            if t.heartbeats:
                if now - t.heartbeats[0].heartbeat > grace:
                    out.append(t.trial_id)
            elif t.datetime_start is not None and local_now - t.datetime_start > orphan:
                out.append(t.trial_id)
        session.commit()
        return out
    except sqlalchemy.exc.SQLAlchemyError as exc:
        session.rollback()
        raise optuna.exceptions.StorageInternalError(f"stale-trial query failed: {exc}") from exc
    finally:
        session.close()


def has_study(engine: sqlalchemy.engine.Engine, study_name: str) -> bool:
    """Whether the database holds ``study_name`` (``False`` before Optuna's tables exist)."""
    with engine.connect() as conn:
        if not sqlalchemy.inspect(conn).has_table("studies"):
            return False
        row = conn.execute(sqlalchemy.text("SELECT 1 FROM studies WHERE study_name = :n"), {"n": study_name}).first()
        return row is not None


def sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    """Every suggest is a commit: WAL + synchronous=NORMAL makes them cheap (safe against a
    crashed process, not a crashed OS) and lets optuna-dashboard read while we write."""
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def explain_pg_error(message: str, url: URL) -> str:
    """One line naming the problem and the fix for a failed PostgreSQL connection."""
    where = f"{url.host or 'localhost'}:{url.port or 5432}"
    shown = url.render_as_string(hide_password=True)
    msg = scrub(message, url.render_as_string(hide_password=False))
    if "password authentication failed" in msg or "no password supplied" in msg:
        return (
            f"PostgreSQL at {where} refused user {url.username!r} (wrong or missing password): "
            "fix the password in the URL, PGPASSWORD or ~/.pgpass"
        )
    if "does not exist" in msg and "database" in msg:
        return (
            f"PostgreSQL database {url.database!r} does not exist at {where}: create it "
            f"(createdb -h {url.host or 'localhost'} -p {url.port or 5432} {url.database}) or fix {shown}"
        )
    if "role" in msg and "does not exist" in msg:
        return f"PostgreSQL at {where} has no user {url.username!r}: create it (createuser) or fix {shown}"
    if any(s in msg for s in ("Connection refused", "could not connect", "timeout expired", "No route", "resolve")):
        return (
            f"cannot reach PostgreSQL at {where} ({_short(msg)}): "
            f"start the server or fix host/port in --storage {shown}"
        )
    return f"cannot connect to PostgreSQL at {where}: {_short(msg)} ({shown})"


def _short(msg: str) -> str:
    msg = msg.split("\n")[0]
    m = re.search(r"failed: (.*)", msg)
    return (m.group(1) if m else msg)[:200]
