"""The objective registry: what ``--objective NAME`` (``objective = "NAME"``) means.

An objective is one :class:`ObjectiveType`: its name, the study-file table that holds its
settings (``[proxy]``, ``[synthetic]``), a factory that turns a study configuration into a
ready task (anything with ``prepare()`` and ``evaluate(spec, reporter) -> metrics``, see
:class:`evo_fpn.tasks.base.Task`) plus the identity that goes into the study fingerprint, and
the exception types that fail one trial rather than the worker. Adding an objective is one
:func:`register` call and one settings table; the config, the runner and the CLI read the
registry, so nothing else has to agree with a list.

Factories import their heavy modules (torch) only when called, so that a synthetic study never
loads torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from evo_fpn.arch.space import SpaceConfig
from evo_fpn.errors import TrialFailed, UsageError

if TYPE_CHECKING:  # pragma: no cover
    from evo_fpn.training.config import ProxyConfig


class StudySettings(Protocol):
    """What an objective may read of a study's configuration (:class:`evo_fpn.study.config.StudyConfig`
    has it; the registry sits below the config, which validates objective names against it)."""

    objective: str
    objectives: tuple[str, ...]
    preset: str
    data: str | None
    device: str
    space: SpaceConfig
    settings: Mapping[str, Mapping[str, Any]]

    @property
    def counts_costs(self) -> bool: ...

    @property
    def measures_latency(self) -> bool: ...

    def cost_aware(self) -> dict[str, Any]: ...


@dataclass
class Built:
    """A ready objective: the task, the exceptions that fail only a trial, what makes its scores
    comparable (hashed into the study fingerprint) and its resolved settings (recorded)."""

    task: Any
    failures: tuple[type[BaseException], ...]
    fingerprint: dict[str, Any]
    resolved: dict[str, Any]


@dataclass(frozen=True)
class ObjectiveType:
    """One registered objective. ``build(cfg, settings, progress)`` gets the study config and
    the objective's own table; bad settings raise :class:`~evo_fpn.errors.UsageError`."""

    name: str
    section: str
    build: Callable[[StudySettings, Mapping[str, Any], bool], Built]
    failures: tuple[type[BaseException], ...] = ()
    description: str = ""
    check: Callable[[StudySettings, Mapping[str, Any]], None] | None = None
    """Validates the objective's table without building anything, for studies that hold the
    table but use another objective (a typo there is refused whatever the objective)."""


REGISTRY: dict[str, ObjectiveType] = {}


def register(objective: ObjectiveType) -> ObjectiveType:
    """Add ``objective`` (a name or table already taken by another one is refused)."""
    for other in REGISTRY.values():
        if other.name != objective.name and other.section == objective.section:
            raise ValueError(f"objective {objective.name!r}: table [{objective.section}] belongs to {other.name!r}")
    if objective.section in _RESERVED:
        raise ValueError(f"objective {objective.name!r}: [{objective.section}] is a study-file table of its own")
    REGISTRY[objective.name] = objective
    return objective


def unregister(name: str) -> None:
    REGISTRY.pop(name, None)


def names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def sections() -> tuple[str, ...]:
    return tuple(o.section for o in REGISTRY.values())


def get(name: str) -> ObjectiveType:
    if name not in REGISTRY:
        raise UsageError(f"unknown objective {name!r}: choose one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def build(cfg: StudySettings, *, progress: bool) -> Built:
    """The study's objective, ready to prepare (nothing written, nothing trained).

    A cost-aware study (objectives beyond AP, budgets) needs a task that counts costs
    (``costs(spec)``) or measures latency (``latency(spec, warmup=, runs=)``); one that cannot is
    refused here, before anything is written. Its cost-aware settings join the fingerprint
    (:meth:`~evo_fpn.study.config.StudyConfig.cost_aware`; none for a plain AP study)."""
    objective = get(cfg.objective)
    for other in REGISTRY.values():
        table = cfg.settings.get(other.section)
        if other is not objective and table and other.check is not None:
            other.check(cfg, table)
    built = objective.build(cfg, cfg.settings.get(objective.section, {}), progress)
    built.failures = tuple(dict.fromkeys((*objective.failures, *built.failures)))
    built.fingerprint = {"objective": objective.name, **built.fingerprint, **cfg.cost_aware()}
    for needed, method, what in ((cfg.counts_costs, "costs", "counts no costs"),
                                 (cfg.measures_latency, "latency", "measures no latency")):  # fmt: skip
        if needed and not callable(getattr(built.task, method, None)):
            raise UsageError(
                f"objective {objective.name!r} {what} ({method}(spec)), which objectives "
                f'{list(cfg.objectives)} and the budgets need: use objectives = ["ap"] without budgets'
            )
    return built


_RESERVED = {"space", "sampler", "pruner", "runner"}


# -- the built-in objectives ------------------------------------------------------------------
def _build_synthetic(cfg: StudySettings, settings: Mapping[str, Any], progress: bool) -> Built:
    from evo_fpn.tasks.synthetic import SyntheticFailure, SyntheticTask

    try:
        task = SyntheticTask.from_settings(settings, with_costs=cfg.counts_costs or cfg.measures_latency)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"bad [synthetic] settings: {exc}") from None
    return Built(task, (SyntheticFailure,), {"task": task.fingerprint()}, {"synthetic": dict(settings)})


def _build_proxy(cfg: StudySettings, settings: Mapping[str, Any], progress: bool) -> Built:
    from evo_fpn.tasks import proxy

    pcfg = _proxy_config(cfg, settings)
    task = proxy.ProxyTask(pcfg, device=cfg.device, progress=progress)
    return Built(task, (), {"task": pcfg.fingerprint()}, {"proxy": pcfg.to_dict()})


def _build_supernet(cfg: StudySettings, settings: Mapping[str, Any], progress: bool) -> Built:
    """Shared weights on the proxy's preset and cached features: ``[proxy]`` as for the proxy
    objective, ``[supernet]`` for how the weights are trained and a trial is scored."""
    from evo_fpn.tasks import supernet

    pcfg = _proxy_config(cfg, cfg.settings.get("proxy", {}))
    if pcfg.backbone_mode != "cached":
        raise UsageError("the supernet objective scores on cached backbone features: set proxy.backbone_mode = cached")
    snc = supernet.SupernetConfig.from_dict(settings)
    task = supernet.SupernetTask(pcfg, cfg.space, snc, device=cfg.device, progress=progress)
    fingerprint = {"task": pcfg.fingerprint(), "supernet": snc.to_dict()}
    return Built(task, (), fingerprint, {"proxy": pcfg.to_dict(), "supernet": snc.to_dict()})


def _proxy_config(cfg: StudySettings, settings: Mapping[str, Any]) -> ProxyConfig:
    """The study's proxy configuration: its preset, its ``[proxy]`` table and ``--data``."""
    from evo_fpn.tasks import proxy

    base = proxy.PRESETS[cfg.preset]
    data = dict(settings)
    unknown = sorted(set(data) - set(base.to_dict()))
    if unknown:
        raise UsageError(f"unknown proxy field {unknown[0]!r}; known: {', '.join(sorted(base.to_dict()))}")
    if cfg.data is not None:
        data["data"] = cfg.data
    try:
        pcfg = proxy.ProxyConfig.from_dict(data, base=base)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"bad proxy settings: {exc}") from None
    if cfg.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--device cuda but no CUDA device is visible: use --device auto or cpu")
    return pcfg


def _check_synthetic(cfg: StudySettings, settings: Mapping[str, Any]) -> None:
    _build_synthetic(cfg, settings, False)  # building it is free: no torch, nothing prepared


def _check_proxy(cfg: StudySettings, settings: Mapping[str, Any]) -> None:
    _proxy_config(cfg, settings)


def _check_supernet(cfg: StudySettings, settings: Mapping[str, Any]) -> None:
    from evo_fpn.tasks import supernet

    supernet.SupernetConfig.from_dict(settings)


register(
    ObjectiveType(
        "proxy", "proxy", _build_proxy, (TrialFailed,), "train each architecture on the proxy task", _check_proxy
    )
)
register(
    ObjectiveType(
        "synthetic", "synthetic", _build_synthetic, (), "a cheap stand-in to test the runner", _check_synthetic
    )
)
register(
    ObjectiveType(
        "supernet",
        "supernet",
        _build_supernet,
        (TrialFailed,),
        "score each architecture with shared weights (seconds)",
        _check_supernet,
    )
)
