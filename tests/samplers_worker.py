"""Worker process for the sampler tests: runs trials of a NAS-FPN-space study, prints JSON.

Used through ``subprocess`` to check resume-in-a-fresh-process and several processes
sharing one study. ``toy_value`` is a cheap deterministic objective over the params.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import optuna


def toy_value(params: Mapping[str, Any]) -> float:
    """Deterministic in every process (crc32, not ``hash``): a sum of per-choice scores."""
    return sum(zlib.crc32(f"{k}={v}".encode()) % 1000 for k, v in sorted(params.items())) / 1000.0


def fast_dir(fallback: Path) -> Iterator[Path]:
    """A scratch folder on tmpfs when there is one: SQLite commits on disk cost ~30 ms each."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        d = Path(tempfile.mkdtemp(prefix="evo_fpn_samplers_", dir=shm))
        try:
            yield d
        finally:
            shutil.rmtree(d, ignore_errors=True)
    else:
        yield fallback


def make_storage(url: str) -> Any:
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(url[len("journal:") :]))
    return url


def main() -> None:
    from evo_fpn.arch.space import NasFpnSpace
    from evo_fpn.samplers import make_sampler

    ap = argparse.ArgumentParser()
    ap.add_argument("--storage", required=True)
    ap.add_argument("--study", default="s")
    ap.add_argument("--sampler", choices=["evolution", "rl"], required=True)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--n-trials", type=int, default=0)
    ap.add_argument("--settings", default="{}", help="JSON sampler settings")
    ap.add_argument("--digest", action="store_true", help="print the RL policy digest after syncing")
    ap.add_argument("--sleep", type=float, default=0.0, help="seconds each trial takes")
    ap.add_argument("--barrier", default="", help="DIR:N - wait until N workers are ready in DIR")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = NasFpnSpace()
    sampler = make_sampler(args.sampler, seed=args.seed, constraints=space, **json.loads(args.settings))
    study = optuna.create_study(
        storage=make_storage(args.storage),
        study_name=args.study,
        sampler=sampler,
        direction="maximize",
        load_if_exists=True,
    )

    def objective(trial: optuna.Trial) -> float:
        space.suggest(trial)
        trial.set_user_attr("worker", os.getpid())
        time.sleep(args.sleep)
        return toy_value(trial.params)

    if args.barrier:  # start together, after the (slow) imports
        folder, n = args.barrier.rsplit(":", 1)
        Path(folder, f"ready.{os.getpid()}").touch()
        deadline = time.time() + 120
        while len(list(Path(folder).glob("ready.*"))) < int(n) and time.time() < deadline:
            time.sleep(0.01)

    if args.n_trials:
        study.optimize(objective, n_trials=args.n_trials)
    out: dict[str, Any] = {"n_trials": len(study.trials)}
    if args.digest:
        out["updates"] = sampler.sync(study)
        out["digest"] = sampler.policy_digest()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
