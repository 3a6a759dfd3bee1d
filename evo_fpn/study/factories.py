"""The parts of a search built from its study configuration: sampler, pruner, worker seeds.

Kept apart from the runner so that the command line and the opening of a study (which builds
a resumed study's sampler again with a moved-on seed) build them the same way. Each part is
pinned to explicit settings (recorded with the study), so that studies stay comparable.
"""

from __future__ import annotations

import os
import socket
import zlib
from collections.abc import Callable

import optuna

from evo_fpn.arch.space import NasFpnSpace
from evo_fpn.study.config import ConfigError, StudyConfig, pruner_settings_for, sampler_settings_for


def build_sampler(cfg: StudyConfig, *, seed: int, space: NasFpnSpace) -> optuna.samplers.BaseSampler:
    """The study's sampler, pinned to explicit settings so studies stay comparable.

    What a sampler cannot do with the study's objectives is refused here, before anything is
    written: the RL controller scores two objectives only through its MnasNet reward, which
    needs ``cost_target``, and cannot score three."""
    from evo_fpn.samplers import make_sampler

    settings = sampler_settings_for(cfg)
    n = len(cfg.objectives)
    if cfg.sampler == "rl" and (n > 2 or (n == 2) != ("cost_target" in settings)):
        if n > 2:
            fix = "use two objectives (ap and one cost) or another sampler (evolution, nsga2, tpe, random)"
        elif n == 2:
            fix = "set [sampler.rl] cost_target = N, the N of its MnasNet reward AP * (cost / N) ** cost_weight"
        else:
            fix = 'cost_target only applies to two objectives: drop it, or set objectives = ["ap", COST]'
        raise ConfigError(f"sampler 'rl' cannot run objectives {list(cfg.objectives)} as configured: {fix}")
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


ENV_WORKER_INDEX = ("EVO_FPN_WORKER_INDEX", "SLURM_ARRAY_TASK_ID", "SLURM_PROCID")


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
