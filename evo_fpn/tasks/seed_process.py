"""A seed process: trains some of a trial's seeds for :class:`evo_fpn.tasks.proxy.ProxyTask` and
streams progress, reports and results back to it.

Started as ``python -m evo_fpn.tasks.seed_process`` rather than by multiprocessing's spawn, which
re-runs the caller's main script in the child and so breaks any script without an
``if __name__ == "__main__"`` guard. Its arguments arrive pickled on stdin; its messages
(``(kind, seed index, payload)``) leave pickled on the original stdout; anything it prints
goes to stderr.
"""

from __future__ import annotations

import os
import signal
from multiprocessing.connection import Connection
from pathlib import Path

import torch

from evo_fpn.arch.spec import ArchSpec
from evo_fpn.errors import TrialFailed
from evo_fpn.tasks.proxy import ProxyConfig, ProxyTask


class Relay:
    """The seed process's stand-in for the trial: reports go to the parent, which alone decides pruning."""

    def __init__(self, conn: Connection, k: int) -> None:
        self.conn, self.k = conn, k

    def report(self, value: float, step: int) -> None:
        self.conn.send(("report", self.k, (step, float(value))))

    def should_prune(self) -> bool:
        return False


def train_seeds(
    config: ProxyConfig,
    cache_dir: Path,
    spec: ArchSpec | str,
    ks: list[int],
    total: int,
    threads: int,
    conn: Connection,
) -> None:
    """Load the (already built) dataset and backbone cache, then train seeds ``ks`` one after
    another. Orphaned (its trial's process killed), it stops within 10 steps: sending progress
    to the closed pipe raises."""
    torch.set_num_threads(threads)
    k = ks[0]
    try:
        task = ProxyTask(config, device="cpu", progress=False, cache_dir=cache_dir).prepare()
        for k in ks:
            model = task.build(spec, config.seed + k)

            def on_step(step: int, k: int = k) -> None:
                if step % 10 == 0 or step == total:
                    conn.send(("steps", k, 10 if step % 10 == 0 else step % 10))

            conn.send(("done", k, task.train_seed(model, k, total, Relay(conn, k), on_step)))
    except TrialFailed as exc:
        conn.send(("failed", k, exc.reason))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("error", k, f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it stops the trial and kills us
    inbox = Connection(os.dup(0), writable=False)
    args = inbox.recv()
    inbox.close()
    out = Connection(os.dup(1), readable=False)
    os.dup2(2, 1)  # stray prints must not corrupt the message stream
    train_seeds(*args, conn=out)


if __name__ == "__main__":
    main()
