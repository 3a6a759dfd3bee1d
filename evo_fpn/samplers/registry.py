"""Samplers by name, for the runner and the study files.

Optuna 5 changed TPE's defaults (multivariate, constant liar); every setting that shapes
the search is pinned here so studies stay comparable across Optuna versions.
"""

from __future__ import annotations

import inspect
from typing import Any

from optuna.samplers import BaseSampler, NSGAIISampler, RandomSampler, TPESampler

from evo_fpn.samplers.constraints import ChoiceConstraints
from evo_fpn.samplers.evolution import AgingEvolutionSampler

SAMPLER_NAMES: tuple[str, ...] = ("evolution", "rl", "random", "tpe", "nsga2")

TPE_DEFAULTS: dict[str, Any] = {
    "multivariate": True,
    "group": False,
    "constant_liar": True,
    "n_startup_trials": 10,
    "n_ei_candidates": 24,
}
NSGA2_DEFAULTS: dict[str, Any] = {"population_size": 50, "crossover_prob": 0.9, "swapping_prob": 0.5}


def make_sampler(
    name: str,
    *,
    seed: int | None = None,
    constraints: ChoiceConstraints | None = None,
    **settings: Any,
) -> BaseSampler:
    """Build sampler ``name`` with ``settings`` (constructor keywords).

    ``constraints`` reaches the samplers that understand the hook (``evolution``, ``rl``);
    the others sample each categorical freely and rely on the space's decode-time repair.

    Raises:
        ValueError: unknown name (the message lists the valid ones) or unknown setting.
    """
    if name not in SAMPLER_NAMES:
        raise ValueError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLER_NAMES)}")
    cls: type[BaseSampler]
    kwargs: dict[str, Any]
    if name == "evolution":
        cls, kwargs = AgingEvolutionSampler, {"constraints": constraints}
    elif name == "rl":
        from evo_fpn.samplers.rl import RLControllerSampler  # torch only when asked for

        cls, kwargs = RLControllerSampler, {"constraints": constraints}
    elif name == "random":
        cls, kwargs = RandomSampler, {}
    elif name == "tpe":
        cls, kwargs = TPESampler, dict(TPE_DEFAULTS)
    else:
        cls, kwargs = NSGAIISampler, dict(NSGA2_DEFAULTS)
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "seed", "constraints"}
    unknown = sorted(set(settings) - accepted)
    if unknown:
        raise ValueError(
            f"unknown setting(s) for sampler {name!r}: {', '.join(unknown)}; valid: {', '.join(sorted(accepted))}"
        )
    kwargs.update(settings)
    return cls(seed=seed, **kwargs)
