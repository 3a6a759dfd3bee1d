"""``python -m evo_fpn.storage_server``: serve a study database to many workers over gRPC.

    python -m evo_fpn.storage_server --storage postgresql+psycopg://evo@dbhost/evo_fpn --host 0.0.0.0 --port 13000
    python -m evo_fpn.run --study default --storage grpc://serverhost:13000     # on every worker

What the server does, and what it holds, is :mod:`evo_fpn.storage.server`.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence

import optuna

from evo_fpn.cli.common import ArgumentParser, UsageError, guard
from evo_fpn.storage.server import DEFAULT_POOL, DEFAULT_PORT, serve
from evo_fpn.storage.urls import ENV_STORAGE, mask_url


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- command line --------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m evo_fpn.storage_server",
        description="Serve a study database to many workers over gRPC (workers: --storage grpc://HOST:PORT).",
    )
    p.add_argument("--storage", metavar="URL", help="the database (default: $EVO_FPN_STORAGE)")
    p.add_argument("--host", default="localhost", help="address to listen on (0.0.0.0: all; no authentication)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT})")
    p.add_argument(
        "--pool-size", type=int, default=DEFAULT_POOL, help=f"database connections (default {DEFAULT_POOL}) + 1"
    )
    p.add_argument("--threads", type=int, help="server threads (default: max(256, 4 x pool size + 16))")
    return p


@guard
def main(argv: Sequence[str] | None = None) -> int:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    url = args.storage or os.environ.get(ENV_STORAGE, "").strip()
    if not url:
        raise UsageError("give the database: --storage postgresql+psycopg://USER@HOST/DB (or $EVO_FPN_STORAGE)")
    server = serve(url, host=args.host, port=args.port, pool_size=args.pool_size, threads=args.threads)
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    _stderr(
        f"storage server for {mask_url(url)} on {args.host}:{server.port} "
        f"({args.pool_size} + 1 database connections); workers: --storage grpc://{args.host}:{server.port}"
    )
    stopping.wait()
    _stderr("storage server stopping")
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
