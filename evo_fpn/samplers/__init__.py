"""General Optuna samplers: aging evolution and an RL controller (only optuna, numpy, torch).

They know nothing of detection; any Optuna study can use them. A search space with
constraints between categorical choices may pass a :class:`ChoiceConstraints` hook.
``RLControllerSampler`` (and with it torch) is imported on first use, so processes that only
evolve do not pay for importing torch.
"""

from typing import Any

from evo_fpn.samplers.constraints import ChoiceConstraints
from evo_fpn.samplers.evolution import AgingEvolutionSampler
from evo_fpn.samplers.registry import SAMPLER_NAMES, make_sampler

__all__ = ["AgingEvolutionSampler", "ChoiceConstraints", "RLControllerSampler", "SAMPLER_NAMES", "make_sampler"]


def __getattr__(name: str) -> Any:
    if name == "RLControllerSampler":
        from evo_fpn.samplers.rl import RLControllerSampler

        return RLControllerSampler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
