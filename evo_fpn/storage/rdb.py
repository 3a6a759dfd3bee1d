"""Where studies live: storage URLs, checks before anything is written, and the budget lock.

* SQLite by default (``studies/NAME.db``, one process); ``EVO_FPN_STORAGE`` or ``--storage``
  choose another. PostgreSQL (``postgresql+psycopg://user@host/db``) for many workers: the
  password comes from the URL, ``PGPASSWORD`` or ``~/.pgpass`` (libpq reads both), and is
  masked wherever a URL is printed (:func:`mask_url`). ``grpc://HOST:PORT`` is an evo-fpn
  storage server (:mod:`evo_fpn.cli.storage_server`), which holds the database connections for
  any number of workers.
* :func:`check_storage` validates a URL and connects once, turning driver errors into one
  line that names the fix. It writes nothing (a SQLite file is not created).
* :func:`open_storage` builds the storage with heartbeats and ``RetryHeartbeatStaleTrialCallback``,
  so a killed worker's trial is failed and retried, wrapped in
  :class:`~evo_fpn.storage.retry.RetryingStorage`, so that a worker waits out a database
  restart or ``too many clients`` instead of dying.
* :class:`BudgetLock` serialises "count finished trials, then ask" across workers (a
  PostgreSQL advisory lock, or a lease held by the storage server), which is what makes the
  study budget exact.

Connections per direct PostgreSQL worker, measured (``benchmarks/bench_workers.py``, and one
worker sampled in ``pg_stat_activity``): exactly 3, opened together at start (:func:`open_rdb`):
2 pooled ones that its main, heartbeat and stale-check threads share, and the budget lock's
own. (Before: up to 5, 2 + 2 overflow + the lock's.) A server with the default
``max_connections = 100`` so runs 33 direct workers at a time; the others wait for a free set.
Through the storage server a worker holds none; the server holds its pool (``--pool-size``,
default 8) + 1 for the locks.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.trial import TrialState
from sqlalchemy.engine import URL, make_url

from evo_fpn.errors import UsageError
from evo_fpn.storage.retry import ENV_WAIT, RetryingStorage, StorageUnavailable, Waiter, call_with_retry

ENV_STORAGE = "EVO_FPN_STORAGE"
DEFAULT_DIR = Path("studies")
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
:func:`open_rdb`). Many workers: use the storage server instead."""
CONNECT_TIMEOUT_S = 10
ORPHAN_AFTER_S = 120
"""A RUNNING trial without any heartbeat this long after its start beyond the grace period is
stale too (its worker died between ``ask`` and its first heartbeat, or its ``ask`` was retried)."""


class StorageError(UsageError):
    """A storage URL that cannot be used; the message names the fix (password masked)."""


def default_url(study_name: str) -> str:
    """``sqlite:///studies/NAME.db`` (relative to the working directory)."""
    return f"sqlite:///{DEFAULT_DIR / (study_name + '.db')}"


def resolve_url(cli_value: str | None, study_name: str) -> str:
    """``--storage`` beats ``$EVO_FPN_STORAGE`` beats the SQLite default."""
    for value in (cli_value, os.environ.get(ENV_STORAGE)):
        if value is not None and value.strip():
            return value.strip()
    return default_url(study_name)


def mask_url(url: str) -> str:
    """The URL with any password replaced by ``***``, for printing.

    Masks by hand, not through SQLAlchemy, so that a URL SQLAlchemy cannot parse (a bad port,
    a typo) or parses wrongly (an unescaped ``@``, ``/`` or ``?`` in the password) never shows
    its password: the user info runs from ``://`` to the last ``@``, and everything after its
    first ``:`` is the password (an ``@`` in the query masks too much, never too little). A
    ``password=`` query parameter is masked too.
    """
    span = _password_span(url)
    if span is not None:
        url = f"{url[: span[0]]}***{url[span[1] :]}"
    return _QUERY_PASSWORD.sub(r"\1***", url)


_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


def _password_span(url: str) -> tuple[int, int] | None:
    """``(start, end)`` of the password in ``scheme://user:password@host...``, else ``None``."""
    start = url.find("://")
    start = 0 if start < 0 else start + 3  # no scheme: still mask a user:password@ part
    at = url.rfind("@", start)
    colon = url.find(":", start, at) if at >= 0 else -1
    if colon < 0 or "/" in url[start:colon]:  # no user:password@, or a path (sqlite:///C:/...)
        return None
    return colon + 1, at


def _scrub(text: str, url: str) -> str:
    """Remove the password of ``url`` from an error text (drivers sometimes echo the DSN)."""
    secrets = set()
    span = _password_span(url)
    if span is not None:
        secrets.add(url[span[0] : span[1]])
    try:
        secrets.add(make_url(url).password)
    except Exception:  # unparsable: the span above is all we know
        pass
    text = " ".join(str(text).split())
    for pw in sorted((str(p) for p in secrets if p), key=len, reverse=True):
        text = text.replace(pw, "***")
    return text


def parse_url(url: str) -> URL:
    """Parse and normalise a storage URL; only SQLite and PostgreSQL (psycopg 3) are supported.

    ``postgresql://`` and ``postgres://`` are read as ``postgresql+psycopg://`` (psycopg 3 is
    the driver this project installs).
    """
    try:
        parsed = make_url(url)
    except Exception:
        raise StorageError(
            f"invalid storage URL {mask_url(url)!r}: use sqlite:///path/to/file.db or "
            "postgresql+psycopg://USER@HOST:PORT/DBNAME"
        ) from None
    backend = parsed.get_backend_name()
    if backend == "grpc":
        if not parsed.host or not parsed.port or parsed.database or parsed.username:
            raise StorageError(
                f"storage server URL {mask_url(url)!r} must be grpc://HOST:PORT "
                "(start the server with python -m evo_fpn.storage_server --storage DATABASE_URL)"
            )
        return parsed
    if backend == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise StorageError(
                "an in-memory SQLite storage cannot be resumed or shared: give a file, e.g. sqlite:///studies/NAME.db"
            )
        return parsed
    if backend in ("postgresql", "postgres"):
        driver = parsed.get_driver_name()
        if backend == "postgres" or driver in ("", "psycopg2"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        elif driver != "psycopg":
            raise StorageError(f"PostgreSQL driver {driver!r} is not supported: use postgresql+psycopg://...")
        if not parsed.database:
            raise StorageError(f"storage URL {mask_url(url)!r} names no database: add /DBNAME at the end")
        return parsed
    raise StorageError(
        f"unsupported storage {backend!r} in {mask_url(url)!r}: use sqlite:///FILE.db (one process), "
        "postgresql+psycopg://USER@HOST:PORT/DBNAME (many workers) or grpc://HOST:PORT (a storage server)"
    )


def normalise_url(url: str) -> str:
    """The parsed URL as a string with its password (for the storage itself, never printed)."""
    return parse_url(url).render_as_string(hide_password=False)


def is_sqlite(url: str) -> bool:
    return parse_url(url).get_backend_name() == "sqlite"


def is_grpc(url: str) -> bool:
    """Whether ``url`` names an evo-fpn storage server (``grpc://HOST:PORT``)."""
    return parse_url(url).get_backend_name() == "grpc"


def describe_url(url: str) -> str:
    """``PostgreSQL at host:port`` / ``the storage server at host:port``, for status lines."""
    parsed = parse_url(url)
    if parsed.get_backend_name() == "grpc":
        return f"the storage server at {parsed.host}:{parsed.port}"
    if parsed.get_backend_name() == "sqlite":
        return f"SQLite {parsed.database}"
    return f"PostgreSQL at {parsed.host or 'localhost'}:{parsed.port or 5432}"


def storage_waiter(url: str, log: Callable[[str], None] | None = None) -> Waiter:
    """The :class:`~evo_fpn.storage.retry.Waiter` for ``url``: its name, fix and password scrubber."""
    fix = (
        "start it (python -m evo_fpn.storage_server --storage DATABASE_URL) or fix --storage"
        if is_grpc(url)
        else "check that the server is up and has free connections (max_connections), or use a storage server"
    )
    return Waiter(
        describe_url(url),
        log=log,
        fix=fix,
        scrub=lambda text: _scrub(text, url),
    )


def sqlite_path(url: str) -> Path | None:
    parsed = parse_url(url)
    return Path(parsed.database) if parsed.get_backend_name() == "sqlite" and parsed.database else None


def engine_kwargs(url: str) -> dict[str, Any]:
    """Engine settings: small pools + pre-ping for PostgreSQL, a busy timeout for SQLite."""
    if is_sqlite(url):
        return {"connect_args": {"timeout": 60}}
    return {**POOL_KWARGS, "connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}}


def check_storage(url: str) -> None:
    """Refuse unusable storages before anything is written (no SQLite file is created).

    PostgreSQL: one real connection, so an unreachable server, a wrong password or a missing
    database is reported now, in one line, with its fix.
    """
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = Path(parsed.database)
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
        return
    if parsed.get_backend_name() == "grpc":
        from evo_fpn.storage import client as storage_client

        storage_client.check_server(parsed.host, int(parsed.port), waiter=storage_waiter(url))
        return
    engine = sqlalchemy.create_engine(
        parsed, poolclass=sqlalchemy.pool.NullPool, connect_args={"connect_timeout": CONNECT_TIMEOUT_S}
    )

    def ping() -> None:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))

    waiter = storage_waiter(url)
    try:
        call_with_retry(ping, waiter)
    except ImportError:
        raise StorageError("PostgreSQL needs psycopg 3: pip install 'evo-fpn[postgres]'") from None
    except sqlalchemy.exc.OperationalError as exc:
        raise StorageError(explain_pg_error(str(exc.orig or exc), parsed)) from None
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise StorageError(f"cannot use {mask_url(url)}: {_scrub(str(exc), url)}") from None
    except StorageUnavailable as exc:  # waited in vain: say what the last error means
        last = exc.__context__
        text = str(getattr(last, "orig", None) or last)
        raise StorageError(
            f"{explain_pg_error(text, parsed)} (waited {waiter.waited:.0f} s; ${ENV_WAIT} sets how long)"
        ) from None
    finally:
        engine.dispose()


def explain_pg_error(message: str, url: URL) -> str:
    """One line naming the problem and the fix for a failed PostgreSQL connection."""
    where = f"{url.host or 'localhost'}:{url.port or 5432}"
    shown = url.render_as_string(hide_password=True)
    msg = _scrub(message, url.render_as_string(hide_password=False))
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
    callback = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
    parsed = parse_url(url)
    if parsed.get_backend_name() == "grpc":
        from evo_fpn.storage import client as storage_client

        client = storage_client.GrpcStorage(
            host=str(parsed.host),
            port=int(parsed.port),
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            heartbeat_stale_trial_callback=callback,
        )
        w = storage_waiter(url, log)
        return RetryingStorage(client, what=w.what, wait_s=w.wait_s, log=log, fix=w.fix, scrub=w.scrub)
    rdb = open_rdb(url, heartbeat_interval=heartbeat_interval, grace_period=grace_period, callback=callback,
                   engine_overrides=engine_overrides, log=log, reserve=True)  # fmt: skip
    w = storage_waiter(url, log)
    return RetryingStorage(
        optuna.storages._CachedStorage(rdb),
        what=w.what,
        heartbeat=rdb,
        stale_trial_ids=lambda study_id: stale_trial_ids(rdb, study_id, grace_period),
        wait_s=w.wait_s,
        log=log,
        fix=w.fix,
        scrub=w.scrub,
    )


def open_rdb(
    url: str,
    *,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    callback: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
    engine_overrides: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
    reserve: bool = False,
) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage (tables created one worker at a time), waiting out outages.

    ``reserve`` (PostgreSQL workers): open the worker's whole set of connections at once, the
    pool's and the budget lock's (kept in :data:`_RESERVED` for :class:`BudgetLock`), or none:
    a worker that cannot have them all lets go of what it got and waits, so workers beyond the
    server's ``max_connections`` queue up instead of each holding some and waiting for more.
    """
    parsed = parse_url(url)
    path = sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)

    def build() -> optuna.storages.RDBStorage:
        # Workers starting together on a fresh database would race to create Optuna's tables
        # (PostgreSQL then raises UniqueViolation): create them one worker at a time.
        # Another program (optuna-dashboard, a plain load_study) may still race us: then the
        # tables exist on the next attempt.
        schema_lock = BudgetLock(url, "\x00schema", log=log)
        try:
            schema_lock.acquire()
            for attempt in range(3):
                try:
                    rdb = optuna.storages.RDBStorage(
                        parsed.render_as_string(hide_password=False),
                        engine_kwargs={**engine_kwargs(url), **(engine_overrides or {})},
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
            schema_lock.close()
        if reserve and path is None:
            _reserve(url, rdb)
        return rdb

    try:
        storage = call_with_retry(build, storage_waiter(url, log))
    except sqlalchemy.exc.OperationalError as exc:
        raise StorageError(explain_pg_error(str(exc.orig or exc), parsed)) from None
    except optuna.exceptions.StorageInternalError as exc:
        raise StorageError(explain_pg_error(str(getattr(exc.__cause__, "orig", None) or exc), parsed)) from None
    if path is not None:
        # Every suggest is a commit: WAL + synchronous=NORMAL makes them cheap (safe against a
        # crashed process, not a crashed OS) and lets optuna-dashboard read while we write.
        sqlalchemy.event.listen(storage.engine, "connect", _sqlite_pragmas)
        storage.engine.dispose()
    return storage


_RESERVED: dict[str, Any] = {}
"""A budget-lock connection opened with the worker's pool (:func:`open_rdb`), by URL."""


def _reserve(url: str, rdb: optuna.storages.RDBStorage) -> None:
    held = []
    lock_engine = sqlalchemy.create_engine(
        parse_url(url), poolclass=sqlalchemy.pool.NullPool, connect_args={"connect_timeout": CONNECT_TIMEOUT_S}
    )
    try:
        for _ in range(int(POOL_KWARGS["pool_size"])):
            held.append(rdb.engine.connect())
        _RESERVED[url] = lock_engine.connect()
    except Exception:
        rdb.engine.dispose()
        raise
    finally:
        for conn in held:
            conn.close()  # back to the pool, which keeps them


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


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def study_exists(url: str, study_name: str) -> bool:
    """Whether the storage holds ``study_name``, without creating anything."""
    path = sqlite_path(url)
    if path is not None and not path.exists():
        return False
    parsed = parse_url(url)
    if parsed.get_backend_name() == "grpc":
        from evo_fpn.storage import client as storage_client

        return call_with_retry(
            lambda: storage_client.study_exists(str(parsed.host), int(parsed.port), study_name), storage_waiter(url)
        )
    engine = sqlalchemy.create_engine(
        parsed, poolclass=sqlalchemy.pool.NullPool, connect_args=engine_kwargs(url)["connect_args"]
    )

    def query() -> bool:
        with engine.connect() as conn:
            if not sqlalchemy.inspect(conn).has_table("studies"):
                return False
            row = conn.execute(
                sqlalchemy.text("SELECT 1 FROM studies WHERE study_name = :n"), {"n": study_name}
            ).first()
            return row is not None

    try:
        return call_with_retry(query, storage_waiter(url))
    finally:
        engine.dispose()


@contextmanager
def reader(url: str) -> Iterator[optuna.storages.BaseStorage]:
    """A plain storage to read a study that exists, before the worker's own is opened: no
    heartbeats and no reserved connections (a PostgreSQL worker's set is opened once, by
    :func:`open_storage`); its connections are closed on exit."""
    parsed = parse_url(url)
    if parsed.get_backend_name() == "grpc":
        from evo_fpn.storage import client as storage_client

        client = storage_client.GrpcStorage(
            host=str(parsed.host), port=int(parsed.port), heartbeat_interval=None, grace_period=None
        )
        try:
            yield client
        finally:
            client.close()
        return
    rdb = open_rdb(url)
    try:
        yield rdb
    finally:
        rdb.engine.dispose()


def lock_key(name: str) -> int:
    """The 64-bit advisory-lock key of a study name (the same in workers and the storage server)."""
    return int.from_bytes(hashlib.sha256(f"evo_fpn:{name}".encode()).digest()[:8], "big", signed=True)


class BudgetLock:
    """Mutual exclusion of "count the finished trials, then ask a new one" across workers.

    PostgreSQL: a session-level advisory lock keyed by the study name, on a connection of
    its own (a SIGKILLed worker's lock dies with its connection). A storage server
    (``grpc://``): a lease the server grants, renewed while held and expiring when its
    worker dies; the server takes the same advisory lock, so direct and served workers
    exclude each other. SQLite (one process): a plain thread lock. Re-entrant release is a
    no-op, so the objective may release early. A lost database connection is waited out.
    """

    def __init__(self, url: str, study_name: str, *, log: Callable[[str], None] | None = None) -> None:
        self._key = lock_key(study_name)
        self._url = url
        self._log = log
        self._thread_lock = threading.Lock()
        self._held = False
        self._engine = None
        self._conn = None
        self._lease = None
        parsed = parse_url(url)
        if parsed.get_backend_name() == "grpc":
            from evo_fpn.storage import client as storage_client

            host, port = str(parsed.host), int(parsed.port)
            self._lease = storage_client.LeaseLock(host, port, study_name, waiter=storage_waiter(url, log))
        elif parsed.get_backend_name() != "sqlite":
            self._engine = sqlalchemy.create_engine(
                parsed, poolclass=sqlalchemy.pool.NullPool, connect_args={"connect_timeout": CONNECT_TIMEOUT_S}
            )

    def _advisory_lock(self) -> None:
        assert self._engine is not None
        if self._conn is None or self._conn.closed or self._conn.invalidated:
            self._conn = None
            self._conn = _RESERVED.pop(self._url, None) or self._engine.connect()
            self._conn = self._conn.execution_options(isolation_level="AUTOCOMMIT")
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
        self._thread_lock.acquire()
        try:
            if self._lease is not None:
                self._lease.acquire()
            elif self._engine is not None:
                call_with_retry(self._advisory_lock, storage_waiter(self._url, self._log))
        except BaseException:
            self._thread_lock.release()
            raise
        self._held = True

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        try:
            if self._lease is not None:
                self._lease.release()
            elif self._conn is not None:
                try:
                    self._conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})
                except sqlalchemy.exc.SQLAlchemyError:
                    # The connection died, and the server dropped the lock with it.
                    self._drop_conn()
        finally:
            self._thread_lock.release()

    def close(self) -> None:
        self.release()
        self._drop_conn()
        if self._engine is not None:
            self._engine.dispose()
        if self._lease is not None:
            self._lease.close()

    def __enter__(self) -> BudgetLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
