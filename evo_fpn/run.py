"""Start, resume or join a search: ``python -m evo_fpn.run --study NAME``.

One command for every situation: alone on a laptop (SQLite in ``studies/NAME.db``), again
after a crash (the study resumes and finishes its budget, no more), or as one of many
workers on many machines sharing one PostgreSQL URL (``--storage`` or ``$EVO_FPN_STORAGE``).

Order of work, so that bad input never leaves anything behind: read the study file and flags,
build the task, sampler and pruner, check the storage (connecting to PostgreSQL), check the
dataset, and only then create or load the study. A stored study whose fingerprint (proxy task
+ search space) differs is refused; ``--new-study NAME`` starts a new study instead.

The budget ``n_trials`` counts *finished* trials (COMPLETE or PRUNED) of the whole study,
across all workers. Each worker takes a lock (a PostgreSQL advisory lock), fails stale
trials, counts finished and running trials, and asks for a new trial only while
``finished + running < n_trials``; if only running trials stand between the study and its
budget it waits, because one of them may belong to a killed worker and will be retried.
So the study ends with exactly ``n_trials`` finished trials, however many workers join.
(Optuna's ``MaxTrialsCallback`` would overshoot by up to one trial per extra worker.)
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from evo_fpn import objectives, record
from evo_fpn import storage as st
from evo_fpn.analysis import FINISHED, best_trial, best_value, objective_value
from evo_fpn.cli import ArgumentParser, UsageError, guard, parse_sets
from evo_fpn.config import (
    DEVICES,
    OBJECTIVES,
    PRESET_NAMES,
    PRUNERS,
    SAMPLERS,
    ConfigError,
    StudyConfig,
    code_version,
    fingerprint,
    load_config,
    pruner_settings_for,
    sampler_settings_for,
)
from evo_fpn.objective import Objective
from evo_fpn.report import dashboard_command, default_artifact_dir, make_artifact_store, refresh_study_figures
from evo_fpn.space import NasFpnSpace
from evo_fpn.spec import REFERENCE_SPECS, ArchSpec, SpecError

AP_KEYS = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")
AP_LABELS = {"ap": "AP", "ap50": "AP50", "ap75": "AP75", "ap_small": "APs", "ap_medium": "APm", "ap_large": "APl"}
ENV_WORKER_INDEX = ("EVO_FPN_WORKER_INDEX", "SLURM_ARRAY_TASK_ID", "SLURM_PROCID")


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
                        "tests of the runner) or a registered one (evo_fpn.objectives.register)")  # fmt: skip
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return p


# -- building blocks -----------------------------------------------------------------------
TaskInfo = objectives.Built
"""The objective a worker runs (task, failure types, fingerprint, resolved settings)."""


def build_task(cfg: StudyConfig, *, progress: bool) -> objectives.Built:
    """The study's objective, from the registry (:mod:`evo_fpn.objectives`). CPU threads are
    the worker process's: set here, not by the task."""
    if cfg.threads is not None:
        import torch

        torch.set_num_threads(cfg.threads)
    return objectives.build(cfg, progress=progress)


def build_sampler(cfg: StudyConfig, *, seed: int, space: NasFpnSpace) -> optuna.samplers.BaseSampler:
    """The study's sampler, pinned to explicit settings so studies stay comparable."""
    from evo_fpn.samplers import make_sampler

    settings = sampler_settings_for(cfg)
    try:
        return make_sampler(cfg.sampler, seed=seed, constraints=space, **settings)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad settings for sampler {cfg.sampler!r} ([sampler.{cfg.sampler}]): {exc}") from None


def build_pruner(cfg: StudyConfig) -> optuna.pruners.BasePruner:
    settings = pruner_settings_for(cfg)
    classes: dict[str, Callable[..., optuna.pruners.BasePruner]] = {
        "none": optuna.pruners.NopPruner,
        "median": optuna.pruners.MedianPruner,
        "percentile": optuna.pruners.PercentilePruner,
        "hyperband": optuna.pruners.HyperbandPruner,
        "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    }
    if cfg.pruner == "percentile":
        settings.setdefault("percentile", 25.0)
    try:
        return classes[cfg.pruner](**settings)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad settings for pruner {cfg.pruner!r} ([pruner.{cfg.pruner}]): {exc}") from None


def worker_index(cli_value: int | None) -> int | None:
    """``--worker-index``, else ``$EVO_FPN_WORKER_INDEX`` / ``$SLURM_ARRAY_TASK_ID`` / ``$SLURM_PROCID``."""
    if cli_value is not None:
        if cli_value < 0:
            raise ConfigError(f"--worker-index must be >= 0, got {cli_value}")
        return cli_value
    for name in ENV_WORKER_INDEX:
        raw = os.environ.get(name, "").strip()
        if raw.isdigit():
            return int(raw)
    return None


def worker_seed(base: int, index: int | None, *, shared: bool) -> int:
    """Each worker its own seed: ``base + index``; unnamed workers on a shared storage hash host:pid."""
    if index is not None:
        return base + index
    if shared:
        return base + 1 + zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode()) % 1_000_000
    return base


# -- study ---------------------------------------------------------------------------------
@dataclass
class Prepared:
    """Everything validated, before the study is touched."""

    cfg: StudyConfig
    url: str
    space: NasFpnSpace
    task: TaskInfo
    sampler: optuna.samplers.BaseSampler
    pruner: optuna.pruners.BasePruner
    fingerprint: str
    fingerprint_parts: dict[str, Any]
    resolved: dict[str, Any]
    artifact_dir: Path | None
    seed: int
    index: int | None


def prepare(args: argparse.Namespace) -> Prepared:
    """Validate everything the user gave (config, sampler, pruner, storage, dataset); write nothing."""
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
            "pass --storage postgresql+psycopg://USER@HOST/DB (see README 'Scaling out')"
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
    st.check_storage(url)
    info.task.prepare()  # dataset checks (DatasetError) before anything is written
    artifact_dir = Path(args.artifacts) if args.artifacts else default_artifact_dir(st.normalise_url(url))
    return Prepared(
        cfg=cfg,
        url=url,
        space=space,
        task=info,
        sampler=sampler,
        pruner=pruner,
        fingerprint=fingerprint(parts),
        fingerprint_parts=parts,
        resolved={**cfg.to_dict(), **info.resolved},
        artifact_dir=artifact_dir,
        seed=seed,
        index=index,
    )


def open_study(p: Prepared, *, log: Callable[[str], None]) -> tuple[optuna.Study, bool]:
    """Create the study or load it; refuse a stored study with another fingerprint."""
    cfg = p.cfg
    existed = st.study_exists(p.url, cfg.name)
    storage = st.open_storage(
        p.url,
        heartbeat_interval=cfg.runner.heartbeat_interval,
        grace_period=cfg.runner.grace_period,
        max_retry=cfg.runner.max_retry,
    )
    created = False
    if not existed:
        try:
            study = optuna.create_study(
                study_name=cfg.name,
                storage=storage,
                sampler=p.sampler,
                pruner=p.pruner,
                directions=record.directions(cfg.value_names),
            )
            created = True
        except optuna.exceptions.DuplicatedStudyError:  # another worker was faster
            pass
    if created:
        attrs = {
            "fingerprint": p.fingerprint,
            "fingerprint_parts": p.fingerprint_parts,
            "config": p.resolved,
            "code_version": code_version(),
            "sampler": cfg.sampler,
            "n_trials": cfg.n_trials,
            "created_by": _host_pid(),
        }
        for key, value in attrs.items():
            study.set_user_attr(key, value)
    else:
        study = optuna.load_study(study_name=cfg.name, storage=storage, sampler=p.sampler, pruner=p.pruner)
        stored = _wait_for_fingerprint(study)
        if stored is None:
            raise UsageError(
                f"study {cfg.name!r} in {st.mask_url(p.url)} was not made by evo_fpn.run (no fingerprint): "
                "choose another name with --new-study NAME"
            )
        if stored != p.fingerprint:
            diff = _config_diff(study.user_attrs.get("config", {}), p.resolved)
            raise UsageError(
                f"study {cfg.name!r} in {st.mask_url(p.url)} was run with a different proxy task or search space "
                f"(fingerprint {stored} != {p.fingerprint}{'; differs in ' + diff if diff else ''}): rerun it with "
                f"its original settings, or start a new study with --new-study NAME"
            )
        wanted = [optuna.study.StudyDirection[d.upper()] for d in record.directions(cfg.value_names)]
        if study.directions != wanted:
            raise UsageError(
                f"study {cfg.name!r} optimises {len(study.directions)} value(s) in other directions than "
                f"{', '.join(cfg.value_names)}: use another name"
            )
        old_sampler = study.user_attrs.get("sampler")
        if old_sampler and old_sampler != cfg.sampler:
            log(f"warning: study {cfg.name!r} was started with sampler {old_sampler}; this worker uses {cfg.sampler}")
            history = list(study.user_attrs.get("sampler_history", [old_sampler]))
            if cfg.sampler not in history:
                study.set_user_attr("sampler_history", [*history, cfg.sampler])
        if study.user_attrs.get("n_trials") != cfg.n_trials:
            study.set_user_attr("n_trials", cfg.n_trials)
        n_before = len(study._storage.get_all_trials(study._study_id, deepcopy=False))
        if n_before and cfg.sampler not in STORAGE_SEEDED_SAMPLERS:
            # A resumed run of a process-seeded sampler (random, TPE, NSGA-II) would replay the
            # first run's proposals: move the seed on by the study's size (still deterministic
            # for a given study state). Ours derive each trial's randomness from (seed, trial
            # number), so they keep the seed and continue exactly as if never stopped.
            study.sampler = build_sampler(cfg, seed=p.seed + 7919 * n_before, space=p.space)
    if cfg.runner.enqueue_references and not study.user_attrs.get("references_enqueued"):
        study.set_user_attr("references_enqueued", True)
        for name, spec in REFERENCE_SPECS.items():
            study.enqueue_trial(p.space.encode(spec), user_attrs={"reference": name}, skip_if_exists=True)
    return study, created


STORAGE_SEEDED_SAMPLERS = frozenset({"evolution", "rl"})
"""Samplers whose randomness per trial comes from (seed, trial number): no re-seed on resume."""

FINGERPRINT_WAIT_S = 10.0
"""How long a joining worker waits for the creator to record a new study's fingerprint."""


def _wait_for_fingerprint(study: optuna.Study) -> str | None:
    """The stored fingerprint; a study another worker just created may take a moment."""
    if study._storage.get_all_trials(study._study_id, deepcopy=False):
        return study._storage.get_study_user_attrs(study._study_id).get("fingerprint")
    deadline = time.monotonic() + FINGERPRINT_WAIT_S
    while True:
        fp = study._storage.get_study_user_attrs(study._study_id).get("fingerprint")
        if fp is not None or time.monotonic() >= deadline:
            return fp
        time.sleep(0.2)


def _config_diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    """Which proxy/space/objective fields differ, e.g. ``proxy.epochs 1 -> 2``."""
    out = []
    for table in ("objective", "proxy", "synthetic", "space"):
        a, b = old.get(table), new.get(table)
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                if a.get(key) != b.get(key):
                    out.append(f"{table}.{key} {a.get(key)!r} -> {b.get(key)!r}")
        elif a != b:
            out.append(f"{table} {a!r} -> {b!r}")
    return ", ".join(out[:4])


def _host_pid() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# -- the worker loop -------------------------------------------------------------------------
def count_trials(study: optuna.Study) -> tuple[int, int, float | None]:
    """(finished, running, best value) of the whole study, read from the storage."""
    trials = study._storage.get_all_trials(study._study_id, deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
    finished = [t for t in trials if t.state in FINISHED]
    running = len(trials) - len(finished)
    return len(finished), running, best_value(map(objective_value, finished), study.directions[0])


class Progress:
    """Trial i of N, best AP, elapsed and ETA (tqdm) for the whole study."""

    def __init__(self, *, total: int, initial: int, enabled: bool, desc: str) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=min(initial, total), desc=desc, unit="trial", dynamic_ncols=True)

    def update(self, finished: int, running: int, best: float | None, note: str = "") -> None:
        if self.bar is None:
            return
        self.bar.update(max(0, min(finished, self.bar.total) - self.bar.n))
        post = {"best AP": f"{best:.4f}" if best is not None else "-", "running": running}
        if note:
            post["note"] = note
        self.bar.set_postfix(post, refresh=True)

    def write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_worker(
    study: optuna.Study,
    *,
    objective: Objective,
    n_trials: int,
    lock: st.BudgetLock,
    timeout: float | None,
    callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]],
    progress: Progress,
    max_consecutive_failures: int,
    poll_s: float = 1.0,
) -> str:
    """Run trials until the study has ``n_trials`` finished ones; return why it stopped."""
    objective.on_start = lock.release
    failures = 0
    t0 = time.monotonic()
    seen: dict[str, Any] = {"last": None}

    def on_trial(study: optuna.Study, trial: FrozenTrial) -> None:
        seen["last"] = trial

    while True:
        if timeout is not None and time.monotonic() - t0 >= timeout:
            return "timeout"
        lock.acquire()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            finished, running, best = count_trials(study)
            if finished >= n_trials:
                progress.update(finished, running, best)
                return "budget"
            if finished + running >= n_trials:
                action = "wait"
            else:
                action = "run"
                seen["last"] = None
                study.optimize(objective, n_trials=1, catch=objective.failures, callbacks=[on_trial, *callbacks])
        finally:
            lock.release()
        if action == "wait":
            progress.update(finished, running, best, note="waiting for running trials")
            time.sleep(poll_s)
            continue
        last: FrozenTrial | None = seen["last"]
        if last is not None and last.state == TrialState.FAIL:
            failures += 1
            progress.write(f"trial {last.number} failed: {last.user_attrs.get('fail_reason', 'unknown reason')}")
            if failures >= max_consecutive_failures:
                raise UsageError(
                    f"{failures} trials in a row failed (last: {last.user_attrs.get('fail_reason', '?')}): "
                    "check the proxy settings (e.g. a lower learning rate) before resuming"
                )
        else:
            failures = 0
            if last is not None and last.state == TrialState.PRUNED:
                progress.write(f"trial {last.number} pruned")
        progress.update(*count_trials(study))


def _figures_callback(every: int) -> list[Callable[[optuna.Study, FrozenTrial], None]]:
    """Refresh the dashboard's study figures every few trials (when optuna-dashboard is installed)."""
    import importlib.util

    if every < 1 or importlib.util.find_spec("optuna_dashboard") is None:
        return []
    from evo_fpn.report import StudyFiguresCallback

    return [StudyFiguresCallback(every=every)]


# -- many local workers ------------------------------------------------------------------------
def spawn_workers(argv: Sequence[str], k: int, device: str, threads: int | None) -> list[subprocess.Popen]:
    """Start ``k`` copies of this command as child workers (one GPU each when there are several)."""
    gpus = _visible_gpus() if device != "cpu" else []
    base = _strip_workers(list(argv))
    if not gpus and threads is None:
        # CPU workers share the cores: without this, each would start one thread per core.
        base += ["--threads", str(max(1, (os.cpu_count() or 1) // k))]
    procs = []
    for i in range(k):
        env = dict(os.environ)
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


# -- summary ---------------------------------------------------------------------------------
def summary(study: optuna.Study, p: Prepared, elapsed: float) -> str:
    trials = study.get_trials(deepcopy=False)
    by_state = {s: sum(t.state == s for t in trials) for s in TrialState}
    finished = by_state[TrialState.COMPLETE] + by_state[TrialState.PRUNED]
    cached = sum("cached_from" in t.user_attrs for t in trials if t.state == TrialState.COMPLETE)
    lines = [
        f"study {study.study_name}: {finished} of {p.cfg.n_trials} trials finished "
        f"({by_state[TrialState.COMPLETE]} complete, {cached} of them re-used duplicates, "
        f"{by_state[TrialState.PRUNED]} pruned, {by_state[TrialState.FAIL]} failed) in {_fmt_s(elapsed)}",
        f"storage: {st.mask_url(p.url)}   sampler: {p.cfg.sampler}   fingerprint: {p.fingerprint}",
    ]
    best = best_trial(trials, study.directions[0])
    if best is not None:
        lines.append("")
        extra = f" (re-used from trial {best.user_attrs['cached_from']})" if "cached_from" in best.user_attrs else ""
        ref = f" [{best.user_attrs['reference']}]" if "reference" in best.user_attrs else ""
        lines.append(f"best trial #{best.number}{ref}: AP {best.values[0]:.4f}{extra}")
        ap = [f"{AP_LABELS[k]} {best.user_attrs[k]:.4f}" for k in AP_KEYS if k in best.user_attrs]
        if ap:
            lines.append("  " + "   ".join(ap))
        if "spec" in best.user_attrs:
            spec = ArchSpec.from_json(best.user_attrs["spec"])
            lines.append(f"architecture (canonical hash {spec.canonical_hash()}):")
            lines.extend("  " + row for row in spec.table().splitlines())
    lines.append("")
    lines.append("browse the study:")
    lines.append("  " + _dashboard_command(p))
    return "\n".join(lines)


def _dashboard_command(p: Prepared) -> str:
    return dashboard_command(st.normalise_url(p.url), p.artifact_dir)


def _fmt_s(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


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


# -- main ------------------------------------------------------------------------------------
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
        print(summary(study, p, time.monotonic() - t0))
    if code:
        return _fail_children(code)
    return 0


def _fail_children(code: int) -> int:
    print(f"error: a worker exited with code {code}; see its messages above", file=sys.stderr)
    return code if code > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
