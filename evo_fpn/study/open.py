"""Opening a study: create it, or load it and refuse it when it measured something else.

A new study records its fingerprint (objective + search space), its resolved settings and
its budget. A worker that loads a stored study compares fingerprints first and refuses a
mismatch, naming the fields that differ, so that trials scored differently never mix in one
study; a worker joining a study another worker is just creating waits briefly for its
fingerprint. :class:`Prepared` is everything validated before the study is touched.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from evo_fpn import compat, record
from evo_fpn.arch.space import NasFpnSpace
from evo_fpn.arch.spec import REFERENCE_SPECS
from evo_fpn.errors import UsageError
from evo_fpn.storage import rdb as st
from evo_fpn.study.config import StudyConfig, code_version
from evo_fpn.study.factories import build_sampler


@dataclass
class Prepared:
    """Everything validated, before the study is touched."""

    cfg: StudyConfig
    url: str
    space: NasFpnSpace
    task: Any  # the objective, as evo_fpn.cli.run.build_task returns it
    sampler: optuna.samplers.BaseSampler
    pruner: optuna.pruners.BasePruner
    fingerprint: str
    fingerprint_parts: dict[str, Any]
    resolved: dict[str, Any]
    artifact_dir: Path | None
    seed: int
    index: int | None


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
        _refuse_other_fingerprint(
            cfg.name, p.url, stored, p.fingerprint, study.user_attrs.get("config", {}), p.resolved
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
        note = other_build_warning(study, getattr(getattr(p.task, "task", None), "backbone_build", None))
        if note:
            log(note)
        if study.user_attrs.get("n_trials") != cfg.n_trials:
            study.set_user_attr("n_trials", cfg.n_trials)
        n_before = len(study.get_trials(deepcopy=False))
        if n_before and cfg.sampler not in STORAGE_SEEDED_SAMPLERS:
            # A resumed run of a process-seeded sampler (random, TPE, NSGA-II) would replay the
            # first run's proposals: move the seed on by the study's size (still deterministic
            # for a given study state). Ours derive each trial's randomness from (seed, trial
            # number), so they keep the seed and continue exactly as if never stopped.
            study.sampler = build_sampler(cfg, seed=p.seed + 7919 * n_before, space=p.space)
    if study.metric_names is None:  # optuna-dashboard's axis label: "ap", not "Objective 0"
        study.set_metric_names(list(cfg.value_names))
    if cfg.runner.enqueue_references and not study.user_attrs.get("references_enqueued"):
        study.set_user_attr("references_enqueued", True)
        for name, spec in REFERENCE_SPECS.items():
            study.enqueue_trial(p.space.encode(spec), user_attrs={"reference": name}, skip_if_exists=True)
    return study, created


def check_stored_fingerprint(url: str, name: str, fingerprint: str, resolved: dict[str, Any]) -> None:
    """Refuse, before anything is built or written, a stored study ``name`` of other settings.

    :func:`open_study` checks again once the study is open (a worker may create it meanwhile);
    this early read exists so that a changed setting costs one line, not a backbone stage."""
    if not st.study_exists(url, name):
        return
    with st.reader(url) as storage:
        attrs = storage.get_study_user_attrs(storage.get_study_id_from_name(name))
    stored = attrs.get("fingerprint")
    if stored is not None:
        _refuse_other_fingerprint(name, url, stored, fingerprint, attrs.get("config", {}), resolved)


def _refuse_other_fingerprint(
    name: str, url: str, stored: str, fingerprint: str, old: dict[str, Any], new: dict[str, Any]
) -> None:
    if stored != fingerprint:
        diff = _config_diff(old, new)
        raise UsageError(
            f"study {name!r} in {st.mask_url(url)} was run with a different proxy task or search space "
            f"(fingerprint {stored} != {fingerprint}{'; differs in ' + diff if diff else ''}): rerun it with "
            f"its original settings, or start a new study with --new-study NAME"
        )


def finished_builds(storage: optuna.storages.BaseStorage, study_id: int) -> list[str | None]:
    """The backbone build each COMPLETE trial of the study names (``None``: end to end, or older)."""
    done = storage.get_all_trials(study_id, deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return [t.user_attrs.get(record.BACKBONE_BUILD) for t in done]


def other_build_warning(study: optuna.Study, build: str | None) -> str | None:
    """A one-line warning when finished trials of ``study`` trained on another build of the
    backbone stage than ``build`` (this worker's): the fingerprint names the stage's settings,
    and the same settings trained on another machine give other features and other APs."""
    if build is None:
        return None
    builds = [
        t.user_attrs.get(record.BACKBONE_BUILD)
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    ]
    others = sorted({b for b in builds if b is not None and b != build})
    if not others:
        return None
    n = sum(b in others for b in builds)
    return (
        f"warning: {n} finished trial(s) of study {study.study_name!r} trained on another build of the backbone "
        f"stage ({', '.join(others)}; this worker's is {build}), whose features and APs differ from this one's: "
        "this study is older than stored builds: share one $EVO_FPN_CACHE folder (docs/guide/scaling-out.md)"
    )


def missing_stage_warning(url: str, study_name: str, task: Any) -> str | None:
    """Before this worker trains its own backbone stage (about 45 min of CPU on the default
    preset): a one-line warning when the study it joins already has trials on a stage built
    elsewhere, whose features this worker's build cannot reproduce; the user can stop and
    copy that stage instead. Reads the storage; writes nothing."""
    store = getattr(task, "store", None)
    if store is None or not store.cached or store.cache_path().is_file() or not st.study_exists(url, study_name):
        return None
    with st.reader(url) as storage:
        found = finished_builds(storage, storage.get_study_id_from_name(study_name))
    builds = sorted({b for b in found if b is not None})
    if not builds:
        return None
    return (
        f"warning: this worker has no backbone stage {store.cache_path().name} and will train its own, but "
        f"study {study_name!r} trained on build {', '.join(builds)}, whose features and APs this one's will not "
        "match: stop now (Ctrl-C) and copy that file into this machine's $EVO_FPN_CACHE from the machine that "
        "built it, or share one $EVO_FPN_CACHE folder (docs/guide/scaling-out.md)"
    )


STORAGE_SEEDED_SAMPLERS = frozenset({"evolution", "rl"})
"""Samplers whose randomness per trial comes from (seed, trial number): no re-seed on resume."""


FINGERPRINT_WAIT_S = 10.0
"""How long a joining worker waits for the creator to record a new study's fingerprint."""


def _wait_for_fingerprint(study: optuna.Study) -> str | None:
    """The stored fingerprint; a study another worker just created may take a moment."""
    if study.get_trials(deepcopy=False):
        return compat.fresh_study_user_attrs(study).get("fingerprint")
    deadline = time.monotonic() + FINGERPRINT_WAIT_S
    while True:
        fp = compat.fresh_study_user_attrs(study).get("fingerprint")
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
