"""The last stage of ``python -m evo_fpn.search``: the found neck against torchvision's FPN, end to end.

The best finalist and torchvision's FPN are each trained end to end (backbone included, from
scratch) with one recipe, the search's proxy settings with ``epochs`` set and one seed a run,
on the same seeds, so the answer reads "on your data this neck scored X against FPN's Y".

The runs are trials of an ordinary study, ``NAME-retrain``, in the search's storage rather
than JSON files in ``--out``: a trial is (architecture, seed) as fixed params, enqueued once
under the study's queue lock, and run by the runner's budget loop, so a rerun resumes (a
killed run's trial is retried by the heartbeat, a Ctrl-C'd one queued again at once), a second
machine on the same PostgreSQL joins and trains the next pair instead of repeating one, and
the results are read back from the storage wherever the report is made. JSON records in a
local folder would do the first but not the other two. The trained found detector of seed 0
is written to ``--out/model.pt`` by the machine that trains it (trained weights are files, not
storage rows); the study records which machine that was.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from evo_fpn import record
from evo_fpn.arch.spec import ArchSpec
from evo_fpn.errors import UsageError
from evo_fpn.storage import rdb as st
from evo_fpn.study.config import RunnerConfig
from evo_fpn.study.enqueue import study_lock
from evo_fpn.study.summary import Progress
from evo_fpn.tasks.base import worker_id
from evo_fpn.tasks.proxy import ProxyConfig, ProxyTask

FOUND, FPN = "found", "torchvision_fpn"
ARCHS: tuple[str, ...] = (FOUND, FPN)
MAX_SEED = 999
MODEL_WRITTEN_BY = "model_written_by"
"""User attr of the found seed-0 trial: host:pid that wrote ``model.pt`` (another machine's --out)."""


def retrain_config(proxy: ProxyConfig, epochs: float) -> ProxyConfig:
    """The recipe both architectures train with: the search's proxy settings (data, image size,
    optimiser, anchors) end to end for ``epochs``, one seed a run, scored once at the end."""
    return proxy.replace(backbone_mode="end_to_end", epochs=float(epochs), seeds=1, reports=1)


def identity(spec: ArchSpec, config: ProxyConfig) -> dict[str, Any]:
    """What a retrain study measured: which neck, under which recipe (refused when it differs)."""
    return {"winner": spec.canonical_hash(), "config": config.fingerprint(), "epochs": config.epochs}


def check_stored(url: str, name: str, epochs: float) -> None:
    """Before anything runs: refuse a stored retrain study of other epochs (one line)."""
    if not st.study_exists(url, name):
        return
    with st.reader(url) as storage:
        attrs = storage.get_study_user_attrs(storage.get_study_id_from_name(name))
    stored = attrs.get("identity", {}).get("epochs")
    if stored is not None and float(stored) != float(epochs):
        raise UsageError(
            f"study {name!r} in {st.mask_url(url)} retrained for {stored:g} epochs, not {epochs:g}: rerun with "
            f"--retrain-epochs {stored:g}, or choose another NAME"
        )


class RetrainObjective:
    """``study.optimize`` objective for one (architecture, seed) trial; the budget loop's
    interface (``on_start``, ``current``, ``failures``) as :class:`evo_fpn.study.objective.Objective`."""

    failures: tuple[type[BaseException], ...] = ()  # a diverging run stops the stage with its message

    def __init__(self, *, spec: ArchSpec, config: ProxyConfig, device: str, progress: bool, out: Path) -> None:
        self.spec, self.config, self.device, self.progress, self.out = spec, config, device, progress, out
        self.on_start: Callable[[], None] = lambda: None
        self.current: int | None = None

    def __call__(self, trial: optuna.Trial) -> float:
        self.on_start()
        self.current = trial.number
        arch = trial.suggest_categorical("arch", ARCHS)
        seed = trial.suggest_int("seed", 0, MAX_SEED)
        trial.set_user_attr(record.WORKER, worker_id())
        config = self.config.replace(seed=self.config.seed + seed)
        task = ProxyTask(config, device=self.device, progress=self.progress).prepare()
        model, metrics = task.fit(self.spec if arch == FOUND else FPN)
        for key, value in metrics.items():
            if key != "history":
                trial.set_user_attr(key, value)
        if arch == FOUND and seed == 0:
            save_model(model, self.out / "model.pt")
            trial.set_user_attr(MODEL_WRITTEN_BY, f"{worker_id()}:{self.out.resolve()}")
        return float(metrics["ap"])


def save_model(model: torch.nn.Module, path: Path) -> None:
    """``state_dict`` to ``path``, written beside it and renamed (never half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def open_retrain(url: str, name: str, *, spec: ArchSpec, config: ProxyConfig, seeds: int) -> optuna.Study:
    """Create or load ``name``; refuse one that retrained another neck or recipe; enqueue every
    (architecture, seed) pair not yet done, running or waiting (seed-major: both architectures'
    seed 0 first, so a short run already compares them)."""
    runner = RunnerConfig()
    storage = st.open_storage(url, heartbeat_interval=runner.heartbeat_interval, grace_period=runner.grace_period,
                              max_retry=runner.max_retry)  # fmt: skip
    ident = identity(spec, config)
    try:
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
        study.set_user_attr("identity", ident)
        study.set_user_attr("spec", spec.to_json())
        study.set_user_attr("config", config.to_dict())
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage)
        stored = study.user_attrs.get("identity")
        if stored is not None and stored != ident:
            raise UsageError(
                f"study {name!r} in {st.mask_url(url)} retrained another neck or recipe ({stored} != {ident}): "
                "choose another NAME for a new search"
            ) from None
    study.set_user_attr("n_trials", 2 * seeds)
    with study_lock(url, name):
        have = {
            (t.params.get("arch") or t.system_attrs.get("fixed_params", {}).get("arch"),
             t.params.get("seed", t.system_attrs.get("fixed_params", {}).get("seed")))
            for t in study.get_trials(deepcopy=False)
            if t.state in (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
        }  # fmt: skip
        for seed in range(seeds):
            for arch in ARCHS:
                if (arch, seed) not in have:
                    study.enqueue_trial({"arch": arch, "seed": seed})
    return study


def run_retrain(
    url: str,
    name: str,
    *,
    spec: ArchSpec,
    config: ProxyConfig,
    seeds: int,
    device: str,
    out: Path,
    progress: bool,
) -> optuna.Study:
    """Run the stage to its budget (``2 * seeds`` finished trials) with the runner's budget loop."""
    from evo_fpn.study.budget import count_trials, run_worker

    study = open_retrain(url, name, spec=spec, config=config, seeds=seeds)
    objective = RetrainObjective(spec=spec, config=config, device=device, progress=progress, out=out)
    finished, _, _ = count_trials(study)
    bar = Progress(total=2 * seeds, initial=finished, enabled=progress, desc=f"study {name}")
    lock = st.BudgetLock(url, name)
    try:
        run_worker(
            study,
            objective=objective,  # type: ignore[arg-type]  # the same interface as the runner's Objective
            n_trials=2 * seeds,
            lock=lock,
            timeout=None,
            callbacks=(),
            progress=bar,
            max_consecutive_failures=1,
        )
    finally:
        lock.close()
        bar.close()
    return study


def results(study: optuna.Study) -> dict[str, list[dict[str, Any]]]:
    """Each architecture's finished runs (their metrics and seed), by seed."""
    out: dict[str, list[dict[str, Any]]] = {arch: [] for arch in ARCHS}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        out.setdefault(t.params["arch"], []).append({**t.user_attrs, "seed": t.params["seed"], "trial": t.number})
    for runs in out.values():
        runs.sort(key=lambda r: r["seed"])
    return out


__all__ = [
    "ARCHS",
    "FOUND",
    "FPN",
    "RetrainObjective",
    "check_stored",
    "identity",
    "open_retrain",
    "results",
    "retrain_config",
    "run_retrain",
    "save_model",
]
