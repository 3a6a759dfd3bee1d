"""Optuna's own generic sampler tests (``optuna.testing.pytest_samplers``), run on both samplers.

Each sampler runs them twice: with its default settings and with tiny ones, so that the few
trials of each test also reach the tournaments and mutations, or the policy updates.
"""

from __future__ import annotations

from collections.abc import Callable

import optuna
import pytest
from optuna.samplers import BaseSampler
from optuna.testing.pytest_samplers import (
    BasicSamplerTestCase,
    MultiObjectiveSamplerTestCase,
    RelativeSamplerTestCase,
    SingleOnlySamplerTestCase,
)

from evo_fpn.samplers import AgingEvolutionSampler, RLControllerSampler

optuna.logging.set_verbosity(optuna.logging.WARNING)

RL_CATEGORICAL_ONLY = (
    "RLControllerSampler samples only categorical params relatively, by design: its policy emits "
    "categorical decisions, and int/float params are left to the independent sampler, so "
    "sample_relative omits them (tests/test_samplers_rl.py checks the categorical part of a mixed space)"
)


class TestAgingEvolutionGeneric(BasicSamplerTestCase, RelativeSamplerTestCase, MultiObjectiveSamplerTestCase):
    @pytest.fixture(params=[{}, {"population_size": 2, "sample_size": 2}], ids=["default", "tiny"])
    def sampler(self, request: pytest.FixtureRequest) -> Callable[[], BaseSampler]:
        return lambda: AgingEvolutionSampler(seed=0, **request.param)


class TestRLControllerGeneric(BasicSamplerTestCase, RelativeSamplerTestCase, SingleOnlySamplerTestCase):
    @pytest.fixture(params=[{}, {"batch_size": 2}], ids=["default", "tiny"])
    def sampler(self, request: pytest.FixtureRequest) -> Callable[[], BaseSampler]:
        return lambda: RLControllerSampler(seed=0, **request.param)

    @pytest.mark.skip(reason=RL_CATEGORICAL_ONLY)
    def test_sample_relative_numerical(self) -> None: ...

    @pytest.mark.skip(reason=RL_CATEGORICAL_ONLY)
    def test_sample_relative_mixed(self) -> None: ...
