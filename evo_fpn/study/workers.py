"""Local worker processes for ``--workers K``: K copies of the command on one shared study.

Each child is ``python -m evo_fpn.run`` with the same flags plus ``--worker-index i --child``,
so it joins the study like any worker on another machine (the budget loop keeps the total
exact). With several visible GPUs each child sees one; CPU children share the cores. The
parent only shows the study's progress and passes Ctrl-C on. The storage URL goes to the
children in ``$EVO_FPN_STORAGE``, not in their argv: a command line is visible to every user
of the machine (``ps``), and the URL may hold a password.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

import optuna

from evo_fpn.storage.urls import ENV_STORAGE
from evo_fpn.study.budget import count_trials
from evo_fpn.study.summary import Progress


def spawn_workers(argv: Sequence[str], k: int, device: str, threads: int | None) -> list[subprocess.Popen]:
    """Start ``k`` copies of this command as child workers (one GPU each when there are several)."""
    gpus = _visible_gpus() if device != "cpu" else []
    base, storage = _split_storage(_strip_workers(list(argv)))
    if not gpus and threads is None:
        # CPU workers share the cores: without this, each would start one thread per core.
        base += ["--threads", str(max(1, (os.cpu_count() or 1) // k))]
    procs = []
    for i in range(k):
        env = dict(os.environ)
        if storage is not None:
            env[ENV_STORAGE] = storage
        if len(gpus) > 1:
            env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
        cmd = [sys.executable, "-m", "evo_fpn.run", *base, "--worker-index", str(i), "--child", "--no-progress"]
        procs.append(subprocess.Popen(cmd, env=env))
    return procs


def _strip_workers(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--workers" or a == "--worker-index":
            skip = True
            continue
        if a.startswith("--workers=") or a.startswith("--worker-index="):
            continue
        out.append(a)
    return out


def _split_storage(argv: list[str]) -> tuple[list[str], str | None]:
    """``argv`` without ``--storage URL`` (or ``--storage=URL``, or an abbreviation argparse
    accepts, such as ``--stor``), and the URL given last (``None``: the children inherit
    ``$EVO_FPN_STORAGE`` or use the default, as the parent did)."""
    out: list[str] = []
    url = None
    it = iter(argv)
    for a in it:
        flag, eq, value = a.partition("=")
        if len(flag) >= len("--sto") and "--storage".startswith(flag):
            url = value if eq else next(it, None)
            continue
        out.append(a)
    return out, url


def _visible_gpus() -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # no torch / no driver: no GPUs to hand out
        return []


def watch_workers(procs: list[subprocess.Popen], study: optuna.Study, n_trials: int, progress: Progress) -> int:
    """Show the study's progress while child workers run; return the worst exit code."""
    try:
        while any(p.poll() is None for p in procs):
            progress.update(*count_trials(study))
            time.sleep(1.0)
    except KeyboardInterrupt:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait()
        raise
    progress.update(*count_trials(study))
    codes = [p.returncode for p in procs]
    bad = [c for c in codes if c != 0]
    return max(bad, key=abs) if bad else 0
