"""The storage server's client side: what a worker uses for ``--storage grpc://HOST:PORT``.

:class:`GrpcStorage` is Optuna's ``GrpcStorageProxy`` plus heartbeats, and :class:`LeaseLock`
the budget lock, both through the extra RPCs of :mod:`evo_fpn.storage.server` (JSON messages
on the service :data:`SERVICE`, no generated code). Kept apart from the server so that a
worker needs none of the server's code, and :mod:`evo_fpn.storage.backends` imports only downwards.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import optuna
from optuna.storages import GrpcStorageProxy
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import FrozenTrial

from evo_fpn.errors import UsageError
from evo_fpn.storage.retry import Waiter, call_with_retry, describe, is_transient

SERVICE = "evo_fpn.StorageServer"
LEASE_TTL_S = 60.0
"""A budget lease expires this long after its holder's last renewal (renewed every third of it)."""


def import_grpc() -> Any:
    try:
        import grpc
    except ImportError:
        raise UsageError("the storage server needs grpcio: pip install grpcio protobuf") from None
    return grpc


def encode(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def decode(data: bytes) -> Any:
    return json.loads(data.decode()) if data else {}


class Rpc:
    """The extra RPCs on a channel."""

    def __init__(self, channel: Any) -> None:
        self._channel = channel
        self._calls: dict[str, Any] = {}

    def __call__(self, method: str, request: dict, timeout: float | None = None) -> dict:
        call = self._calls.get(method)
        if call is None:
            call = self._channel.unary_unary(
                f"/{SERVICE}/{method}", request_serializer=encode, response_deserializer=decode
            )
            self._calls[method] = call
        return call(request, timeout=timeout)


def channel(host: str, port: int) -> Any:
    grpc = import_grpc()
    return grpc.insecure_channel(f"{host}:{port}", options=[("grpc.max_receive_message_length", -1)])


def check_server(host: str, port: int, *, waiter: Waiter) -> dict:
    """Ping the server (waiting for it like for a database); an unknown server is one line."""
    grpc = import_grpc()
    chan = channel(host, port)
    try:
        return call_with_retry(lambda: Rpc(chan)("Ping", {}, timeout=10), waiter)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
            raise UsageError(
                f"{host}:{port} is not an evo-fpn storage server (a bare optuna gRPC proxy?): start "
                "python -m evo_fpn.storage_server --storage DATABASE_URL there"
            ) from None
        raise UsageError(f"the storage server at {host}:{port} failed: {describe(exc)}") from None
    finally:
        chan.close()


def study_exists(host: str, port: int, study_name: str) -> bool:
    proxy = GrpcStorageProxy(host=host, port=port)
    try:
        proxy.get_study_id_from_name(study_name)
        return True
    except KeyError:
        return False
    finally:
        proxy.close()


class GrpcStorage(GrpcStorageProxy, BaseHeartbeat):
    """Optuna's ``GrpcStorageProxy`` with heartbeats, through the server's extra RPCs."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        heartbeat_interval: int | None,
        grace_period: int | None,
        heartbeat_stale_trial_callback: Callable[[optuna.Study, FrozenTrial], None] | None = None,
    ) -> None:
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period if grace_period is not None else 2 * (heartbeat_interval or 0)
        self.heartbeat_stale_trial_callback = heartbeat_stale_trial_callback
        super().__init__(host=host, port=port)

    def _setup(self) -> None:
        super()._setup()
        self._rpc = Rpc(self._channel)

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        state.pop("_rpc", None)
        return state

    def record_heartbeat(self, trial_id: int) -> None:
        self._rpc("RecordHeartbeat", {"trial_id": trial_id})

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return list(self._rpc("StaleTrialIds", {"study_id": study_id, "grace_period": self.grace_period})["trial_ids"])

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self.heartbeat_stale_trial_callback


class LeaseLock:
    """The budget lock of a worker on a storage server: a lease, renewed while held."""

    def __init__(self, host: str, port: int, name: str, *, waiter: Waiter, ttl: float = LEASE_TTL_S) -> None:
        self._channel = channel(host, port)
        self._rpc = Rpc(self._channel)
        self._name = name
        self._token = f"{os.getpid()}-{uuid.uuid4().hex}"
        self._ttl = ttl
        self._make_waiter = lambda: Waiter(waiter.what, wait_s=waiter.wait_s, log=waiter.log, fix=waiter.fix)
        self._stop: threading.Event | None = None
        self._renewer: threading.Thread | None = None

    def _req(self) -> dict:
        return {"name": self._name, "token": self._token, "ttl": self._ttl}

    def acquire(self) -> None:
        waiter = self._make_waiter()
        pause = 0.02
        while not call_with_retry(lambda: self._rpc("Lock", self._req()), waiter)["granted"]:
            time.sleep(pause * (0.5 + os.urandom(1)[0] / 255))
            pause = min(pause * 2, 0.2)
        self._stop = threading.Event()
        self._renewer = threading.Thread(target=self._renew, args=(self._stop,), daemon=True, name="lease-renew")
        self._renewer.start()

    def _renew(self, stop: threading.Event) -> None:
        while not stop.wait(self._ttl / 3):
            try:
                if not self._rpc("Renew", self._req(), timeout=self._ttl / 3)["held"]:
                    print(
                        f"warning: the budget lease of study {self._name!r} expired while held (pid {os.getpid()})",
                        flush=True,
                    )
                    return
            except Exception as exc:  # the server is restarting: try again next period
                if not is_transient(exc):
                    raise

    def release(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self._stop = None
        call_with_retry(lambda: self._rpc("Unlock", self._req()), self._make_waiter())

    def close(self) -> None:
        self._channel.close()
