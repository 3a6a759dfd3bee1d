"""Seeding a study with known architectures: ``--enqueue FILE.json`` and ``--enqueue-top STUDY:K``.

Two stages, as docs/guide/search.md's "Two-stage search" shows: screen thousands of architectures with
the cheap supernet objective, then enqueue the best few of that study into a proxy study,
which trains them stand-alone before it samples anything.

Work is split so that bad input never writes anything: :func:`plan` reads and validates
(the file, the source study, that each spec fits the target space) before the target study is
created; :func:`apply` runs after it is opened. Both are idempotent: :func:`apply` skips every
architecture the study already has (same canonical hash among its trials, whatever their
state, or waiting in the queue), under a lock that every worker of the study takes, so workers
started together, or a worker restarted with the same flags, never enqueue one twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from evo_fpn import compat, record
from evo_fpn.arch.load import load_arch
from evo_fpn.arch.space import NasFpnSpace
from evo_fpn.arch.spec import REFERENCE_SPECS, ArchSpec, SpecError
from evo_fpn.errors import UsageError
from evo_fpn.storage import rdb as st

ENQUEUED_FROM = "enqueued_from"
"""User attr of an enqueued trial: where its architecture came from (``seeds.json[3]``, ``screen#17``)."""


@dataclass(frozen=True)
class Candidate:
    """One architecture to enqueue, already encoded in the target space."""

    params: dict[str, str]
    spec_hash: str
    origin: str


# -- reading what to enqueue (no writes) ---------------------------------------------------
def plan(
    files: Sequence[str],
    tops: Sequence[str],
    *,
    url: str,
    space: NasFpnSpace,
    open_storage: Callable[[], optuna.storages.BaseStorage],
) -> list[Candidate]:
    """The architectures ``--enqueue`` and ``--enqueue-top`` name, in order, duplicates dropped.

    Reads only; raises :class:`UsageError` (one line) for a bad file, a malformed argument, a
    missing source study or a spec that does not fit ``space``. ``open_storage`` opens the
    storage of the source studies (called only when one exists).
    """
    parsed = [parse_top(arg) for arg in tops]  # every argument checked before anything is read
    out: list[Candidate] = []
    for path in files:
        out += read_file(path, space)
    for source, k in parsed:
        out += best_of(source, k, url=url, space=space, open_storage=open_storage)
    return _distinct(out)


def read_file(path: str, space: NasFpnSpace) -> list[Candidate]:
    """The architectures listed in a JSON file: specs, trials' ``spec`` attrs (JSON strings),
    records with a ``spec`` key, trials' params, or reference names (``published``, ``fpn``)."""
    where = f"--enqueue {path}"
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise UsageError(f"{where}: cannot read the file ({reason}): pass a JSON file listing specs") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{where}: not valid JSON ({exc}): the file must hold a JSON list of specs") from None
    if isinstance(data, dict) and ("cells" in data or "spec" in data):
        data = [data]  # one spec or record on its own
    if not isinstance(data, list):
        raise UsageError(
            f"{where}: the file holds a JSON {type(data).__name__}, not a list: write [spec, spec, ...] "
            "(ArchSpec JSON objects, trials' spec attrs or reference names)"
        )
    name = Path(path).name
    out = []
    for i, entry in enumerate(data):
        spec = _entry_spec(entry, i, where, space)
        try:
            params = space.encode(spec)
        except SpecError as exc:
            raise UsageError(
                f"{where}: entry {i} (counting from 0) does not fit this study's search space ({exc}): remove it, "
                "or enqueue it into a study with that space"
            ) from None
        out.append(Candidate(params, spec.canonical_hash(), f"{name}[{i}]"))
    return out


def _entry_spec(entry: Any, i: int, where: str, space: NasFpnSpace) -> ArchSpec:
    names = ", ".join(REFERENCE_SPECS)
    try:
        if isinstance(entry, str):
            if entry in REFERENCE_SPECS:
                return REFERENCE_SPECS[entry]
            if entry.lstrip().startswith("{"):  # a trial's spec attr, as stored
                return load_arch(entry)
            raise UsageError(f"{entry!r} is neither a reference name ({names}) nor a spec as a JSON string")
        if isinstance(entry, dict):
            if "cells" not in entry and any(str(k).startswith("cell0.") for k in entry):
                return space.decode(entry)  # a trial's params, in this study's space
            return load_arch(json.dumps(entry))
        raise UsageError(f"a JSON {type(entry).__name__} is not a spec")
    except (SpecError, UsageError) as exc:
        msg = str(exc).removeprefix("inline spec: ")
        raise UsageError(
            f"{where}: entry {i} (counting from 0) is not a valid architecture ({msg}): list ArchSpec JSON objects, "
            f"trials' spec attrs or reference names ({names})"
        ) from None


def parse_top(arg: str) -> tuple[str, int]:
    """``STUDY:K`` -> ``(STUDY, K)``; a :class:`UsageError` for anything else."""
    source, sep, raw = arg.rpartition(":")
    fix = "write STUDY:K, e.g. --enqueue-top screen:20"
    if not sep or not source.strip():
        raise UsageError(f"--enqueue-top {arg!r}: expected STUDY:K: {fix}")
    try:
        k = int(raw)
    except ValueError:
        raise UsageError(f"--enqueue-top {arg!r}: K must be a whole number: {fix}") from None
    if k < 1:
        raise UsageError(f"--enqueue-top {arg!r}: K must be >= 1, got {k}: {fix}")
    return source.strip(), k


def best_of(
    source: str,
    k: int,
    *,
    url: str,
    space: NasFpnSpace,
    open_storage: Callable[[], optuna.storages.BaseStorage],
) -> list[Candidate]:
    """The ``k`` best distinct architectures (canonical hash) of study ``source``, best first.

    Single objective: by the study's value, in its direction. Several objectives: by Pareto
    rank (the front first, then the front of the rest, ...), each front ordered by its first
    value. Only COMPLETE trials count (pruned and over-budget ones have no final value).
    """
    where = f"--enqueue-top {source}:{k}"
    if not st.study_exists(url, source):
        hint = (
            f" (by default each SQLite study has its own file: sqlite:///studies/{source}.db)"
            if st.is_sqlite(url)
            else ""
        )
        raise UsageError(
            f"{where}: there is no study {source!r} in {st.mask_url(url)}: run it first "
            f"(python -m evo_fpn.run --study {source}), or pass the storage that holds it with --storage{hint}"
        )
    study = optuna.load_study(study_name=source, storage=open_storage())
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    trials = [t for t in trials if t.values is not None]
    if not trials:
        raise UsageError(f"{where}: study {source!r} has no complete trials yet: run it first")
    out: list[Candidate] = []
    seen: set[str] = set()
    for t in _ranked(trials, study.directions):
        spec = _trial_spec(t, source, space)
        h = spec.canonical_hash()
        if h in seen:
            continue
        seen.add(h)
        try:
            params = space.encode(spec)
        except SpecError as exc:
            raise UsageError(
                f"{where}: trial {t.number} of {source!r} does not fit this study's search space ({exc}): "
                "enqueue into a study with the source's space"
            ) from None
        out.append(Candidate(params, h, f"{source}#{t.number}"))
        if len(out) == k:
            break
    return out


def _ranked(trials: list[FrozenTrial], directions: Sequence[optuna.study.StudyDirection]) -> list[FrozenTrial]:
    """``trials`` best first (see :func:`best_of`); ties keep the earlier trial first."""
    sign = np.array([-1.0 if d == optuna.study.StudyDirection.MAXIMIZE else 1.0 for d in directions])
    loss = np.array([t.values for t in trials], dtype=float) * sign  # lower is better
    if len(directions) == 1:
        order = np.argsort(loss[:, 0], kind="stable")
    else:
        rank = compat.fast_non_domination_rank(loss)
        order = np.lexsort((np.arange(len(trials)), loss[:, 0], rank))
    return [trials[i] for i in order]


def _trial_spec(t: FrozenTrial, source: str, space: NasFpnSpace) -> ArchSpec:
    try:
        if record.SPEC in t.user_attrs:
            return ArchSpec.from_json(t.user_attrs[record.SPEC])
        return space.decode(t.params)
    except SpecError as exc:
        raise UsageError(
            f"--enqueue-top: trial {t.number} of {source!r} has no readable architecture ({exc}): "
            "use a study made by python -m evo_fpn.run"
        ) from None


def _distinct(candidates: list[Candidate]) -> list[Candidate]:
    seen: set[str] = set()
    out = []
    for c in candidates:
        if c.spec_hash not in seen:
            seen.add(c.spec_hash)
            out.append(c)
    return out


# -- enqueueing (after the study is opened) -------------------------------------------------
def apply(study: optuna.Study, candidates: Sequence[Candidate], *, url: str, space: NasFpnSpace) -> tuple[int, int]:
    """Enqueue the candidates the study does not have yet; return (enqueued, skipped).

    Runs under :func:`study_lock`, so that two workers cannot both see an architecture missing
    and both enqueue it.
    """
    with study_lock(url, study.study_name):
        have = known_hashes(study, space)
        new = [c for c in candidates if c.spec_hash not in have]
        for c in new:
            study.enqueue_trial(c.params, user_attrs={ENQUEUED_FROM: c.origin})
    return len(new), len(candidates) - len(new)


def known_hashes(study: optuna.Study, space: NasFpnSpace) -> set[str]:
    """Canonical hashes of every trial of ``study``, in any state, the waiting ones included
    (their architecture is in their fixed params until they run)."""
    out: set[str] = set()
    for t in study.get_trials(deepcopy=False):
        h = t.user_attrs.get(record.SPEC_HASH)
        if h is None:
            params = t.system_attrs.get("fixed_params") or t.params
            try:
                h = space.decode(params).canonical_hash()
            except (SpecError, TypeError):  # a trial still being suggested: it has no architecture yet
                continue
        out.add(h)
    return out


@contextlib.contextmanager
def study_lock(url: str, study_name: str) -> Iterator[None]:
    """Exclusive access to a study's queue across workers: the budget lock (PostgreSQL advisory
    lock or the storage server's lease); for a SQLite file, which has no such lock, an ``flock``
    on a file beside it (``NAME.db-enqueue.lock``), which excludes other processes and threads."""
    path = st.sqlite_path(url)
    if st.is_sqlite(url):
        if path is None or str(path) == ":memory:":  # one connection, one process
            yield
            return
        with open(path.with_name(path.name + "-enqueue.lock"), "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        return
    lock = st.BudgetLock(url, study_name)
    try:
        with lock:
            yield
    finally:
        lock.close()


def describe(study: optuna.Study, done: tuple[int, int], n_trials: int) -> str:
    """The run's one line about what it enqueued, and whether the budget leaves room to run it."""
    enqueued, skipped = done
    line = f"enqueued {enqueued} architecture(s)" + (f", {skipped} already in the study" if skipped else "")
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.WAITING))
    waiting = sum(t.state == TrialState.WAITING for t in trials)
    room = max(0, n_trials - (len(trials) - waiting))
    if waiting > room:
        line += (
            f"; note: {waiting} trials wait in the queue and the budget of {n_trials} has room for {room}: "
            "raise --n-trials to run them all"
        )
    return line


__all__ = [
    "ENQUEUED_FROM",
    "Candidate",
    "apply",
    "best_of",
    "describe",
    "known_hashes",
    "parse_top",
    "plan",
    "read_file",
    "study_lock",
]
