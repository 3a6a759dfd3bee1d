"""Start, resume or join a search: ``python -m evo_fpn.run --study NAME``.

One command for every situation: alone on a laptop (SQLite in ``studies/NAME.db``), again
after a crash (the study resumes and finishes its budget, no more), or as one of many
workers on many machines sharing one PostgreSQL URL (``--storage`` or ``$EVO_FPN_STORAGE``).

Order of work, so that bad input never leaves anything behind: read the study file and flags,
build the task, sampler and pruner, check the storage (connecting to PostgreSQL), check the
dataset, and only then create or load the study. A stored study whose fingerprint (proxy task
+ search space) differs is refused; ``--new-study NAME`` starts a new study instead.

The budget ``n_trials`` counts *finished* trials (COMPLETE or PRUNED) of the whole study,
across all workers, and a study ends with exactly that many, however many workers join.

This module is the command line (flags, validation, the objective, ``main``); each other
concern of a run has its own module, and imports only run downwards:
:mod:`evo_fpn.study.factories` (sampler, pruner, worker seeds), :mod:`evo_fpn.study.open` (create or
load a study, fingerprint checks), :mod:`evo_fpn.study.budget` (the budget loop),
:mod:`evo_fpn.study.workers` (``--workers K`` child processes) and :mod:`evo_fpn.study.summary` (progress
line and end-of-run summary).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from evo_fpn.arch.space import NasFpnSpace
from evo_fpn.arch.spec import REFERENCE_SPECS, SpecError
from evo_fpn.cli.common import ArgumentParser, UsageError, guard, parse_sets
from evo_fpn.storage import rdb as st
from evo_fpn.study import enqueue
from evo_fpn.study import registry as objectives
from evo_fpn.study.artifacts import default_artifact_dir, make_artifact_store
from evo_fpn.study.budget import count_trials, run_worker
from evo_fpn.study.caches import adopt_study_builds, publish_builds
from evo_fpn.study.config import (
    DEVICES,
    OBJECTIVES,
    PRESET_NAMES,
    PRUNERS,
    SAMPLERS,
    ConfigError,
    StudyConfig,
    fingerprint,
    load_config,
)
from evo_fpn.study.factories import build_pruner, build_sampler, worker_index, worker_seed
from evo_fpn.study.objective import Objective
from evo_fpn.study.open import (
    Prepared,
    check_stored_fingerprint,
    missing_stage_warning,
    open_study,
)
from evo_fpn.study.summary import Progress, summary
from evo_fpn.study.workers import spawn_workers, watch_workers
from evo_fpn.viz.refresh import StudyFiguresCallback, refresh_study_figures


# -- command line --------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m evo_fpn.run",
        description="Start, resume or join a NAS-FPN search study (flags override studies/NAME.toml).",
    )
    p.add_argument(
        "--study", required=True, metavar="NAME", help="study name (studies/NAME.toml) or path to a .toml file"
    )
    p.add_argument("--new-study", metavar="NAME", help="store the search as a new study NAME (same settings)")
    p.add_argument(
        "--storage", metavar="URL", help="storage URL (default: $EVO_FPN_STORAGE or sqlite:///studies/NAME.db)"
    )
    p.add_argument("--sampler", choices=SAMPLERS, help="search strategy")
    p.add_argument(
        "--n-trials", type=int, metavar="N", help="total budget of finished trials of the study (all workers)"
    )
    p.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="stop starting trials after this many seconds (this worker)"
    )
    p.add_argument("--preset", choices=PRESET_NAMES, help="proxy task preset")
    p.add_argument("--data", metavar="PATH", help="COCO-format dataset folder (default: the built-in dataset)")
    p.add_argument("--device", choices=DEVICES, help="where to train (auto: CUDA when present)")
    p.add_argument("--pruner", choices=PRUNERS, help="stop poor trials early")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads per worker (default: torch's choice)")
    p.add_argument("--seed", type=int, metavar="N", help="base seed (each worker derives its own)")
    p.add_argument(
        "--workers", type=int, default=1, metavar="K", help="local worker processes (PostgreSQL for more than 1)"
    )
    p.add_argument(
        "--worker-index",
        type=int,
        metavar="I",
        help="this worker's index, for its seed (default: $SLURM_ARRAY_TASK_ID)",
    )
    p.add_argument("--enqueue-references", action="store_true", default=None,
                   help="evaluate the published NAS-FPN and the FPN-like spec first")  # fmt: skip
    p.add_argument("--enqueue", action="append", default=[], metavar="FILE.json",
                   help="evaluate the architectures listed in FILE.json first (specs or trials' spec attrs; "
                        "those the study has are skipped)")  # fmt: skip
    p.add_argument("--enqueue-top", action="append", default=[], metavar="STUDY:K",
                   help="evaluate the K best distinct architectures of study STUDY (same storage) first")  # fmt: skip
    p.add_argument("--no-dedup", dest="dedup", action="store_false", default=None,
                   help="train duplicate architectures again instead of re-using their metrics")  # fmt: skip
    p.add_argument(
        "--artifacts", metavar="DIR", help="folder for architecture pictures (default: next to the SQLite file)"
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field, e.g. proxy.epochs=2 or space.num_cells=7 (TOML value)")  # fmt: skip
    p.add_argument("--heartbeat-interval", type=int, metavar="S", help="seconds between worker heartbeats")
    p.add_argument("--grace-period", type=int, metavar="S", help="seconds without heartbeat before a trial is retried")
    p.add_argument("--objective", metavar="NAME",
                   help=f"what scores an architecture: {', '.join(OBJECTIVES)} ('synthetic' is a cheap stand-in for "
                        "tests of the runner) or a registered one (evo_fpn.study.registry.register)")  # fmt: skip
    p.add_argument("--objectives", metavar="A,B",
                   help="the study's values, e.g. ap,neck_flops (any of ap, neck_flops, total_flops, neck_params, "
                        "total_params, latency_ms; default: ap)")  # fmt: skip
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return p


# -- building blocks -----------------------------------------------------------------------
TaskInfo = objectives.Built
"""The objective a worker runs (task, failure types, fingerprint, resolved settings)."""


def build_task(cfg: StudyConfig, *, progress: bool) -> objectives.Built:
    """The study's objective, from the registry (:mod:`evo_fpn.study.registry`). CPU threads are
    the worker process's: set here, not by the task."""
    if cfg.threads is not None:
        import torch

        torch.set_num_threads(cfg.threads)
    return objectives.build(cfg, progress=progress)


# -- validation, before the study is touched -----------------------------------------------
def prepare(args: argparse.Namespace, *, build_stage: bool = True) -> Prepared:
    """Validate everything the user gave (config, sampler, pruner, storage, dataset); write nothing.

    ``build_stage=False`` stops before the task's own preparation (the dataset, the backbone
    stage, a supernet): every setting and the stored fingerprint are checked in milliseconds,
    so a driver of several stages (:mod:`evo_fpn.cli.search`) can refuse bad input for all of
    them before the first one trains anything."""
    if args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    overrides: dict[str, Any] = {
        "n_trials": args.n_trials,
        "timeout": args.timeout,
        "seed": args.seed,
        "preset": args.preset,
        "device": args.device,
        "threads": args.threads,
        "data": args.data,
        "sampler": args.sampler,
        "pruner": args.pruner,
        "objective": args.objective,
        "objectives": args.objectives,
        "dedup": args.dedup,
        "enqueue_references": args.enqueue_references,
        "heartbeat_interval": args.heartbeat_interval,
        "grace_period": args.grace_period,
        **parse_sets(args.set),
    }
    try:
        cfg = load_config(args.study, name=args.new_study, **overrides)
    except TypeError as exc:  # an override naming no field
        raise ConfigError(f"bad override: {exc}") from None
    url = st.resolve_url(args.storage, cfg.name)
    st.parse_url(url)
    if args.workers > 1 and st.is_sqlite(url):
        raise st.StorageError(
            f"--workers {args.workers} needs a storage many processes can share, and SQLite is for one process: "
            "pass --storage postgresql+psycopg://USER@HOST/DB (see docs/guide/scaling-out.md)"
        )
    space = NasFpnSpace(cfg.space)
    if cfg.runner.enqueue_references:
        for name, spec in REFERENCE_SPECS.items():
            try:
                space.encode(spec)
            except SpecError as exc:
                raise ConfigError(f"--enqueue-references: the {name} spec does not fit this space ({exc})") from None
    index = worker_index(args.worker_index)
    seed = worker_seed(cfg.seed, index, shared=not st.is_sqlite(url))
    sampler = build_sampler(cfg, seed=seed, space=space)
    pruner = build_pruner(cfg)
    show_progress = args.progress and not args.child
    info = build_task(cfg, progress=show_progress)
    parts = {**info.fingerprint, "space": cfg.space.to_dict()}
    resolved = {**cfg.to_dict(), **info.resolved}
    st.check_storage(url)
    check_stored_fingerprint(url, cfg.name, fingerprint(parts), resolved)  # before any stage is built
    artifact_dir = Path(args.artifacts) if args.artifacts else default_artifact_dir(st.normalise_url(url))
    if build_stage:
        log = (lambda _: None) if args.child else (lambda msg: print(msg, file=sys.stderr))
        fetched = adopt_study_builds(url, cfg.name, info.task, artifact_dir, log=log)
        note = None if args.child or fetched else missing_stage_warning(url, cfg.name, info.task)
        if note:
            print(note, file=sys.stderr)
        info.task.prepare()  # dataset checks (DatasetError) before anything is written
    return Prepared(
        cfg=cfg,
        url=url,
        space=space,
        task=info,
        sampler=sampler,
        pruner=pruner,
        fingerprint=fingerprint(parts),
        fingerprint_parts=parts,
        resolved=resolved,
        artifact_dir=artifact_dir,
        seed=seed,
        index=index,
    )


# -- main ------------------------------------------------------------------------------------
def _figures_callback(every: int) -> list[Callable[[optuna.Study, FrozenTrial], None]]:
    """Refresh the dashboard's study figures every few trials (when optuna-dashboard is installed)."""
    import importlib.util

    if every < 1 or importlib.util.find_spec("optuna_dashboard") is None:
        return []
    return [StudyFiguresCallback(every=every)]


def busy_cpu_hint(p: Prepared, *, threads: int | None, load: float, cores: int) -> str | None:
    """A one-line hint when CPU training starts on an already busy machine with torch's default
    threads: OpenMP threads then spin against the other jobs (measured 1.6 img/s with 2 threads
    against 12.2 img/s with 1 while other processes held the cores)."""
    task = p.task.task
    device = getattr(task, "device", None)
    if threads is not None or device is None or device.type != "cpu" or load < 0.75 * cores:
        return None
    return (
        f"note: the CPU is already busy (load {load:.1f} on {cores} cores); if other training jobs run here, "
        "--threads 1 per job is several times faster"
    )


@guard
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    args = build_parser().parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr)

    t0 = time.monotonic()
    p = prepare(args)
    queued = enqueue.plan(args.enqueue, args.enqueue_top, url=p.url, space=p.space, open_storage=lambda: _storage(p))
    study, created = open_study(p, log=log)
    cfg = p.cfg
    if not args.child:
        log(
            f"{'new' if created else 'resuming'} study {cfg.name!r} in {st.mask_url(p.url)}: budget {cfg.n_trials} "
            f"trials, sampler {cfg.sampler}, {cfg.objective} objective"
            + (f" (preset {cfg.preset})" if cfg.objective == "proxy" else "")
            + f", fingerprint {p.fingerprint}"
            + (f", {args.workers} workers" if args.workers > 1 else "")
        )
        hint = busy_cpu_hint(p, threads=cfg.threads, load=os.getloadavg()[0], cores=os.cpu_count() or 1)
        if hint:
            log(hint)
    if p.artifact_dir is not None and publish_builds(study, p.task.task, p.artifact_dir) and not args.child:
        log(f"stored this worker's cache files with study {cfg.name!r} in {p.artifact_dir}: joining workers use them")
    if queued:
        done = enqueue.apply(study, queued, url=p.url, space=p.space)
        if not args.child:
            log(enqueue.describe(study, done, cfg.n_trials))
    finished, _, _ = count_trials(study)
    progress = Progress(
        total=cfg.n_trials, initial=finished, enabled=args.progress and not args.child, desc=f"study {cfg.name}"
    )
    code = 0
    try:
        if args.workers > 1:
            procs = spawn_workers(argv, args.workers, cfg.device, cfg.threads)
            code = watch_workers(procs, study, cfg.n_trials, progress)
        else:
            store = make_artifact_store(p.artifact_dir) if p.artifact_dir is not None else None
            objective = Objective(
                space=p.space,
                task=p.task.task,
                failures=p.task.failures,
                dedup=cfg.runner.dedup,
                artifact_store=store,
                value_names=cfg.value_names,
                objective_name=cfg.objective,
                budgets=cfg.budgets,
                latency=(cfg.latency_warmup, cfg.latency_runs) if cfg.measures_latency else None,
            )
            lock = st.BudgetLock(p.url, cfg.name)
            try:
                run_worker(
                    study,
                    objective=objective,
                    n_trials=cfg.n_trials,
                    lock=lock,
                    timeout=cfg.timeout,
                    callbacks=_figures_callback(cfg.runner.figures_every),
                    progress=progress,
                    max_consecutive_failures=cfg.runner.max_consecutive_failures,
                )
            finally:
                lock.close()
    finally:
        progress.close()
    if not args.child:
        try:
            refresh_study_figures(study)
        except UsageError:  # optuna-dashboard is not installed
            pass
        except Exception as exc:  # figures are a convenience; never lose the summary over them
            log(f"warning: refreshing the dashboard figures failed: {exc}")
        print(
            summary(
                study,
                n_trials=cfg.n_trials,
                url=p.url,
                sampler=cfg.sampler,
                fingerprint=p.fingerprint,
                artifact_dir=p.artifact_dir,
                elapsed=time.monotonic() - t0,
            )
        )
    if code:
        return _fail_children(code)
    return 0


def _storage(p: Prepared) -> optuna.storages.BaseStorage:
    """The run's storage, for reading another study of it (``--enqueue-top``)."""
    r = p.cfg.runner
    return st.open_storage(p.url, heartbeat_interval=r.heartbeat_interval, grace_period=r.grace_period,
                           max_retry=r.max_retry)  # fmt: skip


def _fail_children(code: int) -> int:
    print(f"error: a worker exited with code {code}; see its messages above", file=sys.stderr)
    return code if code > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
