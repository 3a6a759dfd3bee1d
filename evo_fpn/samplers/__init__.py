"""General Optuna samplers: aging evolution and an RL controller (only optuna, numpy, torch).

They know nothing of detection; any Optuna study can use them. A search space with
constraints between categorical choices may pass a :class:`ChoiceConstraints` hook.
"""

from evo_fpn.samplers.constraints import ChoiceConstraints
from evo_fpn.samplers.evolution import AgingEvolutionSampler
from evo_fpn.samplers.registry import SAMPLER_NAMES, make_sampler
from evo_fpn.samplers.rl import RLControllerSampler

__all__ = ["AgingEvolutionSampler", "ChoiceConstraints", "RLControllerSampler", "SAMPLER_NAMES", "make_sampler"]
